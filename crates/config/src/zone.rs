//! Time zones, loaded the cheap way. jiff's zoneinfo database indexes every
//! name under /usr/share/zoneinfo on first use (a walk of ~100 directories,
//! about a millisecond) to offer case-insensitive lookups. batchguard starts
//! once per cron run, so it reads the one TZif file it needs directly and
//! falls back to jiff's database only when that fails.

use jiff::tz::TimeZone;
use std::path::Path;

const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Characters of IANA zone names; anything else never touches the disk.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
}

/// The zone with this exact IANA name, if it exists.
pub fn zone(name: &str) -> Option<TimeZone> {
    let direct = plausible_name(name)
        .then(|| std::fs::read(Path::new(ZONEINFO).join(name)).ok())
        .flatten()
        .and_then(|bytes| TimeZone::tzif(name, &bytes).ok());
    direct.or_else(|| TimeZone::get(name).ok())
}

/// The host's zone: `/etc/localtime` (named after its symlink target), or
/// jiff's detection when `TZ` is set or the link is not a zoneinfo path.
pub fn system_zone() -> TimeZone {
    let direct = || {
        if std::env::var_os("TZ").is_some() {
            return None;
        }
        let target = std::fs::read_link("/etc/localtime").ok()?;
        let target = target.to_string_lossy();
        let (_, name) = target.rsplit_once("zoneinfo/")?;
        let bytes = std::fs::read("/etc/localtime").ok()?;
        TimeZone::tzif(name, &bytes).ok()
    };
    direct().unwrap_or_else(TimeZone::system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_named_zones_and_rejects_paths() {
        assert_eq!(zone("Asia/Tokyo").unwrap().iana_name(), Some("Asia/Tokyo"));
        assert_eq!(zone("UTC").unwrap().iana_name(), Some("UTC"));
        assert!(zone("../../etc/passwd").is_none());
        assert!(zone("Not/AZone").is_none());
        let _ = system_zone();
    }
}
