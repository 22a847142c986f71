//! `cron next` across DST (SPEC §9, cronie's rule), cron.d rendering and
//! installation (G13).

use batchguard::cron::{self, CronEntry, CronError, InstallReport};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The daemon these file tests render for (the cron_daemon tests run the others).
const CRONIE: cron::Flavor = cron::Flavor::Cronie;

fn tz(name: &str) -> TimeZone {
    batchguard::config::zone::zone(name).unwrap_or_else(|| panic!("zone {name}"))
}

/// A local time in `zone` (must be unambiguous) as an instant.
fn local(zone: &str, civil: &str) -> Timestamp {
    let z: Zoned = format!("{civil}[{zone}]").parse().unwrap();
    z.timestamp()
}

fn fmt(z: &Zoned) -> String {
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

fn next(schedule: &str, zone: &str, after: Timestamp, n: usize) -> Vec<String> {
    cron::next_fires(schedule, &tz(zone), after, n)
        .unwrap()
        .iter()
        .map(fmt)
        .collect()
}

/// Fires from local time `from` (inclusive) to `to` (exclusive) in `zone`.
fn between(schedule: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
    let (from, to) = (local(zone, from), local(zone, to));
    let before = from
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    cron::next_fires(schedule, &tz(zone), before, 500)
        .unwrap()
        .into_iter()
        .filter(|z| z.timestamp() < to)
        .map(|z| fmt(&z))
        .collect()
}

// ---- DST: cronie's rule (SPEC §9) in zones with 1-hour and 30-minute shifts ----

const NY: &str = "America/New_York"; // 2026-03-08 02:00 → 03:00, 2026-11-01 02:00 → 01:00
const BERLIN: &str = "Europe/Berlin"; // 2026-03-29 02:00 → 03:00, 2026-10-25 03:00 → 02:00
const TOKYO: &str = "Asia/Tokyo";
const LORD_HOWE: &str = "Australia/Lord_Howe"; // 2026-10-04 02:00 → 02:30, 2026-04-05 02:00 → 01:30

/// (what, schedule, zone, local day, from (inclusive) and to (exclusive,
/// `24:00` = the day's end) as local times that day, the fires that day as
/// local time and offset)
type Window = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

#[rustfmt::skip]
const DST_WINDOWS: &[Window] = &[
    ("NY spring: fixed 02:30 fires once, at the end of the gap",
        "30 2 * * *", NY, "2026-03-08", "00:00", "24:00", "03:00-04:00"),
    ("NY spring: a list without `*` is fixed-time; 02:00 and 02:30 collapse at the gap's end",
        "0,30 2 * * *", NY, "2026-03-08", "00:00", "24:00", "03:00-04:00"),
    ("NY spring: */30 skips the gap",
        "*/30 * * * *", NY, "2026-03-08", "00:00", "04:00", "00:00-05:00 00:30-05:00 01:00-05:00 01:30-05:00 03:00-04:00 03:30-04:00"),
    ("NY fall: fixed 02:30 is unaffected",
        "30 2 * * *", NY, "2026-11-01", "00:00", "24:00", "02:30-05:00"),
    ("NY fall: */30 fires in both passes of the repeated hour",
        "*/30 * * * *", NY, "2026-11-01", "00:00", "03:00", "00:00-04:00 00:30-04:00 01:00-04:00 01:30-04:00 01:00-05:00 01:30-05:00 02:00-05:00 02:30-05:00"),
    ("Berlin spring: fixed 02:30 fires at 03:00 CEST",
        "30 2 * * *", BERLIN, "2026-03-29", "00:00", "24:00", "03:00+02:00"),
    ("Berlin fall: fixed 02:30 fires once, in CEST",
        "30 2 * * *", BERLIN, "2026-10-25", "00:00", "24:00", "02:30+02:00"),
    ("Berlin spring: */30 skips the gap",
        "*/30 * * * *", BERLIN, "2026-03-29", "01:00", "04:00", "01:00+01:00 01:30+01:00 03:00+02:00 03:30+02:00"),
    ("Berlin fall: */30 fires in both passes",
        "*/30 * * * *", BERLIN, "2026-10-25", "01:00", "04:00", "01:00+02:00 01:30+02:00 02:00+02:00 02:30+02:00 02:00+01:00 02:30+01:00 03:00+01:00 03:30+01:00"),
    ("Lord Howe spring (30 minutes): fixed 02:15 fires once, at 02:30 when the gap ends",
        "15 2 * * *", LORD_HOWE, "2026-10-04", "00:00", "24:00", "02:30+11:00"),
    ("Lord Howe spring: 02:00 (in the gap) and 02:30 (its end) are one fire",
        "0,30 2 * * *", LORD_HOWE, "2026-10-04", "00:00", "24:00", "02:30+11:00"),
    ("Lord Howe spring: fixed 02:45 is unaffected",
        "45 2 * * *", LORD_HOWE, "2026-10-04", "00:00", "24:00", "02:45+11:00"),
    ("Lord Howe spring: */15 skips 02:00 and 02:15",
        "*/15 * * * *", LORD_HOWE, "2026-10-04", "01:30", "03:00", "01:30+10:30 01:45+10:30 02:30+11:00 02:45+11:00"),
    ("Lord Howe fall (30 minutes): fixed 01:45 fires once, at the first occurrence",
        "45 1 * * *", LORD_HOWE, "2026-04-05", "00:00", "24:00", "01:45+11:00"),
    ("Lord Howe fall: fixed 01:15 (before the repeated half hour) is unaffected",
        "15 1 * * *", LORD_HOWE, "2026-04-05", "00:00", "24:00", "01:15+11:00"),
    ("Lord Howe fall: */15 fires in both passes of 01:30-02:00",
        "*/15 * * * *", LORD_HOWE, "2026-04-05", "01:00", "02:30", "01:00+11:00 01:15+11:00 01:30+11:00 01:45+11:00 01:30+10:30 01:45+10:30 02:00+10:30 02:15+10:30"),
];

#[test]
fn dst_windows_follow_cronie() {
    let wrong: Vec<String> = DST_WINDOWS
        .iter()
        .filter_map(|(what, schedule, zone, day, from, to, want)| {
            let date: jiff::civil::Date = day.parse().unwrap();
            let to = match *to {
                "24:00" => format!("{}T00:00", date.tomorrow().unwrap()),
                t => format!("{day}T{t}"),
            };
            let got: Vec<String> = between(schedule, zone, &format!("{day}T{from}"), &to)
                .iter()
                // `2026-03-08T03:00:00-04:00` → `03:00-04:00` (whole if another day)
                .map(|f| match f.starts_with(day) {
                    true => format!("{}{}", &f[11..16], &f[19..]),
                    false => f.clone(),
                })
                .collect();
            (got.join(" ") != *want).then(|| format!("{what}: {schedule} in {zone}: got {got:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// (schedule, zone, after (RFC 3339), the next fires), across DST and not.
#[rustfmt::skip]
const NEXT_FIRES: &[(&str, &str, &str, &[&str])] = &[
    ("30 2 * * *", NY, "2026-03-07T00:00:00-05:00",
        &["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("30 1 * * *", NY, "2026-10-31T12:00:00-04:00",
        &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    // From inside the repeated hour, after the first 01:30: the second 01:30 is no fire.
    ("30 1 * * *", NY, "2026-11-01T01:10:00-05:00", &["2026-11-02T01:30:00-05:00"]),
    ("30 2 * * *", BERLIN, "2026-03-28T12:00:00+01:00",
        &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]),
    // The first 02:30 (CEST, 00:30 UTC), not the second.
    ("30 2 * * *", BERLIN, "2026-10-25T00:00:00+02:00", &["2026-10-25T02:30:00+02:00"]),
    ("15 2 * * *", LORD_HOWE, "2026-10-03T12:00:00+10:30",
        &["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    // From inside the repeated half hour, after the first 01:45: the next day's.
    ("45 1 * * *", LORD_HOWE, "2026-04-05T01:35:00+10:30", &["2026-04-06T01:45:00+10:30"]),
    // Tokyo has no DST: nothing moves while New York changes its clocks.
    ("0 9 * * 1-5", TOKYO, "2026-03-06T10:00:00+09:00", &[ // a Friday
        "2026-03-09T09:00:00+09:00", "2026-03-10T09:00:00+09:00",
        "2026-03-11T09:00:00+09:00", "2026-03-12T09:00:00+09:00"]),
    ("0 9 * * MON-FRI", TOKYO, "2026-03-08T00:00:00+09:00", &["2026-03-09T09:00:00+09:00"]),
    // Nicknames.
    ("@daily", NY, "2026-03-07T12:00:00-05:00", &["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]),
    ("@midnight", NY, "2026-03-07T12:00:00-05:00", &["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]),
    ("0 0 * * *", NY, "2026-03-07T12:00:00-05:00", &["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]),
    ("@hourly", TOKYO, "2026-03-07T12:00:00+09:00", &["2026-03-07T13:00:00+09:00", "2026-03-07T14:00:00+09:00"]),
    ("@weekly", TOKYO, "2026-03-07T12:00:00+09:00", &["2026-03-08T00:00:00+09:00"]),
    ("@monthly", TOKYO, "2026-03-07T12:00:00+09:00", &["2026-04-01T00:00:00+09:00"]),
    ("@yearly", TOKYO, "2026-03-07T12:00:00+09:00", &["2027-01-01T00:00:00+09:00"]),
    ("@annually", TOKYO, "2026-03-07T12:00:00+09:00", &["2027-01-01T00:00:00+09:00"]),
    // Day of month OR day of week when both are restricted: the 13th and every Friday.
    ("0 0 13 * 5", TOKYO, "2026-04-01T00:00:00+09:00", &[
        "2026-04-03T00:00:00+09:00", "2026-04-10T00:00:00+09:00", "2026-04-13T00:00:00+09:00",
        "2026-04-17T00:00:00+09:00", "2026-04-24T00:00:00+09:00", "2026-05-01T00:00:00+09:00",
        "2026-05-08T00:00:00+09:00"]),
    // A `*` day of month means "only the weekday", and vice versa.
    ("0 0 * * 5", TOKYO, "2026-04-01T00:00:00+09:00", &["2026-04-03T00:00:00+09:00"]),
    ("0 0 13 * *", TOKYO, "2026-04-01T00:00:00+09:00", &["2026-04-13T00:00:00+09:00"]),
    // Sunday is 0, 7 and SUN.
    ("0 12 * * 0", TOKYO, "2026-04-01T00:00:00+09:00", &["2026-04-05T12:00:00+09:00", "2026-04-12T12:00:00+09:00"]),
    ("0 12 * * 7", TOKYO, "2026-04-01T00:00:00+09:00", &["2026-04-05T12:00:00+09:00", "2026-04-12T12:00:00+09:00"]),
    ("0 12 * * SUN", TOKYO, "2026-04-01T00:00:00+09:00", &["2026-04-05T12:00:00+09:00", "2026-04-12T12:00:00+09:00"]),
    ("0 12 * * 5-7", TOKYO, "2026-04-01T00:00:00+09:00", &[
        "2026-04-03T12:00:00+09:00", "2026-04-04T12:00:00+09:00", "2026-04-05T12:00:00+09:00"]),
];

#[test]
fn next_fires_as_cron_fires_them() {
    for (schedule, zone, after, want) in NEXT_FIRES {
        let after: Timestamp = after.parse().unwrap();
        assert_eq!(
            next(schedule, zone, after, want.len()),
            *want,
            "{schedule} in {zone} after {after}"
        );
    }
}

#[test]
fn next_after_keeps_the_zone_and_is_strict() {
    let at: Zoned = "2026-03-08T03:00:00-04:00[America/New_York]"
        .parse()
        .unwrap();
    // 03:00 itself is the (gap-end) fire time; strictly after → next day.
    let n = cron::next_after("30 2 * * *", &at).unwrap();
    assert_eq!(fmt(&n), "2026-03-09T02:30:00-04:00");
    assert_eq!(n.time_zone().iana_name(), Some("America/New_York"));
    assert!(cron::next_after("not a schedule", &at).is_none());
    assert!(cron::next_after("0 0 30 2 *", &at).is_none());
}

#[test]
fn last_fire_at_or_before_follows_the_same_rule() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        // At 03:30 EDT on the spring day: the gap-end fire at 03:00.
        ("30 2 * * *", NY, "2026-03-08T07:30:00Z", Some("2026-03-08T03:00:00-04:00")),
        // At exactly a fire time: that fire; one second earlier: the previous day's.
        ("30 2 * * *", NY, "2026-03-08T07:00:00Z", Some("2026-03-08T03:00:00-04:00")),
        ("30 2 * * *", NY, "2026-03-08T06:59:59Z", Some("2026-03-07T02:30:00-05:00")),
        // 01:45 EST on the fall day: the 01:30 job fired at 01:30 EDT only...
        ("30 1 * * *", NY, "2026-11-01T06:45:00Z", Some("2026-11-01T01:30:00-04:00")),
        // ...while a wildcard job fired again at 01:30 EST.
        ("*/30 * * * *", NY, "2026-11-01T06:45:00Z", Some("2026-11-01T01:30:00-05:00")),
        ("0 0 30 2 *", NY, "2026-11-01T06:45:00Z", None),
        // Lord Howe at 02:40 (+11) on the spring day: 02:15 fired at 02:30.
        ("15 2 * * *", LORD_HOWE, "2026-10-03T15:40:00Z", Some("2026-10-04T02:30:00+11:00")),
        // At 01:50 (+10:30) on the fall day: 01:45 fired in the first pass only.
        ("45 1 * * *", LORD_HOWE, "2026-04-04T15:20:00Z", Some("2026-04-05T01:45:00+11:00")),
        ("*/15 * * * *", LORD_HOWE, "2026-04-04T15:20:00Z", Some("2026-04-05T01:45:00+10:30")),
    ];
    for (schedule, zone, at, want) in cases {
        let got = cron::last_fire_at_or_before(schedule, &tz(zone), at.parse().unwrap()).unwrap();
        assert_eq!(
            got.as_ref().map(fmt).as_deref(),
            *want,
            "{schedule} in {zone} at {at}"
        );
    }
    let ny = tz(NY);
    assert!(matches!(
        cron::last_fire_at_or_before("61 * * * *", &ny, Timestamp::UNIX_EPOCH),
        Err(CronError::Schedule { .. })
    ));
}

#[test]
fn interval_is_typical_gap() {
    let utc = tz("UTC");
    assert_eq!(
        cron::interval("*/5 * * * *", &utc),
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(
        cron::interval("30 3 * * *", &tz("America/New_York")),
        Some(std::time::Duration::from_secs(86_400))
    );
    assert_eq!(cron::interval("0 0 30 2 *", &utc), None);
    assert_eq!(cron::interval("bogus", &utc), None);
}

#[test]
fn schedule_errors_name_the_schedule() {
    let e = cron::next_fires("0 0 * *", &tz("UTC"), Timestamp::UNIX_EPOCH, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid schedule \"0 0 * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 4; write 5 fields, e.g. \"30 3 * * *\", or @hourly, @daily, @weekly, @monthly, @yearly"
    );
    let e = cron::next_fires("@fortnightly", &tz("UTC"), Timestamp::UNIX_EPOCH, 1).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid schedule \"@fortnightly\": unknown nickname")
    );
}

// ---- cron.d rendering ----

fn entry(job: &str, schedule: &str, timezone: Option<&str>, user: &str) -> CronEntry {
    CronEntry::new(job, schedule, timezone, user)
}

const BIN: &str = "/usr/local/bin/batchguard";
const CONF: &str = "/etc/batchguard";

#[test]
fn render_with_timezone_and_user() {
    // Cron starts the runner as root; the runner drops to `user` itself
    // (SPEC §3), so the job's user never appears in the cron line.
    let e = entry("nightly-report", "30 3 * * *", Some("Asia/Tokyo"), "batch");
    assert_eq!(
        cron::render(&e, Path::new(BIN), Path::new(CONF), CRONIE),
        "\
# Managed by batchguard: do not edit (batchguard cron install rewrites it).
# batchguard job nightly-report, config dir /etc/batchguard
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CRON_TZ=Asia/Tokyo
30 3 * * * root /usr/local/bin/batchguard --config-dir /etc/batchguard run nightly-report
"
    );
}

#[test]
fn render_without_timezone_as_root_keeps_nicknames() {
    let e = entry("cleanup", "@daily", None, "root");
    assert_eq!(
        cron::render(&e, Path::new(BIN), Path::new(CONF), CRONIE),
        "\
# Managed by batchguard: do not edit (batchguard cron install rewrites it).
# batchguard job cleanup, config dir /etc/batchguard
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
@daily root /usr/local/bin/batchguard --config-dir /etc/batchguard run cleanup
"
    );
}

#[test]
fn render_watchdog_and_quoting() {
    assert_eq!(
        cron::render_watchdog(Path::new(BIN), Path::new("/srv/batch conf"), CRONIE),
        "\
# Managed by batchguard: do not edit (batchguard cron install rewrites it).
# batchguard watchdog, config dir /srv/batch conf
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
* * * * * root /usr/local/bin/batchguard --config-dir '/srv/batch conf' watchdog
"
    );
}

#[test]
fn from_job_defaults_user_to_root() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("jobs")).unwrap();
    fs::write(
        dir.path().join("jobs/report.toml"),
        "command = [\"/bin/true\"]\nschedule = \"*/5 * * * *\"\ntimezone = \"Europe/Berlin\"\n",
    )
    .unwrap();
    let global = batchguard::config::Global::default();
    let job = batchguard::config::parse_job_str(
        "report",
        &dir.path().join("jobs/report.toml"),
        &fs::read_to_string(dir.path().join("jobs/report.toml")).unwrap(),
        &global,
    )
    .unwrap();
    assert_eq!(
        CronEntry::from_job(&job),
        Some(entry(
            "report",
            "*/5 * * * *",
            Some("Europe/Berlin"),
            "root"
        ))
    );
}

// ---- installation ----

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn install(entries: &[CronEntry], dir: &Path) -> InstallReport {
    cron::install(entries, dir, Path::new(BIN), Path::new(CONF), CRONIE).unwrap()
}

#[test]
fn install_writes_skips_identical_and_removes_stale_marked_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let foreign = "# someone else's\n0 * * * * root /bin/true\n";
    fs::write(d.join("batchguard-foreign"), foreign).unwrap();
    fs::write(d.join("e2scrub_all"), "30 3 * * 0 root /sbin/e2scrub_all\n").unwrap();

    let a = entry("alpha", "30 3 * * *", Some("Asia/Tokyo"), "batch");
    let b = entry("beta", "@hourly", None, "root");
    let r = install(&[a.clone(), b.clone()], d);
    assert_eq!(
        names(&r.written),
        ["batchguard-alpha", "batchguard-beta", "batchguard-watchdog"]
    );
    assert!(r.unchanged.is_empty() && r.removed.is_empty());
    for n in ["batchguard-alpha", "batchguard-beta", "batchguard-watchdog"] {
        assert_eq!(mode(&d.join(n)), 0o644, "{n}");
    }
    assert_eq!(
        fs::read_to_string(d.join("batchguard-alpha")).unwrap(),
        cron::render(&a, Path::new(BIN), Path::new(CONF), CRONIE)
    );
    assert_eq!(
        fs::read_to_string(d.join("batchguard-watchdog")).unwrap(),
        cron::render_watchdog(Path::new(BIN), Path::new(CONF), CRONIE)
    );
    // No temporary files left behind.
    let mut all: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            "batchguard-alpha",
            "batchguard-beta",
            "batchguard-foreign",
            "batchguard-watchdog",
            "e2scrub_all"
        ]
    );
    for e in [&a, &b] {
        assert!(cron::installed_current(e, d, Path::new(BIN), Path::new(CONF), CRONIE).unwrap());
    }

    // Second run: nothing rewritten (same inode, same mtime).
    let ours = ["batchguard-alpha", "batchguard-beta", "batchguard-watchdog"];
    let stamps = || -> Vec<(u64, i64, i64)> {
        ours.iter()
            .map(|n| {
                let m = fs::metadata(d.join(n)).unwrap();
                (m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    };
    let before = stamps();
    let r = install(&[a.clone(), b.clone()], d);
    assert!(r.written.is_empty() && r.removed.is_empty());
    assert_eq!(
        names(&r.unchanged),
        ["batchguard-alpha", "batchguard-beta", "batchguard-watchdog"]
    );
    assert_eq!(before, stamps());

    // beta is gone and alpha's schedule changed: beta removed, alpha rewritten.
    let a2 = entry("alpha", "45 3 * * *", Some("Asia/Tokyo"), "batch");
    assert!(!cron::installed_current(&a2, d, Path::new(BIN), Path::new(CONF), CRONIE).unwrap());
    let r = install(std::slice::from_ref(&a2), d);
    assert_eq!(names(&r.written), ["batchguard-alpha"]);
    assert_eq!(names(&r.unchanged), ["batchguard-watchdog"]);
    assert_eq!(names(&r.removed), ["batchguard-beta"]);
    assert!(!d.join("batchguard-beta").exists());
    assert_eq!(mode(&d.join("batchguard-alpha")), 0o644);
    assert!(cron::installed_current(&a2, d, Path::new(BIN), Path::new(CONF), CRONIE).unwrap());
    assert!(!cron::installed_current(&b, d, Path::new(BIN), Path::new(CONF), CRONIE).unwrap());

    // Foreign and unrelated files untouched throughout.
    assert_eq!(
        fs::read_to_string(d.join("batchguard-foreign")).unwrap(),
        foreign
    );
    assert!(d.join("e2scrub_all").exists());

    // No entries at all: only the watchdog remains of ours.
    let r = install(&[], d);
    assert_eq!(names(&r.removed), ["batchguard-alpha"]);
    assert!(d.join("batchguard-watchdog").exists());
    assert!(d.join("batchguard-foreign").exists());
}

#[test]
fn install_fixes_a_wrong_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let a = entry("alpha", "30 3 * * *", None, "root");
    install(std::slice::from_ref(&a), d);
    fs::set_permissions(
        d.join("batchguard-alpha"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    assert!(!cron::installed_current(&a, d, Path::new(BIN), Path::new(CONF), CRONIE).unwrap());
    let r = install(std::slice::from_ref(&a), d);
    assert_eq!(names(&r.written), ["batchguard-alpha"]);
    assert_eq!(mode(&d.join("batchguard-alpha")), 0o644);
}

#[test]
fn install_refuses_to_overwrite_an_unmarked_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("batchguard-alpha"), "hand written\n").unwrap();
    let err = cron::install(
        &[entry("alpha", "30 3 * * *", None, "root")],
        d,
        Path::new(BIN),
        Path::new(CONF),
        CRONIE,
    )
    .unwrap_err();
    assert!(matches!(err, CronError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("batchguard-alpha"), "{err}");
    // Nothing was written, not even the watchdog.
    assert_eq!(
        fs::read_to_string(d.join("batchguard-alpha")).unwrap(),
        "hand written\n"
    );
    assert!(!d.join("batchguard-watchdog").exists());
}

#[test]
fn install_rejects_bad_entries_and_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let bad = |e: CronEntry| {
        cron::install(&[e], d, Path::new(BIN), Path::new(CONF), CRONIE)
            .unwrap_err()
            .to_string()
    };
    assert!(bad(entry("alpha", "30 3 * *", None, "root")).contains("\"30 3 * *\""));
    assert!(bad(entry("watchdog", "30 3 * * *", None, "root")).contains("watchdog"));
    assert!(bad(entry("a.b", "30 3 * * *", None, "root")).contains("`a.b`"));
    assert!(
        bad(entry("alpha", "30 3 * * *", Some("Nowhere/City"), "root")).contains("Nowhere/City")
    );
    let e = cron::install(&[], d, Path::new("batchguard"), Path::new(CONF), CRONIE).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    let missing = d.join("missing");
    let e = cron::install(&[], &missing, Path::new(BIN), Path::new(CONF), CRONIE).unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert_eq!(fs::read_dir(d).unwrap().count(), 0);
}
