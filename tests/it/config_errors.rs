//! Bad configuration, seen from the command line: exit 78, and a message
//! that names file, line, column, the key and the fix. (The full catalogue
//! of malformed configs lives in crates/config/tests.)

use crate::harness::*;

#[test]
fn typo_names_file_line_column_and_suggestion() {
    let env = Env::new();
    env.job("typo", "command = [\"true\"]\ntimout = \"5m\"\n");
    let d = env.run(&["run", "typo"]);
    d.code(78).stderr_has("typo.toml:2:1").stderr_has("timeout");
    // Nothing was recorded for a run that could not be configured: not
    // even a state store was created.
    env.run(&["runs", "typo", "--format", "json"])
        .code(69)
        .stderr_has("no state store");
    env.create_store();
    let runs = env.run(&["runs", "typo", "--format", "json"]);
    assert_eq!(runs.json().as_array().unwrap().len(), 0);
}

#[test]
fn validate_checks_every_job() {
    let env = Env::new();
    env.job("good", "command = [\"true\"]\n");
    env.run(&["validate"]).code(0);
    env.job("bad", "command = [\"true\"]\nmemory_max = \"lots\"\n");
    env.job("worse", "command = \"true\"\n");
    let d = env.run(&["validate"]);
    d.code(78)
        .stderr_has("bad.toml:2")
        .stderr_has("worse.toml:1");
}

#[test]
fn log_dir_under_home_is_refused() {
    let env = Env::new();
    std::fs::write(
        env.config.join("batchguard.toml"),
        "log_dir = \"/home/alice/logs\"\n",
    )
    .unwrap();
    env.job("j", "command = [\"true\"]\n");
    assert_g10_refusal(&env, "log_dir");
}

#[test]
fn workdir_under_root_home_is_refused() {
    let env = Env::new();
    env.job("j", "command = [\"true\"]\nworkdir = \"/root/scripts\"\n");
    assert_g10_refusal(&env, "workdir");
}

/// Running job `j` is refused at config load (exit 78), naming `what` and G10.
#[track_caller]
fn assert_g10_refusal(env: &Env, what: &str) {
    env.run(&["run", "j"])
        .code(78)
        .stderr_has(what)
        .stderr_has("G10");
}

#[test]
fn unknown_job_and_usage_errors() {
    let env = Env::new();
    env.job("known", "command = [\"true\"]\n");
    env.run(&["run", "unknown"]).code(1).stderr_has("known");
    let mut c = env.cmd(&["run", "known"]);
    c.args(["--config-dir", "/nonexistent/batchguard"]);
    env.run_cmd(c)
        .code(78)
        .stderr_has("/nonexistent/batchguard does not exist");
    env.run(&["run"]).code(2);
    env.run(&["frobnicate"]).code(2);
    env.run(&["run", "known", "--param", "novalue"]).code(2);
}

#[test]
fn a_broken_job_does_not_stop_the_others() {
    let env = Env::new();
    env.job("fine", "command = [\"true\"]\n");
    env.job("broken", "command = [\"true\"\n");
    env.run(&["run", "fine"]).code(0);
    env.run(&["status"]).code(0).stderr_has("broken");
}
