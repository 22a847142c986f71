//! Running jobs: exit codes, timeouts that reach the whole tree, memory
//! limits, signals, retries, privilege drop, quiet success.

use crate::harness::*;
use std::time::Duration;

#[test]
fn success_is_quiet_and_recorded() {
    let env = Env::new();
    env.job(
        "hello",
        r#"command = ["sh", "-c", "echo hello; echo oops >&2"]"#,
    );
    let d = env.run(&["run", "hello"]);
    d.code(0);
    assert_eq!(d.stdout(), "");
    assert_eq!(d.stderr(), "");
    let run = env.last_run("hello");
    assert_eq!(run["outcome"], "success");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["attempt"], 1);
    assert!(run["fence"].as_i64().unwrap() >= 1);
    let log = env.log_of(&run);
    let line = log
        .lines()
        .find(|l| l.ends_with("stdout hello"))
        .expect("stdout line");
    // RFC 3339 timestamp, then the stream.
    let ts = line.split(' ').next().unwrap();
    assert!(ts.len() >= 29 && ts.as_bytes()[10] == b'T', "{line}");
    assert!(log.lines().any(|l| l.ends_with("stderr oops")), "{log}");
}

#[test]
fn exit_code_passes_through_and_failure_reports() {
    let env = Env::new();
    env.job(
        "fails",
        r#"command = ["sh", "-c", "echo about to fail; exit 3"]"#,
    );
    let d = env.run(&["run", "fails"]);
    d.code(3)
        .stderr_has("job `fails` ended failure (exit code 3)")
        .stderr_has("about to fail")
        .stderr_has("re-run: batchguard run fails");
    assert_eq!(env.last_run("fails")["outcome"], "failure");
}

#[test]
fn not_found_and_not_executable() {
    let env = Env::new();
    env.job("nf", r#"command = ["/nonexistent/program"]"#);
    env.run(&["run", "nf"]).code(127);
    let script = env.write("noexec.sh", "#!/bin/sh\necho hi\n");
    env.job("nx", &format!("command = [\"{}\"]", script.display()));
    env.run(&["run", "nx"]).code(126);
    assert_eq!(env.last_run("nx")["outcome"], "failure");
}

/// Job `name` running `sh -c script` under a `limit` timeout, with as long
/// again between the TERM and the KILL.
fn timeout_job(env: &Env, name: &str, script: &str, limit: &str) {
    env.job(
        name,
        &format!(
            "{}\ntimeout = \"{limit}\"\nkill_grace = \"{limit}\"",
            sh_command(script)
        ),
    );
}

#[test]
fn timeout_kills_grandchild_that_called_setsid() {
    let env = Env::new();
    let pidfile = env.path("grandchild.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' & sleep 300",
        pidfile.display()
    );
    timeout_job(&env, "slow", &script, "1s");
    env.run(&["run", "slow"]).code(124);
    let pid = read_pid(&pidfile).expect("grandchild wrote its pid");
    wait_for(
        "the setsid grandchild to be gone",
        Duration::from_secs(5),
        || !pid_alive(pid),
    );
    let run = env.last_run("slow");
    assert_eq!(run["outcome"], "timeout");
}

#[test]
fn term_ignoring_job_is_killed_after_grace() {
    let env = Env::new();
    timeout_job(&env, "stubborn", "trap '' TERM; sleep 300", "500ms");
    let start = std::time::Instant::now();
    env.run(&["run", "stubborn"]).code(124);
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn oom_job(env: &Env) {
    env.job(
        "hog",
        r#"command = ["python3", "-c", "b = bytearray(600 * 1024 * 1024); import time; time.sleep(5)"]
memory_max = "64MiB"
timeout = "60s""#,
    );
}

#[test]
fn memory_hog_ends_oom_with_peak_recorded() {
    let env = Env::new();
    oom_job(&env);
    env.run(&["run", "hog"]).code(137);
    let run = env.last_run("hog");
    assert_eq!(run["outcome"], "oom");
    let peak = run["peak_memory_bytes"].as_u64().expect("peak recorded");
    assert!(peak > 16 << 20, "peak {peak}");
    let mode = run["memory_enforcement"].as_str().unwrap();
    assert!(["cgroup1", "cgroup2", "poll"].contains(&mode), "{mode}");
}

#[test]
fn memory_hog_ends_oom_in_poll_mode() {
    let env = Env::new();
    oom_job(&env);
    env.run_with(&["run", "hog"], &[("BATCHGUARD_CGROUP", "poll")])
        .code(137);
    let run = env.last_run("hog");
    assert_eq!(run["outcome"], "oom");
    assert_eq!(run["memory_enforcement"], "poll");
    assert!(run["peak_memory_bytes"].as_u64().unwrap() > 16 << 20);
}

#[test]
fn term_to_runner_stops_job_as_killed() {
    let env = Env::new();
    let pidfile = env.pid_job("long", "sleep 300", "kill_grace = \"2s\"");
    let (mut child, job_pid) = env.spawn_job(&["run", "long"], &pidfile);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_child(&mut child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(143));
    let run = env.last_run("long");
    assert_eq!(run["outcome"], "killed");
    assert_eq!(run["signal"], 15);
    assert!(!pid_alive(job_pid));
}

/// A job that ends within the helpers' delay runs without them; one that
/// lasts gets them, and its lease renewal and signal forwarding work.
#[test]
fn only_a_job_that_lasts_starts_the_helper_threads() {
    let env = Env::new();
    env.job("quick", "command = [\"true\"]\n");
    env.job("slow", "command = [\"sleep\", \"0.4\"]\n");
    let debug = [("BATCHGUARD_LOG", "debug")];
    let quick = env.run_with(&["run", "quick"], &debug);
    quick.code(0);
    assert!(
        !quick.stderr().contains("helper threads started"),
        "{}",
        quick.stderr()
    );
    env.run_with(&["run", "slow"], &debug)
        .code(0)
        .stderr_has("helper threads started");
    assert_eq!(env.last_run("quick")["outcome"], "success");
    assert_eq!(env.last_run("slow")["outcome"], "success");
}

/// Should the runner die, the way to its job's tree is in the run's record
/// from the first transaction: the cgroup (planned before the spawn) where
/// the run has one, with the process group added once the job lasts 100
/// ms; without a cgroup (poll mode) the process group at once.
#[test]
fn the_way_to_a_jobs_tree_is_recorded_before_it_matters() {
    let env = Env::new();
    for (job, command) in [("quick", r#"["true"]"#), ("slow", r#"["sleep", "0.4"]"#)] {
        env.job(job, &format!("command = {command}\n"));
        env.run(&["run", job]).code(0);
    }
    env.run_with(&["run", "quick"], &[("BATCHGUARD_CGROUP", "poll")])
        .code(0);
    let db = env.state.strip_prefix("sqlite:").unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    let rows: Vec<(String, i64, Option<String>, Option<i64>)> = conn
        .prepare("SELECT job, duration_ms, cgroup, pgid FROM runs ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let [quick, slow, polled] = &rows[..] else {
        panic!("three runs expected: {rows:?}")
    };
    assert!(polled.2.is_none() && polled.3.is_some(), "{polled:?}");
    // A host where the runner may make cgroups (root here, CI included).
    if quick.2.is_some() {
        // (A machine so loaded that `true` took 100 ms records it too.)
        assert!(quick.3.is_none() || quick.1 >= 100, "{quick:?}");
        assert!(slow.2.is_some() && slow.3.is_some(), "{slow:?}");
    } else {
        assert!(quick.3.is_some() && slow.3.is_some(), "{rows:?}");
    }
}

#[test]
fn retries_back_off_and_record_each_attempt() {
    let env = Env::new();
    let counter = env.write("count", "0\n");
    env.job(
        "flaky",
        &format!(
            r#"command = ["sh", "-c", "n=$(cat {c}); n=$((n+1)); echo $n > {c}; echo attempt $BATCHGUARD_ATTEMPT; [ $n -ge 3 ]"]
retries = 3
retry_delay = "50ms""#,
            c = counter.display()
        ),
    );
    env.run(&["run", "flaky"]).code(0);
    let runs = env.runs("flaky");
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "failure", "failure"]);
    let attempts: Vec<u64> = runs
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [3, 2, 1]);
    // The lock is held across attempts: one fence for all.
    assert!(runs.iter().all(|r| r["fence"] == runs[0]["fence"]));
    assert!(env.log_of(&runs[0]).contains("stdout attempt 3"));
}

#[test]
fn user_drops_privileges() {
    if !crate::support::is_root() {
        return crate::support::cannot_run("user_drops_privileges", "needs root");
    }
    let env = Env::new();
    env.job("asnobody", "command = [\"id\", \"-u\"]\nuser = \"nobody\"");
    env.run(&["run", "asnobody"]).code(0);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let log = env.log_of(&env.last_run("asnobody"));
    assert!(log.contains(&format!("stdout {}", nobody.uid)), "{log}");
}

#[test]
fn exec_runs_adhoc_command_with_limits() {
    let env = Env::new();
    env.run(&[
        "exec",
        "--name",
        "adhoc",
        "--timeout",
        "300ms",
        "--",
        "sleep",
        "30",
    ])
    .code(124);
    assert_eq!(env.last_run("adhoc")["outcome"], "timeout");
    env.run(&["exec", "--name", "adhoc", "--", "true"]).code(0);
    env.run(&["exec", "--name", "Bad.Name", "--", "true"])
        .code(78);
}

#[test]
fn environment_carries_run_identity() {
    let env = Env::new();
    env.job(
        "envy",
        r#"command = ["sh", "-c", "echo job=$BATCHGUARD_JOB fence=$BATCHGUARD_FENCE attempt=$BATCHGUARD_ATTEMPT run=$BATCHGUARD_RUN_ID arg=$0", "{date}"]
env = { GREETING = "hi" }
[params]
date = "{today}""#,
    );
    env.run(&["run", "envy", "--param", "date=2026-01-02"])
        .code(0);
    let run = env.last_run("envy");
    let log = env.log_of(&run);
    let id = run["id"].as_str().unwrap();
    assert!(
        log.contains(&format!(
            "job=envy fence={} attempt=1 run={id} arg=2026-01-02",
            run["fence"]
        )),
        "{log}"
    );
    assert_eq!(run["params"]["date"], "2026-01-02");
    env.run(&["run", "envy", "--param", "nope=1"]).code(2);
}
