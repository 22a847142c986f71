//! Regression tests of the architecture issue (#9): whatever fails after
//! the lock is taken, the run ends recorded, its lock released and its
//! outcome notified (SPEC §11).

use crate::harness::wait_for;
use crate::receiver::hooked_env;
use std::time::Duration;

/// A failure inside batchguard itself (the run's log cannot be created:
/// `LOG_DIR/JOB` is a file) used to leave the run `running` and the lock
/// held until its lease ended.
#[test]
fn an_internal_error_inside_an_attempt_is_recorded_released_and_notified() {
    let (env, hook) = hooked_env("");
    env.hooked_job("broken", "command = [\"true\"]");
    std::fs::create_dir_all(&env.logs).unwrap();
    std::fs::write(
        env.logs.join("broken"),
        "a file where the job's log dir goes",
    )
    .unwrap();

    let d = env.run(&["run", "broken"]);
    d.code(74).stderr_has("ended failure");
    let run = env.last_run("broken");
    assert_eq!(run["outcome"], "failure", "{run}");
    assert!(
        run["error"].as_str().unwrap_or_default().contains("broken"),
        "the error names the path: {run}"
    );
    hook.wait_for_one("the failure notification", 10);
    let sent = hook.take();
    assert_eq!(sent[0].json()["event"], "failure");
    // The lock was released: the next run is not skipped.
    env.run(&["run", "broken"]).code(74);
    assert_eq!(env.runs("broken").len(), 2);
}

/// A signal during the retry backoff used to release the lock without a
/// failure report or notification.
#[test]
fn a_signal_between_retries_still_reports_and_notifies_the_failure() {
    let (env, hook) = hooked_env("");
    env.job(
        "flaky",
        "command = [\"sh\", \"-c\", \"exit 3\"]\nretries = 2\nretry_delay = \"30s\"\n\
         [notify]\nchannels = [\"hook\"]\n",
    );
    let child = env.spawn(&["run", "flaky"]);
    wait_for("the first attempt's end", Duration::from_secs(10), || {
        env.runs("flaky")
            .first()
            .is_some_and(|r| r["outcome"] == "failure")
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the last attempt's exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ended failure"),
        "report on stderr: {stderr}"
    );
    hook.wait_for_one("the failure notification", 10);
    assert_eq!(hook.take()[0].json()["event"], "failure");
    // The lock is free again: a new run takes it and attempts at once.
    let mut again = env.spawn(&["run", "flaky"]);
    wait_for(
        "the second run's first attempt",
        Duration::from_secs(10),
        || {
            env.runs("flaky")
                .iter()
                .filter(|r| r["outcome"] == "failure")
                .count()
                >= 2
        },
    );
    again.kill().unwrap();
    again.wait().unwrap();
    assert!(env.runs("flaky").iter().all(|r| r["outcome"] != "skipped"));
}
