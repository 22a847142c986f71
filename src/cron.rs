//! Cron schedules: when a job fires next, in its time zone.
//! (The cron.d rendering and the DST rules of `cron next` grow here.)

use jiff::Zoned;
use std::str::FromStr;

/// The first fire time strictly after `after`, or `None` for a schedule
/// that never fires again or does not parse (config validation rejects the
/// latter before it gets here).
pub fn next_after(schedule: &str, after: &Zoned) -> Option<Zoned> {
    let cron = croner::Cron::from_str(schedule).ok()?;
    cron.find_next_occurrence(after, false).ok()
}
