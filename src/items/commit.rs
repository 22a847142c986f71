//! Group commit of ledger updates. Workers and the stream reader send
//! updates to one committer thread, which writes them in batches (up to
//! [`MAX_BATCH`] updates, or whatever arrived within [`MAX_DELAY`] of the
//! first), each batch one transaction that checks the run's fencing token.
//! So the ledger is never the bottleneck, and a crash loses at most the
//! updates of the batch being gathered (their keys are re-done, never lost).

use super::keys::Keys;
use crate::runner::{Control, Stop};
use crate::store::{Committer, ItemState, LedgerUpdate, Store};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// The largest batch committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// How long the first update of a batch waits for company.
pub const MAX_DELAY: Duration = Duration::from_millis(20);
/// How long a failing store is retried before the run gives up.
const STORE_PATIENCE: Duration = Duration::from_secs(60);

/// What the committer has durably recorded.
#[derive(Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub refused: AtomicBool,
    pub error: Mutex<Option<String>>,
}

/// A key's change, sent to the committer: the key by its index.
#[derive(Debug)]
pub struct Msg {
    pub idx: u32,
    pub state: ItemState,
    pub error: Option<String>,
}

impl Msg {
    pub fn new(idx: u32, state: ItemState) -> Msg {
        Msg {
            idx,
            state,
            error: None,
        }
    }
}

pub type Sender = SyncSender<Msg>;

pub fn channel() -> (Sender, Receiver<Msg>) {
    sync_channel(MAX_BATCH)
}

/// Run the committer until every sender is gone.
pub fn run(
    store: &dyn Store,
    keys: &Keys,
    scope_id: i64,
    who: Committer<'_>,
    rx: Receiver<Msg>,
    stats: &Stats,
    control: &Control,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    let mut busy = Duration::ZERO;
    let mut batches = 0u64;
    loop {
        let first = match rx.recv() {
            Ok(u) => u,
            Err(_) => {
                tracing::debug!(batches, busy = ?busy, "committer done");
                return;
            }
        };
        batch.push(first);
        let deadline = Instant::now() + MAX_DELAY;
        let mut open = true;
        while batch.len() < MAX_BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(u) => batch.push(u),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !stats.refused.load(Ordering::SeqCst) && stats.error.lock().is_ok_and(|e| e.is_none()) {
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
            let t = Instant::now();
            commit(store, scope_id, who, &updates, stats, control);
            busy += t.elapsed();
            batches += 1;
        }
        batch.clear();
        if !open {
            tracing::debug!(batches, busy = ?busy, "committer done");
            return;
        }
    }
}

fn commit(
    store: &dyn Store,
    scope_id: i64,
    who: Committer<'_>,
    batch: &[LedgerUpdate<'_>],
    stats: &Stats,
    control: &Control,
) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match store.ledger_commit(scope_id, who, crate::clock::now_ms(), batch) {
            Ok(true) => {
                let done = batch.iter().filter(|u| u.state == ItemState::Done).count();
                let failed = batch
                    .iter()
                    .filter(|u| u.state == ItemState::Failed)
                    .count();
                stats.done.fetch_add(done as u64, Ordering::SeqCst);
                stats.failed.fetch_add(failed as u64, Ordering::SeqCst);
                return;
            }
            Ok(false) => {
                tracing::warn!("ledger refused a batch: a newer run holds the lock");
                stats.refused.store(true, Ordering::SeqCst);
                control.request_stop(Stop::Fenced);
                return;
            }
            Err(e) if started.elapsed() < STORE_PATIENCE => {
                tracing::warn!(error = %e, "ledger commit failed; retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let msg = format!("the ledger cannot be written: {e}");
                tracing::error!("{msg}");
                if let Ok(mut slot) = stats.error.lock() {
                    *slot = Some(msg);
                }
                control.request_stop(Stop::Store);
                return;
            }
        }
    }
}
