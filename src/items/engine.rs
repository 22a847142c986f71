//! The one item engine behind every mode: per-item and stream, local and
//! distributed, sharded or not. A mode is a [`Source`] of keys and a
//! [`Sink`] for finished ones; the engine supplies the rest, the same way
//! for all of them:
//!
//! - **lanes** claim batches from the source until it is finished: one
//!   lane in per-item mode (its batch goes to a pool of `parallelism`
//!   workers, each item one process tree), `parallelism` lanes in
//!   distributed stream mode, each batch one run of the job's command with
//!   the keys on stdin and finished keys on the done fd;
//! - one **committer** per batch groups updates into transactions
//!   ([`commit`](super::commit)) through the sink, fenced by the run's token;
//! - one **lease renewer** per batch, when the source hands out leases, stops
//!   any item (or batch command) whose key another worker took over;
//! - one **monitor** for a run that owns its limits: the run-level
//!   `timeout` and the memory of the run's cgroup.
//!
//! Keys left unfinished when a batch ends go back to the source.

use super::FailedList;
use super::commit::{self, Msg, Stats};
use super::keys::Keys;
use super::per_item::{Bucket, ItemRunner};
use super::stream::{DONE_FD, read_done_keys};
use crate::exec::{Attempt, AttemptResult, Stop};
use crate::outcome::Outcome;
use crate::store::{self, ItemState, LedgerUpdate};
use batchguard_supervise::{self as supervise, CgroupPlacement, Group, Limits, StdinMode};
use batchguard_supervise::{StopHandle, StopReason};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long an idle lane waits before asking the source again.
pub const POLL: Duration = Duration::from_millis(200);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keys of a batch: the run's own key set (local modes), or the keys
/// claimed from a queue.
pub(crate) enum KeySet<'k> {
    Run(&'k Keys),
    Claimed(Keys),
}

impl std::ops::Deref for KeySet<'_> {
    type Target = Keys;
    fn deref(&self) -> &Keys {
        match self {
            KeySet::Run(k) => k,
            KeySet::Claimed(k) => k,
        }
    }
}

/// Keys to work on, by index into `keys`.
pub(crate) struct Batch<'k> {
    pub keys: KeySet<'k>,
    pub members: Vec<u32>,
}

impl Batch<'_> {
    fn key(&self, i: u32) -> &str {
        self.keys.get(i as usize)
    }
}

/// What a source answers when asked for work.
pub(crate) enum Claim<'k> {
    Batch(Batch<'k>),
    /// Nothing to hand out now; ask again after [`POLL`].
    Wait,
    /// No more work will come.
    Finished,
}

/// Where keys come from.
pub(crate) trait Source<'k>: Sync {
    /// Up to `n` keys (local sources hand out everything at once).
    fn claim(&self, n: usize) -> Result<Claim<'k>, String>;
    /// How long a claim lasts, when it must be renewed.
    fn lease(&self) -> Option<Duration>;
    /// Renew the claim on `held`; returns the keys that were lost (another
    /// worker has them now).
    fn renew(&self, held: &[&str]) -> Vec<String>;
    /// Give unfinished keys back; returns how many went back.
    fn release(&self, keys: &[&str]) -> u64;
}

/// Where finished keys go.
pub(crate) trait Sink: Sync {
    /// Commit one batch of updates: `Ok(false)` when it was refused (the
    /// run's token moved on).
    fn commit(&self, updates: &[LedgerUpdate<'_>]) -> store::Result<bool>;
    /// Does the sink record keys in flight (the local ledger does, so a
    /// crash shows what was being worked on)?
    fn records_in_flight(&self) -> bool;
}

/// The command of stream mode and where its process trees live.
pub(crate) struct StreamCommand {
    pub argv: Vec<String>,
    /// Local stream mode: the command is the run's own tree, with the
    /// job's limits; distributed: one per batch, joining the run's group.
    pub owns_run: bool,
}

/// Everything an engine run shares.
pub(crate) struct Engine<'a> {
    pub a: &'a Attempt<'a>,
    pub items: &'a batchguard_config::Items,
    /// The run's cgroup (per-item mode and distributed stream mode).
    pub group: Option<Group>,
    pub enforcement: supervise::Enforcement,
    pub stream: Option<StreamCommand>,
    /// Keys per claim from a queue.
    pub batch: usize,
    /// Items (per-item) or lanes (distributed stream) at once.
    pub parallelism: usize,
    /// The engine owns the run: a refused commit, a store failure, the
    /// run's timeout or memory stop the whole run. A worker only ends its
    /// session with that coordinator.
    pub owns_run: bool,
    pub stats: Stats,
    pub failed: FailedList,
    /// A stream command that failed: this process stops working and the
    /// run takes its outcome.
    pub command_failed: Mutex<Option<AttemptResult>>,
    /// The result of a stream command that was the whole run.
    pub command_result: Mutex<Option<AttemptResult>>,
    bucket: Option<Mutex<Bucket>>,
    /// Live process trees of this engine, to stop them when its session
    /// ends (a worker refused by its coordinator's token).
    live: Mutex<HashMap<u64, StopHandle>>,
    next_live: AtomicU64,
    session_over: AtomicBool,
}

impl<'a> Engine<'a> {
    pub fn new(a: &'a Attempt<'a>, items: &'a batchguard_config::Items) -> Engine<'a> {
        Engine {
            a,
            items,
            group: None,
            enforcement: supervise::Enforcement::Poll,
            stream: None,
            batch: usize::MAX,
            parallelism: items.parallelism.max(1) as usize,
            owns_run: true,
            stats: Stats::default(),
            failed: FailedList::default(),
            command_failed: Mutex::new(None),
            command_result: Mutex::new(None),
            bucket: items.rate.map(|r| Mutex::new(Bucket::new(r.per_second))),
            live: Mutex::default(),
            next_live: AtomicU64::new(0),
            session_over: AtomicBool::new(false),
        }
    }

    /// Has this engine's work ended (the run stops, a commit was refused,
    /// the store failed, a batch command failed)?
    pub fn over(&self) -> bool {
        self.a.control.stopping().is_some()
            || self.session_over.load(Ordering::SeqCst)
            || self.stats.refused.load(Ordering::SeqCst)
            || lock(&self.stats.error).is_some()
            || lock(&self.command_failed).is_some()
    }

    /// Work until the source is finished or the work is over.
    pub fn run(&self, source: &dyn Source<'_>, sink: &dyn Sink) {
        let lanes = match &self.stream {
            Some(cmd) if !cmd.owns_run => self.parallelism,
            _ => 1,
        };
        let (lanes_done, lanes_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            for _ in 0..lanes {
                let lanes_done = lanes_done.clone();
                s.spawn(move || {
                    self.lane(source, sink);
                    drop(lanes_done);
                });
            }
            drop(lanes_done);
            self.monitor(&lanes_rx);
        });
    }

    /// Claim and process batches until there are no more.
    fn lane(&self, source: &dyn Source<'_>, sink: &dyn Sink) {
        while !self.over() {
            match source.claim(self.batch) {
                Ok(Claim::Batch(b)) => {
                    tracing::debug!(keys = b.members.len(), "batch claimed");
                    self.process(source, sink, &b);
                }
                Ok(Claim::Wait) => std::thread::sleep(POLL),
                Ok(Claim::Finished) => return,
                Err(msg) => return self.fail_store(msg),
            }
        }
    }

    /// Watch the run as a whole until every lane ended: its deadline and
    /// the memory of its group (per-item mode samples it in poll mode).
    fn monitor(&self, lanes: &mpsc::Receiver<()>) {
        if !self.owns_run {
            let _ = lanes.recv();
            return;
        }
        let deadline = self.a.job.timeout.map(|t| Instant::now() + t);
        loop {
            match lanes.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let stopping = self.a.control.stopping().is_some();
            if deadline.is_some_and(|d| Instant::now() >= d) && !stopping {
                self.a.note("run timeout reached: stopping every item");
                self.a.control.request_stop(Stop::Timeout);
            }
            if let Some(group) = &self.group {
                if group.sample() || group.oom_kills() > 0 {
                    if self.a.control.stopping().is_none() {
                        self.a.note("run memory limit reached: stopping every item");
                    }
                    self.a.control.request_stop(Stop::Oom);
                    group.kill_all(Duration::ZERO);
                }
            }
        }
    }

    fn fail_store(&self, msg: String) {
        tracing::error!("{msg}");
        self.a.note(&msg);
        *lock(&self.stats.error) = Some(msg);
        if self.owns_run {
            self.a.control.request_stop(Stop::Store);
        }
        self.stop_live();
    }

    /// A commit was refused: the run's token moved on.
    fn refused(&self) {
        self.a.note("the run's token moved on: commits refused");
        self.stats.refused.store(true, Ordering::SeqCst);
        if self.owns_run {
            self.a.control.request_stop(Stop::Fenced);
        } else {
            self.session_over.store(true, Ordering::SeqCst);
            self.stop_live();
        }
    }

    fn track(&self, h: StopHandle) -> u64 {
        let id = self.next_live.fetch_add(1, Ordering::SeqCst);
        lock(&self.live).insert(id, h);
        id
    }

    fn untrack(&self, id: u64) {
        lock(&self.live).remove(&id);
    }

    fn stop_live(&self) {
        for h in lock(&self.live).values() {
            h.stop(StopReason::Requested);
        }
    }

    /// Process one batch, with its committer and lease renewer; keys left
    /// unfinished go back to the source.
    fn process(&self, source: &dyn Source<'_>, sink: &dyn Sink, b: &Batch<'_>) {
        // The batch's keys still ours and unfinished, with the process
        // tree working on each (per-item) once started.
        let held: Mutex<HashMap<u32, Option<StopHandle>>> =
            Mutex::new(b.members.iter().map(|&i| (i, None)).collect());
        let (tx, rx) = commit::channel();
        let (stop_renew, renew_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let held = &held;
            s.spawn(|| self.commit_loop(sink, &b.keys, rx));
            if let Some(lease) = source.lease() {
                s.spawn(move || self.renew_loop(source, b, held, lease, renew_rx));
            }
            match &self.stream {
                Some(cmd) => self.stream_batch(cmd, b, held, tx, source.lease().is_some()),
                None => self.item_pool(sink, b, held, tx),
            }
            let _ = stop_renew.send(());
        });
        let left: Vec<&str> = lock(&held).keys().map(|&i| b.key(i)).collect();
        if !left.is_empty() {
            let n = source.release(&left);
            if n > 0 {
                self.a
                    .note(&format!("{n} unfinished keys given back to the queue"));
            }
        }
    }

    /// Renew the lease on the keys still held; stop the work on lost ones.
    fn renew_loop(
        &self,
        source: &dyn Source<'_>,
        b: &Batch<'_>,
        held: &Mutex<HashMap<u32, Option<StopHandle>>>,
        lease: Duration,
        stop: mpsc::Receiver<()>,
    ) {
        let every = (lease / 3).max(Duration::from_millis(100));
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            let mine: Vec<&str> = lock(held).keys().map(|&i| b.key(i)).collect();
            if mine.is_empty() {
                continue;
            }
            let lost = source.renew(&mine);
            let mut held = lock(held);
            for key in &lost {
                tracing::warn!(key = %key, "lease lost: stopping its work");
                let Some(i) = b.keys.find(key) else { continue };
                if let Some(Some(h)) = held.remove(&i) {
                    h.stop(StopReason::Requested);
                }
            }
        }
    }

    /// Group commit through the sink until every sender is gone.
    fn commit_loop(&self, sink: &dyn Sink, keys: &Keys, rx: mpsc::Receiver<Msg>) {
        commit::gather(rx, |batch| {
            if self.stats.refused.load(Ordering::SeqCst) || lock(&self.stats.error).is_some() {
                return;
            }
            // Sorted by key: neighbouring rows land on the same B-tree pages.
            let mut updates: Vec<LedgerUpdate<'_>> = batch
                .iter()
                .map(|m| LedgerUpdate {
                    key: keys.get(m.idx as usize),
                    state: m.state,
                    error: m.error.as_deref(),
                })
                .collect();
            updates.sort_by(|a, b| a.key.cmp(b.key));
            match commit::with_patience(|| sink.commit(&updates)) {
                Ok(true) => self.stats.count(&updates),
                Ok(false) => self.refused(),
                Err(e) => self.fail_store(format!("the ledger cannot be written: {e}")),
            }
        });
    }

    /// Per-item mode: a pool of workers, each running one key at a time.
    fn item_pool(
        &self,
        sink: &dyn Sink,
        b: &Batch<'_>,
        held: &Mutex<HashMap<u32, Option<StopHandle>>>,
        tx: commit::Sender,
    ) {
        let Some(group) = &self.group else { return };
        let run_argv = self.items.run.clone().unwrap_or_default();
        let runner = ItemRunner {
            a: self.a,
            items: self.items,
            group,
            run_argv: &run_argv,
            mode: self.enforcement,
        };
        let next = AtomicUsize::new(0);
        let workers = self.parallelism.min(b.members.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (runner, next) = (&runner, &next);
                s.spawn(move || {
                    while !self.over() {
                        let Some(&i) = b.members.get(next.fetch_add(1, Ordering::SeqCst)) else {
                            break;
                        };
                        if !self.one_item(sink, runner, b, i, held, &tx) {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// One key of per-item mode; `false` when the committer is gone.
    fn one_item(
        &self,
        sink: &dyn Sink,
        runner: &ItemRunner<'_>,
        b: &Batch<'_>,
        i: u32,
        held: &Mutex<HashMap<u32, Option<StopHandle>>>,
        tx: &commit::Sender,
    ) -> bool {
        if !lock(held).contains_key(&i) {
            return true; // lost before it started
        }
        if let Some(bucket) = &self.bucket {
            lock(bucket).take();
        }
        if self.over() {
            return true;
        }
        if sink.records_in_flight() && tx.send(Msg::new(i, ItemState::InFlight)).is_err() {
            return false;
        }
        let key = b.key(i);
        let started = |h: &StopHandle| {
            let id = self.track(h.clone());
            match lock(held).get_mut(&i) {
                Some(slot) => *slot = Some(h.clone()),
                None => h.stop(StopReason::Requested),
            }
            id
        };
        let r = runner.run_key(key, &started, &|id| self.untrack(id));
        let Some((state, error)) = r else {
            // Stopped: it stays held, so it goes back to the source (and
            // stays in flight in the ledger, redone by the next run).
            return true;
        };
        let ours = lock(held).remove(&i).is_some();
        // A failure after the lease was lost is not ours to count; a
        // success is recorded all the same.
        if state == ItemState::Failed {
            if !ours {
                return true;
            }
            self.failed.push(key);
        }
        tx.send(Msg {
            idx: i,
            state,
            error,
        })
        .is_ok()
    }

    /// Stream mode: the job's command on one batch, its keys on stdin,
    /// finished keys read from the done fd. Exit 0: keys it did not report
    /// are failed; otherwise they stay unfinished.
    fn stream_batch(
        &self,
        cmd: &StreamCommand,
        b: &Batch<'_>,
        held: &Mutex<HashMap<u32, Option<StopHandle>>>,
        tx: commit::Sender,
        leased: bool,
    ) {
        let a = self.a;
        let Some(mut child) = self.spawn_stream(cmd) else {
            return;
        };
        let stdin = child.take_stdin();
        let done_reader = child.take_done_reader();
        let handle = child.stop_handle();
        let live_id = self.track(handle.clone());
        if leased {
            // A lost lease on any key stops the batch's command.
            for slot in lock(held).values_mut() {
                *slot = Some(handle.clone());
            }
        }
        let reader_tx = tx.clone();
        let result = std::thread::scope(|s| {
            s.spawn(move || write_keys(stdin, b));
            let reader = s.spawn(move || {
                let mut ignored = 0u64;
                if let Some(r) = done_reader {
                    read_done_keys(r, |key| {
                        let idx = key.and_then(|k| b.keys.find(k));
                        match idx.filter(|i| lock(held).remove(i).is_some()) {
                            Some(i) => return reader_tx.send(Msg::new(i, ItemState::Done)).is_ok(),
                            None => ignored += 1,
                        }
                        true
                    });
                }
                ignored
            });
            let result = self.wait_stream(cmd, child);
            let ignored = reader.join().unwrap_or(0);
            if ignored > 0 {
                a.note(&format!(
                    "{ignored} lines on the done fd were not pending keys of this batch (unknown or repeated): ignored"
                ));
            }
            result
        });
        self.untrack(live_id);
        self.stream_ended(cmd, result, held, &tx, b);
    }

    fn spawn_stream(&self, cmd: &StreamCommand) -> Option<supervise::Child> {
        let a = self.a;
        let (placement, limits) = match (cmd.owns_run, &self.group) {
            (false, Some(group)) => (
                CgroupPlacement::Join(group.handle()),
                Limits {
                    timeout: self.items.item_timeout,
                    kill_grace: a.job.kill_grace,
                    memory_max: None,
                },
            ),
            _ => (
                CgroupPlacement::Create {
                    name: a.record.id.clone(),
                },
                a.run_limits(),
            ),
        };
        let mut spec = a.spec(&cmd.argv, placement);
        spec.stdin = StdinMode::Pipe;
        spec.done_fd = Some(DONE_FD);
        spec.env
            .push(("BATCHGUARD_DONE_FD".into(), DONE_FD.to_string().into()));
        let spawned = if cmd.owns_run {
            supervise::spawn(spec, limits)
        } else {
            supervise::spawn_with(spec, limits, self.enforcement)
        };
        match spawned {
            Ok(child) => Some(child),
            Err(e) => {
                *lock(&self.command_failed) = Some(a.spawn_failed(&cmd.argv, &e));
                None
            }
        }
    }

    fn wait_stream(&self, cmd: &StreamCommand, child: supervise::Child) -> AttemptResult {
        let a = self.a;
        if cmd.owns_run {
            return a.wait_child(child, "").unwrap_or_else(|e| {
                AttemptResult::failed(
                    Outcome::failure(e.exit_code()),
                    e.to_string(),
                    Default::default(),
                )
            });
        }
        let id = a.control.register(child.stop_handle());
        let done = child.wait(|stream, line| a.log_line(stream.as_str(), "", line));
        a.control.unregister(id);
        let (outcome, exit_code) = Outcome::from_end(&done.end);
        AttemptResult::new(
            outcome,
            crate::store::RunEnd {
                exit_code,
                signal: outcome.signal(),
                ..Default::default()
            },
        )
    }

    /// After a batch command: unreported keys of a successful command are
    /// failed; a command that failed by itself ends this process's work.
    fn stream_ended(
        &self,
        cmd: &StreamCommand,
        result: AttemptResult,
        held: &Mutex<HashMap<u32, Option<StopHandle>>>,
        tx: &commit::Sender,
        b: &Batch<'_>,
    ) {
        let a = self.a;
        if result.outcome.is_success() {
            let left: Vec<u32> = lock(held).drain().map(|(i, _)| i).collect();
            if !left.is_empty() {
                a.note(&format!(
                    "{} keys were handed to the job but never reported done: recorded as failed",
                    left.len()
                ));
            }
            for i in left {
                self.failed.push(b.key(i));
                let error = Some("the job exited 0 without reporting this key done".into());
                let _ = tx.send(Msg {
                    idx: i,
                    state: ItemState::Failed,
                    error,
                });
            }
        } else if !cmd.owns_run && !self.over() {
            let msg = format!(
                "the batch command ended {} (exit code {}): this process stops working",
                result.outcome.as_str(),
                result.outcome.exit_code()
            );
            a.note(&msg);
            *lock(&self.command_failed) = Some(AttemptResult::failed(
                result.outcome,
                msg,
                result.end.clone(),
            ));
        }
        if cmd.owns_run {
            *lock(&self.command_result) = Some(result);
        }
    }
}

/// Hand the batch's keys to the command, one per line, until it stops
/// reading.
fn write_keys(stdin: Option<std::process::ChildStdin>, b: &Batch<'_>) {
    let Some(stdin) = stdin else { return };
    let mut w = BufWriter::with_capacity(1 << 16, stdin);
    for &i in &b.members {
        if w.write_all(b.key(i).as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .is_err()
        {
            return;
        }
    }
    let _ = w.flush();
}
