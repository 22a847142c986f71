//! The watchdog, installed as its own cron.d entry running every minute:
//! records runs whose runner died as `lost` (and notifies them), raises
//! `missed` for **every** scheduled fire that did not start within
//! `missed_grace` (each fire once; several at once in one notification),
//! and flushes the notification outbox. `status` uses the same arithmetic
//! to show late and missed jobs.
//!
//! Fires come from [`cron::predict`], the rule of the host's cron daemon, so
//! the watchdog expects exactly the fires cron makes. A run belongs to the
//! latest fire at or before its start (plus [`SKEW`]), if it started within
//! the grace; a fire no run belongs to is `missed` once its grace is over.
//! The look-back is bounded: fires after the job was configured (its file's
//! modification time), after the last fire already raised, and within
//! [`LOOK_BACK`]; at most [`MAX_FIRES`] per job and pass.

use crate::clock;
use crate::cron::{self, Schedule};
use crate::error::Result;
use crate::exec::Context;
use crate::runner;
use batchguard_config::Job;
use jiff::{SignedDuration, Timestamp, Zoned};

/// How far back the watchdog and `status` look for fires.
pub const LOOK_BACK: SignedDuration = SignedDuration::from_hours(24);
/// At most this many fires per job are examined per pass (an every-minute
/// job over [`LOOK_BACK`] is 1440).
pub const MAX_FIRES: usize = 1500;
/// A run started this much before a fire still belongs to it (clock skew
/// between hosts, cron starting a job a little early).
pub const SKEW: SignedDuration = SignedDuration::from_secs(30);

/// Where a scheduled job stands against its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleState {
    /// The latest fire time at or before now.
    pub last_fire: Zoned,
    /// That fire has not started a run yet, within the grace.
    pub late: bool,
    /// A fire after the job's newest run did not start within the grace.
    pub missed: bool,
    /// Every fire in the look-back that did not start within the grace.
    pub missed_fires: Vec<Zoned>,
}

/// When the job's file last changed: fires before it are not its misses.
fn configured_since(job: &Job) -> Option<Timestamp> {
    let modified = std::fs::metadata(&job.file).ok()?.modified().ok()?;
    Timestamp::try_from(modified).ok()
}

/// One fire and whether a run started for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub at: Zoned,
    pub started: bool,
    /// Not started and the grace is over.
    pub missed: bool,
}

/// The fires in `(from, now]` and which of them started, given the start
/// times of the job's runs (any order), per the module's rule.
pub fn classify(fires: Vec<Zoned>, starts_ms: &[i64], now: Timestamp, grace_ms: i64) -> Vec<Fire> {
    let ts: Vec<i64> = fires
        .iter()
        .map(|f| f.timestamp().as_millisecond())
        .collect();
    let mut started = vec![false; fires.len()];
    let skew = SKEW.as_millis() as i64;
    for &s in starts_ms {
        // The latest fire at or before s + skew.
        let i = ts.partition_point(|&f| f <= s + skew);
        if i > 0 && s - ts[i - 1] <= grace_ms {
            started[i - 1] = true;
        }
    }
    let now_ms = now.as_millisecond();
    fires
        .into_iter()
        .zip(started)
        .zip(ts)
        .map(|((at, started), f)| Fire {
            at,
            started,
            missed: !started && now_ms - f > grace_ms,
        })
        .collect()
}

/// The fires of `job` in `(from, now]` by the host cron's rule, classified,
/// and the newest run's start (ms), if any run started since the first.
fn fires_since(
    ctx: &Context,
    job: &Job,
    from: Timestamp,
    now: Timestamp,
) -> Result<(Vec<Fire>, Option<i64>)> {
    let Some(schedule) = job
        .schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok())
    else {
        return Ok((Vec::new(), None));
    };
    let fires = cron::job_rule(job).fires_between(&schedule, from, now, MAX_FIRES);
    if fires.is_empty() {
        return Ok((Vec::new(), None));
    }
    let first_ms = fires[0].timestamp().as_millisecond() - SKEW.as_millis() as i64;
    let starts: Vec<i64> = ctx
        .store
        .list_runs(Some(&job.name), fires.len() + 50)?
        .iter()
        .map(|r| r.started_ms)
        .filter(|s| *s >= first_ms)
        .collect();
    let newest = starts.iter().copied().max();
    let grace = ctx.global.missed_grace.as_millis() as i64;
    Ok((classify(fires, &starts, now, grace), newest))
}

/// The earliest instant fires are looked at from: the job's configuration
/// time (else `watched_since`), at most [`LOOK_BACK`] ago.
fn look_back_from(job: &Job, watched_since: Option<Timestamp>, now: Timestamp) -> Timestamp {
    let floor = now - LOOK_BACK;
    configured_since(job)
        .or(watched_since)
        .map_or(floor, |t| t.max(floor))
}

/// The schedule state of `job` at `now`; `None` when it has no schedule or
/// has not fired since it was configured (within [`LOOK_BACK`]).
pub fn schedule_state(ctx: &Context, job: &Job, now: Timestamp) -> Result<Option<ScheduleState>> {
    if job.schedule.is_none() {
        return Ok(None);
    }
    let (fires, newest_run) = fires_since(ctx, job, look_back_from(job, None, now), now)?;
    let Some(last) = fires.last() else {
        return Ok(None);
    };
    let grace_over = last.missed || last.started;
    // Missed since the job last ran (by cron or by hand).
    let skew = SKEW.as_millis() as i64;
    let missed = fires.iter().any(|f| {
        f.missed && newest_run.is_none_or(|r| f.at.timestamp().as_millisecond() > r + skew)
    });
    Ok(Some(ScheduleState {
        last_fire: last.at.clone(),
        late: !last.started && !grace_over,
        missed,
        missed_fires: fires
            .iter()
            .filter(|f| f.missed)
            .map(|f| f.at.clone())
            .collect(),
    }))
}

/// The fires of `job` the watchdog raises now: missed, after the last one
/// already raised, each recorded in the store once (ascending).
fn raise_missed(ctx: &Context, job: &Job, now: Timestamp) -> Result<Vec<Zoned>> {
    let (since_ms, last_missed) = ctx.store.watch_state(&job.name, now.as_millisecond())?;
    let since = Timestamp::from_millisecond(since_ms).ok();
    let mut from = look_back_from(job, since, now);
    if let Some(t) = last_missed.and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
        from = from.max(t);
    }
    let mut raised = Vec::new();
    for f in fires_since(ctx, job, from, now)?.0 {
        if f.missed
            && ctx
                .store
                .record_missed(&job.name, f.at.timestamp().as_millisecond())?
        {
            raised.push(f.at);
        }
    }
    Ok(raised)
}

/// What one watchdog pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub lost: usize,
    /// `JOB` per job with missed fires raised in this pass (`JOB (N fires)`
    /// when more than one).
    pub missed: Vec<String>,
    pub delivered: u64,
    /// Notifications that failed for the first time in this pass.
    pub first_failures: u64,
    pub pending: u64,
}

/// One pass over every job.
pub fn run(ctx: &Context, jobs: &[Job]) -> Result<Report> {
    let find = |name: &str| jobs.iter().find(|j| j.name == name).cloned();
    let mut report = Report {
        lost: runner::reap_lost(ctx, &find)?,
        ..Report::default()
    };
    let now = Timestamp::now();
    for job in jobs.iter().filter(|j| j.schedule.is_some()) {
        let fires = raise_missed(ctx, job, now)?;
        if fires.is_empty() {
            continue;
        }
        let mut list: Vec<String> = fires.iter().take(5).map(clock::format_zoned).collect();
        if fires.len() > 5 {
            list.push(format!("and {} more", fires.len() - 5));
        }
        tracing::warn!(job = %job.name, "scheduled runs did not start: {}", list.join(", "));
        runner::notify_missed(ctx, job, &fires);
        report.missed.push(if fires.len() == 1 {
            job.name.clone()
        } else {
            format!("{} ({} fires)", job.name, fires.len())
        });
    }
    let flushed = crate::notify::flush(
        ctx.store.as_ref(),
        &ctx.global,
        crate::notify::FLUSH_BUDGET,
        false,
    );
    report.delivered = flushed.delivered;
    report.first_failures = flushed.first_failures;
    report.pending = flushed.pending;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Zoned {
        format!("{s}[UTC]").parse().unwrap()
    }
    fn ms(s: &str) -> i64 {
        utc(s).timestamp().as_millisecond()
    }

    /// Every-minute fires 10:00..=10:09.
    fn minutes() -> Vec<Zoned> {
        (0..10)
            .map(|m| utc(&format!("2026-12-03T10:{m:02}:00")))
            .collect()
    }

    #[test]
    fn each_run_accounts_for_one_fire_and_every_other_fire_is_missed() {
        let now = utc("2026-12-03T10:09:30").timestamp();
        // Runs at 10:00:01 and 10:01:02, then cron was down until 10:08.
        let starts = [
            ms("2026-12-03T10:00:01"),
            ms("2026-12-03T10:01:02"),
            ms("2026-12-03T10:08:00"),
        ];
        let f = classify(minutes(), &starts, now, 60_000);
        let started: Vec<bool> = f.iter().map(|f| f.started).collect();
        assert_eq!(
            started,
            [
                true, true, false, false, false, false, false, false, true, false
            ]
        );
        let missed: Vec<usize> = (0..10).filter(|i| f[*i].missed).collect();
        // 10:09 is within its grace (late, not missed).
        assert_eq!(missed, [2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_start_a_little_early_counts_and_one_after_the_grace_does_not() {
        let fires = vec![utc("2026-12-03T03:30:00")];
        let now = utc("2026-12-03T05:00:00").timestamp();
        let grace = 5 * 60_000;
        assert!(classify(fires.clone(), &[ms("2026-12-03T03:29:50")], now, grace)[0].started);
        assert!(classify(fires.clone(), &[ms("2026-12-03T03:34:59")], now, grace)[0].started);
        let late = classify(fires.clone(), &[ms("2026-12-03T03:36:00")], now, grace);
        assert!(!late[0].started && late[0].missed);
        let none = classify(fires, &[], now, grace);
        assert!(none[0].missed);
    }

    /// A store-backed pass: a job configured 10 minutes ago that never ran
    /// (a new job whose cron never fired): every fire past the grace is
    /// raised, once; later passes raise only the new ones.
    #[test]
    fn raises_every_missed_fire_once_across_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tick.toml");
        let text = "command = [\"/bin/true\"]\nschedule = \"* * * * *\"\ntimezone = \"UTC\"\n";
        std::fs::write(&file, text).unwrap();
        let now = Timestamp::now();
        let configured = std::time::SystemTime::from(now - SignedDuration::from_secs(600));
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(configured)
            .unwrap();
        let global = batchguard_config::Global {
            missed_grace: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let job = batchguard_config::parse_job_str("tick", &file, text, &global).unwrap();
        let url = format!("sqlite:{}", dir.path().join("state.db").display());
        let ctx = Context {
            store: crate::store::open(&url).unwrap(),
            state_url: url,
            global,
            me: crate::host::identity(None),
            invocation: Default::default(),
        };
        // Fires in (now - 10 min, now - 60 s]: 9 of them.
        let first = raise_missed(&ctx, &job, now).unwrap();
        assert!((8..=10).contains(&first.len()), "{first:?}");
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        assert!(
            raise_missed(&ctx, &job, now).unwrap().is_empty(),
            "once per fire"
        );
        let later = raise_missed(&ctx, &job, now + SignedDuration::from_secs(180)).unwrap();
        assert_eq!(later.len(), 3, "{later:?}");
        assert!(later[0] > *first.last().unwrap());
        let state = schedule_state(&ctx, &job, now).unwrap().unwrap();
        assert!(state.missed && state.missed_fires.len() >= first.len());
    }
}
