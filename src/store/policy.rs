//! The lock policy, decided once above the backends: given the current
//! holder of a lock and a request, take the lock or refuse (held, or stale
//! and to be cleaned up first). Pure; each backend calls [`decide`] inside
//! its own transaction, between reading the holder and drawing a fence.

use super::{AcquireMode, Holder, Liveness, LockAttempt, LockRequest};

/// What a backend does with a lock request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Draw a new fencing token (and, when `mode` holds a lock, write the
    /// lock row). `replaced` is the live holder a `replace` takes it from.
    Take { replaced: Option<Holder> },
    /// Answer this (`Held` or `Stale`) and change nothing.
    Refuse(LockAttempt),
}

impl AcquireMode {
    /// Whether this mode holds a lock row (everything but `allow`).
    pub fn holds_lock(self) -> bool {
        self != AcquireMode::TokenOnly
    }
}

/// Decide a request against the lock's current holder (`None`: free, or
/// not looked up because the mode holds no lock).
pub fn decide(holder: Option<Holder>, req: &LockRequest<'_>, alive: Liveness<'_>) -> Decision {
    let Some(h) = holder.filter(|_| req.mode.holds_lock()) else {
        return Decision::Take { replaced: None };
    };
    if req.cleaned_fence == Some(h.fence) {
        // The caller cleaned up after this dead holder: take over.
        return Decision::Take { replaced: None };
    }
    if !alive(&h, req.now_ms) {
        return Decision::Refuse(LockAttempt::Stale(h));
    }
    match req.mode {
        AcquireMode::IfFree => Decision::Refuse(LockAttempt::Held(h)),
        AcquireMode::Replace | AcquireMode::TokenOnly => Decision::Take { replaced: Some(h) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunnerIdentity;

    fn holder(fence: i64) -> Holder {
        Holder {
            lock: "job".into(),
            fence,
            run_id: "run-a".into(),
            runner: runner(),
            lease_until_ms: 9_000,
            cgroup: None,
            pgid: None,
        }
    }

    fn runner() -> RunnerIdentity {
        RunnerIdentity {
            host: "h".into(),
            boot_id: "b".into(),
            pid: 1,
            pid_start: 1,
        }
    }

    fn ask(h: Option<Holder>, mode: AcquireMode, alive: bool, cleaned: Option<i64>) -> Decision {
        let who = runner();
        let run = crate::store::conformance::record("run-b", "job", &who);
        let req = crate::store::conformance::request(&run, mode, cleaned);
        decide(h, &req, &move |_: &Holder, _: i64| alive)
    }

    const TAKE: Decision = Decision::Take { replaced: None };

    #[test]
    fn a_free_lock_is_taken_in_every_mode() {
        for mode in [
            AcquireMode::IfFree,
            AcquireMode::Replace,
            AcquireMode::TokenOnly,
        ] {
            assert_eq!(ask(None, mode, true, None), TAKE);
        }
    }

    #[test]
    fn forbid_refuses_a_live_holder() {
        let got = ask(Some(holder(3)), AcquireMode::IfFree, true, None);
        assert_eq!(got, Decision::Refuse(LockAttempt::Held(holder(3))));
    }

    #[test]
    fn replace_takes_from_a_live_holder_and_names_it() {
        let got = ask(Some(holder(3)), AcquireMode::Replace, true, None);
        assert_eq!(
            got,
            Decision::Take {
                replaced: Some(holder(3))
            }
        );
    }

    #[test]
    fn a_dead_holder_is_stale_in_both_exclusive_modes() {
        for mode in [AcquireMode::IfFree, AcquireMode::Replace] {
            let got = ask(Some(holder(3)), mode, false, None);
            assert_eq!(got, Decision::Refuse(LockAttempt::Stale(holder(3))));
        }
    }

    #[test]
    fn a_cleaned_holder_is_taken_over_but_only_that_fence() {
        assert_eq!(
            ask(Some(holder(3)), AcquireMode::IfFree, false, Some(3)),
            TAKE
        );
        let other = ask(Some(holder(4)), AcquireMode::IfFree, false, Some(3));
        assert_eq!(other, Decision::Refuse(LockAttempt::Stale(holder(4))));
    }

    #[test]
    fn allow_ignores_any_holder() {
        assert_eq!(
            ask(Some(holder(3)), AcquireMode::TokenOnly, false, None),
            TAKE
        );
    }
}
