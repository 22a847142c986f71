//! Time as batchguard shows it: RFC 3339 with milliseconds in the job's
//! time zone (or the host's), and the `{today}` / `{yesterday}` dates.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// A job's time zone: its IANA `timezone`, else the host's.
pub fn zone(name: Option<&str>) -> TimeZone {
    name.and_then(batchguard_config::zone::zone)
        .unwrap_or_else(batchguard_config::zone::system_zone)
}

pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// `2026-11-30T03:30:00.012+09:00`
pub fn rfc3339(ms: i64, tz: &TimeZone) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    format_zoned(&ts.to_zoned(tz.clone()))
}

pub fn format_zoned(z: &Zoned) -> String {
    z.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// `(today, yesterday)` as `YYYY-MM-DD` in `tz`.
pub fn today_yesterday(ms: i64, tz: &TimeZone) -> (String, String) {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let today = ts.to_zoned(tz.clone()).date();
    let yesterday = today.yesterday().unwrap_or(today);
    (today.to_string(), yesterday.to_string())
}

/// A duration for people: `812ms`, `5.1s`, `3m12s`, `2h05m`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}
