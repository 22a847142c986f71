//! Idempotent items (G06): a job's work split into keys, each recorded in
//! the ledger once done, so that a re-run skips finished work and a crash
//! re-does at most what was in flight.
//!
//! An items attempt: read and validate every key before any work starts
//! ([`keys`]); compare them with the ledger of the run's scope (done keys
//! are skipped, keys that failed `max_attempts` times are failed for good);
//! process the rest, per item ([`per_item`]) or through the job's own
//! command in stream mode ([`stream`]); record completions through the group
//! committer ([`commit`]), which accepts them only while the run holds the
//! newest fencing token.

mod commit;
pub mod distributed;
pub mod keys;
mod per_item;
mod progress;
mod stream;
pub mod stream_api;

use crate::error::Result;
use crate::outcome::Outcome;
use crate::runner::{Attempt, AttemptResult, log_line};
use crate::store::{Committer, ItemCounts, ItemState, RunEnd};
use batchguard_config::{Items, ItemsMode};
use batchguard_supervise::{self as supervise, CgroupPlacement, Limits};
use keys::{KeyCollector, Keys};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many failed keys a run record and a failure report list.
pub const FAILED_LISTED: usize = 20;

/// What the ledger says about the source's keys, before work starts.
pub(crate) struct Plan {
    /// Indexes (into the keys) still to process, in source order.
    pub pending: Vec<u32>,
    /// Already done in this scope.
    pub skipped: u64,
    /// Failed `max_attempts` times already: not tried again.
    pub dead: Vec<u32>,
}

impl Plan {
    fn new(
        keys: &Keys,
        a: &Attempt<'_>,
        scope_id: i64,
        max_attempts: u32,
        shard: Option<(u32, u32)>,
    ) -> Result<Plan> {
        // 0 = pending, 1 = done, 2 = dead
        let mut class = vec![0u8; keys.len()];
        {
            a.ctx
                .store
                .ledger_scan(scope_id, &mut |key, state, attempts| {
                    if let Some(i) = keys.find(key) {
                        class[i as usize] = match state {
                            ItemState::Done => 1,
                            ItemState::Failed if attempts >= max_attempts => 2,
                            _ => 0,
                        };
                    }
                })?;
        }
        let mut plan = Plan {
            pending: Vec::new(),
            skipped: 0,
            dead: Vec::new(),
        };
        for (i, c) in class.iter().enumerate() {
            if shard.is_some_and(|sh| !distributed::in_shard(keys.get(i), sh)) {
                continue;
            }
            match c {
                0 => plan.pending.push(i as u32),
                1 => plan.skipped += 1,
                _ => plan.dead.push(i as u32),
            }
        }
        Ok(plan)
    }
}

/// Failed keys this run saw, the first few kept for reports.
#[derive(Default)]
pub(crate) struct FailedList(Mutex<Vec<String>>);

impl FailedList {
    pub fn push(&self, key: &str) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < FAILED_LISTED {
                v.push(key.to_string());
            }
        }
    }
    fn take(self) -> Vec<String> {
        self.0.into_inner().unwrap_or_default()
    }
}

/// Read every key of the source. `Err(result)` is a finished (failed)
/// attempt: a bad key or a failing source processes nothing.
fn read_keys(a: &Attempt<'_>, items: &Items) -> Result<std::result::Result<Keys, AttemptResult>> {
    let failed = |code: i32, msg: String, end: RunEnd| AttemptResult {
        outcome: Outcome::Failure,
        code,
        end: RunEnd {
            error: Some(a.p.redactor.redact(&msg).into_owned()),
            ..end
        },
        items_failed: Vec::new(),
    };
    let (collected, what) = if let Some(path) = &items.source_file {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("cannot read items.source_file {}: {e}", path.display());
                a.note(&msg);
                return Ok(Err(failed(crate::exit::FAILURE, msg, RunEnd::default())));
            }
        };
        (
            keys::parse(&bytes),
            format!("items.source_file {}", path.display()),
        )
    } else {
        let source = items.source.as_deref().unwrap_or_default();
        let argv = a.render("items.source", source, None)?;
        a.note(&format!("reading keys from {argv:?}"));
        let spec = a.spec(&argv, CgroupPlacement::None);
        let limits = Limits {
            timeout: a.job.timeout,
            kill_grace: a.job.kill_grace,
            memory_max: a.job.memory_max,
        };
        let child = match supervise::spawn_with(spec, limits, supervise::Enforcement::Poll) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start the items source `{}`: {e}", argv[0]);
                a.note(&msg);
                let end = RunEnd {
                    exit_code: Some(e.exit_code()),
                    ..RunEnd::default()
                };
                return Ok(Err(failed(e.exit_code(), msg, end)));
            }
        };
        let id = a.control.register(child.stop_handle());
        let mut collector = KeyCollector::default();
        let done = child.wait(|stream, line| match stream {
            supervise::Stream::Stdout => collector.push(line),
            supervise::Stream::Stderr => log_line(a.log, "stderr", "[source] ", line),
        });
        a.control.unregister(id);
        let (outcome, code, exit_code, signal) = crate::outcome::from_end(&done.end);
        if outcome != Outcome::Success {
            let msg = format!(
                "the items source {argv:?} ended {} (exit code {code}): no item was processed",
                outcome.as_str()
            );
            a.note(&msg);
            let end = RunEnd {
                exit_code,
                signal,
                ..RunEnd::default()
            };
            let mut r = failed(code, msg, end);
            r.outcome = outcome;
            return Ok(Err(r));
        }
        (collector.finish(), format!("items source {argv:?}"))
    };
    match collected {
        Ok(keys) => Ok(Ok(keys)),
        Err(e) => {
            let msg = format!("bad key in the {what}, {e}: no item was processed");
            a.note(&msg);
            Ok(Err(failed(crate::exit::FAILURE, msg, RunEnd::default())))
        }
    }
}

/// Run one attempt of an items job.
pub(crate) fn run(a: &Attempt<'_>, items: &Items) -> Result<AttemptResult> {
    let keys = match read_keys(a, items)? {
        Ok(keys) => keys,
        Err(result) => return Ok(result),
    };
    tracing::debug!(keys = keys.len(), "keys read and validated");
    let scope = a.p.scope.as_deref().unwrap_or("");
    let store = a.ctx.store.as_ref();
    let scope_id = store
        .ledger_scope(&a.job.name, scope, true)?
        .ok_or_else(|| crate::error::Error::Usage("ledger scope vanished".into()))?;
    let plan = Plan::new(&keys, a, scope_id, items.max_attempts, a.p.shard)?;
    if let Some((i, n)) = a.p.shard {
        a.note(&format!(
            "shard {i}/{n}: only keys whose FNV-1a 64 hash mod {n} is {i}"
        ));
    }
    tracing::debug!(pending = plan.pending.len(), "plan ready");
    a.note(&format!(
        "items: {} keys ({} lines) from the source, scope {scope:?}: {} already done, {} failed for good, {} to process",
        keys.len(),
        keys.lines,
        plan.skipped,
        plan.dead.len(),
        plan.pending.len()
    ));
    let who = Committer {
        lock: &a.job.lock,
        fence: (a.mode != crate::store::AcquireMode::TokenOnly).then_some(a.record.fence),
        run_id: &a.record.id,
    };
    let stats = commit::Stats::default();
    let failed = FailedList::default();
    let finished = AtomicBool::new(false);
    let (tx, rx) = commit::channel();
    let mut result = if a.job.distributed.enabled {
        drop(rx);
        drop(tx);
        distributed::coordinate(a, items, &keys, &plan, scope_id, who, &stats, &failed)?
    } else {
        std::thread::scope(|s| {
            s.spawn(|| commit::run(store, &keys, scope_id, who, rx, &stats, a.control));
            s.spawn(|| progress::run(plan.pending.len() as u64, &stats, &finished, &|l| a.note(l)));
            let r = match items.mode {
                ItemsMode::Stream => stream::run(a, &keys, &plan.pending, tx, &failed),
                ItemsMode::PerItem => per_item::run(a, items, &keys, &plan.pending, tx, &failed),
            };
            finished.store(true, Ordering::SeqCst);
            tracing::debug!("items processed; waiting for the last commits");
            r
        })?
    };
    tracing::debug!("all commits done");

    // Every update is committed (the committer ended when the senders did).
    let done = stats.done.load(Ordering::SeqCst);
    let failed_now = stats.failed.load(Ordering::SeqCst);
    let mut failed_keys = failed.take();
    for &i in &plan.dead {
        if failed_keys.len() >= FAILED_LISTED {
            break;
        }
        failed_keys.push(keys.get(i as usize).to_string());
    }
    let counts = ItemCounts {
        total: (plan.pending.len() + plan.dead.len()) as u64,
        done,
        skipped: plan.skipped,
        failed: failed_now + plan.dead.len() as u64,
    };
    a.note(&format!(
        "items: {} done, {} failed ({} of them failed for good earlier), {} skipped",
        counts.done,
        counts.failed,
        plan.dead.len(),
        counts.skipped
    ));
    if let Some(e) = stats.error.lock().ok().and_then(|e| e.clone()) {
        result.end.error = Some(e);
    }
    if result.outcome == Outcome::Success && counts.failed > 0 {
        result.outcome = Outcome::Failure;
        result.code = crate::exit::FAILURE;
        if !plan.dead.is_empty() && result.end.error.is_none() {
            result.end.error = Some(format!(
                "{} keys failed {} times and are not retried; see `batchguard ledger {}`, \
                 or `batchguard ledger reset {} --scope '{scope}'` to redo the scope",
                plan.dead.len(),
                items.max_attempts,
                a.job.name,
                a.job.name
            ));
        }
    }
    if stats.refused.load(Ordering::SeqCst) {
        result.outcome = Outcome::Fenced;
        result.code = crate::exit::TEMPFAIL;
    }
    result.end.items = Some(counts);
    result.items_failed = failed_keys;
    Ok(result)
}
