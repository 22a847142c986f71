//! The schedule grammar is cron's, not wider (SPEC §9): every form cron
//! accepts parses, everything else is rejected with a message naming the
//! field, its allowed values and a fix.

use batchguard_config::schedule::Schedule;

/// Schedules cron runs, with a day they select when it helps.
const ACCEPTED: &[&str] = &[
    "* * * * *",
    "0 0 * * *",
    "*/15 * * * *",
    "0-30/10 * * * *",
    "5,10,15 * * * *",
    "0 9-17 * * *",
    "0 9-17/2 * JAN,JUL SUN",
    "0 0 1 jan *",
    "0 0 1 JAN-Jun *",
    "0 0 1 1-12/3 *",
    "0 0 * * mon-fri",
    "0 0 * * SUN",
    "0 0 * * 7",
    "0 0 * * 0-7",
    "0 0 * * 5-7",
    "0 0 * * 0,5,6",
    "*/59 * * * *",
    "0 */23 * * *",
    "0 0 */31 * *",
    "0 0 * */12 *",
    "0 0 * * */7",
    "00 03 01 01 *",
    "  30 3 * * *  ",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "0 0 30 2 *", // valid, never fires: a warning, not an error
];

/// (schedule, fragments its error must contain)
#[rustfmt::skip]
const REJECTED: &[(&str, &[&str])] = &[
    ("0 0 * MON *", &["the month field (1-12 or jan-dec)", "`MON` is a weekday name, which cron accepts only in the day-of-week field", "the month field takes 1-12 or jan-dec"]),
    ("0 0 * * jan", &["the day-of-week field (0-7 or sun-sat; 0 and 7 are Sunday)", "`jan` is a month name"]),
    ("MON * * * *", &["the minute field (0-59)", "weekday name"]),
    ("1,,2 * * * *", &["the minute field (0-59): `1,,2` has an empty list element", "remove the extra comma: `1,2`"]),
    ("0 1, * * *", &["the hour field (0-23)", "empty list element"]),
    ("0 0 , * *", &["the day-of-month field", "write a value in 1-31"]),
    ("0 0 * * FRI-SUN", &["the day-of-week field", "`FRI-SUN` is a reversed range (cron does not wrap around)", "write 5-7 or 0,5,6"]),
    ("0 0 * * 6-1", &["write 6-7,1 or 0,1,6"]),
    ("0 22-2 * * *", &["the hour field", "write 22-23,0-2"]),
    ("0 0 * nov-feb *", &["the month field", "write 11-12,1-2"]),
    ("61 * * * *", &["the minute field (0-59): 61 is out of range"]),
    ("0 24 * * *", &["the hour field (0-23): 24 is out of range"]),
    ("0 0 0 * *", &["the day-of-month field (1-31): 0 is out of range"]),
    ("0 0 32 * *", &["the day-of-month field (1-31): 32 is out of range"]),
    ("0 0 * 0 *", &["the month field (1-12 or jan-dec): 0 is out of range"]),
    ("0 0 * 13 *", &["13 is out of range", "the month field takes 1-12 or jan-dec"]),
    ("0 0 * * 8", &["the day-of-week field", "8 is out of range"]),
    ("0 0 * * 1000", &["1000 is out of range"]),
    ("*/0 * * * *", &["the minute field", "the step `/0` is outside 1-59"]),
    ("*/60 * * * *", &["the step `/60` is outside 1-59"]),
    ("0 */24 * * *", &["the hour field", "the step `/24` is outside 1-23"]),
    ("0 0 * * */8", &["the step `/8` is outside 1-7"]),
    ("*/x * * * *", &["the step `/x` is not a number"]),
    ("0/10 * * * *", &["`0/10`: a step needs a range", "write 0-59/10 or */10"]),
    ("0 0 L * *", &["the day-of-month field", "`L` is not cron syntax"]),
    ("0 0 1W * *", &["`1W` is not cron syntax", "no `L`, `W`, `#` or `?`"]),
    ("0 0 ? * *", &["`?` is not cron syntax"]),
    ("0 0 * * 5#2", &["the day-of-week field", "`5#2` is not cron syntax"]),
    ("0 0 * * FOO", &["`FOO` is not cron syntax"]),
    ("1-2-3 * * * *", &["`2-3` is not cron syntax"]),
    ("- * * * *", &["an empty value is not cron syntax"]),
    ("@reboot", &["@reboot runs a command when cron starts, not at fire times", "write 5 fields"]),
    ("@DAILY", &["unknown nickname", "write \"@daily\" (nicknames are lowercase)"]),
    ("@dayly", &["did you mean \"@daily\"?"]),
    ("@every 5m", &["unknown nickname"]),
    ("", &["expected 5 fields", "found 0"]),
    ("* * * *", &["found 4"]),
    ("0 30 3 * * *", &["found 6 (a seconds field is not supported"]),
    ("* * * * * * *", &["found 7"]),
];

#[test]
fn accepts_cron_grammar() {
    for s in ACCEPTED {
        if let Err(e) = Schedule::parse(s) {
            panic!("{s:?} should parse: {e}");
        }
    }
}

#[test]
fn rejects_everything_else_naming_field_range_and_fix() {
    let mut failures = Vec::new();
    for (s, fragments) in REJECTED {
        match Schedule::parse(s) {
            Ok(_) => failures.push(format!("{s:?} parsed")),
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with(&format!("invalid schedule \"{s}\": ")));
                assert_eq!(text, format!("{}; {}", e.message(), e.fix()));
                failures.extend(
                    fragments
                        .iter()
                        .filter(|f| !text.contains(*f))
                        .map(|f| format!("{s:?}: {f:?} missing from {text:?}")),
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn names_numbers_and_sunday_seven_select_the_same_days() {
    let tz = batchguard_config::zone::zone("UTC").unwrap();
    let from = "2026-04-01T00:00:00Z".parse().unwrap();
    let fires = |s: &str| Schedule::parse(s).unwrap().next_fires(&tz, from, 6);
    for (a, b) in [
        ("0 0 * * 0", "0 0 * * 7"),
        ("0 0 * * sun", "0 0 * * 7"),
        ("0 0 * * 5-7", "0 0 * * 0,5,6"),
        ("0 0 * * Mon-Fri", "0 0 * * 1-5"),
        ("0 0 1 jan-jun/2 *", "0 0 1 1,3,5 *"),
        ("@weekly", "0 0 * * 0"),
    ] {
        assert_eq!(fires(a), fires(b), "{a} vs {b}");
    }
}

#[test]
fn schedules_that_never_fire_are_warned_about() {
    for (s, never) in [
        ("0 0 30 2 *", true),
        ("0 0 31 4 *", true),
        ("0 0 31 2,4,6,9,11 *", true),
        ("0 0 31 * *", false),
        ("0 0 29 2 *", false),
        ("0 0 30 2 1", false), // both day fields restricted: any Monday
    ] {
        let w = Schedule::parse(s).unwrap().never_fires();
        assert_eq!(w.is_some(), never, "{s}: {w:?}");
        if let Some(w) = w {
            assert!(w.contains(&format!("\"{s}\" never fires")), "{w}");
        }
    }
}

#[test]
#[ignore]
fn show_all() {
    for (s, _) in REJECTED {
        println!("{}", Schedule::parse(s).unwrap_err());
    }
}
