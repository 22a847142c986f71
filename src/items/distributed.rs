//! Many hosts (SPEC §6, G16; docs/distributed.md).
//!
//! - **Coordinator**: `run` of a job with `[distributed] enabled = true` and
//!   a PostgreSQL store enqueues the plan's pending keys in the scope's
//!   queue (idempotently), works on the queue itself unless `--no-work`,
//!   and waits until every key is done or dead. One run record, one
//!   outcome, one notification, as for any run.
//! - **Worker** (`batchguard worker JOB`): finds the job's running
//!   coordinator, claims batches of keys under a lease (`FOR UPDATE SKIP
//!   LOCKED`), runs each like per-item mode and acknowledges finished keys
//!   in group commits whose ledger write and queue acknowledgement are one
//!   transaction, fenced by the coordinator's token. The lease is renewed
//!   while the batch runs; a key whose lease was lost is stopped at once.
//!   In stream mode the job's `command` runs once per claimed batch, gets
//!   the batch's keys on stdin and reports finished keys on
//!   `BATCHGUARD_DONE_FD`; reported keys are group-committed as they come.
//! - **Static shards** (`run --shard I/N`): FNV-1a 64 of the key's bytes
//!   mod N selects the keys (see [`in_shard`]).
//!
//! Both coordinator and worker are the item [`engine`](super::engine) with
//! the queue as source and sink ([`queue`](super::queue)); a worker is the
//! engine without a run record of its own.

use super::engine::{Engine, StreamCommand, lock};
use super::keys::Keys;
use super::plan::Plan;
use super::queue::{More, QueueSink, QueueSource};
use super::{FAILED_LISTED, Tally, Work, engine_result, record_group, run_group};
use crate::error::{Error, Result};
use crate::exec::{self, Attempt, AttemptResult, Context, Control, Request, Stop};
use crate::outcome::Outcome;
use crate::store::{Committer, QueueCounts, QueueStore, RunEnd, RunRecord};
use batchguard_config::{Concurrency, Items, ItemsMode, Job};
use batchguard_supervise::{self as supervise, Group};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use super::plan::{fnv1a64, in_shard};

/// How often a waiting coordinator or an idle worker looks at the queue.
const POLL: Duration = super::engine::POLL;

/// Set the engine up for the queue: the batch size, and in stream mode the
/// job's command once per batch inside the run's (or worker's) group.
fn for_queue(engine: &mut Engine<'_>, group: Group, mode: supervise::Enforcement) -> Result<()> {
    let a = engine.a;
    engine.group = Some(group);
    engine.enforcement = mode;
    engine.batch = a.job.distributed.batch.max(1) as usize;
    if engine.items.mode == ItemsMode::Stream {
        let argv = a.render("command", &a.job.command, None)?;
        a.note(&format!(
            "command (distributed stream mode, once per batch): {argv:?}"
        ));
        engine.stream = Some(StreamCommand {
            argv,
            owns_run: false,
        });
    }
    Ok(())
}

fn refuse(a: &Attempt<'_>, msg: String) -> AttemptResult {
    a.note(&msg);
    AttemptResult::failed(
        Outcome::failure(crate::exit::FAILURE),
        msg,
        RunEnd::default(),
    )
}

/// The coordinator: enqueue, work (unless `--no-work`), wait for the end.
pub(super) fn coordinate(
    mut engine: Engine<'_>,
    work: &Work<'_>,
) -> Result<(AttemptResult, Tally)> {
    let a = engine.a;
    let (keys, plan, scope_id, who) = (work.keys, work.plan, work.scope_id, work.who);
    let Some(queue) = a.store.queue() else {
        let none = Tally { done: 0, failed: 0 };
        return Ok((refuse(a, crate::store::no_queue().to_string()), none));
    };
    let c0 = enqueue(a, queue, keys, plan, scope_id)?;
    let (group, mode) = run_group(a, &a.record.id)?;
    record_group(a, &group)?;
    for_queue(&mut engine, group, mode)?;
    let worker = format!("{}:{}:{}", a.record.host, a.record.pid, a.record.id);
    let last_note = Mutex::new(Instant::now());
    let more = |c: &QueueCounts| {
        note_progress(a, &last_note, c);
        c.queued + c.claimed > 0 && a.control.stopping().is_none()
    };
    if a.p.no_work {
        wait_for_workers(a, queue, scope_id, &more)?;
    } else {
        let source = QueueSource {
            queue,
            scope_id,
            worker: &worker,
            lease: a.job.distributed.lease,
            more: &more,
        };
        let sink = QueueSink {
            queue,
            scope_id,
            who,
            worker: &worker,
            max_attempts: engine.items.max_attempts,
        };
        engine.run(&source, &sink);
    }
    let c1 = queue.queue_counts(scope_id)?;
    let tally = Tally {
        done: c1.done.saturating_sub(c0.done),
        failed: c1.dead.saturating_sub(c0.dead),
    };
    a.note(&format!(
        "distributed: queue at the end: {} queued, {} claimed, {} done, {} dead; \
         this host processed {} done, {} failed",
        c1.queued,
        c1.claimed,
        c1.done,
        c1.dead,
        engine.stats.done.load(Ordering::SeqCst),
        engine.stats.failed.load(Ordering::SeqCst)
    ));
    let mut result = engine_result(&engine);
    result.items_failed = if tally.failed > 0 {
        newly_dead(a, engine.items, keys, plan, scope_id)?
    } else {
        Vec::new()
    };
    Ok((result, tally))
}

/// Queue the plan's pending keys (idempotently); the counts before work.
fn enqueue(
    a: &Attempt<'_>,
    queue: &dyn QueueStore,
    keys: &Keys,
    plan: &Plan,
    scope_id: i64,
) -> Result<QueueCounts> {
    let pending: Vec<&str> = plan.pending.iter().map(|&i| keys.get(i as usize)).collect();
    queue.queue_enqueue(scope_id, &pending)?;
    let c0 = queue.queue_counts(scope_id)?;
    a.note(&format!(
        "distributed: {} keys enqueued (queue: {} queued, {} claimed, {} done, {} dead){}",
        pending.len(),
        c0.queued,
        c0.claimed,
        c0.done,
        c0.dead,
        if a.p.no_work {
            "; --no-work: waiting for workers"
        } else {
            ""
        }
    ));
    Ok(c0)
}

fn note_progress(a: &Attempt<'_>, last: &Mutex<Instant>, c: &QueueCounts) {
    let mut last = lock(last);
    if last.elapsed() >= Duration::from_secs(10) {
        *last = Instant::now();
        a.note(&format!(
            "distributed: {} queued, {} claimed, {} done, {} dead",
            c.queued, c.claimed, c.done, c.dead
        ));
    }
}

/// `--no-work`: wait for the workers to finish the queue (or the run's
/// timeout).
fn wait_for_workers(
    a: &Attempt<'_>,
    queue: &dyn QueueStore,
    scope_id: i64,
    more: &More<'_>,
) -> Result<()> {
    let deadline = a.job.timeout.map(|t| Instant::now() + t);
    while a.control.stopping().is_none() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            a.note("run timeout reached: stopping");
            a.control.request_stop(Stop::Timeout);
            break;
        }
        if !more(&queue.queue_counts(scope_id)?) {
            break;
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The keys that failed for good during this run (not those dead before).
fn newly_dead(
    a: &Attempt<'_>,
    items: &Items,
    keys: &Keys,
    plan: &Plan,
    scope_id: i64,
) -> Result<Vec<String>> {
    let earlier: HashSet<u32> = plan.dead.iter().copied().collect();
    let mut out = Vec::new();
    for e in a
        .store
        .ledger_failed(scope_id, FAILED_LISTED + plan.dead.len())?
    {
        let earlier_dead = keys.find(&e.key).is_some_and(|i| earlier.contains(&i));
        if e.attempts >= items.max_attempts && !earlier_dead && out.len() < FAILED_LISTED {
            out.push(e.key);
        }
    }
    Ok(out)
}

/// Prefix of a worker's cgroup name: `w-PID-STARTTIME-ID`. A worker has no
/// run row through which a later run could clean up after it, so the name
/// itself says whose it is.
const WORKER_CGROUP: &str = "w-";

/// A worker's cgroup, named after the worker process.
fn worker_group(a: &Attempt<'_>) -> Result<(Group, supervise::Enforcement)> {
    let pid = std::process::id() as i32;
    let start = supervise::procfs::start_time(pid).unwrap_or(0);
    let (group, mode) = run_group(a, &format!("{WORKER_CGROUP}{pid}-{start}-{}", a.record.id))?;
    if let Some(parent) = group.path().and_then(|p| p.parent()) {
        remove_dead_worker_groups(parent, a.job.kill_grace);
    }
    Ok((group, mode))
}

/// Stop what SIGKILLed workers left behind and remove their cgroups: any
/// sibling `w-PID-START-…` whose process is gone (a recycled pid has another
/// start time, so a live worker is never touched).
fn remove_dead_worker_groups(parent: &std::path::Path, grace: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORKER_CGROUP)) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
            continue;
        };
        if !supervise::procfs::is_alive(pid, start) {
            tracing::info!(cgroup = %entry.path().display(), "removing a dead worker's cgroup");
            supervise::kill_leftovers(Some(&entry.path()), None, grace);
        }
    }
}

/// `batchguard worker` options.
#[derive(Debug, Clone, Default)]
pub struct WorkerOpts {
    pub concurrency: Option<u32>,
    pub scope: Option<String>,
    pub follow: bool,
}

/// `batchguard worker JOB`: work for the job's running coordinator until
/// its queue is finished and no coordinator runs (or, with `follow`, until
/// a signal). SIGTERM/SIGINT: stop claiming, stop the items in flight and
/// give their keys back. The outcome is `success`, or `failure` when the
/// store failed (69) or a batch command failed (1).
pub fn worker(ctx: &Context, job: &Job, opts: &WorkerOpts) -> Result<Outcome> {
    let items = job
        .items
        .as_ref()
        .ok_or_else(|| Error::Usage(format!("job `{}` has no [items]", job.name)))?;
    if !job.distributed.enabled {
        return Err(Error::Usage(format!(
            "job `{}` is not distributed: set [distributed] enabled = true",
            job.name
        )));
    }
    let queue = ctx.store.queue().ok_or_else(crate::store::no_queue)?;
    let control = Control::default();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::io("install signal handlers for", "batchguard", e))?;
    let handle = signals.handle();
    let me = format!("{}:{}:{}", ctx.me.host, ctx.me.pid, exec::new_run_id());
    let w = Worker {
        ctx,
        job,
        items,
        queue,
        opts,
        control: &control,
        me: &me,
        concurrency: opts.concurrency.unwrap_or(items.parallelism).max(1) as usize,
        lease_ms: ctx.global.lease.as_millis() as i64,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for sig in signals.forever() {
                tracing::info!(signal = sig, "worker stopping");
                control.on_signal(sig);
            }
        });
        let r = w.run();
        handle.close();
        r
    })
}

/// One `batchguard worker` process.
struct Worker<'a> {
    ctx: &'a Context,
    job: &'a Job,
    items: &'a Items,
    queue: &'a dyn QueueStore,
    opts: &'a WorkerOpts,
    control: &'a Control,
    me: &'a str,
    concurrency: usize,
    lease_ms: i64,
}

impl Worker<'_> {
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while self.control.stopping().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A coordinator whose heartbeat is this old is dead (the watchdog will
    /// record it lost).
    fn alive(&self, r: &RunRecord) -> bool {
        r.outcome == "running" && crate::clock::now_ms() - r.heartbeat_ms < 3 * self.lease_ms
    }

    /// The job's newest live coordinator (in the asked scope).
    fn coordinator(&self) -> Result<Option<RunRecord>> {
        let scope = self.opts.scope.as_deref();
        Ok(self
            .ctx
            .store
            .running_runs()?
            .into_iter()
            .filter(|r| {
                r.job == self.job.name
                    && self.alive(r)
                    && scope.is_none_or(|s| r.scope.as_deref().unwrap_or("") == s)
            })
            .max_by_key(|r| r.fence))
    }

    fn run(&self) -> Result<Outcome> {
        while self.control.stopping().is_none() {
            let Some(coord) = self.coordinator()? else {
                if self.opts.follow {
                    self.sleep(Duration::from_secs(1));
                    continue;
                }
                tracing::info!(job = %self.job.name, "no coordinator running: worker done");
                break;
            };
            let scope = coord.scope.clone().unwrap_or_default();
            let Some(scope_id) = self.ctx.store.ledger_scope(&self.job.name, &scope, false)? else {
                self.sleep(POLL);
                continue;
            };
            let outcome = self.session(&coord, scope_id)?;
            if !outcome.is_success() {
                return Ok(outcome);
            }
        }
        Ok(Outcome::Success)
    }

    /// Work for one coordinator run: the engine with the queue, under the
    /// coordinator's token, with this worker's own log and cgroup.
    fn session(&self, coord: &RunRecord, scope_id: i64) -> Result<Outcome> {
        let (ctx, job) = (self.ctx, self.job);
        let req = Request {
            params: coord.params.clone().into_iter().collect(),
            scope: coord.scope.clone(),
            shard: None,
            no_work: false,
        };
        let p = exec::prepare(job, &req, &ctx.global)?;
        let mut record = coord.clone();
        record.id = exec::new_run_id();
        let log = exec::open_attempt_log(&ctx.global, job, &p, &record)?;
        let mode = exec::acquire_mode(job.concurrency);
        let publish = crate::publish::Service::bind(&record.id, p.run_as.as_ref())
            .inspect_err(|e| tracing::warn!(error = %e, "no publish socket for this worker"))
            .ok();
        let grant = crate::publish::Grant {
            store: ctx.store.as_ref(),
            lock: &job.lock,
            fence: coord.fence,
            run_as: p.run_as.as_ref(),
        };
        let a = Attempt::new(
            ctx.store.as_ref(),
            publish.as_ref().map(|s| s.path()),
            job,
            &p,
            &record,
            mode,
            self.control,
            log,
        );
        a.note(&format!(
            "worker {} working for run {} (fence {}), scope {:?}",
            self.me,
            coord.id,
            coord.fence,
            coord.scope.as_deref().unwrap_or("")
        ));
        let outcome = std::thread::scope(|s| {
            if let Some(service) = &publish {
                s.spawn(|| service.serve(&grant));
            }
            let outcome = self.work(&a, coord, scope_id);
            if let Some(service) = &publish {
                service.stop();
            }
            outcome
        });
        a.finish();
        outcome
    }

    fn work(&self, a: &Attempt<'_>, coord: &RunRecord, scope_id: i64) -> Result<Outcome> {
        let (group, mode) = worker_group(a)?;
        let mut engine = Engine::new(a, self.items);
        engine.owns_run = false;
        engine.parallelism = self.concurrency;
        let parent = group
            .path()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf());
        for_queue(&mut engine, group, mode)?;
        let who = Committer {
            lock: &self.job.lock,
            fence: (self.job.concurrency != Concurrency::Allow).then_some(coord.fence),
            run_id: &coord.id,
        };
        let more = |_: &QueueCounts| matches!(self.ctx.store.get_run(&coord.id), Ok(Some(r)) if self.alive(&r));
        let source = QueueSource {
            queue: self.queue,
            scope_id,
            worker: self.me,
            lease: self.job.distributed.lease,
            more: &more,
        };
        let sink = QueueSink {
            queue: self.queue,
            scope_id,
            who,
            worker: self.me,
            max_attempts: self.items.max_attempts,
        };
        engine.run(&source, &sink);
        // Workers that died meanwhile (SIGKILL) are cleaned up now.
        if let Some(parent) = &parent {
            remove_dead_worker_groups(parent, a.job.kill_grace);
        }
        a.note(&format!(
            "worker {}: {} done, {} failed for run {}",
            self.me,
            engine.stats.done.load(Ordering::SeqCst),
            engine.stats.failed.load(Ordering::SeqCst),
            coord.id
        ));
        if let Some(e) = lock(&engine.stats.error).clone() {
            eprintln!("batchguard worker: {e}");
            return Ok(Outcome::failure(crate::exit::UNAVAILABLE));
        }
        if let Some(failed) = lock(&engine.command_failed).take() {
            eprintln!(
                "batchguard worker: {}",
                failed
                    .end
                    .error
                    .as_deref()
                    .unwrap_or("the batch command failed")
            );
            return Ok(Outcome::failure(crate::exit::FAILURE));
        }
        Ok(Outcome::Success)
    }
}
