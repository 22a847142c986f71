//! Schedules (G13) from the command line: cron install into a directory,
//! cron next across a DST change, and the watchdog raising `missed` once.

use crate::harness::*;
use crate::receiver::hooked_env;
use std::os::unix::fs::PermissionsExt;

#[test]
fn cron_install_writes_removes_and_leaves_foreign_files() {
    let env = Env::new();
    let crond = env.path("cron.d");
    std::fs::create_dir_all(&crond).unwrap();
    std::fs::write(crond.join("batchguard-foreign"), "* * * * * root true\n").unwrap();
    std::fs::write(crond.join("other"), "x\n").unwrap();
    env.job("nightly", "command = [\"true\"]\nschedule = \"30 3 * * *\"\ntimezone = \"Asia/Tokyo\"\nuser = \"nobody\"\n");
    env.job("adhoc", "command = [\"true\"]\n");
    env.job("gone", "command = [\"true\"]\nschedule = \"@hourly\"\n");
    // As on a cronie host (which honours CRON_TZ); the runner is started
    // as root and drops to the job's user itself.
    let d = env.run(&[
        "cron",
        "install",
        "--cron-flavor",
        "cronie",
        "--dir",
        crond.to_str().unwrap(),
    ]);
    d.code(0);
    let file = crond.join("batchguard-nightly");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("CRON_TZ=Asia/Tokyo"), "{text}");
    assert!(
        text.contains(&format!(
            "30 3 * * * root {BIN} --config-dir {} run nightly",
            env.config.display()
        )),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(crond.join("batchguard-watchdog").exists());
    assert!(crond.join("batchguard-gone").exists());
    assert!(
        !crond.join("batchguard-adhoc").exists(),
        "unscheduled jobs get no file"
    );
    // The job goes away: its file goes too; foreign files stay.
    std::fs::remove_file(env.config.join("jobs/gone.toml")).unwrap();
    env.run(&["cron", "install", "--dir", crond.to_str().unwrap()])
        .code(0)
        .stdout_has("removed");
    assert!(!crond.join("batchguard-gone").exists());
    assert_eq!(
        std::fs::read_to_string(crond.join("batchguard-foreign")).unwrap(),
        "* * * * * root true\n"
    );
    assert!(crond.join("other").exists());
    let rendered = env.run(&["cron", "render", "nightly"]).stdout();
    assert!(rendered.contains("run nightly"), "{rendered}");
}

#[test]
fn cron_next_follows_cron_across_dst() {
    let env = Env::new();
    env.job(
        "ny",
        "command = [\"true\"]\nschedule = \"30 2 * * *\"\ntimezone = \"America/New_York\"\n",
    );
    let d = env.run(&[
        "cron",
        "next",
        "ny",
        "-n",
        "3",
        "--from",
        "2026-03-07T12:00:00-05:00",
    ]);
    d.code(0);
    assert_eq!(
        d.stdout(),
        "2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n2026-03-10T02:30:00-04:00\n"
    );
    env.job(
        "tokyo",
        "command = [\"true\"]\nschedule = \"0 9 * * 1-5\"\ntimezone = \"Asia/Tokyo\"\n",
    );
    let d = env.run(&[
        "cron",
        "next",
        "tokyo",
        "-n",
        "2",
        "--from",
        "2026-11-27T10:00:00+09:00",
    ]);
    assert_eq!(
        d.stdout(),
        "2026-11-30T09:00:00+09:00\n2026-12-01T09:00:00+09:00\n"
    );
    env.run(&["cron", "next", "ny", "--from", "yesterday"])
        .code(2);
}

#[test]
fn watchdog_raises_missed_exactly_once() {
    let (env, hook) = hooked_env("missed_grace = \"1s\"\n");
    env.hooked_job(
        "every-minute",
        "command = [\"true\"]\nschedule = \"* * * * *\"",
    );
    // Configured long ago; the last fire (this minute) started nothing.
    let old = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(env.config.join("jobs/every-minute.toml"))
        .status()
        .unwrap();
    assert!(old.success());
    // Stay clear of the first seconds of a minute (the grace is 1 s).
    let sec = jiff::Zoned::now().second();
    if !(3..=56).contains(&sec) {
        std::thread::sleep(std::time::Duration::from_secs(6));
    }
    let status = env
        .create_store()
        .run(&["status", "--format", "json"])
        .json();
    assert_eq!(status["jobs"][0]["missed"], true, "{status}");
    env.run(&["watchdog"]).code(0);
    env.run(&["watchdog"]).code(0);
    let reqs = hook.take();
    assert_eq!(reqs.len(), 1, "missed exactly once");
    let p = reqs[0].json();
    assert_eq!(p["event"], "missed");
    assert!(
        p["message"].as_str().unwrap().contains("no run started"),
        "{p}"
    );
    // A run now: no longer missed.
    env.run(&["run", "every-minute"]).code(0);
    let status = env.run(&["status", "--format", "json"]).json();
    assert_eq!(status["jobs"][0]["missed"], false);
}

#[test]
fn schedules_that_never_fire_are_warnings_and_wider_syntax_is_refused() {
    let env = Env::new();
    env.job("feb30", "command = [\"true\"]\nschedule = \"0 0 30 2 *\"\n");
    let d = env.run(&["validate"]);
    d.code(0)
        .stderr_has("warning: ")
        .stderr_has("feb30.toml: schedule \"0 0 30 2 *\" never fires");
    let g13 = env.create_store().check_rule("feb30", "G13");
    assert_ne!(g13["status"], "pass", "{g13}");
    assert!(
        g13["message"].as_str().unwrap().contains("never fires"),
        "{g13}"
    );
    env.job(
        "weekend",
        "command = [\"true\"]\nschedule = \"0 0 * * FRI-SUN\"\n",
    );
    env.run(&["validate"])
        .code(78)
        .stderr_has("the day-of-week field")
        .stderr_has("write 5-7 or 0,5,6");
}
