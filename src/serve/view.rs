//! What the dashboard shows about jobs, gathered once per request from the
//! store (index seeks only) and the configuration.

use super::Configs;
use crate::clock;
use crate::store::dashboard::{DashboardStore, LockHolder, RunBrief};
use crate::store::{Result, RunRecord};
use batchguard_config::Job;
use jiff::{Timestamp, Zoned};
use std::collections::{BTreeSet, HashMap};

/// How many runs the jobs page strip shows.
pub const STRIP: usize = 20;

/// Outcomes that make a job "failing" when they are its last.
pub fn is_bad(outcome: &str) -> bool {
    matches!(
        outcome,
        "failure" | "timeout" | "oom" | "killed" | "fenced" | "lost"
    )
}

/// Where a scheduled job stands against its schedule (the watchdog's rule,
/// see [`crate::watchdog::schedule_state`]: the latest fire is late until a
/// run starts, missed once `missed_grace` is over).
#[derive(Clone, Debug)]
pub struct Sched {
    pub last_fire: Zoned,
    pub late: bool,
    pub missed: bool,
}

/// One job as the jobs page and `/api/jobs` show it.
pub struct JobState {
    pub name: String,
    pub job: Option<Job>,
    /// The job file does not load: the error.
    pub broken: Option<String>,
    /// The newest run that was not skipped (else the newest skipped one).
    pub last: Option<RunRecord>,
    /// Newest first, at most [`STRIP`].
    pub recent: Vec<RunBrief>,
    pub next: Option<Zoned>,
    pub sched: Option<Sched>,
    pub running: bool,
    pub holder: Option<LockHolder>,
}

impl JobState {
    /// 0: failing or missed, 1: late, 2: running, 3: the rest.
    pub fn rank(&self) -> u8 {
        let failing = self.last.as_ref().is_some_and(|r| is_bad(&r.outcome));
        let missed = self.sched.as_ref().is_some_and(|s| s.missed);
        if failing || missed || self.broken.is_some() {
            0
        } else if self.sched.as_ref().is_some_and(|s| s.late) {
            1
        } else if self.running {
            2
        } else {
            3
        }
    }

    pub fn missed(&self) -> bool {
        self.sched.as_ref().is_some_and(|s| s.missed)
    }

    pub fn late(&self) -> bool {
        self.sched.as_ref().is_some_and(|s| s.late)
    }

    /// The `status --format json` entry (SPEC §4), plus what the dashboard
    /// adds (`lock_holder`, `recent`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.name,
            "configured": self.job.is_some(),
            "schedule": self.job.as_ref().and_then(|j| j.schedule.clone()),
            "last_run": self.last,
            "outcome": self.last.as_ref().map(|r| r.outcome.clone()),
            "duration_ms": self.last.as_ref().and_then(|r| r.duration_ms),
            "running": self.running,
            "next_run": self.next.as_ref().map(clock::format_zoned),
            "late": self.late(),
            "missed": self.missed(),
            "last_scheduled": self.sched.as_ref().map(|s| clock::format_zoned(&s.last_fire)),
            "config_error": self.broken,
            "lock_holder": self.holder,
        })
    }
}

/// When the job's file last changed: fires before it are not its misses.
fn configured_since(job: &Job) -> Option<Timestamp> {
    let modified = std::fs::metadata(&job.file).ok()?.modified().ok()?;
    Timestamp::try_from(modified).ok()
}

/// The schedule state of `job` at `now`, given its newest runs.
pub fn sched_state(job: &Job, recent: &[RunBrief], grace_ms: i64, now: Timestamp) -> Option<Sched> {
    let schedule = job.schedule.as_deref()?;
    let tz = clock::zone(job.timezone.as_deref());
    let fire = crate::cron::last_fire_at_or_before(schedule, &tz, now).ok()??;
    if configured_since(job).is_some_and(|since| fire.timestamp() < since) {
        return None;
    }
    let fire_ms = fire.timestamp().as_millisecond();
    // cron starts a job within its minute; allow a little clock skew.
    let started = recent.iter().any(|r| r.started_ms >= fire_ms - 60_000);
    let overdue = now.as_millisecond() - fire_ms > grace_ms;
    Some(Sched {
        late: !started && !overdue,
        missed: !started && overdue,
        last_fire: fire,
    })
}

/// The next fire of a job after `now`, in its zone.
pub fn next_fire(job: &Job, now: Timestamp) -> Option<Zoned> {
    let sched = job.schedule.as_deref()?;
    let tz = clock::zone(job.timezone.as_deref());
    crate::cron::next_after(sched, &now.to_zoned(tz))
}

/// Every job (configured, broken, or only seen in the store), failing and
/// missed first, then late, running, the rest; by name within each.
pub fn job_states(
    store: &dyn DashboardStore,
    cfg: &Configs,
    now: Timestamp,
) -> Result<Vec<JobState>> {
    let mut names: BTreeSet<String> = store.run_jobs()?.into_iter().collect();
    names.extend(cfg.jobs.iter().map(|j| j.name.clone()));
    names.extend(cfg.broken.iter().map(|(n, _)| n.clone()));
    let names: Vec<String> = names.into_iter().collect();
    let mut recent: HashMap<String, Vec<RunBrief>> =
        store.recent_runs(&names, STRIP)?.into_iter().collect();
    let mut last: HashMap<String, RunRecord> = store
        .last_runs_of(&names)?
        .into_iter()
        .map(|r| (r.job.clone(), r))
        .collect();
    let running: BTreeSet<String> = store
        .store()
        .running_runs()?
        .into_iter()
        .map(|r| r.job)
        .collect();
    let holders = store.lock_holders()?;
    let grace_ms = cfg.global.missed_grace.as_millis() as i64;
    let mut out: Vec<JobState> = names
        .into_iter()
        .map(|name| {
            let job = cfg.job(&name).cloned();
            let recent = recent.remove(&name).unwrap_or_default();
            let lock = job.as_ref().map_or(name.as_str(), |j| j.lock.as_str());
            let holder = holders
                .iter()
                .find(|h| h.lock == lock || h.job == name)
                .cloned();
            JobState {
                broken: cfg
                    .broken
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| e.clone()),
                last: last.remove(&name),
                next: job.as_ref().and_then(|j| next_fire(j, now)),
                sched: job
                    .as_ref()
                    .and_then(|j| sched_state(j, &recent, grace_ms, now)),
                running: running.contains(&name),
                holder,
                recent,
                job,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}
