//! What the ledger says about the source's keys before work starts: which
//! are done (skipped), which failed `max_attempts` times (dead), which are
//! still to do; and the static shards of `run --shard I/N`.

use super::keys::Keys;
use crate::store::{self, ItemState, LedgerStore};

/// The ledger's view of a run's keys.
pub(crate) struct Plan {
    /// Indexes (into the keys) still to process, in source order.
    pub pending: Vec<u32>,
    /// Already done in this scope.
    pub skipped: u64,
    /// Failed `max_attempts` times already: not tried again.
    pub dead: Vec<u32>,
}

impl Plan {
    pub fn new(
        keys: &Keys,
        ledger: &dyn LedgerStore,
        scope_id: i64,
        max_attempts: u32,
        shard: Option<(u32, u32)>,
    ) -> store::Result<Plan> {
        // 0 = pending, 1 = done, 2 = dead
        let mut class = vec![0u8; keys.len()];
        ledger.ledger_scan(scope_id, &mut |key, state, attempts| {
            if let Some(i) = keys.find(key) {
                class[i as usize] = match state {
                    ItemState::Done => 1,
                    ItemState::Failed if attempts >= max_attempts => 2,
                    _ => 0,
                };
            }
        })?;
        let mut plan = Plan {
            pending: Vec::new(),
            skipped: 0,
            dead: Vec::new(),
        };
        for (i, c) in class.iter().enumerate() {
            if shard.is_some_and(|sh| !in_shard(keys.get(i), sh)) {
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
