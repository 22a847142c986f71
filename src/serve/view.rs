//! What the dashboard shows about jobs, gathered once per request from the
//! store (index seeks only) and the configuration.

use super::Configs;
use crate::clock;
use crate::store::dashboard::{DashboardStore, LockHolder, RunBrief};
use crate::store::{Result, RunRecord};
use batchguard_config::Job;
use jiff::{Timestamp, Zoned};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

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
pub struct JobState<'a> {
    pub name: String,
    pub job: Option<&'a Job>,
    /// The job file does not load: the error.
    pub broken: Option<String>,
    /// The newest run that was not skipped (else the newest skipped one).
    pub last: Option<RunBrief>,
    /// The same run in full, once [`fill_page`] read it.
    pub last_full: Option<RunRecord>,
    /// Newest first, at most [`STRIP`], once [`fill_page`] read them.
    pub recent: Vec<RunBrief>,
    pub next: Option<Zoned>,
    pub sched: Option<Sched>,
    pub running: bool,
    pub holder: Option<LockHolder>,
}

impl JobState<'_> {
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
            "schedule": self.job.and_then(|j| j.schedule.clone()),
            "last_run": self.last_full,
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
pub fn configured_since(job: &Job) -> Option<Timestamp> {
    let modified = std::fs::metadata(&job.file).ok()?.modified().ok()?;
    Timestamp::try_from(modified).ok()
}

/// A job's latest fire at or before a time and its next fire after it.
#[derive(Clone, Debug, Default)]
pub struct Fires {
    pub last: Option<Zoned>,
    pub next: Option<Zoned>,
}

/// Fire times per job, computed once per fire: until the next fire comes,
/// the latest and the next fire of a schedule stay what they were (cron
/// arithmetic for 1,000 jobs on every request would dominate the page).
#[derive(Default)]
pub struct FireCache(Mutex<HashMap<String, CachedFires>>);

/// A job's schedule and zone, and its fires computed for them.
type CachedFires = (String, Option<String>, Fires);

impl FireCache {
    pub fn get(&self, job: &Job, now: Timestamp) -> Fires {
        let Some(schedule) = job.schedule.as_deref() else {
            return Fires::default();
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, tz, f)) = map.get(&job.name) {
            let fresh = *s == schedule
                && *tz == job.timezone
                && f.last.as_ref().is_none_or(|l| l.timestamp() <= now)
                && f.next.as_ref().is_none_or(|n| now < n.timestamp());
            if fresh {
                return f.clone();
            }
        }
        let tz = clock::zone(job.timezone.as_deref());
        let fires = Fires {
            last: crate::cron::last_fire_at_or_before(schedule, &tz, now)
                .ok()
                .flatten(),
            next: crate::cron::next_after(schedule, &now.to_zoned(tz)),
        };
        map.insert(
            job.name.clone(),
            (schedule.to_string(), job.timezone.clone(), fires.clone()),
        );
        fires
    }
}

/// The schedule state of `job` at `now`, given its latest fire and the
/// start of its newest run (of any outcome: a skipped run did start).
pub fn sched_state(
    configured_since: Option<Timestamp>,
    last_fire: Option<&Zoned>,
    newest_start_ms: Option<i64>,
    grace_ms: i64,
    now: Timestamp,
) -> Option<Sched> {
    let fire = last_fire?.clone();
    if configured_since.is_some_and(|since| fire.timestamp() < since) {
        return None;
    }
    let fire_ms = fire.timestamp().as_millisecond();
    // cron starts a job within its minute; allow a little clock skew.
    let started = newest_start_ms.is_some_and(|s| s >= fire_ms - 60_000);
    let overdue = now.as_millisecond() - fire_ms > grace_ms;
    Some(Sched {
        late: !started && !overdue,
        missed: !started && overdue,
        last_fire: fire,
    })
}

/// Every job (configured, broken, or only seen in the store), failing and
/// missed first, then late, running, the rest; by name within each.
/// [`fill_page`] reads the strips and full records of the jobs a page shows.
pub fn job_states<'a>(
    store: &dyn DashboardStore,
    cfg: &'a Configs,
    fires: &FireCache,
    now: Timestamp,
) -> Result<Vec<JobState<'a>>> {
    let mut names: BTreeSet<String> = store.run_jobs()?.into_iter().collect();
    names.extend(cfg.jobs.iter().map(|j| j.name.clone()));
    names.extend(cfg.broken.iter().map(|(n, _)| n.clone()));
    job_states_of(store, cfg, fires, names.into_iter().collect(), now)
}

/// [`job_states`] of the named jobs only.
pub fn job_states_of<'a>(
    store: &dyn DashboardStore,
    cfg: &'a Configs,
    fires: &FireCache,
    names: Vec<String>,
    now: Timestamp,
) -> Result<Vec<JobState<'a>>> {
    let t = std::time::Instant::now();
    let mut last: HashMap<String, (RunBrief, i64)> = store
        .last_briefs(&names)?
        .into_iter()
        .map(|r| (r.0.job.clone(), r))
        .collect();
    let running: BTreeSet<String> = store
        .store()
        .running_runs()?
        .into_iter()
        .map(|r| r.job)
        .collect();
    let holders = store.lock_holders()?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        jobs = names.len(),
        "job states read"
    );
    let grace_ms = cfg.global.missed_grace.as_millis() as i64;
    let mut out: Vec<JobState> = names
        .into_iter()
        .map(|name| {
            let job = cfg.job(&name);
            let (last, newest) = match last.remove(&name) {
                Some((b, n)) => (Some(b), Some(n)),
                None => (None, None),
            };
            let lock = job.map_or(name.as_str(), |j| j.lock.as_str());
            let holder = holders
                .iter()
                .find(|h| h.lock == lock || h.job == name)
                .cloned();
            let f = job.map(|j| fires.get(j, now)).unwrap_or_default();

            JobState {
                broken: cfg
                    .broken
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| e.clone()),
                last,
                last_full: None,
                sched: job.and_then(|j| {
                    let since = cfg.modified(&j.name);
                    sched_state(since, f.last.as_ref(), newest, grace_ms, now)
                }),
                next: f.next,
                running: running.contains(&name),
                holder,
                recent: Vec::new(),
                job,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| a.name.cmp(&b.name)));
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "job states");
    Ok(out)
}

/// For the jobs a page shows: their last [`STRIP`] runs (`strips`) and
/// their last run in full.
pub fn fill_page(
    store: &dyn DashboardStore,
    states: &mut [JobState<'_>],
    strips: bool,
) -> Result<()> {
    let names: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
    if strips {
        let mut recent: HashMap<String, Vec<RunBrief>> =
            store.recent_runs(&names, STRIP)?.into_iter().collect();
        for s in states.iter_mut() {
            s.recent = recent.remove(&s.name).unwrap_or_default();
        }
    }
    let mut full: HashMap<String, RunRecord> = store
        .last_runs_of(&names)?
        .into_iter()
        .map(|r| (r.job.clone(), r))
        .collect();
    for s in states {
        s.last_full = full.remove(&s.name);
    }
    Ok(())
}
