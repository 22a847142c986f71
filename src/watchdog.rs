//! The watchdog, installed as its own cron.d entry running every minute:
//! records runs whose runner died as `lost` (and notifies them), raises
//! `missed` once when a scheduled run did not start within `missed_grace`,
//! and flushes the notification outbox. `status` uses the same schedule
//! arithmetic to show late and missed jobs.

use crate::clock;
use crate::cron;
use crate::error::Result;
use crate::exec::Context;
use crate::runner;
use batchguard_config::Job;
use jiff::{Timestamp, Zoned};

/// Where a scheduled job stands against its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleState {
    /// The latest fire time at or before now.
    pub last_fire: Zoned,
    /// That fire has not started a run yet, within the grace.
    pub late: bool,
    /// It has not started a run and the grace is over.
    pub missed: bool,
}

/// When the job's file last changed: fires before it are not its misses.
fn configured_since(job: &Job) -> Option<Timestamp> {
    let modified = std::fs::metadata(&job.file).ok()?.modified().ok()?;
    Timestamp::try_from(modified).ok()
}

/// The schedule state of `job` at `now`; `None` when it has no schedule or
/// has not fired since it was configured.
pub fn schedule_state(ctx: &Context, job: &Job, now: Timestamp) -> Result<Option<ScheduleState>> {
    let Some(schedule) = &job.schedule else {
        return Ok(None);
    };
    let tz = clock::zone(job.timezone.as_deref());
    let Ok(Some(fire)) = cron::last_fire_at_or_before(schedule, &tz, now) else {
        return Ok(None);
    };
    if configured_since(job).is_some_and(|since| fire.timestamp() < since) {
        return Ok(None);
    }
    // cron starts a job within its minute; allow a little clock skew.
    let fire_ms = fire.timestamp().as_millisecond();
    let started = ctx
        .store
        .list_runs(Some(&job.name), 20)?
        .iter()
        .any(|r| r.started_ms >= fire_ms - 60_000);
    let overdue = now.as_millisecond() - fire_ms > ctx.global.missed_grace.as_millis() as i64;
    Ok(Some(ScheduleState {
        late: !started && !overdue,
        missed: !started && overdue,
        last_fire: fire,
    }))
}

/// What one watchdog pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub lost: usize,
    pub missed: Vec<String>,
    pub delivered: u64,
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
    for job in jobs {
        let Some(state) = schedule_state(ctx, job, now)? else {
            continue;
        };
        let (since, _) = ctx.store.watch_state(&job.name, now.as_millisecond())?;
        let fire_ms = state.last_fire.timestamp().as_millisecond();
        // A fire before the watchdog first saw the job may predate it.
        if state.missed
            && fire_ms >= since - 60_000
            && ctx.store.record_missed(&job.name, fire_ms)?
        {
            tracing::warn!(job = %job.name, "scheduled run at {} did not start", clock::format_zoned(&state.last_fire));
            runner::notify_missed(ctx, job, &state.last_fire);
            report.missed.push(job.name.clone());
        }
    }
    let flushed = crate::notify::flush(
        ctx.store.as_ref(),
        &ctx.global,
        crate::notify::FLUSH_BUDGET,
        false,
    );
    report.delivered = flushed.delivered;
    report.pending = flushed.pending;
    Ok(report)
}
