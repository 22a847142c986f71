//! The distributed source and sink of the item engine (SPEC §6): batches
//! claimed from the scope's queue under a lease (`FOR UPDATE SKIP LOCKED`),
//! renewed while they run and released when unfinished; finished keys
//! acknowledged in the same transaction as their ledger update, fenced by
//! the coordinator's token.

use super::engine::{Batch, Claim, KeySet, Sink, Source};
use super::keys::Keys;
use crate::store::{self, Committer, LedgerUpdate, QueueCounts, QueueStore};
use std::time::Duration;

/// Whether to keep waiting when the queue has nothing to claim.
pub(crate) type More<'a> = dyn Fn(&QueueCounts) -> bool + Sync + 'a;

/// Claims from one scope's queue for one worker.
pub(crate) struct QueueSource<'a> {
    pub queue: &'a dyn QueueStore,
    pub scope_id: i64,
    pub worker: &'a str,
    pub lease: Duration,
    /// Asked when nothing could be claimed: `false` ends the work.
    pub more: &'a More<'a>,
}

impl<'k> Source<'k> for QueueSource<'_> {
    fn claim(&self, n: usize) -> Result<Claim<'k>, String> {
        let now = crate::clock::now_ms();
        let lease_ms = self.lease.as_millis() as i64;
        let claimed = self
            .queue
            .queue_claim(&store::QueueClaim {
                scope_id: self.scope_id,
                worker: self.worker,
                n,
                now_ms: now,
                lease_ms,
            })
            .map_err(|e| format!("cannot claim keys: {e}"))?;
        if !claimed.is_empty() {
            let keys = Keys::from_strings(&claimed);
            let members = (0..keys.len() as u32).collect();
            return Ok(Claim::Batch(Batch {
                keys: KeySet::Claimed(keys),
                members,
            }));
        }
        let counts = self
            .queue
            .queue_counts(self.scope_id)
            .map_err(|e| format!("cannot read the queue: {e}"))?;
        Ok(if (self.more)(&counts) {
            Claim::Wait
        } else {
            Claim::Finished
        })
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn renew(&self, held: &[&str]) -> Vec<String> {
        let until = crate::clock::now_ms() + self.lease.as_millis() as i64;
        match self.queue.queue_renew(&store::QueueRenew {
            scope_id: self.scope_id,
            worker: self.worker,
            keys: held,
            lease_until_ms: until,
        }) {
            Ok(kept) => held
                .iter()
                .filter(|k| !kept.iter().any(|c| c == *k))
                .map(|k| k.to_string())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease; will retry");
                Vec::new()
            }
        }
    }

    fn release(&self, keys: &[&str]) -> u64 {
        match self.queue.queue_release(self.scope_id, self.worker, keys) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot release keys; their lease expires");
                0
            }
        }
    }
}

/// Ledger update and queue acknowledgement in one transaction.
pub(crate) struct QueueSink<'a> {
    pub queue: &'a dyn QueueStore,
    pub scope_id: i64,
    pub who: Committer<'a>,
    pub worker: &'a str,
    pub max_attempts: u32,
}

impl Sink for QueueSink<'_> {
    fn commit(&self, updates: &[LedgerUpdate<'_>]) -> store::Result<bool> {
        self.queue.queue_finish(&store::QueueFinish {
            commit: store::LedgerCommit {
                scope_id: self.scope_id,
                who: self.who,
                now_ms: crate::clock::now_ms(),
                updates,
            },
            worker: self.worker,
            max_attempts: self.max_attempts,
        })
    }

    fn records_in_flight(&self) -> bool {
        false
    }
}
