//! Identifiers of runs and notifications: ULIDs (SPEC §3), sortable by the
//! millisecond they were made in, with 80 random bits from the kernel.
//!
//! The random bits come straight from `getrandom(2)`, not from a userspace
//! generator: one id per process is the common case (`run`, `exec`), and a
//! ChaCha generator's set-up costs more than the id (its CPU feature probe
//! alone is a trapped `cpuid` on a virtual machine, about 50 µs per run on
//! the development machine, docs/performance.md).

use std::sync::atomic::{AtomicU32, Ordering};

/// A new ULID in its 26-character Crockford base32 form.
pub fn new_ulid() -> String {
    let mut random = [0u8; 16];
    // getrandom(2) does not fail on Linux once the kernel's pool is
    // initialised (it blocks until then). If it ever did, the process id
    // and a per-process counter keep the ids of one millisecond apart.
    if getrandom::fill(&mut random).is_err() {
        static FALLBACK: AtomicU32 = AtomicU32::new(0);
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        random[..4].copy_from_slice(&std::process::id().to_le_bytes());
        random[4..8].copy_from_slice(&n.to_le_bytes());
    }
    let ms = crate::clock::now_ms().max(0) as u64;
    ulid::Ulid::from_parts(ms, u128::from_le_bytes(random)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_sortable_ulids() {
        let a = new_ulid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_ulid();
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} then {b}");
        let parsed = ulid::Ulid::from_string(&a).unwrap();
        let ms = parsed.timestamp_ms() as i64;
        assert!((crate::clock::now_ms() - ms).abs() < 5_000, "{a}: {ms}");
        let many: std::collections::BTreeSet<String> = (0..1000).map(|_| new_ulid()).collect();
        assert_eq!(many.len(), 1000);
    }
}
