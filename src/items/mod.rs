//! Idempotent items (G06): a job's work split into keys, each recorded in
//! the ledger once done, so that a re-run skips finished work and a crash
//! re-does at most what was in flight.
//!
//! An items attempt: read and validate every key before any work starts
//! ([`source`]); compare them with the ledger of the run's scope ([`plan`]:
//! done keys are skipped, keys that failed `max_attempts` times are failed
//! for good); then run the one [`engine`] with a source and a sink: the
//! plan and the ledger locally ([`local`]), the scope's queue across hosts
//! ([`queue`], [`distributed`]). The engine runs per-item and stream mode
//! the same way for all of them.

mod commit;
pub mod distributed;
mod engine;
pub mod keys;
mod local;
mod per_item;
mod plan;
mod progress;
mod queue;
mod source;
mod stream;
pub mod stream_api;

use crate::error::{Error, Result};
use crate::exec::{Attempt, AttemptResult};
use crate::outcome::Outcome;
use crate::store::{AcquireMode, Committer, ItemCounts, RunEnd};
use batchguard_config::{Items, ItemsMode};
use batchguard_supervise::{self as supervise, Group};
use engine::{Engine, StreamCommand, lock};
use keys::Keys;
use plan::Plan;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many failed keys a run record and a failure report list.
pub const FAILED_LISTED: usize = 20;

/// Failed keys this run saw, the first few kept for reports.
#[derive(Default)]
pub(crate) struct FailedList(Mutex<Vec<String>>);

impl FailedList {
    pub fn push(&self, key: &str) {
        let mut v = lock(&self.0);
        if v.len() < FAILED_LISTED {
            v.push(key.to_string());
        }
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// The work of an attempt: its keys, the ledger's plan for them, the
/// ledger scope and whose commits it accepts.
struct Work<'w> {
    keys: &'w Keys,
    plan: &'w Plan,
    scope_id: i64,
    who: Committer<'w>,
}

/// What an items attempt did, before it becomes the attempt's result.
struct Tally {
    done: u64,
    failed: u64,
}

/// Run one attempt of an items job.
pub(crate) fn run(a: &Attempt<'_>, items: &Items) -> Result<AttemptResult> {
    // Many children, a ledger, leases: the run's helpers from the start.
    a.start_helpers();
    let keys = match source::read_keys(a, items)? {
        Ok(keys) => keys,
        Err(result) => return Ok(result),
    };
    tracing::debug!(keys = keys.len(), "keys read and validated");
    let scope = a.p.scope.as_deref().unwrap_or("");
    let scope_id = a
        .store
        .ledger_scope(&a.job.name, scope, true)?
        .ok_or_else(|| Error::Internal(format!("ledger scope {scope:?} vanished")))?;
    let plan = Plan::new(&keys, a.store, scope_id, items.max_attempts, a.p.shard)?;
    note_plan(a, &keys, &plan, scope);
    let who = Committer {
        lock: &a.job.lock,
        fence: (a.mode != AcquireMode::TokenOnly).then_some(a.record.fence),
        run_id: &a.record.id,
    };
    let engine = Engine::new(a, items);
    let work = Work {
        keys: &keys,
        plan: &plan,
        scope_id,
        who,
    };
    let (result, tally) = if a.job.distributed.enabled {
        distributed::coordinate(engine, &work)?
    } else {
        run_local(engine, &work)?
    };
    Ok(finish(a, items, &keys, &plan, result, tally))
}

fn note_plan(a: &Attempt<'_>, keys: &Keys, plan: &Plan, scope: &str) {
    if let Some((i, n)) = a.p.shard {
        a.note(&format!(
            "shard {i}/{n}: only keys whose FNV-1a 64 hash mod {n} is {i}"
        ));
    }
    a.note(&format!(
        "items: {} keys ({} lines) from the source, scope {scope:?}: {} already done, {} failed for good, {} to process",
        keys.len(),
        keys.lines,
        plan.skipped,
        plan.dead.len(),
        plan.pending.len()
    ));
}

/// The run's cgroup, which every item process (or batch command) joins.
fn run_group(a: &Attempt<'_>, name: &str) -> Result<(Group, supervise::Enforcement)> {
    let mode = supervise::detect();
    let group = Group::create(name, a.job.memory_max, mode).map_err(|e| {
        Error::Internal(format!(
            "cannot create the cgroup of run {}: {e}",
            a.record.id
        ))
    })?;
    Ok((group, mode))
}

/// Record the run's cgroup, so that a later run can stop what a dead
/// runner left behind.
fn record_group(a: &Attempt<'_>, group: &Group) -> Result<()> {
    if let Some(path) = group.path() {
        a.store
            .set_run_process(&a.record.id, None, Some(&path.display().to_string()))?;
    }
    Ok(())
}

/// Per-item or stream mode on this host: the plan's pending keys, the
/// ledger as the sink.
fn run_local(mut engine: Engine<'_>, work: &Work<'_>) -> Result<(AttemptResult, Tally)> {
    let a = engine.a;
    let (keys, plan) = (work.keys, work.plan);
    let group = match engine.items.mode {
        ItemsMode::Stream => {
            let argv = a.render("command", &a.job.command, None)?;
            a.note(&format!("command (stream mode): {argv:?}"));
            engine.stream = Some(StreamCommand {
                argv,
                owns_run: true,
            });
            None
        }
        ItemsMode::PerItem => {
            let (group, mode) = run_group(a, &a.record.id)?;
            record_group(a, &group)?;
            engine.enforcement = mode;
            Some(group)
        }
    };
    engine.group = group;
    let source = local::PlanSource::new(keys, plan.pending.clone());
    let sink = local::LedgerSink {
        store: a.store,
        scope_id: work.scope_id,
        who: work.who,
    };
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let total = plan.pending.len() as u64;
            progress::run(total, &engine.stats, &finished, &|l| a.note(l))
        });
        engine.run(&source, &sink);
        finished.store(true, Ordering::SeqCst);
    });
    tracing::debug!("all commits done");
    let tally = Tally {
        done: engine.stats.done.load(Ordering::SeqCst),
        failed: engine.stats.failed.load(Ordering::SeqCst),
    };
    Ok((engine_result(&engine), tally))
}

/// How the engine's work ended: the stream command's own result when it
/// was the whole run, else the reason the run was stopped, else a failed
/// batch command, else success.
fn engine_result(engine: &Engine<'_>) -> AttemptResult {
    let a = engine.a;
    let group = engine.group.as_ref();
    if group.is_some_and(|g| g.oom_kills() > 0) {
        a.control.request_stop(crate::exec::Stop::Oom);
    }
    let mut result = match lock(&engine.command_result).take() {
        Some(r) => r,
        None => match (a.stopped_outcome(), lock(&engine.command_failed).take()) {
            (Some(outcome), _) => AttemptResult::new(
                outcome,
                RunEnd {
                    signal: outcome.signal(),
                    ..RunEnd::default()
                },
            ),
            (None, Some(failed)) => failed,
            (None, None) => AttemptResult::new(
                Outcome::Success,
                RunEnd {
                    exit_code: Some(0),
                    ..RunEnd::default()
                },
            ),
        },
    };
    if let Some(g) = group {
        result.end.peak_memory_bytes = g.peak_memory();
        result.end.memory_enforcement = Some(g.enforcement().as_str().to_string());
    }
    if let Some(e) = lock(&engine.stats.error).clone() {
        result.end.error = Some(e);
    }
    if engine.stats.refused.load(Ordering::SeqCst) {
        result.outcome = Outcome::Fenced;
    }
    result.items_failed = engine.failed.take();
    result
}

/// Counts, failed keys and the outcome of the attempt as a whole.
fn finish(
    a: &Attempt<'_>,
    items: &Items,
    keys: &Keys,
    plan: &Plan,
    mut result: AttemptResult,
    tally: Tally,
) -> AttemptResult {
    let mut failed_keys = std::mem::take(&mut result.items_failed);
    for &i in &plan.dead {
        if failed_keys.len() >= FAILED_LISTED {
            break;
        }
        failed_keys.push(keys.get(i as usize).to_string());
    }
    let counts = ItemCounts {
        total: (plan.pending.len() + plan.dead.len()) as u64,
        done: tally.done,
        skipped: plan.skipped,
        failed: tally.failed + plan.dead.len() as u64,
    };
    a.note(&format!(
        "items: {} done, {} failed ({} of them failed for good earlier), {} skipped",
        counts.done,
        counts.failed,
        plan.dead.len(),
        counts.skipped
    ));
    if result.outcome.is_success() && counts.failed > 0 {
        result.outcome = Outcome::failure(crate::exit::FAILURE);
        if !plan.dead.is_empty() && result.end.error.is_none() {
            let (job, scope) = (&a.job.name, a.p.scope.as_deref().unwrap_or(""));
            result.end.error = Some(format!(
                "{} keys failed {} times and are not retried; see `batchguard ledger {job}`, \
                 or `batchguard ledger reset {job} --scope '{scope}'` to redo the scope",
                plan.dead.len(),
                items.max_attempts,
            ));
        }
    }
    result.end.items = Some(counts);
    result.items_failed = failed_keys;
    result
}
