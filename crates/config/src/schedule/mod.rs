//! Schedules, the one parser and evaluator for config validation, `cron
//! next`, the watchdog and `check`: cron's grammar exactly (see [`grammar`])
//! and the fire times cron (cronie) produces, including its rule for local
//! clock changes, computed on civil wall-clock times with jiff:
//!
//! - Day of month / day of week: cronie's rule. When either field *starts
//!   with* `*` (so `*/2` counts as a star, as in cronie's
//!   `DOM_STAR`/`DOW_STAR`), a day must match both fields; otherwise (both
//!   restricted) it matches either (`0 0 13 * 5` = every 13th and every
//!   Friday).
//! - Fixed-time vs wildcard jobs: as cronie decides it (`MIN_STAR`/`HR_STAR`):
//!   a job is a *wildcard* job when its minute or hour field starts with `*`
//!   (`*`, `*/15`) or it is `@hourly`; every other job (`30 2 * * *`,
//!   `0,30 2 * * *`, `0 1-3 * * *`, `@daily`) is a *fixed-time* job.
//! - A wall time in a skipped range (spring forward) of less than three
//!   hours: a fixed-time job fires once at the end of the gap (the instant of
//!   the transition, e.g. 03:00); several skipped times collapse into that one
//!   fire. A wildcard job skips it (it fires "by the clock": the wall clock
//!   never shows that time). Gaps of 3 hours or more: nobody fires in the gap.
//!   (Gaps of at most 4 minutes, which no real zone has, fire everyone at the
//!   end, as cronie does for a late wake-up.)
//! - A wall time in a repeated range (fall back) of up to three hours: a
//!   fixed-time job fires once, at the first occurrence; a wildcard job fires
//!   at both occurrences (`*/30` fires 01:00, 01:30 EDT and again 01:00, 01:30
//!   EST). A longer repeat (a zone change, not DST): both occurrences for all.
//!
//! These are the rules of cronie's main loop (`cron.c`: a clock jump of
//! 6..=180 local minutes forward runs the missed fixed-time minutes and only
//! the current minute's wildcard jobs; a jump back of up to 180 minutes runs
//! only wildcard jobs until the clock catches up; larger jumps reset).
//!
//! Known limit: cronie applies that rule to the *host's* local time. For a
//! job with `CRON_TZ` (a `timezone` in its job file), cronie matches the
//! job's wall time by the clock and skips `CRON_TZ` jobs during the host's
//! own transition catch-up, so such a job at 02:30 does not fire on the
//! spring-forward night, and at 01:30 on a fall-back night it fires twice if
//! the host's zone has no transition then (e.g. a UTC host). `next_fires`
//! predicts the documented rule (SPEC §9) for the zone it is given.

mod grammar;

use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{Timestamp, Zoned};
use std::collections::BTreeSet;
use std::time::Duration;

/// cronie's limit on a "small" clock change, in local minutes (`3 * MINUTE_COUNT`).
const CRONIE_LARGE_JUMP_MIN: i32 = 180;
/// cronie runs every job for each missed minute when it wakes up at most this late.
const CRONIE_SMALL_JUMP_MIN: i32 = 5;
/// A schedule that can fire does so at least once in 40 years (Feb 29 on a
/// given weekday, across a non-leap century year); search a bit further.
const MAX_IDLE_DAYS: u32 = 366 * 50;

/// What a day of [`Schedule::walk_days`] told the walker.
enum Walk {
    /// Something was found: the idle count starts again.
    Found,
    Idle,
    Stop,
}

/// A schedule cron would not accept: the message names the field, its
/// allowed values and the problem; [`ScheduleError::fix`] says what to write.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{message}; {fix}")]
pub struct ScheduleError {
    /// `invalid schedule "TEXT": PROBLEM`.
    message: String,
    fix: String,
}

impl ScheduleError {
    fn new(schedule: &str, problem: &str, fix: impl Into<String>) -> ScheduleError {
        ScheduleError {
            message: format!("invalid schedule \"{schedule}\": {problem}"),
            fix: fix.into(),
        }
    }

    /// What is wrong, naming the schedule (and the field).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it.
    pub fn fix(&self) -> &str {
        &self.fix
    }
}

/// A parsed 5-field cron schedule (or nickname), with cronie's semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The schedule as written.
    text: String,
    minutes: u64,
    hours: u32,
    /// Bit `d` for day of month `d` (1..=31).
    days: u32,
    /// Bit `m` for month `m` (1..=12).
    months: u16,
    /// Bit `w` for weekday `w`, Sunday = 0.
    weekdays: u8,
    dom_star: bool,
    dow_star: bool,
    /// cronie's `MIN_STAR | HR_STAR`: fires by the clock across DST changes.
    wildcard: bool,
}

impl Schedule {
    /// Parses a 5-field schedule (`MIN HOUR DOM MON DOW`) or a nickname,
    /// exactly as cron reads it (see [`grammar`]).
    pub fn parse(schedule: &str) -> Result<Schedule, ScheduleError> {
        let t = schedule.trim();
        let expanded = grammar::nickname(schedule, t)?.unwrap_or(t);
        let f = grammar::fields(schedule, expanded)?;
        let bits = |i: usize| grammar::FIELDS[i].parse(schedule, f[i]);
        let star = |i: usize| f[i].starts_with('*');
        Ok(Schedule {
            text: schedule.to_string(),
            minutes: bits(0)?,
            hours: bits(1)? as u32,
            days: bits(2)? as u32,
            months: bits(3)? as u16,
            weekdays: bits(4)? as u8,
            dom_star: star(2),
            dow_star: star(4),
            wildcard: star(0) || star(1),
        })
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether cron treats this as a fixed-time job for local clock changes
    /// (neither the minute nor the hour field starts with `*`, not @hourly).
    pub fn is_fixed_time(&self) -> bool {
        !self.wildcard
    }

    fn day_matches(&self, date: Date) -> bool {
        let month = self.months & (1 << date.month()) != 0;
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        month
            && if self.dom_star || self.dow_star {
                dom && dow
            } else {
                dom || dow
            }
    }

    /// Why cron accepts this schedule but never runs it (`0 0 30 2 *`,
    /// `0 0 31 4 *`: no month named has that day), for `validate` and
    /// `check` to warn about; `None` when it fires.
    pub fn never_fires(&self) -> Option<String> {
        (!self.can_fire()).then(|| {
            format!(
                "schedule \"{}\" never fires: none of the months in its month field has a day its day-of-month field names, so cron accepts the line but never runs the job; fix the day-of-month or month field",
                self.text
            )
        })
    }

    /// Whether some calendar day matches at all (`0 0 30 2 *` never does).
    fn can_fire(&self) -> bool {
        const MONTH_DAYS: [u8; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if self.minutes == 0 || self.hours == 0 || self.months == 0 {
            return false;
        }
        if !(self.dom_star || self.dow_star) && self.weekdays != 0 {
            return true; // OR: any matching weekday will do
        }
        if self.weekdays == 0 {
            return false;
        }
        (1..=12u8).any(|m| {
            self.months & (1 << m) != 0
                && (1..=MONTH_DAYS[m as usize]).any(|d| self.days & (1 << d) != 0)
        })
    }

    /// Every fire caused by the wall times of civil day `date`, in `tz`,
    /// applying cronie's rule for local clock changes. Unsorted, may repeat.
    fn fires_on(&self, date: Date, tz: &TimeZone, out: &mut Vec<Timestamp>) {
        if !self.day_matches(date) {
            return;
        }
        for h in (0..24i8).filter(|h| self.hours & (1 << h) != 0) {
            for m in (0..60i8).filter(|m| self.minutes & (1 << m) != 0) {
                let dt = date.at(h, m, 0, 0);
                let at = |o: Offset| o.to_timestamp(dt).ok();
                match tz.to_ambiguous_timestamp(dt).offset() {
                    AmbiguousOffset::Unambiguous { offset } => out.extend(at(offset)),
                    AmbiguousOffset::Gap { before, after } => {
                        // cronie last handled the minute before the gap and
                        // now wakes at its end: a jump of gap + 1 minutes.
                        let jump = (after.seconds() - before.seconds()) / 60 + 1;
                        let fires = if jump > CRONIE_LARGE_JUMP_MIN {
                            false
                        } else if jump > CRONIE_SMALL_JUMP_MIN {
                            !self.wildcard
                        } else {
                            true
                        };
                        if fires {
                            out.extend(gap_end(tz, after, dt));
                        }
                    }
                    AmbiguousOffset::Fold { before, after } => {
                        out.extend(at(before));
                        // The clock goes back by `repeat`; cronie's jump is
                        // -(repeat - 1) minutes.
                        let repeat = (before.seconds() - after.seconds()) / 60;
                        if self.wildcard || repeat - 1 > CRONIE_LARGE_JUMP_MIN {
                            out.extend(at(after));
                        }
                    }
                }
            }
        }
    }

    /// Visits civil days from `date`, forward or backward, each with its
    /// fires (one buffer for the whole walk). Stops when `visit` says so,
    /// after [`MAX_IDLE_DAYS`] days in a row without anything found, or at
    /// the end of the calendar.
    fn walk_days(
        &self,
        tz: &TimeZone,
        mut date: Date,
        forward: bool,
        mut visit: impl FnMut(Date, &[Timestamp]) -> Walk,
    ) {
        let mut day = Vec::new();
        let mut idle = 0;
        loop {
            day.clear();
            self.fires_on(date, tz, &mut day);
            match visit(date, &day) {
                Walk::Stop => return,
                Walk::Found => idle = 0,
                Walk::Idle => idle += 1,
            }
            let next = if forward {
                date.tomorrow()
            } else {
                date.yesterday()
            };
            match next {
                Ok(d) if idle <= MAX_IDLE_DAYS => date = d,
                _ => return,
            }
        }
    }

    /// The first `n` fire times strictly after `after`, in `tz`, ascending.
    pub fn next_fires(&self, tz: &TimeZone, after: Timestamp, n: usize) -> Vec<Zoned> {
        if n == 0 || !self.can_fire() {
            return Vec::new();
        }
        // A fire caused by the previous day's wall times can land today (a
        // gap spanning midnight), so start one day early.
        let start = tz.to_datetime(after).date();
        let mut found = BTreeSet::new();
        let mut last_day = None;
        self.walk_days(tz, start.yesterday().unwrap_or(start), true, |date, day| {
            let before = found.len();
            found.extend(day.iter().copied().filter(|t| *t > after));
            // Once there are enough, one more day settles the order: the
            // next civil day's fires can tie with this day's (a gap that
            // spans midnight) but never come before them.
            if found.len() >= n && last_day.is_none() {
                last_day = date.tomorrow().ok();
            }
            if Some(date) == last_day {
                Walk::Stop
            } else if found.len() > before {
                Walk::Found
            } else {
                Walk::Idle
            }
        });
        found
            .into_iter()
            .take(n)
            .map(|t| t.to_zoned(tz.clone()))
            .collect()
    }

    /// The latest fire time at or before `at`, in `tz`.
    pub fn last_fire_at_or_before(&self, tz: &TimeZone, at: Timestamp) -> Option<Zoned> {
        if !self.can_fire() {
            return None;
        }
        // Fires of a civil day land on that local day or later, so the
        // latest candidate comes from `at`'s local day or an earlier one.
        let mut best: Option<Timestamp> = None;
        self.walk_days(tz, tz.to_datetime(at).date(), false, |_, day| {
            // A gap spanning midnight can push the previous day's fire into
            // this one; after that day, nothing earlier can win.
            let extra_day_done = best.is_some();
            let latest = day.iter().copied().filter(|t| *t <= at).max();
            if let Some(l) = latest {
                best = Some(best.map_or(l, |b| b.max(l)));
            }
            match (extra_day_done, latest) {
                (true, _) => Walk::Stop,
                (false, Some(_)) => Walk::Found,
                (false, None) => Walk::Idle,
            }
        });
        best.map(|t| t.to_zoned(tz.clone()))
    }

    /// The typical interval between fires: the median gap between the 33
    /// fires after `from` (DST days and the weekend of `0 9 * * 1-5` do not
    /// move it). `None` when the schedule fires fewer than twice.
    pub fn interval_from(&self, tz: &TimeZone, from: Timestamp) -> Option<Duration> {
        let fires = self.next_fires(tz, from, 33);
        let mut gaps: Vec<i64> = fires
            .windows(2)
            .map(|w| w[1].timestamp().as_second() - w[0].timestamp().as_second())
            .collect();
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_unstable();
        let median = gaps[(gaps.len() - 1) / 2];
        Some(Duration::from_secs(median.max(0) as u64))
    }
}

/// The instant a gap ends: the transition following `dt` read with the
/// post-gap offset (which is before the transition).
fn gap_end(tz: &TimeZone, after: Offset, dt: jiff::civil::DateTime) -> Option<Timestamp> {
    let early = after.to_timestamp(dt).ok()?;
    tz.following(early).next().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        crate::zone::zone(name).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rfc(z: &[Zoned]) -> Vec<String> {
        z.iter()
            .map(|z| z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
            .collect()
    }

    #[test]
    fn classifies_fixed_and_wildcard_like_cronie() {
        for s in [
            "30 2 * * *",
            "0,30 2 * * *",
            "0 1-3 * * *",
            "5-55/10 3 * * *",
            "@daily",
            "@weekly",
        ] {
            assert!(Schedule::parse(s).unwrap().is_fixed_time(), "{s}");
        }
        for s in [
            "* 2 * * *",
            "*/15 * * * *",
            "30 * * * *",
            "0 */2 * * *",
            "@hourly",
        ] {
            assert!(!Schedule::parse(s).unwrap().is_fixed_time(), "{s}");
        }
    }

    #[test]
    fn rejects_what_cron_does_not_understand() {
        for s in [
            "",
            "* * * *",
            "0 * * * * *",
            "@reboot",
            "@DAILY",
            "0 0 L * *",
            "0 0 * * 5#2",
            "0 0 ? * *",
            "61 * * * *",
            "0 0 * * FOO",
            "0 0 1W * *",
            "0/10 * * * *",
        ] {
            let e = Schedule::parse(s).unwrap_err();
            assert!(e.to_string().contains(&format!("\"{s}\"")), "{e}");
        }
    }

    /// The first `n` fires of `schedule` after `from`, in UTC.
    fn utc_fires(schedule: &str, from: &str, n: usize) -> Vec<Zoned> {
        Schedule::parse(schedule)
            .unwrap()
            .next_fires(&tz("UTC"), ts(from), n)
    }

    #[test]
    fn star_step_counts_as_star_for_dom_dow() {
        // cronie: dom `*/2` starts with `*` → AND with Monday.
        for f in utc_fires("0 0 */2 * 1", "2026-06-01T00:00:00Z", 3) {
            assert_eq!(f.weekday(), jiff::civil::Weekday::Monday);
            assert_eq!(f.day() % 2, 1);
        }
        // Both restricted → OR.
        assert_eq!(
            rfc(&utc_fires("0 0 2 * 1", "2026-06-01T00:00:00Z", 2)),
            ["2026-06-02T00:00:00+00:00", "2026-06-08T00:00:00+00:00"]
        );
    }

    #[test]
    fn never_firing_schedules_end_quickly() {
        let (utc, jan1) = (tz("UTC"), ts("2026-01-01T00:00:00Z"));
        for text in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 */2"] {
            let s = Schedule::parse(text).unwrap();
            assert!(s.next_fires(&utc, jan1, 1).is_empty(), "{text}");
            assert!(s.last_fire_at_or_before(&utc, jan1).is_none(), "{text}");
            assert!(s.interval_from(&utc, jan1).is_none(), "{text}");
            assert!(s.never_fires().unwrap().contains(text), "{text}");
        }
        // Both day fields restricted: the weekday alone makes it fire.
        assert_eq!(Schedule::parse("0 0 30 2 1").unwrap().never_fires(), None);
        // Feb 29 only in leap years.
        assert_eq!(
            rfc(&utc_fires("0 0 29 2 *", "2026-01-01T00:00:00Z", 2)),
            ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
        );
    }

    #[test]
    fn gap_spanning_midnight_fires_fixed_jobs_at_its_end() {
        // America/Havana springs forward at 00:00 → 01:00 (2026-03-08).
        let Some(havana) = crate::zone::zone("America/Havana") else {
            return;
        };
        let s = Schedule::parse("30 0 * * *").unwrap();
        let f = s.next_fires(&havana, ts("2026-03-07T12:00:00Z"), 2);
        assert_eq!(
            rfc(&f),
            ["2026-03-08T01:00:00-04:00", "2026-03-09T00:30:00-04:00"]
        );
        let last = s.last_fire_at_or_before(&havana, ts("2026-03-08T06:00:00Z"));
        assert_eq!(rfc(&[last.unwrap()]), ["2026-03-08T01:00:00-04:00"]);
    }

    #[test]
    fn interval_is_the_median_gap() {
        let utc = tz("UTC");
        let from = ts("2026-01-01T00:00:00Z");
        let i = |s: &str| Schedule::parse(s).unwrap().interval_from(&utc, from);
        assert_eq!(i("*/15 * * * *"), Some(Duration::from_secs(900)));
        assert_eq!(i("0 9 * * 1-5"), Some(Duration::from_secs(86_400)));
        assert_eq!(i("@weekly"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(i("@hourly"), Some(Duration::from_secs(3600)));
    }
}
