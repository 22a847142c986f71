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

use super::commit::{MAX_BATCH, MAX_DELAY, Stats};
use super::per_item::{Bucket, ItemRunner};
use super::stream::DONE_FD;
use super::{FAILED_LISTED, FailedList, Keys, Plan};
use crate::error::{Error, Result};
use crate::outcome::Outcome;
use crate::runner::{self, Attempt, AttemptResult, Context, Control, Request, Stop, log_line};
use crate::store::{Committer, ItemState, LedgerUpdate, QueueCounts, RunEnd, no_queue};
use batchguard_config::{Concurrency, Items, ItemsMode, Job};
use batchguard_supervise::{self as supervise, CgroupPlacement, End, Group, Limits, StdinMode};
use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
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

/// What one work session (one worker, one coordinator run) did.
#[derive(Default)]
struct Session {
    done: AtomicU64,
    failed: AtomicU64,
    /// The coordinator's token moved on: commits are refused.
    refused: AtomicBool,
    /// The store stayed unreachable.
    error: Mutex<Option<String>>,
    /// Stream mode: a batch command failed (outcome, exit code, message);
    /// this process stops working, like a failed stream command locally.
    command_failed: Mutex<Option<CommandFailed>>,
}

/// A failed batch command: outcome, exit code of the run, the command's
/// own exit code, message.
type CommandFailed = (Outcome, i32, Option<i32>, String);

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
    /// Stream mode: the job's `command` (rendered) runs once per claimed
    /// batch instead of `items.run` once per key.
    stream: Option<Vec<String>>,
    session: Session,
}

type Done = (String, ItemState, Option<String>);

impl Work<'_> {
    fn over(&self) -> bool {
        self.a.control.stopping().is_some()
            || self.session.refused.load(Ordering::SeqCst)
            || lock(&self.session.error).is_some()
            || lock(&self.session.command_failed).is_some()
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
    fn run(&self, more: &(dyn Fn(&QueueCounts) -> bool + Sync)) {
        if let Some(argv) = &self.stream {
            return self.run_stream(argv, more);
        }
        let Some(store) = self.a.ctx.store.queue() else {
            return self.fail_store(no_queue().to_string());
        };
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
        let Some(store) = a.ctx.store.queue() else {
            return self.fail_store(no_queue().to_string());
        };
        // Keys still ours and not finished, with their process when running.
        let held: Mutex<HashMap<&str, Option<u64>>> =
            Mutex::new(keys.iter().map(|k| (k.as_str(), None)).collect());
        let lost: Mutex<HashSet<String>> = Mutex::default();
        let next = AtomicUsize::new(0);
        let sent = AtomicUsize::new(0);
        let (tx, rx) = mpsc::sync_channel::<Done>(MAX_BATCH);
        let (stop_renew, renew_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let stop_all = || {
                for id in lock(&held).values().flatten() {
                    a.control.stop_one(*id);
                }
            };
            let committer = s.spawn(move || self.commit_loop(rx, &stop_all));
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

    /// Stream mode: `concurrency` loops, each claiming a batch and running
    /// the job's command on it, all sharing one group committer.
    fn run_stream(&self, argv: &[String], more: &(dyn Fn(&QueueCounts) -> bool + Sync)) {
        let Some(store) = self.a.ctx.store.queue() else {
            return self.fail_store(no_queue().to_string());
        };
        let lease_ms = self.lease.as_millis() as i64;
        let (tx, rx) = mpsc::sync_channel::<Done>(MAX_BATCH);
        // The batch commands running now, by control id.
        let running: Mutex<HashSet<u64>> = Mutex::default();
        std::thread::scope(|s| {
            let stop_all = || {
                for id in lock(&running).iter() {
                    self.a.control.stop_one(*id);
                }
            };
            let committer = s.spawn(move || self.commit_loop(rx, &stop_all));
            let loops: Vec<_> = (0..self.concurrency)
                .map(|_| {
                    let tx = tx.clone();
                    let running = &running;
                    s.spawn(move || {
                        while !self.over() {
                            let now = crate::clock::now_ms();
                            let claimed = store.queue_claim(
                                self.scope_id,
                                &self.worker,
                                self.batch,
                                now,
                                lease_ms,
                            );
                            let keys = match claimed {
                                Ok(k) => k,
                                Err(e) => {
                                    return self.fail_store(format!("cannot claim keys: {e}"));
                                }
                            };
                            if keys.is_empty() {
                                match store.queue_counts(self.scope_id) {
                                    Ok(c) if !more(&c) => return,
                                    Ok(_) => std::thread::sleep(POLL),
                                    Err(e) => {
                                        return self
                                            .fail_store(format!("cannot read the queue: {e}"));
                                    }
                                }
                                continue;
                            }
                            tracing::debug!(worker = %self.worker, keys = keys.len(), "batch claimed");
                            if !self.stream_batch(argv, &keys, &tx, running) {
                                return;
                            }
                        }
                    })
                })
                .collect();
            drop(tx);
            for l in loops {
                let _ = l.join();
            }
            let _ = committer.join();
        });
    }

    /// Run the job's command on one claimed batch: the keys on its stdin,
    /// finished keys read from `BATCHGUARD_DONE_FD` and sent to the
    /// committer. Exit 0: keys it did not report are failed. Otherwise they
    /// go back to the queue. `false` when this process should stop working.
    fn stream_batch(
        &self,
        argv: &[String],
        keys: &[String],
        tx: &mpsc::SyncSender<Done>,
        running: &Mutex<HashSet<u64>>,
    ) -> bool {
        let a = self.a;
        let Some(store) = a.ctx.store.queue() else {
            self.fail_store(no_queue().to_string());
            return false;
        };
        // Keys handed out and not reported yet (still ours).
        let held: Mutex<HashSet<&str>> = Mutex::new(keys.iter().map(String::as_str).collect());
        let release = |why: &str| {
            let left: Vec<&str> = lock(&held).iter().copied().collect();
            if left.is_empty() {
                return;
            }
            match store.queue_release(self.scope_id, &self.worker, &left) {
                Ok(n) if n > 0 => a.note(&format!("{n} keys given back to the queue: {why}")),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot release keys; their lease expires"),
            }
        };
        let mut spec = a.spec(argv, CgroupPlacement::Join(self.runner.group.handle()));
        spec.stdin = StdinMode::Pipe;
        spec.done_fd = Some(DONE_FD);
        spec.env
            .push(("BATCHGUARD_DONE_FD".into(), DONE_FD.to_string().into()));
        let limits = Limits {
            timeout: self.items.item_timeout,
            kill_grace: a.job.kill_grace,
            memory_max: None,
        };
        let mut child = match supervise::spawn_with(spec, limits, self.runner.mode) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start `{}`: {e}", argv[0]);
                a.note(&msg);
                release("the command could not start");
                let code = e.exit_code();
                *lock(&self.session.command_failed) =
                    Some((Outcome::Failure, code, Some(code), msg));
                return false;
            }
        };
        let stdin = child.take_stdin();
        let done_reader = child.take_done_reader();
        let id = a.control.register(child.stop_handle());
        lock(running).insert(id);
        let (stop_renew, renew_rx) = mpsc::channel::<()>();
        let end = std::thread::scope(|s| {
            s.spawn(move || {
                let Some(stdin) = stdin else { return };
                let mut w = BufWriter::with_capacity(1 << 16, stdin);
                for k in keys {
                    if w.write_all(k.as_bytes())
                        .and_then(|_| w.write_all(b"\n"))
                        .is_err()
                    {
                        return; // the command stopped reading
                    }
                }
                let _ = w.flush();
            });
            let held_r = &held;
            let reader = s.spawn(move || {
                let mut ignored = 0u64;
                let Some(r) = done_reader else { return ignored };
                super::stream::read_done_keys(r, |key| {
                    match key.and_then(|k| lock(held_r).take(k)) {
                        Some(k) => return tx.send((k.to_string(), ItemState::Done, None)).is_ok(),
                        None => ignored += 1,
                    }
                    true
                });
                ignored
            });
            s.spawn(move || {
                let every = (self.lease / 3).max(Duration::from_millis(100));
                while let Err(mpsc::RecvTimeoutError::Timeout) = renew_rx.recv_timeout(every) {
                    let mine: Vec<&str> = lock(held_r).iter().copied().collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let until = crate::clock::now_ms() + self.lease.as_millis() as i64;
                    match store.queue_renew(self.scope_id, &self.worker, &mine, until) {
                        Ok(kept) if kept.len() < mine.len() => {
                            // Another worker has some of them now: a worker
                            // never keeps running a key it lost.
                            let kept: HashSet<&str> = kept.iter().map(String::as_str).collect();
                            let mut held = lock(held_r);
                            let lost = mine.iter().filter(|k| !kept.contains(*k)).count();
                            held.retain(|k| kept.contains(k));
                            drop(held);
                            tracing::warn!(lost, "lease lost: stopping the batch command");
                            a.control.stop_one(id);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot renew the lease; will retry"),
                    }
                }
            });
            let done = child.wait(|stream, line| log_line(a.log, stream.as_str(), "", line));
            let ignored = reader.join().unwrap_or(0);
            let _ = stop_renew.send(());
            if ignored > 0 {
                a.note(&format!(
                    "{ignored} lines on the done fd were not keys of this batch (unknown or repeated): ignored"
                ));
            }
            done.end
        });
        a.control.unregister(id);
        lock(running).remove(&id);
        if end == End::Exited(0) {
            let left: Vec<&str> = lock(&held).drain().collect();
            if !left.is_empty() {
                a.note(&format!(
                    "{} keys were handed to the command but never reported done: recorded as failed",
                    left.len()
                ));
            }
            for k in left {
                a.note(&format!("item {k} failed"));
                let e = "the job exited 0 without reporting this key done".to_string();
                if tx
                    .send((k.to_string(), ItemState::Failed, Some(e)))
                    .is_err()
                {
                    return false;
                }
            }
            return true;
        }
        release("the batch command did not finish");
        if a.control.stopping().is_some() || self.over() || matches!(end, End::Stopped(_)) {
            // Stopped by us (the run stops, a lease was lost): not the
            // command's failure.
            return !self.over();
        }
        let (outcome, code, exit_code, _) = crate::outcome::from_end(&end);
        let msg = format!(
            "the batch command ended {} (exit code {code}): this process stops working",
            outcome.as_str()
        );
        a.note(&msg);
        *lock(&self.session.command_failed) = Some((outcome, code, exit_code, msg));
        false
    }

    /// Group commit through `queue_finish` until every sender is gone.
    fn commit_loop(&self, rx: mpsc::Receiver<Done>, stop_all: &dyn Fn()) {
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
            // A failed batch command ends the session, but what was
            // reported done before is still committed.
            let over = self.a.control.stopping().is_some()
                || self.session.refused.load(Ordering::SeqCst)
                || lock(&self.session.error).is_some();
            if !over {
                self.commit(&batch, stop_all);
            }
            batch.clear();
        }
    }

    fn commit(&self, batch: &[Done], stop_all: &dyn Fn()) {
        let Some(store) = self.a.ctx.store.queue() else {
            return self.fail_store(no_queue().to_string());
        };
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
                        stop_all();
                    }
                    return;
                }
                Err(e) if started.elapsed() < STORE_PATIENCE => {
                    tracing::warn!(error = %e, "queue commit failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.fail_store(format!("the ledger cannot be written: {e}"));
                    stop_all();
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
    group_named(a, &a.record.id)
}

fn group_named(a: &Attempt<'_>, name: &str) -> Result<(Group, supervise::Enforcement)> {
    let mode = supervise::detect();
    let group = Group::create(name, a.job.memory_max, mode)
        .map_err(|e| Error::Usage(format!("cannot create the run's cgroup: {e}")))?;
    Ok((group, mode))
}

/// Prefix of a worker's cgroup name: `w-PID-STARTTIME-ID`. A worker has no
/// run row through which a later run could clean up after it, so the name
/// itself says whose it is.
const WORKER_CGROUP: &str = "w-";

/// A worker's cgroup, named after the worker process.
fn worker_group(a: &Attempt<'_>) -> Result<(Group, supervise::Enforcement)> {
    let pid = std::process::id() as i32;
    let start = supervise::procfs::start_time(pid).unwrap_or(0);
    let (group, mode) = group_named(a, &format!("{WORKER_CGROUP}{pid}-{start}-{}", a.record.id))?;
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
    if a.ctx.store.queue().is_none() {
        return Ok(refuse(a, no_queue().to_string()));
    }
    let stream = match items.mode {
        ItemsMode::Stream => {
            let argv = a.render("command", &a.job.command, None)?;
            a.note(&format!(
                "command (distributed stream mode, once per batch): {argv:?}"
            ));
            Some(argv)
        }
        ItemsMode::PerItem => None,
    };
    let store = a.ctx.store.as_ref();
    let pending: Vec<&str> = plan.pending.iter().map(|&i| keys.get(i as usize)).collect();
    let queue = store.queue().ok_or_else(no_queue)?;
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
        stream,
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
            let c = queue.queue_counts(scope_id)?;
            if !more(&c) {
                break;
            }
            std::thread::sleep(POLL);
        }
    } else {
        work.run(&more);
    }
    let c1 = queue.queue_counts(scope_id)?;
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
    let mut exit_code = (outcome == Outcome::Success).then_some(0);
    let mut error = None;
    let (outcome, code) = match lock(&work.session.command_failed).take() {
        Some((o, c, e, msg)) if outcome == Outcome::Success => {
            exit_code = e;
            error = Some(msg);
            (o, c)
        }
        _ => (outcome, code),
    };
    Ok(AttemptResult {
        outcome,
        code,
        end: RunEnd {
            exit_code,
            signal,
            error,
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
    if ctx.store.queue().is_none() {
        return Err(no_queue().into());
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
            let (group, mode) = worker_group(a)?;
            let run_argv = items.run.clone().unwrap_or_default();
            let stream = match items.mode {
                ItemsMode::Stream => Some(a.render("command", &a.job.command, None)?),
                ItemsMode::PerItem => None,
            };
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
                stream,
                session: Session::default(),
            };
            let more =
                |_: &QueueCounts| matches!(ctx.store.get_run(&coord.id), Ok(Some(r)) if alive(&r));
            work.run(&more);
            // Workers that died meanwhile (SIGKILL) are cleaned up now.
            if let Some(parent) = group.path().and_then(|p| p.parent()) {
                remove_dead_worker_groups(parent, a.job.kill_grace);
            }
            a.note(&format!(
                "worker {me}: {} done, {} failed for run {}",
                work.session.done.load(Ordering::SeqCst),
                work.session.failed.load(Ordering::SeqCst),
                coord.id
            ));
            if let Some(e) = lock(&work.session.error).clone() {
                return Ok::<_, Error>(Some((e, crate::exit::UNAVAILABLE)));
            }
            let failed = lock(&work.session.command_failed).take();
            Ok(failed.map(|(_, _, _, msg)| (msg, crate::exit::FAILURE)))
        })??;
        if let Some((e, code)) = failed_store {
            eprintln!("batchguard worker: {e}");
            return Ok(code);
        }
    }
    Ok(crate::exit::OK)
}
