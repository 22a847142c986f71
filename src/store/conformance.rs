//! The conformance suite every state-store backend must pass, one part per
//! capability (runs, locks and fences; the ledger; the outbox and noise
//! state; the watchdog; the distributed queue where [`Store::queue`] offers
//! it). The same assertions run against SQLite here and against PostgreSQL
//! in `tests/store_postgres.rs`. Each check takes a fresh, empty store.

use super::*;

fn identity(pid: i32) -> RunnerIdentity {
    RunnerIdentity {
        host: "host-a".into(),
        boot_id: "boot-a".into(),
        pid,
        pid_start: 1,
    }
}

/// A running run record for tests of a backend.
pub fn record(id: &str, lock: &str, runner: &RunnerIdentity) -> RunRecord {
    RunRecord::running(
        id,
        lock,
        lock,
        runner,
        1_000,
        "2026-11-30T00:00:00.000+00:00".into(),
    )
}

/// The request of tests for `run` to take its lock at 1 s with a 30 s lease.
pub fn request(run: &RunRecord, mode: AcquireMode, cleaned: Option<i64>) -> LockRequest<'_> {
    LockRequest {
        run,
        now_ms: 1_000,
        lease_ms: 30_000,
        mode,
        cleaned_fence: cleaned,
    }
}

fn take(
    store: &dyn Store,
    id: &str,
    mode: AcquireMode,
    alive: bool,
    cleaned: Option<i64>,
) -> LockAttempt {
    let runner = identity(id.len() as i32);
    let run = record(id, "job", &runner);
    let req = request(&run, mode, cleaned);
    let liveness = move |_: &Holder, _: i64| alive;
    store.acquire(&req, &liveness).expect("acquire")
}

fn fence_of(a: &LockAttempt) -> i64 {
    match a {
        LockAttempt::Acquired { fence, .. } => *fence,
        other => panic!("expected the lock, got {other:?}"),
    }
}

/// Which backends must serve the distributed queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// `Store::queue` must be `Some`, and its checks run.
    Served,
    /// `Store::queue` must be `None`.
    Absent,
}

/// Run every check; `fresh` makes a new empty store each time.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn Store>, queue: Queue) {
    let checks: [fn(&dyn Store); 12] = [
        forbid_holds_and_fences_increase,
        dead_holder_is_stale_until_cleaned,
        replace_moves_the_lock_and_fences_the_old_run,
        allow_draws_tokens_without_a_lock,
        finish_records_and_releases,
        lost_is_recorded_once,
        ledger_records_only_for_the_newest_fence,
        ledger_scopes_stay_apart,
        outbox_claims_lease_rows_until_delivered,
        outbox_failures_wait_for_their_next_attempt,
        notify_state_round_trips,
        watchdog_remembers_first_sight_and_each_miss_once,
    ];
    for check in checks {
        check(fresh().as_ref());
    }
    let store = fresh();
    assert_eq!(store.queue().is_some(), queue == Queue::Served);
    if let Some(q) = store.queue() {
        queue_checks(fresh, store.as_ref(), q);
    }
}

/// The queue checks, each on a fresh store (the first on `store`).
fn queue_checks(fresh: &dyn Fn() -> Box<dyn Store>, store: &dyn Store, q: &dyn QueueStore) {
    queue_enqueue_is_idempotent(store, q);
    let each: [fn(&dyn Store, &dyn QueueStore); 4] = [
        queue_claims_skip_keys_held_by_others,
        queue_renew_keeps_only_held_keys,
        queue_release_gives_keys_back,
        queue_finish_retries_until_max_attempts,
    ];
    for check in each {
        let s = fresh();
        check(s.as_ref(), s.queue().expect("the queue"));
    }
}

fn upd<'a>(key: &'a str, state: ItemState, error: Option<&'a str>) -> LedgerUpdate<'a> {
    LedgerUpdate { key, state, error }
}

/// The heartbeat of `run_id` under `fence` of `lock` at 2_000, for 30 s.
pub fn beat<'a>(lock: &'a str, fence: i64, run_id: &'a str) -> Heartbeat<'a> {
    Heartbeat {
        lock,
        fence,
        run_id,
        now_ms: 2_000,
        lease_ms: 30_000,
    }
}

/// Commit `updates` to a scope as `who` at `now_ms` (the checks' shorthand
/// for [`LedgerStore::ledger_commit`]).
pub fn commit(
    s: &(impl LedgerStore + ?Sized),
    scope_id: i64,
    who: Committer<'_>,
    now_ms: i64,
    updates: &[LedgerUpdate<'_>],
) -> Result<bool> {
    s.ledger_commit(&LedgerCommit {
        scope_id,
        who,
        now_ms,
        updates,
    })
}

fn scan(s: &dyn Store, scope: i64) -> Vec<(String, ItemState, u32)> {
    let mut out = Vec::new();
    s.ledger_scan(scope, &mut |k, st, a| out.push((k.to_string(), st, a)))
        .unwrap();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn ledger_records_only_for_the_newest_fence(s: &dyn Store) {
    take(s, "run-a", AcquireMode::Replace, true, None);
    let scope = s.ledger_scope("job", "2026-11-30", true).unwrap().unwrap();
    assert_eq!(
        s.ledger_scope("job", "2026-11-30", false).unwrap(),
        Some(scope)
    );
    let a = Committer {
        lock: "job",
        fence: Some(1),
        run_id: "run-a",
    };
    let batch = [
        upd("k1", ItemState::InFlight, None),
        upd("k1", ItemState::Done, None),
        upd("k2", ItemState::Failed, Some("exit 3")),
        upd("k3", ItemState::InFlight, None),
    ];
    assert!(commit(s, scope, a, 5_000, &batch).unwrap());
    assert_eq!(
        scan(s, scope),
        [
            ("k1".to_string(), ItemState::Done, 1),
            ("k2".to_string(), ItemState::Failed, 1),
            ("k3".to_string(), ItemState::InFlight, 0),
        ]
    );
    // A second failure counts another attempt; in-flight never undoes done.
    let again = [
        upd("k2", ItemState::Failed, Some("exit 4")),
        upd("k1", ItemState::InFlight, None),
    ];
    assert!(commit(s, scope, a, 6_000, &again).unwrap());
    let failed = s.ledger_failed(scope, 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts, 2);
    assert_eq!(failed[0].last_error.as_deref(), Some("exit 4"));
    assert_eq!(scan(s, scope)[0].1, ItemState::Done);
    // A newer run takes the lock: the old run's late completions are refused whole.
    take(s, "run-b", AcquireMode::Replace, true, None);
    assert!(!commit(s, scope, a, 7_000, &[upd("k3", ItemState::Done, None)]).unwrap());
    assert_eq!(scan(s, scope)[2].1, ItemState::InFlight);
    let b = Committer {
        lock: "job",
        fence: Some(2),
        run_id: "run-b",
    };
    assert!(commit(s, scope, b, 8_000, &[upd("k3", ItemState::Done, None)]).unwrap());
    let counts = s.ledger_counts("job", None).unwrap();
    assert_eq!(
        counts,
        [ScopeCounts {
            scope: "2026-11-30".into(),
            done: 2,
            failed: 1,
            in_flight: 0
        }]
    );
    // `allow` jobs commit without a fence check.
    let any = Committer {
        lock: "job",
        fence: None,
        run_id: "run-c",
    };
    assert!(commit(s, scope, any, 9_000, &[upd("k4", ItemState::Done, None)]).unwrap());
}

fn ledger_scopes_stay_apart(s: &dyn Store) {
    let who = Committer {
        lock: "job",
        fence: None,
        run_id: "run-a",
    };
    let d1 = s.ledger_scope("job", "day-1", true).unwrap().unwrap();
    let d2 = s.ledger_scope("job", "day-2", true).unwrap().unwrap();
    let other = s.ledger_scope("other-job", "day-1", true).unwrap().unwrap();
    assert!(d1 != d2 && d1 != other);
    for id in [d1, d2, other] {
        commit(s, id, who, 1, &[upd("k", ItemState::Done, None)]).unwrap();
    }
    assert_eq!(s.ledger_reset("job", "day-1").unwrap(), 1);
    assert_eq!(s.ledger_scope("job", "day-1", false).unwrap(), None);
    assert_eq!(scan(s, d2).len(), 1);
    assert_eq!(scan(s, other).len(), 1);
    assert_eq!(s.ledger_reset("job", "never").unwrap(), 0);
}

fn forbid_holds_and_fences_increase(s: &dyn Store) {
    let a = take(s, "run-a", AcquireMode::IfFree, true, None);
    assert_eq!(fence_of(&a), 1);
    match take(s, "run-b", AcquireMode::IfFree, true, None) {
        LockAttempt::Held(h) => {
            assert_eq!(h.run_id, "run-a");
            assert_eq!(h.fence, 1);
        }
        other => panic!("expected Held, got {other:?}"),
    }
    s.release_lock("job", 1).unwrap();
    assert_eq!(
        fence_of(&take(s, "run-c", AcquireMode::IfFree, true, None)),
        2
    );
    assert_eq!(s.current_fence("job").unwrap(), Some(2));
}

fn dead_holder_is_stale_until_cleaned(s: &dyn Store) {
    take(s, "run-a", AcquireMode::IfFree, true, None);
    let stale = match take(s, "run-b", AcquireMode::IfFree, false, None) {
        LockAttempt::Stale(h) => h,
        other => panic!("expected Stale, got {other:?}"),
    };
    assert_eq!(stale.run_id, "run-a");
    let got = take(s, "run-b", AcquireMode::IfFree, true, Some(stale.fence));
    assert_eq!(fence_of(&got), 2);
}

fn replace_moves_the_lock_and_fences_the_old_run(s: &dyn Store) {
    take(s, "run-a", AcquireMode::Replace, true, None);
    match take(s, "run-b", AcquireMode::Replace, true, None) {
        LockAttempt::Acquired { fence, replaced } => {
            assert_eq!(fence, 2);
            assert_eq!(replaced.expect("replaced holder").run_id, "run-a");
        }
        other => panic!("expected Acquired, got {other:?}"),
    }
    // The old run's heartbeat learns it lost the lock; its commits are refused.
    assert!(!s.heartbeat(&beat("job", 1, "run-a")).unwrap());
    assert!(s.heartbeat(&beat("job", 2, "run-b")).unwrap());
    let mut ran = false;
    let refused = s
        .while_fence_current("job", 1, &mut || {
            ran = true;
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert!(!refused && !ran);
    let accepted = s
        .while_fence_current("job", 2, &mut || Ok(()))
        .unwrap()
        .unwrap();
    assert!(accepted);
}

fn allow_draws_tokens_without_a_lock(s: &dyn Store) {
    let a = fence_of(&take(s, "run-a", AcquireMode::TokenOnly, true, None));
    let b = fence_of(&take(s, "run-b", AcquireMode::TokenOnly, true, None));
    assert!(b > a);
    // No lock row: a forbid run can still start.
    assert_eq!(
        fence_of(&take(s, "run-c", AcquireMode::IfFree, true, None)),
        b + 1
    );
}

fn finish_records_and_releases(s: &dyn Store) {
    take(s, "run-a", AcquireMode::IfFree, true, None);
    s.set_run_process("run-a", Some(4242), Some("/sys/fs/cgroup/x"))
        .unwrap();
    let end = RunEnd {
        ended_at: "2026-11-30T00:00:01.500+00:00".into(),
        ended_ms: 2_500,
        outcome: "failure".into(),
        exit_code: Some(3),
        peak_memory_bytes: Some(1 << 20),
        memory_enforcement: Some("cgroup1".into()),
        ..RunEnd::default()
    };
    s.finish_run("run-a", Some(("job", 1)), &end).unwrap();
    let run = s.get_run("run-a").unwrap().unwrap();
    assert_eq!(run.outcome, "failure");
    assert_eq!(run.exit_code, Some(3));
    assert_eq!(run.duration_ms, Some(1_500));
    assert_eq!(run.fence, 1);
    assert_eq!(run.pgid, Some(4242));
    assert_eq!(run.memory_enforcement, "cgroup1");
    // Released: the next forbid run gets the lock.
    assert_eq!(
        fence_of(&take(s, "run-b", AcquireMode::IfFree, true, None)),
        2
    );
    let runs = s.list_runs(Some("job"), 10).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["run-b", "run-a"]
    );
    assert_eq!(s.running_runs().unwrap().len(), 1);
    assert_eq!(s.last_finished_run("job").unwrap().unwrap().id, "run-a");
}

fn lost_is_recorded_once(s: &dyn Store) {
    take(s, "run-a", AcquireMode::IfFree, true, None);
    assert!(
        s.mark_lost("run-a", "2026-11-30T00:00:09.000+00:00", 9_000)
            .unwrap()
    );
    assert!(
        !s.mark_lost("run-a", "2026-11-30T00:00:10.000+00:00", 10_000)
            .unwrap()
    );
    assert_eq!(s.get_run("run-a").unwrap().unwrap().outcome, "lost");
}

/// An undelivered notification for tests of a backend.
pub fn outbox_row(id: &str, channel: &str, created_ms: i64) -> OutboxRow {
    OutboxRow {
        id: id.into(),
        channel: channel.into(),
        job: "job".into(),
        event: "failure".into(),
        payload: r#"{"job":"job"}"#.into(),
        created_ms,
        attempts: 0,
        next_attempt_ms: created_ms,
        last_error: None,
    }
}

fn ids(rows: &[OutboxRow]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| (r.id.clone(), r.channel.clone()))
        .collect()
}

fn pair(id: &str, channel: &str) -> (String, String) {
    (id.into(), channel.into())
}

/// Claim outbox rows (the checks' shorthand for [`OutboxStore::outbox_claim`]).
pub fn claim_outbox(
    s: &(impl OutboxStore + ?Sized),
    due_ms: i64,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxRow>> {
    s.outbox_claim(&OutboxClaim {
        due_ms,
        now_ms,
        lease_ms,
        limit,
    })
}

/// Notification `n1` failed on `hook` with HTTP 500; next try at 5_000.
pub fn hook_failure() -> OutboxFailure<'static> {
    OutboxFailure {
        id: "n1",
        channel: "hook",
        error: "HTTP 500",
        next_attempt_ms: 5_000,
    }
}

fn outbox_claims_lease_rows_until_delivered(s: &dyn Store) {
    let rows = [outbox_row("n1", "mail", 100), outbox_row("n2", "mail", 50)];
    s.outbox_add(&rows).unwrap();
    s.outbox_add(&rows[..1]).unwrap(); // idempotent
    assert_eq!(s.outbox_pending().unwrap(), 2);
    // Oldest first, at most `limit`, and only rows due.
    assert_eq!(
        ids(&claim_outbox(s, 100, 200, 1_000, 1).unwrap()),
        [pair("n2", "mail")]
    );
    // The claimed row is leased until 1_200: a second flusher gets the other.
    assert_eq!(
        ids(&claim_outbox(s, 100, 200, 1_000, 10).unwrap()),
        [pair("n1", "mail")]
    );
    assert!(claim_outbox(s, 1_000, 1_000, 1_000, 10).unwrap().is_empty());
    s.outbox_delivered("n2", "mail", 300).unwrap();
    assert_eq!(s.outbox_pending().unwrap(), 1);
    // After the lease, the undelivered row is due again; the delivered never.
    let again = claim_outbox(s, 1_200, 1_200, 1_000, 10).unwrap();
    assert_eq!(ids(&again), [pair("n1", "mail")]);
    assert_eq!(
        again[0].next_attempt_ms, 1_200,
        "rows show their state before the claim"
    );
}

fn outbox_failures_wait_for_their_next_attempt(s: &dyn Store) {
    s.outbox_add(&[outbox_row("n1", "hook", 100)]).unwrap();
    s.outbox_failed(&hook_failure()).unwrap();
    assert!(claim_outbox(s, 4_999, 4_999, 10, 10).unwrap().is_empty());
    let due = claim_outbox(s, 5_000, 5_000, 10, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].last_error.as_deref(), Some("HTTP 500"));
    s.outbox_delivered("n1", "hook", 5_001).unwrap();
    // A late failure report does not undo the delivery.
    let late = OutboxFailure {
        error: "late",
        next_attempt_ms: 6_000,
        ..hook_failure()
    };
    s.outbox_failed(&late).unwrap();
    assert_eq!(s.outbox_pending().unwrap(), 0);
}

/// The noise state of a job in a failure streak, for tests of a backend.
pub fn failing_state() -> NotifyState {
    NotifyState {
        failing_since_ms: Some(5),
        failures: 3,
        suppressed: 2,
        last_sent_ms: None,
        overrun_run: Some("run-a".into()),
    }
}

fn notify_state_round_trips(s: &dyn Store) {
    assert_eq!(s.notify_state("job").unwrap(), NotifyState::default());
    let st = failing_state();
    s.set_notify_state("job", &st).unwrap();
    assert_eq!(s.notify_state("job").unwrap(), st);
    let next = NotifyState {
        failing_since_ms: None,
        last_sent_ms: Some(9),
        overrun_run: None,
        ..st
    };
    s.set_notify_state("job", &next).unwrap();
    assert_eq!(s.notify_state("job").unwrap(), next);
    assert_eq!(s.notify_state("other").unwrap(), NotifyState::default());
}

fn watchdog_remembers_first_sight_and_each_miss_once(s: &dyn Store) {
    assert_eq!(s.watch_state("job", 100).unwrap(), (100, None));
    assert_eq!(s.watch_state("job", 200).unwrap(), (100, None));
    assert!(s.record_missed("job", 150).unwrap());
    assert!(!s.record_missed("job", 150).unwrap(), "once per fire");
    assert!(!s.record_missed("job", 120).unwrap(), "never an older fire");
    assert!(s.record_missed("job", 180).unwrap());
    assert_eq!(s.watch_state("job", 300).unwrap(), (100, Some(180)));
    assert_eq!(s.watch_state("other", 300).unwrap(), (300, None));
}

fn counts(q: &dyn QueueStore, scope: i64) -> [u64; 4] {
    let c = q.queue_counts(scope).unwrap();
    [c.queued, c.claimed, c.done, c.dead]
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// Claim up to `n` keys of a scope for `worker` at `now_ms`, for 500 ms.
fn claim(q: &dyn QueueStore, scope: i64, worker: &str, n: usize, now_ms: i64) -> Vec<String> {
    q.queue_claim(&QueueClaim {
        scope_id: scope,
        worker,
        n,
        now_ms,
        lease_ms: 500,
    })
    .unwrap()
}

/// Renew the lease of `keys` `worker` holds in a scope until `until_ms`.
fn renew(
    q: &dyn QueueStore,
    scope: i64,
    worker: &str,
    keys: &[&str],
    until_ms: i64,
) -> Vec<String> {
    q.queue_renew(&QueueRenew {
        scope_id: scope,
        worker,
        keys,
        lease_until_ms: until_ms,
    })
    .unwrap()
}

fn queue_enqueue_is_idempotent(s: &dyn Store, q: &dyn QueueStore) {
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    assert_eq!(q.queue_enqueue(scope, &["a", "b", "c"]).unwrap(), 3);
    assert_eq!(q.queue_enqueue(scope, &["a", "b", "d"]).unwrap(), 1);
    assert_eq!(counts(q, scope), [4, 0, 0, 0]);
    // Claimed keys stay claimed when enqueued again.
    let claimed = claim(q, scope, "w1", 10, 1_000);
    assert_eq!(claimed.len(), 4);
    assert_eq!(q.queue_enqueue(scope, &["a"]).unwrap(), 0);
    assert_eq!(counts(q, scope), [0, 4, 0, 0]);
    let other = s.ledger_scope("job", "day-2", true).unwrap().unwrap();
    assert_eq!(counts(q, other), [0, 0, 0, 0]);
}

fn queue_claims_skip_keys_held_by_others(s: &dyn Store, q: &dyn QueueStore) {
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    q.queue_enqueue(scope, &["a", "b", "c"]).unwrap();
    let w1 = claim(q, scope, "w1", 2, 1_000);
    assert_eq!(w1.len(), 2);
    // A second worker gets only what is left, never a key held by w1.
    let w2 = claim(q, scope, "w2", 10, 1_100);
    assert_eq!(w2.len(), 1);
    assert!(!w1.contains(&w2[0]));
    assert!(claim(q, scope, "w3", 10, 1_200).is_empty());
    // Once w1's lease (until 1_500) expires, its keys can be claimed.
    let w3 = claim(q, scope, "w3", 10, 1_501);
    assert_eq!(sorted(w3), sorted(w1));
    assert_eq!(counts(q, scope), [0, 3, 0, 0]);
}

fn queue_renew_keeps_only_held_keys(s: &dyn Store, q: &dyn QueueStore) {
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    q.queue_enqueue(scope, &["a", "b"]).unwrap();
    let mine = claim(q, scope, "w1", 2, 1_000);
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    // Renewed until 3_000: nobody can claim them at 2_000.
    assert_eq!(
        sorted(renew(q, scope, "w1", &refs, 3_000)),
        sorted(mine.clone())
    );
    assert!(claim(q, scope, "w2", 10, 2_000).is_empty());
    // Lost after the lease: w2 claims one, w1's renewal no longer holds it.
    let taken = claim(q, scope, "w2", 1, 3_001);
    let kept = renew(q, scope, "w1", &refs, 5_000);
    assert_eq!(kept.len(), 1);
    assert!(!kept.contains(&taken[0]));
    assert!(renew(q, scope, "w3", &refs, 5_000).is_empty());
}

fn queue_release_gives_keys_back(s: &dyn Store, q: &dyn QueueStore) {
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    q.queue_enqueue(scope, &["a", "b"]).unwrap();
    let long = QueueClaim {
        scope_id: scope,
        worker: "w1",
        n: 2,
        now_ms: 1_000,
        lease_ms: 60_000,
    };
    let mine = q.queue_claim(&long).unwrap();
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    assert_eq!(q.queue_release(scope, "w2", &refs).unwrap(), 0, "not w2's");
    assert_eq!(q.queue_release(scope, "w1", &refs[..1]).unwrap(), 1);
    assert_eq!(counts(q, scope), [1, 1, 0, 0]);
    // Released keys are claimable at once, lease or not.
    assert_eq!(claim(q, scope, "w2", 10, 1_001), [mine[0].clone()]);
}

fn queue_finish_retries_until_max_attempts(s: &dyn Store, q: &dyn QueueStore) {
    take(s, "run-a", AcquireMode::IfFree, true, None);
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    let who = Committer {
        lock: "job",
        fence: Some(1),
        run_id: "run-a",
    };
    q.queue_enqueue(scope, &["ok", "bad"]).unwrap();
    let finish = |now: i64, updates: &[LedgerUpdate<'_>]| {
        let commit = LedgerCommit {
            scope_id: scope,
            who,
            now_ms: now,
            updates,
        };
        q.queue_finish(&QueueFinish {
            commit,
            worker: "w1",
            max_attempts: 2,
        })
        .unwrap()
    };
    assert_eq!(claim(q, scope, "w1", 10, 1_000).len(), 2);
    let first = [
        upd("ok", ItemState::Done, None),
        upd("bad", ItemState::Failed, Some("exit 1")),
    ];
    assert!(finish(1_100, &first));
    // The failed key is queued again (1 attempt of 2), the done key done.
    assert_eq!(counts(q, scope), [1, 0, 1, 0]);
    assert_eq!(claim(q, scope, "w1", 10, 1_200), ["bad"]);
    assert!(finish(
        1_300,
        &[upd("bad", ItemState::Failed, Some("exit 2"))]
    ));
    // The second failure reaches max_attempts: dead, and in the ledger.
    assert_eq!(counts(q, scope), [0, 0, 1, 1]);
    let failed = s.ledger_failed(scope, 10).unwrap();
    assert_eq!((failed[0].key.as_str(), failed[0].attempts), ("bad", 2));
    assert_eq!(scan(s, scope)[1], ("ok".to_string(), ItemState::Done, 1));
    // Enqueueing revives a dead key.
    assert_eq!(q.queue_enqueue(scope, &["ok", "bad"]).unwrap(), 1);
    // A newer run takes the lock: the old token's batch is refused whole.
    take(s, "run-b", AcquireMode::Replace, true, None);
    claim(q, scope, "w1", 10, 2_000);
    assert!(!finish(2_100, &[upd("bad", ItemState::Done, None)]));
    assert_eq!(counts(q, scope), [0, 1, 1, 0]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        let fresh = || -> Box<dyn super::Store> {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("state-{i}.db"));
            super::open(&format!("sqlite:{}", path.display())).unwrap()
        };
        super::run_all(&fresh, super::Queue::Absent);
    }

    #[test]
    fn reopening_an_existing_store_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("s.db").display());
        {
            let s = super::open(&url).unwrap();
            super::take(s.as_ref(), "run-a", super::AcquireMode::IfFree, true, None);
        }
        let s = super::open(&url).unwrap();
        assert_eq!(s.current_fence("job").unwrap(), Some(1));
    }
}
