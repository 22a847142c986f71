//! Reading back: runs, show, status and logs, text and JSON (SPEC §4).

use crate::harness::*;

const RUN_KEYS: &[&str] = &[
    "id",
    "job",
    "host",
    "pid",
    "fence",
    "attempt",
    "scope",
    "started_at",
    "ended_at",
    "duration_ms",
    "outcome",
    "exit_code",
    "signal",
    "peak_memory_bytes",
    "memory_enforcement",
    "items",
    "log_path",
];

#[test]
fn run_json_has_the_spec_shape() {
    let env = Env::new();
    env.job(
        "shape",
        r#"command = ["sh", "-c", "echo hi"]
memory_max = "256MiB""#,
    );
    let run = env.run_ok("shape");
    for k in RUN_KEYS {
        assert!(run.get(k).is_some(), "missing {k} in {run}");
    }
    assert!(run["started_at"].as_str().unwrap().contains('T'));
    assert!(run["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(run["signal"], serde_json::Value::Null);
    assert_ne!(run["memory_enforcement"], "none");
    let id = run["id"].as_str().unwrap();
    let shown = env.run(&["show", id, "--format", "json"]).json();
    assert_eq!(shown["id"], run["id"]);
    env.run(&["show", id]).stdout_has("success").stdout_has(id);
    let table = env.run(&["runs", "shape"]).stdout();
    assert!(table.starts_with("RUN") && table.contains(id), "{table}");
    env.run(&["show", "NOSUCHRUN"])
        .code(1)
        .stderr_has("no run `NOSUCHRUN`");
}

#[test]
fn status_lists_jobs_with_next_run() {
    let env = Env::new();
    env.job(
        "daily",
        r#"command = ["true"]
schedule = "30 3 * * *"
timezone = "Asia/Tokyo""#,
    );
    env.job("never-ran", "command = [\"true\"]\n");
    env.run(&["run", "daily"]).code(0);
    let s = env.run(&["status", "--format", "json"]).json();
    let jobs = s["jobs"].as_array().unwrap();
    let daily = jobs.iter().find(|j| j["job"] == "daily").unwrap();
    assert_eq!(daily["outcome"], "success");
    let next = daily["next_run"].as_str().unwrap();
    assert!(
        next.contains("T03:30:00") && next.ends_with("+09:00"),
        "{next}"
    );
    let never = jobs.iter().find(|j| j["job"] == "never-ran").unwrap();
    assert_eq!(never["last_run"], serde_json::Value::Null);
    let text = env.run(&["status"]).stdout();
    assert!(
        text.starts_with("JOB") && text.contains("never-ran"),
        "{text}"
    );
}

#[test]
fn logs_prints_and_follows() {
    let env = Env::new();
    env.job(
        "talky",
        "command = [\"sh\", \"-c\", \"for i in 1 2 3; do echo line $i; sleep 0.2; done\"]\n",
    );
    let mut runner = env.spawn(&["run", "talky"]);
    let mut id = String::new();
    wait_for("the run record", std::time::Duration::from_secs(10), || {
        let runs = env.runs("talky");
        if let Some(r) = runs.first() {
            id = r["id"].as_str().unwrap().to_string();
            true
        } else {
            false
        }
    });
    let followed = env.run(&["logs", &id, "--follow"]);
    followed.code(0);
    let out = followed.stdout();
    assert!(
        out.contains("stdout line 1") && out.contains("stdout line 3"),
        "{out}"
    );
    wait_child(&mut runner, std::time::Duration::from_secs(10));
    env.run(&["logs", &id]).stdout_has("ended: success");
}

#[test]
fn log_cap_keeps_the_file_bounded() {
    let env = Env::new();
    env.global("log_max = \"4KiB\"");
    env.job("flood", "command = [\"sh\", \"-c\", \"seq 1 10000\"]\n");
    let log = env.log_of(&env.run_ok("flood"));
    assert!(log.len() < 8 * 1024, "log is {} bytes", log.len());
    assert!(log.contains("log cap of 4096 bytes reached"), "{log}");
}

#[test]
fn old_logs_are_removed_after_retention() {
    let env = Env::new();
    env.global("log_retention = \"1s\"");
    env.job("short", "command = [\"true\"]\n");
    let first = env.run_ok("short");
    let path = first["log_path"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&path).exists());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.run(&["run", "short"]).code(0);
    assert!(!std::path::Path::new(&path).exists(), "expired log removed");
    let newest = env.last_run("short");
    assert!(std::path::Path::new(newest["log_path"].as_str().unwrap()).exists());
}
