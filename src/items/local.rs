//! The local source and sink of the item engine: the run's pending keys
//! (after the ledger plan and the shard filter), handed out as one batch,
//! and the ledger's fenced group commit.

use super::engine::{Batch, Claim, KeySet, Sink, Source};
use super::keys::Keys;
use crate::store::{self, Committer, LedgerUpdate, Store};
use std::sync::Mutex;
use std::time::Duration;

/// The plan's pending keys, all in one batch.
pub(crate) struct PlanSource<'k> {
    keys: &'k Keys,
    pending: Mutex<Option<Vec<u32>>>,
}

impl<'k> PlanSource<'k> {
    pub fn new(keys: &'k Keys, pending: Vec<u32>) -> PlanSource<'k> {
        PlanSource {
            keys,
            pending: Mutex::new(Some(pending)),
        }
    }
}

impl<'k> Source<'k> for PlanSource<'k> {
    fn claim(&self, _n: usize) -> Result<Claim<'k>, String> {
        let taken = super::engine::lock(&self.pending).take();
        Ok(match taken {
            Some(members) => Claim::Batch(Batch {
                keys: KeySet::Run(self.keys),
                members,
            }),
            None => Claim::Finished,
        })
    }

    fn lease(&self) -> Option<Duration> {
        None
    }

    fn renew(&self, _held: &[&str]) -> Vec<String> {
        Vec::new()
    }

    /// Unfinished keys stay pending in the ledger: the next run does them.
    fn release(&self, _keys: &[&str]) -> u64 {
        0
    }
}

/// The ledger of the run's scope, written only while the run holds the
/// newest token.
pub(crate) struct LedgerSink<'a> {
    pub store: &'a dyn Store,
    pub scope_id: i64,
    pub who: Committer<'a>,
}

impl Sink for LedgerSink<'_> {
    fn commit(&self, updates: &[LedgerUpdate<'_>]) -> store::Result<bool> {
        self.store.ledger_commit(&store::LedgerCommit {
            scope_id: self.scope_id,
            who: self.who,
            now_ms: crate::clock::now_ms(),
            updates,
        })
    }

    fn records_in_flight(&self) -> bool {
        true
    }
}
