//! The prediction per daemon across DST (spring and fall, 1-hour and Lord
//! Howe's 30-minute shift), `--if-due`, the lines per daemon, and config
//! dirs kept apart in one cron.d directory.

use super::predict::{Host, Rule, due_in};
use super::*;
use std::fs;
use std::path::Path;

fn tz(name: &str) -> TimeZone {
    batchguard_config::zone::zone(name).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn host(flavor: Flavor, zone: &str) -> Host {
    Host {
        flavor,
        zone: tz(zone),
    }
}

/// Fires of `schedule` for a job with `job_tz` on `host`, in `(from, to]`.
fn fires(schedule: &str, job_tz: Option<&str>, host: &Host, from: &str, to: &str) -> Vec<String> {
    let s = Schedule::parse(schedule).unwrap();
    let job_tz = job_tz.map(tz);
    Rule::for_job(job_tz.as_ref(), host)
        .fires_between(&s, ts(from), ts(to), 100)
        .iter()
        .map(|z| z.strftime("%Y-%m-%dT%H:%M%:z").to_string())
        .collect()
}

const NY: &str = "America/New_York"; // 2026-03-08 02:00 → 03:00, 2026-11-01 02:00 → 01:00
const LH: &str = "Australia/Lord_Howe"; // 2026-10-04 02:00 → 02:30, 2026-04-05 02:00 → 01:30

/// A fixed-time job on a DST day: (schedule, its zone, from, to).
type Day = (&'static str, &'static str, &'static str, &'static str);
/// New York springs forward: 02:30 does not exist.
const NY_SPRING: Day = (
    "30 2 * * *",
    NY,
    "2026-03-08T05:00:00Z",
    "2026-03-08T17:00:00Z",
);
/// New York falls back: 01:30 twice on the clock.
const NY_FALL: Day = (
    "30 1 * * *",
    NY,
    "2026-11-01T04:00:00Z",
    "2026-11-01T17:00:00Z",
);
/// Lord Howe springs forward 30 minutes: 02:15 does not exist.
const LH_SPRING: Day = (
    "15 2 * * *",
    LH,
    "2026-10-03T12:00:00Z",
    "2026-10-04T12:00:00Z",
);
/// Lord Howe falls back 30 minutes: 01:45 twice.
const LH_FALL: Day = (
    "45 1 * * *",
    LH,
    "2026-04-04T12:00:00Z",
    "2026-04-05T12:00:00Z",
);

/// The fires of `day`'s job on host `h`, in the job's zone when
/// `with_tz`, else without a `timezone`.
fn on(day: Day, with_tz: bool, h: &Host) -> Vec<String> {
    let (schedule, zone, from, to) = day;
    fires(schedule, with_tz.then_some(zone), h, from, to)
}

#[test]
fn dst_without_timezone_per_daemon() {
    for f in [Flavor::Cronie, Flavor::Vixie] {
        let h = host(f, NY);
        // Spring: fixed-time fires at the gap's end.
        assert_eq!(on(NY_SPRING, false, &h), ["2026-03-08T03:00-04:00"], "{f}");
        // Wildcard jobs by the clock: no 02:xx at all.
        let (_, _, from, to) = NY_SPRING;
        assert_eq!(
            fires("*/30 1-3 * * *", None, &h, from, to),
            [
                "2026-03-08T01:00-05:00",
                "2026-03-08T01:30-05:00",
                "2026-03-08T03:00-04:00",
                "2026-03-08T03:30-04:00"
            ],
            "{f}"
        );
        // Fall: fixed-time once, wildcard twice.
        assert_eq!(on(NY_FALL, false, &h), ["2026-11-01T01:30-04:00"], "{f}");
        assert_eq!(
            fires("30 * * * *", None, &h, NY_FALL.2, "2026-11-01T07:00:00Z"),
            [
                "2026-11-01T00:30-04:00",
                "2026-11-01T01:30-04:00",
                "2026-11-01T01:30-05:00"
            ],
            "{f}"
        );
        // Lord Howe, 30 minutes: the same rule.
        let h = host(f, LH);
        assert_eq!(on(LH_SPRING, false, &h), ["2026-10-04T02:30+11:00"], "{f}");
        assert_eq!(on(LH_FALL, false, &h), ["2026-04-05T01:45+11:00"], "{f}");
    }
    // busybox: strictly by the clock, for every job.
    let h = host(Flavor::Busybox, NY);
    assert!(on(NY_SPRING, false, &h).is_empty());
    assert_eq!(
        on(NY_FALL, false, &h),
        ["2026-11-01T01:30-04:00", "2026-11-01T01:30-05:00"]
    );
    let h = host(Flavor::Busybox, LH);
    assert!(on(LH_SPRING, false, &h).is_empty());
    assert_eq!(
        on(LH_FALL, false, &h),
        ["2026-04-05T01:45+11:00", "2026-04-05T01:45+10:30"]
    );
}

#[test]
fn dst_with_timezone_per_daemon() {
    // Debian's cron and busybox: --if-due, the documented rule in the job's zone.
    for f in [Flavor::Vixie, Flavor::Busybox] {
        let h = host(f, "UTC");
        assert_eq!(on(NY_SPRING, true, &h), ["2026-03-08T03:00-04:00"], "{f}");
        assert_eq!(on(NY_FALL, true, &h), ["2026-11-01T01:30-04:00"], "{f}");
        assert_eq!(on(LH_SPRING, true, &h), ["2026-10-04T02:30+11:00"], "{f}");
        assert_eq!(on(LH_FALL, true, &h), ["2026-04-05T01:45+11:00"], "{f}");
    }
    // cronie with CRON_TZ on a UTC host: the job zone's clock, fixed-time too.
    let h = host(Flavor::Cronie, "UTC");
    assert!(on(NY_SPRING, true, &h).is_empty());
    assert_eq!(
        on(NY_FALL, true, &h),
        ["2026-11-01T01:30-04:00", "2026-11-01T01:30-05:00"]
    );
    assert!(on(LH_SPRING, true, &h).is_empty());
    assert_eq!(
        on(LH_FALL, true, &h),
        ["2026-04-05T01:45+11:00", "2026-04-05T01:45+10:30"]
    );
    // ... and on a host in that zone, cronie runs no CRON_TZ fixed-time job
    // while it handles the host's own fall-back: once.
    let h = host(Flavor::Cronie, NY);
    assert_eq!(on(NY_FALL, true, &h), ["2026-11-01T01:30-04:00"]);
    // A CRON_TZ wildcard job is not held back.
    assert_eq!(
        fires(
            "30 * * * *",
            Some(NY),
            &h,
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z"
        ),
        ["2026-11-01T01:30-04:00", "2026-11-01T01:30-05:00"]
    );
}

#[test]
fn cronie_holds_back_cron_tz_fixed_jobs_during_the_hosts_fall_back_only() {
    let h = host(Flavor::Cronie, NY);
    // New York falls back at 06:00Z on 2026-11-01 (02:00 EDT -> 01:00 EST)
    // and repeats an hour: until 07:00Z cronie runs wildcard jobs only, so a
    // CRON_TZ=UTC job at 06:30Z does not run that day.
    let day = ("2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z");
    assert!(fires("30 6 * * *", Some("UTC"), &h, day.0, day.1).is_empty());
    assert_eq!(
        fires(
            "30 6 * * *",
            Some("UTC"),
            &h,
            "2026-11-01T12:00:00Z",
            "2026-11-02T12:00:00Z"
        ),
        ["2026-11-02T06:30+00:00"]
    );
    // 07:30Z is after the repeated range.
    assert_eq!(
        fires("30 7 * * *", Some("UTC"), &h, day.0, day.1),
        ["2026-11-01T07:30+00:00"]
    );
    // Wildcard jobs still run.
    assert_eq!(
        fires(
            "*/30 6 * * *",
            Some("UTC"),
            &h,
            "2026-11-01T05:00:00Z",
            "2026-11-01T08:00:00Z"
        ),
        ["2026-11-01T06:00+00:00", "2026-11-01T06:30+00:00"]
    );
    // Its spring-forward (07:00Z on 2026-03-08) holds nothing back.
    assert_eq!(
        fires(
            "0 7 * * *",
            Some("UTC"),
            &h,
            "2026-03-08T00:00:00Z",
            "2026-03-08T12:00:00Z"
        ),
        ["2026-03-08T07:00+00:00"]
    );
    // Debian's cron with --if-due has no such hole.
    let h = host(Flavor::Vixie, NY);
    assert_eq!(
        fires(
            "30 6 * * *",
            Some("UTC"),
            &h,
            "2026-11-01T00:00:00Z",
            "2026-11-01T12:00:00Z"
        ),
        ["2026-11-01T06:30+00:00"]
    );
}

#[test]
fn due_now_reads_the_jobs_schedule_and_zone() {
    let dir = tempfile::tempdir().unwrap();
    let job = |text: &str| {
        let path = dir.path().join("j.toml");
        fs::write(&path, text).unwrap();
        batchguard_config::parse_job_str("j", &path, text, &batchguard_config::Global::default())
            .unwrap()
    };
    let tokyo =
        job("command = [\"true\"]\nschedule = \"42 18 * * *\"\ntimezone = \"Asia/Tokyo\"\n");
    assert!(due_now(&tokyo, ts("2026-12-03T09:42:30Z")));
    assert!(!due_now(&tokyo, ts("2026-12-03T18:42:30Z")));
    let unscheduled = job("command = [\"true\"]\n");
    assert!(!due_now(&unscheduled, ts("2026-12-03T09:42:30Z")));
}

#[test]
fn if_due_is_the_documented_rule_per_minute() {
    let s = Schedule::parse("30 2 * * *").unwrap();
    let ny = tz(NY);
    // Spring: due in the minute the gap ends (03:00 EDT = 07:00Z), only then.
    assert!(due_in(&s, &ny, ts("2026-03-08T07:00:00Z")));
    assert!(due_in(&s, &ny, ts("2026-03-08T07:00:59Z")));
    assert!(!due_in(&s, &ny, ts("2026-03-08T06:59:59Z")));
    assert!(!due_in(&s, &ny, ts("2026-03-08T07:01:00Z")));
    // An ordinary day: 02:30 EST = 07:30Z.
    assert!(due_in(&s, &ny, ts("2026-03-07T07:30:10Z")));
    assert!(!due_in(&s, &ny, ts("2026-03-07T07:31:00Z")));
    // Fall: 01:30 at the first occurrence only.
    let s = Schedule::parse("30 1 * * *").unwrap();
    assert!(due_in(&s, &ny, ts("2026-11-01T05:30:00Z")));
    assert!(!due_in(&s, &ny, ts("2026-11-01T06:30:00Z")));
    // Tokyo 18:42 is 09:42Z, not 18:42Z.
    let s = Schedule::parse("42 18 * * *").unwrap();
    let tokyo = tz("Asia/Tokyo");
    assert!(due_in(&s, &tokyo, ts("2026-12-03T09:42:05Z")));
    assert!(!due_in(&s, &tokyo, ts("2026-12-03T18:42:05Z")));
    // Lord Howe spring: 02:15 fires at 02:30 LHDT (= 15:30Z the day before).
    let s = Schedule::parse("15 2 * * *").unwrap();
    assert!(due_in(&s, &tz(LH), ts("2026-10-03T15:30:00Z")));
}

const BIN: &str = "/usr/local/bin/batchguard";

fn entry(job: &str, schedule: &str, timezone: Option<&str>, user: &str) -> CronEntry {
    CronEntry::new(job, schedule, timezone, user)
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap()
}

#[test]
fn lines_per_daemon_run_the_runner_as_root() {
    let conf = Path::new("/etc/batchguard");
    let tokyo = entry("report", "42  18 * * *", Some("Asia/Tokyo"), "batch");
    let plain = entry("cleanup", "@daily", None, "batch");
    let r = |e: &CronEntry, f| render(e, Path::new(BIN), conf, f);

    let c = r(&tokyo, Flavor::Cronie);
    assert!(c.contains("\nCRON_TZ=Asia/Tokyo\n"), "{c}");
    assert_eq!(
        last_line(&c),
        "42 18 * * * root /usr/local/bin/batchguard --config-dir /etc/batchguard run report"
    );
    let v = r(&tokyo, Flavor::Vixie);
    assert!(!v.contains("CRON_TZ="), "{v}");
    assert!(
        v.contains("# timezone Asia/Tokyo: this cron ignores CRON_TZ"),
        "{v}"
    );
    assert_eq!(
        last_line(&v),
        "* * * * * root /usr/local/bin/batchguard --config-dir /etc/batchguard run report --if-due"
    );
    let b = r(&tokyo, Flavor::Busybox);
    assert_eq!(
        last_line(&b),
        "* * * * * /usr/local/bin/batchguard --config-dir /etc/batchguard run report --if-due"
    );
    for f in [Flavor::Cronie, Flavor::Vixie] {
        assert_eq!(
            last_line(&r(&plain, f)),
            "@daily root /usr/local/bin/batchguard --config-dir /etc/batchguard run cleanup"
        );
    }
    assert_eq!(
        last_line(&r(&plain, Flavor::Busybox)),
        "@daily /usr/local/bin/batchguard --config-dir /etc/batchguard run cleanup"
    );
    assert_eq!(
        last_line(&render_watchdog(Path::new(BIN), conf, Flavor::Busybox)),
        "* * * * * /usr/local/bin/batchguard --config-dir /etc/batchguard watchdog"
    );
}

#[test]
fn config_dirs_stay_apart_in_one_cron_dir() {
    let crond = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = crond.path();
    let bin = Path::new(BIN);
    install(
        &[entry("alpha", "0 1 * * *", None, "root")],
        d,
        bin,
        a.path(),
        Flavor::Vixie,
    )
    .unwrap();
    install(
        &[entry("beta", "0 2 * * *", None, "root")],
        d,
        bin,
        b.path(),
        Flavor::Vixie,
    )
    .unwrap();
    assert!(d.join("batchguard-alpha").exists() && d.join("batchguard-beta").exists());
    let wd = fs::read_to_string(d.join(WATCHDOG_FILE)).unwrap();
    for dir in [a.path(), b.path()] {
        assert!(
            wd.contains(&format!("--config-dir {} watchdog", dir.display())),
            "{wd}"
        );
        assert!(watchdog_installed_current(d, bin, dir).unwrap());
    }
    // A's jobs gone: only A's file is removed; B's job and watchdog line stay.
    let r = install(&[], d, bin, a.path(), Flavor::Vixie).unwrap();
    assert_eq!(r.removed, [d.join("batchguard-alpha")]);
    assert!(d.join("batchguard-beta").exists());
    assert!(watchdog_installed_current(d, bin, b.path()).unwrap());
    // Re-installing is a no-op.
    let r = install(&[], d, bin, a.path(), Flavor::Vixie).unwrap();
    assert!(r.written.is_empty() && r.removed.is_empty(), "{r:?}");
    // The same job name from the other config dir is refused (EX_CANTCREAT).
    let err = install(
        &[entry("beta", "0 3 * * *", None, "root")],
        d,
        bin,
        a.path(),
        Flavor::Vixie,
    )
    .unwrap_err();
    assert!(matches!(err, CronError::OtherConfig { .. }), "{err}");
    assert!(
        err.to_string().contains(&b.path().display().to_string()),
        "{err}"
    );
    // A config dir that no longer exists loses its watchdog line.
    let b_path = b.path().to_path_buf();
    drop(b);
    install(&[], d, bin, a.path(), Flavor::Vixie).unwrap();
    let wd = fs::read_to_string(d.join(WATCHDOG_FILE)).unwrap();
    assert!(!wd.contains(&b_path.display().to_string()), "{wd}");
}

/// `check`'s cron facts judge a job's file by the daemon they are given: a
/// `timezone` job's file installed for Debian's cron is current there and
/// stale for cronie (whose lines differ), and the interval is the
/// schedule's. (The dashboard used to judge every host's files as cronie's.)
#[test]
fn check_facts_judge_the_file_for_the_hosts_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (d, bin, conf) = (dir.path(), Path::new(BIN), Path::new("/etc/batchguard"));
    let global = batchguard_config::parse_global_str(conf, &conf.join("batchguard.toml"), "")
        .expect("global parses");
    let job = batchguard_config::parse_job_str(
        "tokyo",
        &conf.join("jobs/tokyo.toml"),
        "command = [\"/bin/true\"]\nschedule = \"30 9 * * *\"\ntimezone = \"Asia/Tokyo\"\n",
        &global,
    )
    .expect("job parses");
    let entry = CronEntry::from_job(&job).unwrap();
    install(&[entry], d, bin, conf, Flavor::Vixie).unwrap();
    let facts =
        |flavor| check_facts(d.to_path_buf(), Some(bin.into()), Some(conf.into()), flavor)(&job);
    let (interval, current) = facts(Flavor::Vixie);
    assert_eq!(interval, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(current, Some(true));
    assert_eq!(facts(Flavor::Cronie).1, Some(false));
    let none = check_facts(d.to_path_buf(), None, Some(conf.into()), Flavor::Vixie)(&job);
    assert_eq!(none.1, None);
}
