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
//! - **Static shards** (`run --shard I/N`): FNV-1a 64 of the key's bytes
//!   mod N selects the keys (see [`in_shard`]).

use super::commit::{MAX_BATCH, MAX_DELAY, Stats};
use super::per_item::{Bucket, ItemRunner};
use super::{FAILED_LISTED, FailedList, Keys, Plan};
use crate::error::{Error, Result};
use crate::outcome::Outcome;
use crate::runner::{self, Attempt, AttemptResult, Context, Control, Request, Stop};
use crate::store::{Committer, ItemState, LedgerUpdate, QueueCounts, RunEnd};
use batchguard_config::{Concurrency, Items, ItemsMode, Job};
use batchguard_supervise::{self as supervise, Group};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// How often an idle worker or a waiting coordinator looks at the queue.
const POLL: Duration = Duration::from_millis(200);
/// How long a failing store is retried by the committer before giving up.
const STORE_PATIENCE: Duration = Duration::from_secs(60);

/// FNV-1a, 64 bits, over the key's UTF-8 bytes: stable across hosts,
/// versions and runs (unlike Rust's randomised hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Is `key` in shard `i` of `n`? (`fnv1a64(key) % n == i`)
pub fn in_shard(key: &str, (i, n): (u32, u32)) -> bool {
    fnv1a64(key.as_bytes()) % u64::from(n.max(1)) == u64::from(i)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// What one work session (one worker, one coordinator run) did.
#[derive(Default)]
struct Session {
    done: AtomicU64,
    failed: AtomicU64,
    /// The coordinator's token moved on: commits are refused.
    refused: AtomicBool,
    /// The store stayed unreachable.
    error: Mutex<Option<String>>,
}

/// Claiming and processing batches of a scope's queue.
struct Work<'a> {
    a: &'a Attempt<'a>,
    items: &'a Items,
    scope_id: i64,
    who: Committer<'a>,
    worker: String,
    concurrency: usize,
    batch: usize,
    lease: Duration,
    runner: ItemRunner<'a>,
    bucket: Option<Mutex<Bucket>>,
    /// A coordinator stops its whole run when refused; a worker only ends
    /// its session with that coordinator.
    is_coordinator: bool,
    session: Session,
}

type Done = (String, ItemState, Option<String>);

impl Work<'_> {
    fn over(&self) -> bool {
        self.a.control.stopping().is_some()
            || self.session.refused.load(Ordering::SeqCst)
            || lock(&self.session.error).is_some()
    }

    fn fail_store(&self, msg: String) {
        tracing::error!("{msg}");
        self.a.note(&msg);
        *lock(&self.session.error) = Some(msg);
        if self.is_coordinator {
            self.a.control.request_stop(Stop::Store);
        }
    }

    /// Claim and process batches until `more` (asked when nothing could be
    /// claimed) says the queue is finished, or the session is over.
    fn run(&self, more: &dyn Fn(&QueueCounts) -> bool) {
        let store = self.a.ctx.store.as_ref();
        let lease_ms = self.lease.as_millis() as i64;
        while !self.over() {
            let now = crate::clock::now_ms();
            let keys =
                match store.queue_claim(self.scope_id, &self.worker, self.batch, now, lease_ms) {
                    Ok(k) => k,
                    Err(e) => return self.fail_store(format!("cannot claim keys: {e}")),
                };
            if keys.is_empty() {
                match store.queue_counts(self.scope_id) {
                    Ok(c) if !more(&c) => return,
                    Ok(_) => std::thread::sleep(POLL),
                    Err(e) => return self.fail_store(format!("cannot read the queue: {e}")),
                }
                continue;
            }
            tracing::debug!(worker = %self.worker, keys = keys.len(), "batch claimed");
            self.process(&keys);
        }
    }

    /// Process one claimed batch; keys left unfinished go back to the queue.
    fn process(&self, keys: &[String]) {
        let a = self.a;
        let store = a.ctx.store.as_ref();
        // Keys still ours and not finished, with their process when running.
        let held: Mutex<HashMap<&str, Option<u64>>> =
            Mutex::new(keys.iter().map(|k| (k.as_str(), None)).collect());
        let lost: Mutex<HashSet<String>> = Mutex::default();
        let next = AtomicUsize::new(0);
        let sent = AtomicUsize::new(0);
        let (tx, rx) = mpsc::sync_channel::<Done>(MAX_BATCH);
        let (stop_renew, renew_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let committer = s.spawn(|| self.commit_loop(rx, &held));
            let (held_r, lost_r) = (&held, &lost);
            s.spawn(move || {
                let (held, lost) = (held_r, lost_r);
                let every = (self.lease / 3).max(Duration::from_millis(100));
                while let Err(mpsc::RecvTimeoutError::Timeout) = renew_rx.recv_timeout(every) {
                    let mine: Vec<&str> = lock(held).keys().copied().collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let until = crate::clock::now_ms() + self.lease.as_millis() as i64;
                    match store.queue_renew(self.scope_id, &self.worker, &mine, until) {
                        Ok(kept) => {
                            let kept: HashSet<&str> = kept.iter().map(String::as_str).collect();
                            let mut held = lock(held);
                            for k in mine.into_iter().filter(|k| !kept.contains(k)) {
                                // Lost: another worker has it now. Stop it here.
                                tracing::warn!(key = k, "lease lost: stopping the item");
                                lock(lost).insert(k.to_string());
                                if let Some(Some(id)) = held.remove(k) {
                                    a.control.stop_one(id);
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot renew the lease; will retry"),
                    }
                }
            });
            let workers: Vec<_> = (0..self.concurrency.min(keys.len()))
                .map(|_| {
                    let tx = tx.clone();
                    let (held, lost, next, sent) = (&held, &lost, &next, &sent);
                    s.spawn(move || {
                        while !self.over() {
                            let Some(key) = keys.get(next.fetch_add(1, Ordering::SeqCst)) else {
                                break;
                            };
                            if lock(lost).contains(key) {
                                continue;
                            }
                            if let Some(b) = &self.bucket {
                                lock(b).take();
                            }
                            let started = |id: u64| match lock(held).get_mut(key.as_str()) {
                                Some(slot) => *slot = Some(id),
                                None => a.control.stop_one(id),
                            };
                            let r = self.runner.run_key(key, &started);
                            let ours = lock(held).remove(key.as_str()).is_some();
                            let Some((state, error)) = r else { continue };
                            // A failure after the lease was lost is not ours
                            // to count; a success is recorded all the same.
                            if state == ItemState::Failed && !ours {
                                continue;
                            }
                            if state == ItemState::Failed {
                                a.note(&format!("item {key} failed"));
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                            if tx.send((key.clone(), state, error)).is_err() {
                                break;
                            }
                        }
                    })
                })
                .collect();
            drop(tx);
            for w in workers {
                let _ = w.join();
            }
            let _ = committer.join();
            let _ = stop_renew.send(());
        });
        if sent.load(Ordering::SeqCst) < keys.len() {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            match store.queue_release(self.scope_id, &self.worker, &refs) {
                Ok(n) if n > 0 => a.note(&format!("{n} unfinished keys given back to the queue")),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot release keys; their lease expires"),
            }
        }
    }

    /// Group commit through `queue_finish` until every sender is gone.
    fn commit_loop(&self, rx: mpsc::Receiver<Done>, held: &Mutex<HashMap<&str, Option<u64>>>) {
        let mut batch: Vec<Done> = Vec::new();
        loop {
            let Ok(first) = rx.recv() else { return };
            batch.push(first);
            let deadline = Instant::now() + MAX_DELAY;
            while batch.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(u) => batch.push(u),
                    Err(_) => break,
                }
            }
            if !self.over() {
                self.commit(&batch, held);
            }
            batch.clear();
        }
    }

    fn commit(&self, batch: &[Done], held: &Mutex<HashMap<&str, Option<u64>>>) {
        let store = self.a.ctx.store.as_ref();
        let updates: Vec<LedgerUpdate<'_>> = batch
            .iter()
            .map(|(k, state, e)| LedgerUpdate {
                key: k,
                state: *state,
                error: e.as_deref(),
            })
            .collect();
        let started = Instant::now();
        loop {
            let now = crate::clock::now_ms();
            match store.queue_finish(
                self.scope_id,
                self.who,
                &self.worker,
                now,
                self.items.max_attempts,
                &updates,
            ) {
                Ok(true) => {
                    let done = batch.iter().filter(|u| u.1 == ItemState::Done).count();
                    self.session.done.fetch_add(done as u64, Ordering::SeqCst);
                    let failed = (batch.len() - done) as u64;
                    self.session.failed.fetch_add(failed, Ordering::SeqCst);
                    return;
                }
                Ok(false) => {
                    self.a
                        .note("the coordinator's token moved on: commits refused");
                    self.session.refused.store(true, Ordering::SeqCst);
                    if self.is_coordinator {
                        self.a.control.request_stop(Stop::Fenced);
                    } else {
                        for id in lock(held).values().flatten() {
                            self.a.control.stop_one(*id);
                        }
                    }
                    return;
                }
                Err(e) if started.elapsed() < STORE_PATIENCE => {
                    tracing::warn!(error = %e, "queue commit failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.fail_store(format!("the ledger cannot be written: {e}"));
                    for id in lock(held).values().flatten() {
                        self.a.control.stop_one(*id);
                    }
                    return;
                }
            }
        }
    }
}

fn refuse(a: &Attempt<'_>, msg: String) -> AttemptResult {
    a.note(&msg);
    AttemptResult {
        outcome: Outcome::Failure,
        code: crate::exit::FAILURE,
        end: RunEnd {
            error: Some(msg),
            ..RunEnd::default()
        },
        items_failed: Vec::new(),
    }
}

fn group_for(a: &Attempt<'_>) -> Result<(Group, supervise::Enforcement)> {
    let mode = supervise::detect();
    let group = Group::create(&a.record.id, a.job.memory_max, mode)
        .map_err(|e| Error::Usage(format!("cannot create the run's cgroup: {e}")))?;
    Ok((group, mode))
}

/// The coordinator: enqueue, work (unless `--no-work`), wait for the end.
/// Fills `stats` (done and dead keys of this run) like the committer does.
#[expect(clippy::too_many_arguments, reason = "mirrors items::run's pieces")]
pub(super) fn coordinate(
    a: &Attempt<'_>,
    items: &Items,
    keys: &Keys,
    plan: &Plan,
    scope_id: i64,
    who: Committer<'_>,
    stats: &Stats,
    failed: &FailedList,
) -> Result<AttemptResult> {
    if !is_postgres(&a.ctx.state_url) {
        return Ok(refuse(a, crate::store::no_queue().to_string()));
    }
    if items.mode == ItemsMode::Stream || items.run.is_none() {
        return Ok(refuse(
            a,
            "distributed items need per-item mode (items.run)".to_string(),
        ));
    }
    let store = a.ctx.store.as_ref();
    let pending: Vec<&str> = plan.pending.iter().map(|&i| keys.get(i as usize)).collect();
    store.queue_enqueue(scope_id, &pending)?;
    let c0 = store.queue_counts(scope_id)?;
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
    let (group, mode) = group_for(a)?;
    if let Some(path) = group.path() {
        store.set_run_process(&a.record.id, None, Some(&path.display().to_string()))?;
    }
    let run_argv = items.run.clone().unwrap_or_default();
    let dist = &a.job.distributed;
    let work = Work {
        a,
        items,
        scope_id,
        who,
        worker: format!("{}:{}:{}", a.ctx.me.host, a.ctx.me.pid, a.record.id),
        concurrency: items.parallelism.max(1) as usize,
        batch: dist.batch.max(1) as usize,
        lease: dist.lease,
        runner: ItemRunner {
            a,
            items,
            group: &group,
            run_argv: &run_argv,
            mode,
        },
        bucket: items.rate.map(|r| Mutex::new(Bucket::new(r.per_second))),
        is_coordinator: true,
        session: Session::default(),
    };
    let deadline = a.job.timeout.map(|t| Instant::now() + t);
    let last_note = Mutex::new(Instant::now());
    let more = |c: &QueueCounts| {
        if deadline.is_some_and(|d| Instant::now() >= d) && a.control.stopping().is_none() {
            a.note("run timeout reached: stopping");
            a.control.request_stop(Stop::Timeout);
        }
        let mut last = lock(&last_note);
        if last.elapsed() >= Duration::from_secs(10) {
            *last = Instant::now();
            a.note(&format!(
                "distributed: {} queued, {} claimed, {} done, {} dead",
                c.queued, c.claimed, c.done, c.dead
            ));
        }
        c.queued + c.claimed > 0 && a.control.stopping().is_none()
    };
    if a.p.no_work {
        while a.control.stopping().is_none() {
            let c = store.queue_counts(scope_id)?;
            if !more(&c) {
                break;
            }
            std::thread::sleep(POLL);
        }
    } else {
        work.run(&more);
    }
    let c1 = store.queue_counts(scope_id)?;
    stats
        .done
        .store(c1.done.saturating_sub(c0.done), Ordering::SeqCst);
    let dead_now = c1.dead.saturating_sub(c0.dead);
    stats.failed.store(dead_now, Ordering::SeqCst);
    if work.session.refused.load(Ordering::SeqCst) {
        stats.refused.store(true, Ordering::SeqCst);
    }
    if let Some(e) = lock(&work.session.error).clone() {
        *lock(&stats.error) = Some(e);
    }
    if dead_now > 0 {
        let earlier: HashSet<u32> = plan.dead.iter().copied().collect();
        for e in store.ledger_failed(scope_id, FAILED_LISTED + plan.dead.len())? {
            let earlier_dead = keys.find(&e.key).is_some_and(|i| earlier.contains(&i));
            if e.attempts >= items.max_attempts && !earlier_dead {
                failed.push(&e.key);
            }
        }
    }
    a.note(&format!(
        "distributed: queue at the end: {} queued, {} claimed, {} done, {} dead; \
         this host processed {} done, {} failed",
        c1.queued,
        c1.claimed,
        c1.done,
        c1.dead,
        work.session.done.load(Ordering::SeqCst),
        work.session.failed.load(Ordering::SeqCst)
    ));
    let (outcome, code, signal) = a.stopped_outcome().unwrap_or((Outcome::Success, 0, None));
    Ok(AttemptResult {
        outcome,
        code,
        end: RunEnd {
            exit_code: (outcome == Outcome::Success).then_some(0),
            signal,
            peak_memory_bytes: group.peak_memory(),
            memory_enforcement: Some(group.enforcement().as_str().to_string()),
            ..RunEnd::default()
        },
        items_failed: Vec::new(),
    })
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
/// give their keys back, exit 0.
pub fn worker(ctx: &Context, job: &Job, opts: &WorkerOpts) -> Result<i32> {
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
    if items.run.is_none() || items.mode == ItemsMode::Stream {
        return Err(Error::Usage(
            "distributed items need per-item mode (items.run)".into(),
        ));
    }
    if !is_postgres(&ctx.state_url) {
        return Err(crate::store::no_queue().into());
    }
    let control = Control::default();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::io("install signal handlers for", "batchguard", e))?;
    let handle = signals.handle();
    let me = format!("{}:{}:{}", ctx.me.host, ctx.me.pid, runner::new_run_id());
    let concurrency = opts.concurrency.unwrap_or(items.parallelism).max(1) as usize;
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let code = std::thread::scope(|s| {
        s.spawn(|| {
            for sig in signals.forever() {
                tracing::info!(signal = sig, "worker stopping");
                control.on_signal(sig);
            }
        });
        let r = worker_loop(ctx, job, items, opts, &control, &me, concurrency, lease_ms);
        handle.close();
        r
    })?;
    Ok(code)
}

#[expect(clippy::too_many_arguments, reason = "one call site")]
fn worker_loop(
    ctx: &Context,
    job: &Job,
    items: &Items,
    opts: &WorkerOpts,
    control: &Control,
    me: &str,
    concurrency: usize,
    lease_ms: i64,
) -> Result<i32> {
    let sleep = |d: Duration| {
        let end = Instant::now() + d;
        while control.stopping().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A coordinator whose heartbeat is this old is dead (the watchdog will
    // record it lost).
    let alive = |r: &crate::store::RunRecord| {
        r.outcome == "running" && crate::clock::now_ms() - r.heartbeat_ms < 3 * lease_ms
    };
    while control.stopping().is_none() {
        let coord = ctx
            .store
            .running_runs()?
            .into_iter()
            .filter(|r| {
                r.job == job.name
                    && alive(r)
                    && opts
                        .scope
                        .as_deref()
                        .is_none_or(|s| r.scope.as_deref().unwrap_or("") == s)
            })
            .max_by_key(|r| r.fence);
        let Some(coord) = coord else {
            if opts.follow {
                sleep(Duration::from_secs(1));
                continue;
            }
            tracing::info!(job = %job.name, "no coordinator running: worker done");
            break;
        };
        let scope = coord.scope.clone().unwrap_or_default();
        let Some(scope_id) = ctx.store.ledger_scope(&job.name, &scope, false)? else {
            sleep(POLL);
            continue;
        };
        let req = Request {
            params: coord.params.clone().into_iter().collect(),
            scope: coord.scope.clone(),
            shard: None,
            no_work: false,
        };
        let p = runner::prepare(job, &req)?;
        let mut record = coord.clone();
        record.id = runner::new_run_id();
        let who = Committer {
            lock: &job.lock,
            fence: (job.concurrency != Concurrency::Allow).then_some(coord.fence),
            run_id: &coord.id,
        };
        let failed_store = runner::with_worker_attempt(ctx, job, &p, &record, control, |a| {
            a.note(&format!(
                "worker {me} working for run {} (fence {}), scope {scope:?}",
                coord.id, coord.fence
            ));
            let (group, mode) = group_for(a)?;
            let run_argv = items.run.clone().unwrap_or_default();
            let work = Work {
                a,
                items,
                scope_id,
                who,
                worker: me.to_string(),
                concurrency,
                batch: job.distributed.batch.max(1) as usize,
                lease: job.distributed.lease,
                runner: ItemRunner {
                    a,
                    items,
                    group: &group,
                    run_argv: &run_argv,
                    mode,
                },
                bucket: items.rate.map(|r| Mutex::new(Bucket::new(r.per_second))),
                is_coordinator: false,
                session: Session::default(),
            };
            let more =
                |_: &QueueCounts| matches!(ctx.store.get_run(&coord.id), Ok(Some(r)) if alive(&r));
            work.run(&more);
            a.note(&format!(
                "worker {me}: {} done, {} failed for run {}",
                work.session.done.load(Ordering::SeqCst),
                work.session.failed.load(Ordering::SeqCst),
                coord.id
            ));
            let failed = lock(&work.session.error).clone();
            Ok::<_, Error>(failed)
        })??;
        if let Some(e) = failed_store {
            eprintln!("batchguard worker: {e}");
            return Ok(crate::exit::UNAVAILABLE);
        }
    }
    Ok(crate::exit::OK)
}
