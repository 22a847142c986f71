//! Idempotent items (G06): the ledger, per-item and stream modes, scopes,
//! crash-resume under SIGKILL, fencing of a replaced run, bad keys.

use crate::harness::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/items");

fn keys_file(env: &Env, n: usize) -> std::path::PathBuf {
    let text: String = (1..=n).map(|i| format!("key-{i}\n")).collect();
    env.write("keys.txt", &text)
}

/// How many times each key was processed, from a file of one key per line.
fn processed(path: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(line.to_string()).or_insert(0) += 1;
    }
    m
}

/// A per-item handler script: appends its key to `processed`, fails for the
/// keys listed in `bad` (if that file exists), sleeps `sleep` seconds.
fn handler(env: &Env, sleep: &str) -> std::path::PathBuf {
    env.write(
        "handler.sh",
        &format!(
            "#!/bin/sh\nif [ -f {bad} ] && grep -qx \"$1\" {bad}; then echo \"cannot process $1\" >&2; exit 3; fi\n\
             echo \"processing $1\"\necho \"$1\" >> {out}\n[ \"{sleep}\" = 0 ] || sleep {sleep}\n",
            bad = env.path("bad").display(),
            out = env.path("processed").display(),
        ),
    )
}

fn per_item_job(env: &Env, name: &str, n: usize, extra: &str) {
    let keys = keys_file(env, n);
    let h = handler(env, "0");
    env.job(
        name,
        &format!(
            "[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\nparallelism = 2\n{extra}",
            keys.display(),
            h.display()
        ),
    );
}

/// A stream-mode job `name` running `command` (a TOML array) over the
/// keys of the file `keys`.
fn stream_job(env: &Env, name: &str, command: &str, keys: &std::path::Path) {
    env.job(
        name,
        &format!(
            "command = {command}\n[items]\nmode = \"stream\"\nsource_file = \"{}\"\n",
            keys.display()
        ),
    );
}

#[test]
fn rerun_after_success_processes_nothing() {
    let env = Env::new();
    per_item_job(&env, "items", 40, "");
    env.run(&["run", "items"]).code(0);
    let first = processed(&env.path("processed"));
    assert_eq!(first.len(), 40);
    assert!(first.values().all(|&c| c == 1));
    let run = env.last_run("items");
    assert_eq!(run["items"]["total"], 40);
    assert_eq!(run["items"]["done"], 40);
    env.run(&["run", "items"]).code(0);
    assert_eq!(processed(&env.path("processed")), first, "nothing redone");
    let run = env.last_run("items");
    assert_eq!(run["items"]["skipped"], 40);
    assert_eq!(run["items"]["done"], 0);
    // The per-item environment and log prefix.
    assert!(env.log_of(&env.runs("items")[1]).contains("[key-7] "));
}

#[test]
fn rerun_after_partial_failure_processes_only_the_failed_keys() {
    let env = Env::new();
    per_item_job(&env, "items", 30, "");
    env.write("bad", "key-3\nkey-17\nkey-30\n");
    let d = env.run(&["run", "items"]);
    d.code(1).stderr_has("failed items").stderr_has("key-17");
    let run = env.last_run("items");
    assert_eq!(run["outcome"], "failure");
    assert_eq!(run["items"]["failed"], 3);
    assert_eq!(run["items"]["done"], 27);
    let mut listed: Vec<String> = run["items_failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["key-17", "key-3", "key-30"]);
    let ledger = env.run(&["ledger", "items", "--format", "json"]).json();
    let scope = &ledger["scopes"][0];
    assert_eq!(scope["done"], 27);
    assert_eq!(scope["failed"], 3);
    let err = scope["failed_keys"][0]["last_error"].as_str().unwrap();
    assert!(
        err.contains("exit code 3") && err.contains("cannot process"),
        "{err}"
    );
    // Fixed: only the three are processed again.
    std::fs::remove_file(env.path("bad")).unwrap();
    std::fs::remove_file(env.path("processed")).unwrap();
    env.run(&["run", "items"]).code(0);
    let mut again: Vec<String> = processed(&env.path("processed")).into_keys().collect();
    again.sort();
    assert_eq!(again, ["key-17", "key-3", "key-30"]);
}

#[test]
fn keys_failing_max_attempts_are_not_retried() {
    let env = Env::new();
    per_item_job(&env, "items", 5, "max_attempts = 2\n");
    env.write("bad", "key-2\n");
    env.run(&["run", "items"]).code(1);
    env.run(&["run", "items"]).code(1);
    std::fs::remove_file(env.path("processed")).unwrap();
    let d = env.run(&["run", "items"]);
    d.code(1).stderr_has("failed 2 times");
    assert!(
        !env.path("processed").exists(),
        "key-2 was not tried a third time"
    );
    let text = env.run(&["ledger", "items"]).stdout();
    assert!(
        text.contains("key-2  2 attempts (failed for good)"),
        "{text}"
    );
}

#[test]
fn scopes_stay_apart_and_reset_redoes_exactly_one() {
    let env = Env::new();
    let h = handler(&env, "0");
    let src = env.write("src.sh", "#!/bin/sh\nseq -f \"$1-%g\" 1 10\n");
    env.job(
        "daily",
        &format!(
            "[params]\nday = \"{{today}}\"\n[items]\nsource = [\"sh\", \"{}\", \"{{day}}\"]\nrun = [\"sh\", \"{}\", \"{{item}}\"]\nscope = \"{{day}}\"\n",
            src.display(),
            h.display()
        ),
    );
    env.run(&["run", "daily", "--param", "day=d1"]).code(0);
    env.run(&["run", "daily", "--param", "day=d2"]).code(0);
    assert_eq!(env.last_run("daily")["scope"], "d2");
    let ledger = env.run(&["ledger", "daily", "--format", "json"]).json();
    let scopes: Vec<(&str, u64)> = ledger["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["scope"].as_str().unwrap(), s["done"].as_u64().unwrap()))
        .collect();
    assert_eq!(scopes, [("d1", 10), ("d2", 10)]);
    env.run(&["ledger", "reset", "daily"]).code(2);
    env.run(&["ledger", "reset", "daily", "--scope", "d1"])
        .code(0);
    std::fs::remove_file(env.path("processed")).unwrap();
    env.run(&["run", "daily", "--param", "day=d1"]).code(0);
    env.run(&["run", "daily", "--param", "day=d2"]).code(0);
    let again = processed(&env.path("processed"));
    assert_eq!(again.len(), 10);
    assert!(
        again.keys().all(|k| k.starts_with("d1-")),
        "only scope d1 was redone"
    );
    // --scope on the command line picks the ledger scope directly.
    let scopes = [
        ("d2", 10, "scope d2 is complete"),
        ("fresh", 20, "a new scope starts empty"),
    ];
    for (scope, processed_keys, what) in scopes {
        env.run(&["run", "daily", "--param", "day=d2", "--scope", scope])
            .code(0);
        assert_eq!(
            processed(&env.path("processed")).len(),
            processed_keys,
            "{what}"
        );
    }
    assert_eq!(env.last_run("daily")["scope"], "fresh");
}

#[test]
fn bad_keys_stop_the_run_before_any_work() {
    let env = Env::new();
    let h = handler(&env, "0");
    let long = "x".repeat(1025);
    for (bytes, needle) in [
        (
            format!("ok\n{long}\n").into_bytes(),
            "line 2: key is 1025 bytes long",
        ),
        (
            b"ok\nfine\nnul\0here\n".to_vec(),
            "line 3: key contains a NUL byte",
        ),
        (
            b"ok\n\xff\xfeoops\n".to_vec(),
            "line 2: key is not valid UTF-8",
        ),
        (b"ok\n\nafter-blank\n".to_vec(), "line 2: empty key"),
    ] {
        let src = env.path("bad-keys.bin");
        std::fs::write(&src, &bytes).unwrap();
        env.job(
            "strict",
            &format!(
                "[items]\nsource = [\"cat\", \"{}\"]\nrun = [\"sh\", \"{}\", \"{{item}}\"]\n",
                src.display(),
                h.display()
            ),
        );
        env.run(&["run", "strict"])
            .code(1)
            .stderr_has(needle)
            .stderr_has("no item was processed");
        assert!(!env.path("processed").exists(), "no work for {needle}");
    }
    // A failing source processes nothing either.
    env.job("strict", &format!("[items]\nsource = [\"sh\", \"-c\", \"echo a; exit 4\"]\nrun = [\"sh\", \"{}\", \"{{item}}\"]\n", h.display()));
    env.run(&["run", "strict"]).code(4);
    assert!(!env.path("processed").exists());
}

fn crash_and_resume(env: &Env, job: &str, n: usize, crashes: u64, bound_per_crash: usize) {
    // Deterministic "random" moments: 250 to 650 ms into each run.
    let mut x = 0x9E3779B97F4A7C15u64;
    for _ in 0..crashes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = Duration::from_millis(250 + x % 400);
        let mut runner = env.spawn(&["run", job]);
        std::thread::sleep(at);
        kill(Pid::from_raw(runner.id() as i32), Signal::SIGKILL).unwrap();
        wait_child(&mut runner, Duration::from_secs(10));
    }
    let d = env.run(&["run", job]);
    d.code(0);
    let seen = processed(&env.path("processed"));
    assert_eq!(seen.len(), n, "every key processed");
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!("{job}: {duplicates} duplicates over {crashes} crashes");
    assert!(
        duplicates <= crashes as usize * bound_per_crash,
        "{duplicates} duplicates exceed {crashes} x {bound_per_crash}"
    );
    let runs = env.runs(job);
    assert_eq!(runs[0]["outcome"], "success");
    let lost = runs.iter().filter(|r| r["outcome"] == "lost").count();
    assert!(lost >= 1 && lost <= crashes as usize, "{lost} lost runs");
}

#[test]
fn per_item_crash_resume_redoes_at_most_what_was_in_flight() {
    let env = Env::new();
    let keys = keys_file(&env, 1500);
    let h = handler(&env, "0.01");
    env.job(
        "crashy",
        &format!(
            "[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\nparallelism = 4\n",
            keys.display(),
            h.display()
        ),
    );
    // A key is redone only if it was running at the crash (at most
    // `parallelism`) or finished while the commit then being written ran
    // (the committer takes what arrived during the previous commit: with
    // 10 ms items, a few per worker): 4 + 4 x 3.
    crash_and_resume(&env, "crashy", 1500, 4, 16);
}

#[test]
fn stream_crash_resume_redoes_at_most_what_was_in_flight() {
    let env = Env::new();
    let keys = keys_file(&env, 3000);
    let script = env.write(
        "stream.sh",
        &format!(
            "#!/bin/sh\nwhile IFS= read -r key; do\n  echo \"$key\" >> {}\n  echo \"$key\" >&\"$BATCHGUARD_DONE_FD\"\n  sleep 0.001\ndone\n",
            env.path("processed").display()
        ),
    );
    let command = format!("[\"sh\", \"{}\"]", script.display());
    stream_job(&env, "streamy", &command, &keys);
    // One key in the handler's hands, the keys reported while the commit
    // then being written ran (about one key per 2 ms), and one more the
    // orphaned handler finishes before its next report hits the closed
    // pipe.
    crash_and_resume(&env, "streamy", 3000, 4, 12);
}

#[test]
fn stream_examples_are_resumable() {
    for script in ["resumable.py", "resumable.sh"] {
        let env = Env::new();
        let keys = keys_file(&env, 200);
        let interp = if script.ends_with(".py") {
            "python3"
        } else {
            "sh"
        };
        let command = format!("[\"{interp}\", \"{EXAMPLES}/{script}\"]");
        stream_job(&env, "example", &command, &keys);
        let run = env.run_ok("example");
        assert_eq!(run["items"]["done"], 200, "{script}");
        assert!(
            env.log_of(&run).contains("stdout processing key-200"),
            "{script}"
        );
        assert_eq!(env.run_ok("example")["items"]["skipped"], 200, "{script}");
    }
}

#[test]
fn stream_job_that_skips_keys_fails_them() {
    let env = Env::new();
    let keys = keys_file(&env, 10);
    let command = r#"["sh", "-c", "while read k; do [ $k = key-4 ] || echo $k >&3; done"]"#;
    stream_job(&env, "lazy", command, &keys);
    env.run(&["run", "lazy"]).code(1).stderr_has("key-4");
    let run = env.last_run("lazy");
    assert_eq!(run["items"]["done"], 9);
    assert_eq!(run["items"]["failed"], 1);
}

#[test]
fn replaced_run_cannot_record_its_late_completions() {
    let env = Env::new();
    let keys = keys_file(&env, 6);
    let started = env.path("old.started");
    let script = env.write(
        "slow.sh",
        &format!(
            "#!/bin/sh\nif [ ! -e {s} ]; then touch {s}; trap '' TERM; sleep 1.5; fi\necho \"$1\" >> {out}\n",
            s = started.display(),
            out = env.path("processed").display()
        ),
    );
    env.job(
        "swap",
        &format!(
            "concurrency = \"replace\"\nkill_grace = \"10s\"\n[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\nparallelism = 1\n",
            keys.display(),
            script.display()
        ),
    );
    let st = env.replace_running("swap", &started);
    assert_eq!(st.code(), Some(75), "the old run ends fenced");
    let runs = env.runs("swap");
    assert_eq!(runs[0]["outcome"], "success");
    assert_eq!(runs[1]["outcome"], "fenced");
    assert_eq!(runs[1]["items"]["done"], 0, "the old run recorded nothing");
    // Every done key in the ledger belongs to the newer run's token.
    let db = env.state.strip_prefix("sqlite:").unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    let fences: Vec<i64> = conn
        .prepare("SELECT DISTINCT fence FROM ledger WHERE state = 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|f| f.unwrap())
        .collect();
    assert_eq!(fences, [runs[0]["fence"].as_i64().unwrap()]);
    assert_eq!(runs[0]["items"]["done"], 6);
}

#[test]
fn long_runs_write_progress_lines_to_the_log() {
    let env = Env::new();
    let keys = keys_file(&env, 40);
    let command = r#"["sh", "-c", "while read k; do sleep 0.05; echo $k >&3; done"]"#;
    stream_job(&env, "slow", command, &keys);
    env.run_with(&["run", "slow"], &[("BATCHGUARD_PROGRESS_EVERY", "500ms")])
        .code(0);
    let log = env.log_of(&env.last_run("slow"));
    let line = log
        .lines()
        .find(|l| l.contains("batchguard progress: "))
        .unwrap_or_else(|| panic!("no progress line in:\n{log}"));
    assert!(
        line.contains("/40 items") && line.contains("/s, eta "),
        "{line}"
    );
}
