//! Overlap (G07): forbid, replace with fencing and publish, and recovery
//! from a runner killed with SIGKILL.

use crate::harness::*;
use std::time::Duration;

#[test]
fn twenty_simultaneous_forbid_runs_one_runs_others_skip() {
    let env = Env::new();
    env.job("exclusive", r#"command = ["sleep", "2"]"#);
    let mut children: Vec<_> = (0..20).map(|_| env.spawn(&["run", "exclusive"])).collect();
    let codes: Vec<i32> = children
        .iter_mut()
        .map(|c| wait_child(c, Duration::from_secs(60)).code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 75).count(), 19, "{codes:?}");
    let runs = env.runs("exclusive");
    assert_eq!(runs.len(), 20);
    let success: Vec<_> = runs.iter().filter(|r| r["outcome"] == "success").collect();
    assert_eq!(success.len(), 1);
    assert_eq!(
        runs.iter().filter(|r| r["outcome"] == "skipped").count(),
        19
    );
    // Only the run that ran drew a token.
    assert_eq!(success[0]["fence"], 1);
    // And afterwards the lock is free again.
    env.job("exclusive", r#"command = ["true"]"#);
    assert_eq!(env.run_ok("exclusive")["fence"], 2);
}

#[test]
fn replace_fences_old_run_and_refuses_its_late_publish() {
    let env = Env::new();
    let dest = env.path("result.txt");
    let started = env.path("old.started");
    let old_rc = env.path("old.publish-rc");
    let script = env.write(
        "job.sh",
        &format!(
            r#"set -u
tmp=$(mktemp {root}/out.XXXXXX)
if [ ! -e {started} ]; then
  # The old run: ignores TERM, publishes late.
  trap '' TERM
  touch {started}
  echo old > "$tmp"
  sleep 1.5
  {bin} publish "$tmp" {dest}
  echo $? > {old_rc}
  exit 0
fi
echo new > "$tmp"
{bin} publish "$tmp" {dest}
"#,
            root = env.root.display(),
            started = started.display(),
            bin = BIN,
            dest = dest.display(),
            old_rc = old_rc.display(),
        ),
    );
    env.job(
        "report",
        &format!(
            "command = [\"sh\", \"{}\"]\nconcurrency = \"replace\"\nkill_grace = \"10s\"",
            script.display()
        ),
    );
    let st = env.replace_running("report", &started);
    assert_eq!(st.code(), Some(75), "the old runner exits 75 (fenced)");
    assert_eq!(
        std::fs::read_to_string(&old_rc).unwrap().trim(),
        "75",
        "late publish refused"
    );
    assert_eq!(std::fs::read_to_string(&dest).unwrap().trim(), "new");
    let runs = env.runs("report");
    assert_eq!(runs[0]["outcome"], "success");
    assert_eq!(runs[1]["outcome"], "fenced");
    assert!(runs[0]["fence"].as_i64() > runs[1]["fence"].as_i64());
}

#[test]
fn publish_outside_a_run_is_a_usage_error() {
    let env = Env::new();
    let src = env.write("a", "x");
    env.run(&["publish", src.to_str().unwrap(), "/tmp/nowhere"])
        .code(2);
}

/// Issue #12: a runner SIGKILLed under a `timeout = "3s"` job left the job
/// running long past its timeout, while `status` and `watchdog` called it
/// lost. Now the watchdog leaves it running until the timeout has passed,
/// then stops the whole orphaned tree and records the run lost.
#[test]
fn watchdog_stops_a_lost_runs_leftovers_once_its_timeout_passed() {
    let env = Env::new();
    let (pidfile, _fast) =
        killed_runner_setup_with(&env, "timeout = \"3s\"\nkill_grace = \"1s\"\n");
    let t0 = std::time::Instant::now();
    let job_pid = start_and_kill_runner(&env, &pidfile);
    let setsid_pid = read_pid(&pidfile.with_extension("pid.setsid")).unwrap();
    if t0.elapsed() < Duration::from_millis(2500) {
        env.run(&["watchdog"]).code(0);
        assert_eq!(env.last_run("orphaned")["outcome"], "running");
        assert!(pid_alive(job_pid), "not stopped before its timeout");
    }
    wait_for("the timeout to pass", Duration::from_secs(10), || {
        t0.elapsed() > Duration::from_millis(3500)
    });
    env.run(&["watchdog"]).code(0);
    assert_eq!(env.last_run("orphaned")["outcome"], "lost");
    wait_for("the orphans to go", Duration::from_secs(10), || {
        !pid_alive(job_pid) && !pid_alive(setsid_pid)
    });
}

fn killed_runner_setup(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    killed_runner_setup_with(env, "")
}

fn killed_runner_setup_with(env: &Env, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let pidfile = env.path("job.pid");
    let fast = env.path("fast");
    let script = env.write(
        "job.sh",
        &format!(
            r#"if [ -e {fast} ]; then
  # The new run: the orphan of the killed runner must be gone by now.
  # (A zombie waiting for init to reap it is not running work.)
  for p in $(cat {pid}) $(cat {pid}.setsid); do
    state=$(awk '{{print $3}}' /proc/$p/stat 2>/dev/null)
    if [ -n "$state" ] && [ "$state" != Z ]; then echo OVERLAP $p; exit 9; fi
  done
  echo clean start; exit 0
fi
setsid sleep 300 &
echo $! > {pid}.setsid
echo $$ > {pid}
sleep 300
"#,
            fast = fast.display(),
            pid = pidfile.display()
        ),
    );
    env.job(
        "orphaned",
        &format!("command = [\"sh\", \"{}\"]\n{extra}", script.display()),
    );
    (pidfile, fast)
}

fn start_and_kill_runner(env: &Env, pidfile: &std::path::Path) -> i32 {
    let (mut runner, job_pid) = env.spawn_job(&["run", "orphaned"], pidfile);
    sigkill_runner(&mut runner);
    assert!(pid_alive(job_pid), "the job outlives its SIGKILLed runner");
    job_pid
}

#[test]
fn sigkilled_runner_is_recorded_lost_and_never_overlaps() {
    let env = Env::new();
    let (pidfile, fast) = killed_runner_setup(&env);
    let job_pid = start_and_kill_runner(&env, &pidfile);
    std::fs::write(&fast, "").unwrap();
    let d = env.run(&["run", "orphaned"]);
    d.code(0);
    assert!(!pid_alive(job_pid), "orphaned work was stopped");
    let setsid_pid = read_pid(&pidfile.with_extension("pid.setsid")).unwrap();
    assert!(
        !pid_alive(setsid_pid),
        "orphaned setsid grandchild was stopped"
    );
    let runs = env.runs("orphaned");
    assert_eq!(runs[0]["outcome"], "success");
    assert_eq!(runs[1]["outcome"], "lost");
    assert!(env.log_of(&runs[0]).contains("clean start"));
}

fn status_outcome(env: &Env, job: &str) -> serde_json::Value {
    let st = env.run(&["status", "--format", "json"]);
    st.code(0);
    let jobs = st.json();
    jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == job)
        .unwrap()["outcome"]
        .clone()
}

/// A dead runner whose job (without a timeout) still runs: `status` says
/// it is running (it is), and the next run that needs the lock stops the
/// orphan and records the run lost.
#[test]
fn status_shows_an_orphan_running_and_next_run_cleans_up() {
    let env = Env::new();
    let (pidfile, fast) = killed_runner_setup(&env);
    let job_pid = start_and_kill_runner(&env, &pidfile);
    assert_eq!(status_outcome(&env, "orphaned"), "running");
    assert!(pid_alive(job_pid));
    std::fs::write(&fast, "").unwrap();
    env.run(&["run", "orphaned"]).code(0);
    assert!(!pid_alive(job_pid));
    let runs = env.runs("orphaned");
    assert_eq!(runs.iter().filter(|r| r["outcome"] == "lost").count(), 1);
}
