//! Group commit of ledger updates. Workers and the stream reader send
//! updates to one committer thread per batch, which writes them in groups
//! (whatever arrived while the previous group was being committed and
//! until [`COMMIT_PACE`] after it began, up to [`MAX_BATCH`]), each group
//! one transaction through the engine's sink
//! that checks the run's fencing token. So the ledger is never the
//! bottleneck, and a crash loses at most the updates of the group being
//! gathered (their keys are re-done, never lost).

use crate::store::{self, ItemState, LedgerUpdate};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

/// The largest group committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// How long in-flight markers alone wait for an outcome to share their
/// transaction with ([`await_company`]).
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(5);
/// The shortest time between the starts of two commits, unless the group is
/// full ([`gather`]). Measured on per-item mode (3,000 `/bin/true`, 2 at a
/// time, docs/performance.md): committing the moment the previous commit
/// returns made groups of two updates (one key's in-flight marker and its
/// outcome) and a transaction per key, whose CPU the item processes then
/// waited for; at 5 ms a group holds a few keys and throughput rose 11%.
/// A crash redoes at most the outcomes of those 5 ms.
const COMMIT_PACE: Duration = Duration::from_millis(5);
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

impl Stats {
    /// Count a committed group.
    pub fn count(&self, updates: &[LedgerUpdate<'_>]) {
        let done = updates
            .iter()
            .filter(|u| u.state == ItemState::Done)
            .count();
        let failed = updates
            .iter()
            .filter(|u| u.state == ItemState::Failed)
            .count();
        self.done.fetch_add(done as u64, Ordering::SeqCst);
        self.failed.fetch_add(failed as u64, Ordering::SeqCst);
    }
}

/// A key's change, sent to the committer: the key by its index in the
/// batch's key set.
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

/// Gather updates into groups and hand each to `commit`, until every
/// sender is gone. A group is what arrived while the previous commit ran
/// and until [`COMMIT_PACE`] after it started (at most [`MAX_BATCH`]). A
/// slow trickle is recorded key by key at once (the previous commit is long
/// past); a stream of short items shares transactions; a flood batches
/// itself. A group of in-flight markers alone also waits, up to
/// [`IN_FLIGHT_GRACE`], for an outcome to share its transaction
/// ([`await_company`]). Either way a crash redoes at most what one commit
/// holds plus what was in flight.
pub fn gather(rx: Receiver<Msg>, mut commit: impl FnMut(&[Msg])) {
    let mut group: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    let mut busy = Duration::ZERO;
    let mut groups = 0u64;
    let mut open = true;
    // Long ago: the first group is committed at once.
    let mut last_start = Instant::now()
        .checked_sub(COMMIT_PACE)
        .unwrap_or_else(Instant::now);
    while open {
        match rx.recv() {
            Ok(first) => group.push(first),
            Err(_) => break,
        }
        while group.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(u) => group.push(u),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if open && only_in_flight(&group) {
            open = await_company(&rx, &mut group);
        }
        if open {
            open = fill_until(&rx, &mut group, last_start + COMMIT_PACE, |_| false);
        }
        let t = Instant::now();
        last_start = t;
        commit(&group);
        busy += t.elapsed();
        groups += 1;
        group.clear();
    }
    tracing::debug!(groups, busy = ?busy, "committer done");
}

/// Add what arrives until `until`, the group is full, or `enough` says a
/// message just added completes it. Returns whether the senders are still
/// there.
fn fill_until(
    rx: &Receiver<Msg>,
    group: &mut Vec<Msg>,
    until: Instant,
    enough: impl Fn(&Msg) -> bool,
) -> bool {
    while group.len() < MAX_BATCH {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(u) => {
                let done = enough(&u);
                group.push(u);
                if done {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    true
}

/// Whether a group holds nothing but in-flight markers.
fn only_in_flight(group: &[Msg]) -> bool {
    group.iter().all(|m| m.state == ItemState::InFlight)
}

/// A group of in-flight markers only waits up to [`IN_FLIGHT_GRACE`] for an
/// outcome to ride with. The marker tells the operator which keys a crash
/// interrupted; the key is redone whether or not it was written, so it
/// need not cost a transaction of its own: a short item's marker and its
/// outcome go in one. Returns whether the senders are still there.
fn await_company(rx: &Receiver<Msg>, group: &mut Vec<Msg>) -> bool {
    fill_until(rx, group, Instant::now() + IN_FLIGHT_GRACE, |u| {
        u.state != ItemState::InFlight
    })
}

/// Retry a commit while the store fails, for up to [`STORE_PATIENCE`].
pub fn with_patience(mut commit: impl FnMut() -> store::Result<bool>) -> store::Result<bool> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match commit() {
            Err(e) if started.elapsed() < STORE_PATIENCE => {
                tracing::warn!(error = %e, "ledger commit failed; retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups as the committer formed them, by state.
    fn groups_of(send: impl FnOnce(Sender) + Send + 'static) -> Vec<Vec<ItemState>> {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || send(tx));
        let mut groups = Vec::new();
        gather(rx, |g| groups.push(g.iter().map(|m| m.state).collect()));
        sender.join().unwrap();
        groups
    }

    #[test]
    fn a_short_items_marker_and_outcome_share_one_commit() {
        let groups = groups_of(|tx| {
            tx.send(Msg::new(0, ItemState::InFlight)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            tx.send(Msg::new(0, ItemState::Done)).unwrap();
        });
        assert_eq!(groups, vec![vec![ItemState::InFlight, ItemState::Done]]);
    }

    #[test]
    fn a_long_items_marker_is_committed_alone_after_the_grace() {
        let groups = groups_of(|tx| {
            tx.send(Msg::new(0, ItemState::InFlight)).unwrap();
            std::thread::sleep(IN_FLIGHT_GRACE * 6);
            tx.send(Msg::new(0, ItemState::Failed)).unwrap();
        });
        assert_eq!(
            groups,
            vec![vec![ItemState::InFlight], vec![ItemState::Failed]]
        );
    }

    /// 300 outcomes, one every 200 µs or more: no two commits start closer
    /// than the pace (the groups are not full), and they still come every
    /// pace or so rather than waiting for the end.
    #[test]
    fn a_stream_of_outcomes_is_committed_at_the_pace() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            for i in 0..300 {
                tx.send(Msg::new(i, ItemState::Done)).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let mut starts = Vec::new();
        let mut keys = 0;
        gather(rx, |g| {
            starts.push(Instant::now());
            keys += g.len();
        });
        sender.join().unwrap();
        assert_eq!(keys, 300);
        // The closure runs a moment after the committer took its start
        // time; the last group goes at once when the senders are gone.
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let (_, paced) = gaps.split_last().expect("several commits");
        assert!(paced.iter().all(|&g| g >= COMMIT_PACE * 9 / 10), "{gaps:?}");
        assert!(starts.len() >= 3, "{} commits", starts.len());
    }

    #[test]
    fn an_outcome_is_committed_without_waiting() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            tx.send(Msg::new(0, ItemState::Done)).unwrap();
            std::thread::sleep(IN_FLIGHT_GRACE * 6);
        });
        let t = Instant::now();
        let mut at = Vec::new();
        gather(rx, |g| at.push((g.len(), t.elapsed())));
        sender.join().unwrap();
        assert_eq!(at.len(), 1);
        assert!(at[0].1 < IN_FLIGHT_GRACE * 3, "{at:?}");
    }
}
