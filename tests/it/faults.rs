//! Fault tests (SPEC §11, issue #12): the store held locked past the
//! runner's bounded wait, and logs and state on a tiny full filesystem.
//! Each asserts the real outcome is recorded (never `lost`) and told.

use crate::harness::{Env, wait_for};
use crate::receiver::hooked_env;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Another process holds SQLite's write lock for 40 s across the end of a
/// run: the runner waits its bounded 30 s, keeps the outcome in the spool
/// and exits with the job's code; once the lock is gone, `status` records
/// the real outcome and the failure is notified.
#[test]
fn a_store_held_locked_at_the_end_spools_the_outcome() {
    let (env, hook) = hooked_env("");
    let started = env.path("started");
    env.hooked_job(
        "locked",
        &format!(
            "command = [\"sh\", \"-c\", \"touch {}; sleep 2; echo done; exit 4\"]",
            started.display()
        ),
    );
    let db = env.state.strip_prefix("sqlite:").unwrap().to_string();
    let run = env.spawn(&["run", "locked"]);
    wait_for("the job to start", Duration::from_secs(20), || {
        started.exists()
    });
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time\n\
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n\
c.execute('BEGIN EXCLUSIVE')\n\
print('locked', flush=True)\n\
time.sleep(40)\n",
            &db,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let t = Instant::now();
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be recorded"), "{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "bounded wait: {:?}",
        t.elapsed()
    );
    let _ = holder.kill();
    let _ = holder.wait();
    // The next invocation records the spooled end: the real outcome.
    let r = env.last_run("locked");
    assert_eq!(r["outcome"], "failure", "{r}");
    assert_eq!(r["exit_code"], 4, "{r}");
    // A read command stores the notification; the watchdog delivers it.
    assert_eq!(hook.count(), 0, "a read command delivered a notification");
    env.run(&["watchdog"]).code(0);
    hook.wait_for_one("the failure notification", 15);
    let sent = hook.take();
    assert_eq!(sent[0].json()["event"], "failure");
    assert_eq!(sent[0].json()["exit_code"], 4);
    // The lock was released with the record: the job runs again.
    env.job("locked", "command = [\"true\"]\n");
    env.run(&["run", "locked"]).code(0);
}

/// Logs and the state store on a 2 MiB tmpfs, and a job that prints far
/// more: the log stops at the free-space floor, the run goes on, its real
/// outcome is recorded with the cut noted, and the failure is notified.
#[test]
fn a_full_disk_cuts_the_log_not_the_record() {
    if !crate::support::is_root() {
        return crate::support::cannot_run(
            "a_full_disk_cuts_the_log_not_the_record",
            "mounting a tmpfs needs root",
        );
    }
    let env = Env::new();
    let small = env.path("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let hook = crate::receiver::Http::start();
    std::fs::write(
        env.config.join("batchguard.toml"),
        format!(
            "log_dir = \"{}/log\"\n[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
            small.display(),
            hook.url("/")
        ),
    )
    .unwrap();
    env.hooked_job(
        "flood",
        "command = [\"sh\", \"-c\", \"yes 'a line of output that fills the disk' | head -c 8000000; exit 4\"]",
    );
    let state = format!("sqlite:{}/state.db", small.display());
    let mut c = env.cmd(&["run", "flood"]);
    c.env("BATCHGUARD_STATE", &state);
    let d = env.run_cmd(c);
    d.code(4);
    let mut c = env.cmd(&["runs", "flood", "--format", "json"]);
    c.env("BATCHGUARD_STATE", &state);
    let runs: serde_json::Value = serde_json::from_slice(&env.run_cmd(c).out.stdout).unwrap();
    let run = &runs[0];
    assert_eq!(run["outcome"], "failure", "{run}");
    assert_eq!(run["exit_code"], 4, "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("log cut"),
        "the cut is in the record: {run}"
    );
    let log = std::fs::read_to_string(run["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("log cut at"), "the cut is in the log");
    hook.wait_for_one("the failure notification", 15);
    assert_eq!(hook.take()[0].json()["event"], "failure");
}
