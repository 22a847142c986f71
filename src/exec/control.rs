//! Stopping a run from other threads: the runner's own signals, the
//! heartbeat that notices a newer run took the lock, the ledger committer
//! whose batch was refused, the run-level timeout and memory sampler of
//! per-item mode. The first reason wins; every live process tree of the run
//! is stopped (TERM, grace, KILL), and a second signal kills at once.

use batchguard_supervise::{StopHandle, StopReason};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Why a run is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The runner got this signal (forwarded to the job).
    Signal(i32),
    /// A newer run holds the lock.
    Fenced,
    /// The run-level `timeout` passed (per-item mode).
    Timeout,
    /// The run's memory limit was hit (per-item mode).
    Oom,
    /// The state store stayed unreachable (the ledger cannot be written).
    Store,
}

impl Stop {
    fn reason(self) -> StopReason {
        match self {
            Stop::Signal(s) => StopReason::Signal(s),
            Stop::Fenced => StopReason::Fenced,
            Stop::Timeout | Stop::Oom | Stop::Store => StopReason::Requested,
        }
    }
}

#[derive(Default)]
pub struct Control {
    children: Mutex<Vec<(u64, StopHandle)>>,
    next_id: AtomicU64,
    stop: Mutex<Option<Stop>>,
    signals: AtomicU32,
    /// The run id the heartbeat renews (changes between attempts).
    pub current_run: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Track a live process tree; it is stopped at once if the run is
    /// already stopping. Returns the id for [`Control::unregister`].
    pub fn register(&self, h: StopHandle) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let stopping = *lock(&self.stop);
        if let Some(s) = stopping {
            h.stop(s.reason());
        }
        lock(&self.children).push((id, h));
        id
    }

    pub fn unregister(&self, id: u64) {
        lock(&self.children).retain(|(i, _)| *i != id);
    }

    /// Stop one live tree (a distributed item whose lease was lost); the
    /// run goes on.
    pub fn stop_one(&self, id: u64) {
        for (i, h) in lock(&self.children).iter() {
            if *i == id {
                h.stop(StopReason::Requested);
            }
        }
    }

    /// Stop the run (the first reason wins) and every live tree.
    pub fn request_stop(&self, why: Stop) {
        let reason = {
            let mut s = lock(&self.stop);
            *s.get_or_insert(why)
        };
        for (_, h) in lock(&self.children).iter() {
            h.stop(reason.reason());
        }
    }

    /// The runner received `sig`: the first one stops, the next one kills.
    pub fn on_signal(&self, sig: i32) {
        let n = self.signals.fetch_add(1, Ordering::SeqCst) + 1;
        self.request_stop(Stop::Signal(sig));
        if n > 1 {
            for (_, h) in lock(&self.children).iter() {
                h.kill(StopReason::Signal(sig));
            }
        }
    }

    pub fn stopping(&self) -> Option<Stop> {
        *lock(&self.stop)
    }

    pub fn signalled(&self) -> bool {
        self.signals.load(Ordering::SeqCst) > 0
    }

    pub fn set_current_run(&self, id: &str) {
        *lock(&self.current_run) = id.to_string();
    }

    pub fn current_run(&self) -> String {
        lock(&self.current_run).clone()
    }
}
