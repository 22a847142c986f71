//! When the host's cron daemon really fires a job (SPEC §9), per
//! [`Flavor`], for `cron next`, `status`, the watchdog and `run --if-due`.
//!
//! | job | cronie | Debian/Ubuntu `cron` | busybox `crond` |
//! |---|---|---|---|
//! | no `timezone` | [`Rule::Documented`] in the host zone | same | [`Rule::Clock`] in the host zone |
//! | `timezone` | [`Rule::CronTz`] (`CRON_TZ=`) | [`Rule::Documented`] in the job zone (`--if-due`) | same (`--if-due`) |
//!
//! - **Documented** (cronie's and Debian's 3-hour rule, the config crate's
//!   [`Schedule::next_fires`]): a fixed-time job in a skipped range fires once
//!   at the end of the gap, in a repeated range once at the first occurrence;
//!   wildcard jobs by the clock. Debian's `cron(8)` documents the same rule
//!   as cronie. A job with a `timezone` on a daemon without `CRON_TZ` is
//!   installed as `* * * * * root … run JOB --if-due`: the daemon starts the
//!   runner every real minute (its own clock changes only ever run wildcard
//!   lines once per real minute), and [`due_now`] applies this rule in the
//!   job's zone, so prediction and firing agree by construction.
//! - **Clock** (busybox): busybox checks every real minute's local wall time
//!   and has no catch-up: a wall time in a skipped range never fires, one in
//!   a repeated range fires at both occurrences, for every job.
//! - **CronTz** (cronie with `CRON_TZ`): cronie matches the job's zone by
//!   its clock (skipped wall times never fire, repeated ones fire twice, for
//!   fixed-time jobs too), and runs no fixed-time job at all, `CRON_TZ` ones
//!   included, during the repeated range after the *host's* own fall-back
//!   (its "negative" wake-up in `cron.c` runs wildcard jobs only until its
//!   virtual clock catches up). The host's spring-forward holds back no
//!   `CRON_TZ` job: the catch-up of the skipped minutes skips them, but the
//!   last step (the current minute) runs them.

use super::flavor::{self, Flavor};
use super::schedule::Schedule;
use batchguard_config::Job;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, Zoned};
use std::collections::BTreeSet;

/// cronie's and Debian's limit on a "small" clock change, in minutes.
const LARGE_JUMP_MIN: i64 = 180;

/// The daemon and the zone it runs in.
#[derive(Debug, Clone)]
pub struct Host {
    pub flavor: Flavor,
    pub zone: TimeZone,
}

impl Host {
    /// This host: [`flavor::host`] and the system zone.
    pub fn current() -> Host {
        Host {
            flavor: flavor::host(),
            zone: batchguard_config::zone::system_zone(),
        }
    }
}

/// How fires are computed (see the module docs).
#[derive(Debug, Clone)]
pub enum Rule {
    Documented(TimeZone),
    Clock(TimeZone),
    CronTz { job: TimeZone, host: TimeZone },
}

impl Rule {
    /// The rule for a job with `timezone` (resolved; `None` = the host's)
    /// on `host`.
    pub fn for_job(timezone: Option<&TimeZone>, host: &Host) -> Rule {
        match (timezone, host.flavor) {
            (Some(tz), Flavor::Cronie) => Rule::CronTz {
                job: tz.clone(),
                host: host.zone.clone(),
            },
            (Some(tz), _) => Rule::Documented(tz.clone()),
            (None, Flavor::Busybox) => Rule::Clock(host.zone.clone()),
            (None, _) => Rule::Documented(host.zone.clone()),
        }
    }

    /// The zone fire times are shown in.
    pub fn zone(&self) -> &TimeZone {
        match self {
            Rule::Documented(z) | Rule::Clock(z) | Rule::CronTz { job: z, .. } => z,
        }
    }

    /// The first `n` fires strictly after `after`, ascending.
    pub fn next_fires(&self, s: &Schedule, after: Timestamp, n: usize) -> Vec<Zoned> {
        match self {
            Rule::Documented(z) => s.next_fires(z, after, n),
            Rule::Clock(z) => clock_fires(s, z, after, n, &|_| true),
            Rule::CronTz { job, host } => {
                let fixed = s.is_fixed_time();
                clock_fires(s, job, after, n, &|t| !(fixed && host_catching_up(host, t)))
            }
        }
    }

    /// The fires in `(from, to]`, ascending, at most `cap` (the earliest).
    pub fn fires_between(
        &self,
        s: &Schedule,
        from: Timestamp,
        to: Timestamp,
        cap: usize,
    ) -> Vec<Zoned> {
        let mut out = Vec::new();
        let mut cursor = from;
        while out.len() < cap {
            let batch = self.next_fires(s, cursor, 64.min(cap - out.len()).max(1));
            let Some(last) = batch.last().map(|z| z.timestamp()) else {
                break;
            };
            for z in batch {
                if z.timestamp() > to {
                    return out;
                }
                out.push(z);
            }
            cursor = last;
        }
        out
    }
}

/// The rule of `job` on this host ([`Host::current`]).
pub fn job_rule(job: &Job) -> Rule {
    let tz = job
        .timezone
        .as_deref()
        .and_then(batchguard_config::zone::zone);
    Rule::for_job(tz.as_ref(), &Host::current())
}

/// `run JOB --if-due`: whether the minute containing `now` is a fire of the
/// job in its zone (the host's when it has none), by the documented rule,
/// the same as `cron next` predicts for an `--if-due` line. A job without a
/// schedule is never due.
pub fn due_now(job: &Job, now: Timestamp) -> bool {
    let Some(s) = job
        .schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok())
    else {
        return false;
    };
    let tz = crate::clock::zone(job.timezone.as_deref());
    due_in(&s, &tz, now)
}

/// Whether a documented-rule fire of `s` in `tz` falls in `now`'s minute.
pub fn due_in(s: &Schedule, tz: &TimeZone, now: Timestamp) -> bool {
    let secs = now.as_second().div_euclid(60) * 60;
    let (Ok(start), Ok(end)) = (
        Timestamp::from_second(secs),
        Timestamp::from_second(secs + 60),
    ) else {
        return false;
    };
    let before = start - SignedDuration::from_nanos(1);
    s.next_fires(tz, before, 1)
        .first()
        .is_some_and(|f| f.timestamp() < end)
}

/// The instants a civil wall time `dt` is shown by the clock of `zone`:
/// none in a gap, two in a fold.
fn instants(zone: &TimeZone, dt: DateTime) -> Vec<Timestamp> {
    match zone.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => {
            offset.to_timestamp(dt).ok().into_iter().collect()
        }
        AmbiguousOffset::Gap { .. } => Vec::new(),
        AmbiguousOffset::Fold { before, after } => [before, after]
            .iter()
            .filter_map(|o| o.to_timestamp(dt).ok())
            .collect(),
    }
}

/// Fires by the clock of `zone`: every instant whose wall time matches,
/// filtered by `keep`. The matching wall times come from the schedule in
/// UTC, where every civil time exists once.
fn clock_fires(
    s: &Schedule,
    zone: &TimeZone,
    after: Timestamp,
    n: usize,
    keep: &dyn Fn(Timestamp) -> bool,
) -> Vec<Zoned> {
    if n == 0 {
        return Vec::new();
    }
    let utc = TimeZone::UTC;
    // A wall time up to a day before `after`'s can be shown after it (a fold).
    let start = zone.to_datetime(after) - SignedDuration::from_hours(26);
    let Ok(mut cursor) = start.to_zoned(utc.clone()).map(|z| z.timestamp()) else {
        return Vec::new();
    };
    let mut found = BTreeSet::new();
    let mut stop: Option<DateTime> = None;
    'outer: loop {
        let batch = s.next_fires(&utc, cursor, 256);
        let Some(last) = batch.last().map(|z| z.timestamp()) else {
            break;
        };
        for m in &batch {
            let dt = m.datetime();
            if stop.is_some_and(|stop| dt > stop) {
                break 'outer;
            }
            found.extend(
                instants(zone, dt)
                    .into_iter()
                    .filter(|t| *t > after && keep(*t)),
            );
            if stop.is_none() && found.len() >= n {
                let nth = *found.iter().nth(n - 1).expect("n found");
                stop = Some(zone.to_datetime(nth) + SignedDuration::from_hours(26));
            }
        }
        cursor = last;
    }
    found
        .into_iter()
        .take(n)
        .map(|t| t.to_zoned(zone.clone()))
        .collect()
}

/// Whether cronie, at real instant `t`, is handling a fall-back of the
/// host's zone and so runs no fixed-time job, `CRON_TZ` ones included: the
/// repeated range after a fall-back of up to 181 minutes (cronie's
/// "negative" wake-up runs wildcard jobs only until its virtual clock
/// catches up). A spring-forward holds nothing back for `CRON_TZ` jobs:
/// the skipped host minutes are caught up for the host's jobs only, and the
/// current minute (the last step) runs every job, `CRON_TZ` ones included.
fn host_catching_up(host: &TimeZone, t: Timestamp) -> bool {
    let Some(tr) = host
        .preceding(t + SignedDuration::from_secs(1))
        .find(|tr| tr.timestamp() <= t)
    else {
        return false;
    };
    let at = tr.timestamp();
    let before = host.to_offset(at - SignedDuration::from_secs(1)).seconds() as i64;
    let delta_min = (tr.offset().seconds() as i64 - before) / 60;
    let since = t.as_second() - at.as_second();
    let repeat = -delta_min;
    repeat > 0 && repeat - 1 <= LARGE_JUMP_MIN && since < repeat * 60
}
