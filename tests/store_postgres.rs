//! The PostgreSQL state store against a real server (127.0.0.1:5432, trust
//! auth, database `test`; override with `BATCHGUARD_TEST_PG`). Each test
//! works in schemas of its own (`?schema=…`) and drops them at the end.
//!
//! The tests run one at a time: the resilience test terminates every
//! backend named `batchguard`, which would otherwise hit its neighbours.

use batchguard::store::conformance::{beat, claim_outbox, commit, hook_failure};
use batchguard::store::dashboard::DashboardStore;
use batchguard::store::{
    self, AcquireMode, Committer, Heartbeat, Holder, ItemState, LedgerUpdate, LockAttempt,
    NotifyState, OutboxFailure, RunEnd, RunRecord, RunnerIdentity, Store, StoreError,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod pg_common;
mod support;
use pg_common::{admin, base, next_id};

/// Fresh schema names, dropped (with everything in them) on drop; and the
/// lock that runs this binary's PostgreSQL tests one at a time (released
/// after the schemas are dropped).
struct Schemas {
    names: Mutex<Vec<String>>,
    _serial: MutexGuard<'static, ()>,
}

impl Schemas {
    /// What a test that needs the server starts with: `None` (the test
    /// returns) when the server does not answer; see [`pg_common::begin`].
    fn begin() -> Option<Schemas> {
        Some(Schemas {
            names: Mutex::default(),
            _serial: pg_common::begin()?,
        })
    }
    fn fresh(&self, prefix: &str) -> String {
        let name = format!("{prefix}_{}_{}", std::process::id(), next_id());
        self.names.lock().unwrap().push(name.clone());
        name
    }
    fn url(&self, prefix: &str) -> String {
        format!("{}?schema={}", base(), self.fresh(prefix))
    }
    /// A store in a fresh schema.
    fn open(&self, prefix: &str) -> Box<dyn Store> {
        store::open(&self.url(prefix)).unwrap()
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        if names.is_empty() {
            return;
        }
        let mut c = admin();
        for n in names {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{n}\" CASCADE"))
                .unwrap();
        }
    }
}

fn runner(pid: i32) -> RunnerIdentity {
    RunnerIdentity {
        host: "host-a".into(),
        boot_id: "boot-a".into(),
        pid,
        pid_start: 7,
    }
}

fn record(id: &str, lock: &str, who: &RunnerIdentity) -> RunRecord {
    batchguard::store::conformance::record(id, lock, who)
}

fn take(s: &dyn Store, lock: &str, id: &str, mode: AcquireMode) -> LockAttempt {
    let who = runner(4242);
    let run = record(id, lock, &who);
    let req = batchguard::store::conformance::request(&run, mode, None);
    let alive = |_: &Holder, _: i64| true;
    s.acquire(&req, &alive).expect("acquire")
}

fn fence_of(a: &LockAttempt) -> i64 {
    match a {
        LockAttempt::Acquired { fence, .. } => *fence,
        other => panic!("expected the lock, got {other:?}"),
    }
}

/// Run `run-a` takes the free lock `job`: its fence.
fn run_a_takes_job(s: &dyn Store) -> i64 {
    fence_of(&take(s, "job", "run-a", AcquireMode::IfFree))
}

#[test]
fn postgres_passes_the_conformance_suite() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let fresh = || schemas.open("bg_conf");
    store::conformance::run_all(&fresh, store::conformance::Queue::Served);
    // postgresql:// is the same backend.
    let url = schemas
        .url("bg_conf")
        .replace("postgres://", "postgresql://");
    store::open(&url).unwrap();
}

#[test]
fn reopening_keeps_data_and_does_not_migrate_twice() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let url = schemas.url("bg_reopen");
    {
        let s = store::open(&url).unwrap();
        run_a_takes_job(s.as_ref());
    }
    let s = store::open(&url).unwrap();
    assert_eq!(s.current_fence("job").unwrap(), Some(1));
    let schema = url.rsplit('=').next().unwrap();
    let versions: Vec<i64> = admin()
        .query(
            &format!("SELECT version FROM \"{schema}\".batchguard_schema_version ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    assert!(versions.len() >= 4);
}

/// Everything the conformance suite does not cover, run against SQLite
/// and PostgreSQL alike: the results must be identical.
fn scenario(d: &dyn DashboardStore) -> Vec<String> {
    let s = d.store();
    let mut out = Vec::new();
    let mut log = |what: &str, v: String| out.push(format!("{what}: {v}"));
    // Runs: a skipped run, a finished one, listing and retention.
    let who = runner(11);
    let mut skipped = record("run-skip", "job-b", &who);
    skipped.outcome = "skipped".into();
    skipped.ended_at = Some("2026-11-30T00:00:00.000+00:00".into());
    skipped.duration_ms = Some(0);
    skipped.params.insert("day".into(), "2026-11-30".into());
    s.insert_run(&skipped).unwrap();
    let a = take(s, "job-a", "run-a", AcquireMode::IfFree);
    log("acquire", format!("{a:?}"));
    let mut run2 = record("run-a2", "job-a", &who);
    run2.log_path = Some("/var/log/batchguard/job-a/run-a2.log".into());
    run2.started_ms = 500;
    run2.outcome = "success".into();
    run2.ended_at = Some("2026-11-30T00:00:01.000+00:00".into());
    run2.duration_ms = Some(250);
    run2.peak_memory_bytes = Some(u64::from(u32::MAX) * 4);
    s.insert_run(&run2).unwrap();
    s.set_run_failed_items("run-a", &["k9".into(), "k10".into()])
        .unwrap();
    s.finish_run(
        "run-a",
        Some(("job-a", 1)),
        &RunEnd {
            ended_at: "2026-11-30T00:00:02.000+00:00".into(),
            ended_ms: 2_000,
            outcome: "timeout".into(),
            signal: Some(9),
            items: Some(store::ItemCounts {
                total: 3,
                done: 1,
                skipped: 1,
                failed: 1,
            }),
            error: Some("took too long".into()),
            ..RunEnd::default()
        },
    )
    .unwrap();
    // A second finish changes nothing.
    s.finish_run("run-a", None, &RunEnd::default()).unwrap();
    take(s, "job-c", "run-c", AcquireMode::IfFree);
    for at in [9_000, 9_500] {
        log(
            "lost",
            format!(
                "{}",
                s.mark_lost("run-c", "2026-11-30T00:00:09.000+00:00", at)
                    .unwrap()
            ),
        );
    }
    // The dashboard's counts follow every insert and end, once each.
    log("totals", format!("{:?}", d.run_totals().unwrap()));
    log("get", format!("{:?}", s.get_run("run-a").unwrap()));
    log("get-none", format!("{:?}", s.get_run("nope").unwrap()));
    log("list", format!("{:?}", s.list_runs(None, 10).unwrap()));
    log(
        "list-b",
        format!("{:?}", s.list_runs(Some("job-b"), 1).unwrap()),
    );
    log("last", format!("{:?}", s.last_runs().unwrap()));
    log(
        "last-finished",
        format!("{:?}", s.last_finished_run("job-a").unwrap()),
    );
    let logs = s.expired_logs("job-a", 10_000, 5).unwrap();
    log("logs", format!("{logs:?}"));
    s.mark_log_pruned("run-a2").unwrap();
    log(
        "logs-after",
        format!("{:?}", s.expired_logs("job-a", 10_000, 5).unwrap()),
    );
    log("running", format!("{:?}", s.running_runs().unwrap()));
    let late_beat = Heartbeat {
        now_ms: 3_000,
        lease_ms: 1_000,
        ..beat("job-a", 1, "run-a")
    };
    log("hb-released", format!("{:?}", s.heartbeat(&late_beat)));

    // Ledger: duplicates inside one batch, ordering of failures, counts.
    let scope = s.ledger_scope("job-a", "day", true).unwrap().unwrap();
    let who = Committer {
        lock: "job-a",
        fence: None,
        run_id: "run-x",
    };
    let u = |key, state, error| LedgerUpdate { key, state, error };
    let batch = [
        u("b", ItemState::Failed, Some("first")),
        u("b", ItemState::Failed, Some("second")),
        u("a", ItemState::InFlight, None),
        u("a", ItemState::InFlight, None),
        u("c", ItemState::Done, None),
        u("c", ItemState::Done, None),
        u("d", ItemState::Failed, None),
        u("B", ItemState::Failed, Some("upper")),
    ];
    log("commit", format!("{:?}", commit(s, scope, who, 10, &batch)));
    let mut keys = Vec::new();
    s.ledger_scan(scope, &mut |k, st, n| keys.push(format!("{k}/{st:?}/{n}")))
        .unwrap();
    keys.sort();
    log("scan", format!("{keys:?}"));
    log(
        "failed",
        format!("{:?}", s.ledger_failed(scope, 10).unwrap()),
    );
    log(
        "failed-1",
        format!("{:?}", s.ledger_failed(scope, 1).unwrap()),
    );
    s.ledger_scope("job-a", "Day", true).unwrap();
    s.ledger_scope("job-a", "a-day", true).unwrap();
    log(
        "counts",
        format!("{:?}", s.ledger_counts("job-a", None).unwrap()),
    );
    log(
        "counts-one",
        format!("{:?}", s.ledger_counts("job-a", Some("day")).unwrap()),
    );
    log(
        "fenced-commit",
        format!(
            "{:?}",
            commit(
                s,
                scope,
                Committer {
                    lock: "never-taken",
                    fence: Some(1),
                    run_id: "r"
                },
                11,
                &batch
            )
        ),
    );

    // Outbox: idempotent add, claims that lease, delivery and failure.
    let row = store::conformance::outbox_row;
    let rows = [
        row("n1", "mail", 100),
        row("n1", "hook", 101),
        row("n2", "mail", 50),
    ];
    s.outbox_add(&rows).unwrap();
    s.outbox_add(&rows[..1]).unwrap();
    log("pending", format!("{:?}", s.outbox_pending().unwrap()));
    log(
        "claim",
        format!("{:?}", claim_outbox(s, 100, 200, 1_000, 2).unwrap()),
    );
    log(
        "claim-again",
        format!("{:?}", claim_outbox(s, 100, 200, 1_000, 10).unwrap()),
    );
    log(
        "claim-late",
        format!("{:?}", claim_outbox(s, 1_200, 1_200, 1_000, 10).unwrap()),
    );
    s.outbox_delivered("n1", "mail", 1_300).unwrap();
    s.outbox_failed(&hook_failure()).unwrap();
    let late = OutboxFailure {
        channel: "mail",
        error: "late failure ignored",
        ..hook_failure()
    };
    s.outbox_failed(&late).unwrap();
    log(
        "pending-after",
        format!("{:?}", s.outbox_pending().unwrap()),
    );
    log(
        "claim-final",
        format!("{:?}", claim_outbox(s, 9_000, 9_000, 1, 10).unwrap()),
    );

    // Notification state (the watchdog is the conformance suite's).
    log(
        "notify-none",
        format!("{:?}", s.notify_state("job-a").unwrap()),
    );
    let st = store::conformance::failing_state();
    s.set_notify_state("job-a", &st).unwrap();
    s.set_notify_state("job-a", &NotifyState { failures: 4, ..st })
        .unwrap();
    log("notify", format!("{:?}", s.notify_state("job-a").unwrap()));
    log(
        "reset",
        format!("{:?}", s.ledger_reset("job-a", "day").unwrap()),
    );
    log(
        "counts-after",
        format!("{:?}", s.ledger_counts("job-a", None).unwrap()),
    );
    out
}

#[test]
fn results_match_the_sqlite_reference() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        store::dashboard::open_dashboard(&format!("sqlite:{}", dir.path().join("s.db").display()))
            .unwrap();
    let pg = store::dashboard::open_dashboard(&schemas.url("bg_parity")).unwrap();
    let want = scenario(sqlite.as_ref());
    assert!(
        want.contains(&r#"totals: [("job-a", "success", 1), ("job-a", "timeout", 1), ("job-b", "skipped", 1), ("job-c", "lost", 1)]"#.to_string()),
        "{want:#?}"
    );
    let got = scenario(pg.as_ref());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());
}

#[test]
fn concurrent_acquirers_serialise() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let url = schemas.url("bg_race");
    const N: usize = 20;
    // Twenty hosts starting for the first time at once: the migrations
    // race too, and every store has its own connections.
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let s = store::open(&url).unwrap();
                barrier.wait();
                let forbid = take(
                    s.as_ref(),
                    "job",
                    &format!("if-free-{i}"),
                    AcquireMode::IfFree,
                );
                barrier.wait();
                let replace = take(
                    s.as_ref(),
                    "job",
                    &format!("replace-{i}"),
                    AcquireMode::Replace,
                );
                barrier.wait();
                let token = take(
                    s.as_ref(),
                    "other",
                    &format!("token-{i}"),
                    AcquireMode::TokenOnly,
                );
                (forbid, replace, token)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let s = store::open(&url).unwrap();

    let winners: Vec<_> = results
        .iter()
        .filter(|(f, _, _)| matches!(f, LockAttempt::Acquired { .. }))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one IfFree acquirer wins");
    assert_eq!(fence_of(&winners[0].0), 1);
    let winner_id = s
        .list_runs(Some("job"), 100)
        .unwrap()
        .into_iter()
        .find(|r| r.id.starts_with("if-free-"))
        .unwrap()
        .id;
    for (f, _, _) in &results {
        if let LockAttempt::Held(h) = f {
            assert_eq!((h.fence, h.run_id.as_str()), (1, winner_id.as_str()));
        }
    }
    // Replace: every one gets a distinct, newer token; the last one holds.
    let mut fences: Vec<i64> = results.iter().map(|(_, r, _)| fence_of(r)).collect();
    fences.sort();
    assert_eq!(fences, (2..=N as i64 + 1).collect::<Vec<_>>());
    assert_eq!(s.current_fence("job").unwrap(), Some(N as i64 + 1));
    let replaced: usize = results
        .iter()
        .filter(|(_, r, _)| {
            matches!(
                r,
                LockAttempt::Acquired {
                    replaced: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        replaced, N,
        "each replace took the lock from the previous holder"
    );
    let holder = s
        .list_runs(Some("job"), 100)
        .unwrap()
        .into_iter()
        .find(|r| r.fence == N as i64 + 1)
        .unwrap();
    assert!(s.heartbeat(&beat("job", N as i64 + 1, &holder.id)).unwrap());
    // TokenOnly on a lock nobody ever took: first row created under race.
    let mut tokens: Vec<i64> = results.iter().map(|(_, _, t)| fence_of(t)).collect();
    tokens.sort();
    assert_eq!(tokens, (1..=N as i64).collect::<Vec<_>>());
    assert_eq!(s.running_runs().unwrap().len(), 1 + 2 * N);
}

fn kill_backends() -> u64 {
    let rows = admin()
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND application_name = 'batchguard'",
            &[],
        )
        .unwrap();
    // Let the backends actually go away.
    std::thread::sleep(Duration::from_millis(100));
    rows.len() as u64
}

#[test]
fn killed_connections_are_replaced_transparently() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let s = schemas.open("bg_kill");
    let fence = run_a_takes_job(s.as_ref());
    assert!(
        kill_backends() >= 1,
        "the store's idle connection was killed"
    );
    assert!(s.heartbeat(&beat("job", fence, "run-a")).unwrap());

    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    let who = Committer {
        lock: "job",
        fence: Some(fence),
        run_id: "run-a",
    };
    kill_backends();
    let done = [LedgerUpdate {
        key: "k1",
        state: ItemState::Done,
        error: None,
    }];
    assert!(commit(s.as_ref(), scope, who, 3_000, &done).unwrap());
    kill_backends();
    let mut n = 0;
    s.ledger_scan(scope, &mut |_, _, attempts| {
        assert_eq!(attempts, 1);
        n += 1
    })
    .unwrap();
    assert_eq!(n, 1);
    kill_backends();
    let mut ran = 0;
    assert!(
        s.while_fence_current("job", fence, &mut || {
            ran += 1;
            Ok(())
        })
        .unwrap()
        .unwrap()
    );
    assert_eq!(ran, 1);
    kill_backends();
    match take(s.as_ref(), "job", "run-b", AcquireMode::IfFree) {
        LockAttempt::Held(h) => assert_eq!(h.run_id, "run-a"),
        other => panic!("expected Held, got {other:?}"),
    }
    kill_backends();
    assert_eq!(s.get_run("run-a").unwrap().unwrap().fence, fence);
}

/// A TCP proxy in front of PostgreSQL that can play a server restart: it
/// cuts every connection and refuses new ones until it comes back.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let upstream = upstream.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (d, c) = (down.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, down, conns }
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn a_server_outage_is_waited_out() {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let proxy = Proxy::start(&pg_common::server_addr());
    let url = format!(
        "{}?schema={}",
        pg_common::url_at(&format!("127.0.0.1:{}", proxy.port), &pg_common::database()),
        schemas.fresh("bg_outage")
    );
    let s = store::open(&url).unwrap();
    let fence = run_a_takes_job(s.as_ref());
    proxy.go_down();
    let down = proxy.down.clone();
    let t = Instant::now();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        down.store(false, Ordering::SeqCst);
    });
    // Heartbeats during the outage wait until the server is back.
    assert!(s.heartbeat(&beat("job", fence, "run-a")).unwrap());
    let waited = t.elapsed();
    back.join().unwrap();
    eprintln!("heartbeat waited out a {waited:?} outage");
    assert!(waited >= Duration::from_millis(1_400), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let end = RunEnd {
        ended_at: "2026-11-30T00:00:03.000+00:00".into(),
        ended_ms: 3_000,
        outcome: "success".into(),
        exit_code: Some(0),
        ..RunEnd::default()
    };
    s.finish_run("run-a", Some(("job", fence)), &end).unwrap();
    assert_eq!(s.get_run("run-a").unwrap().unwrap().outcome, "success");
}

#[test]
fn sql_errors_fail_at_once_and_passwords_stay_hidden() {
    let Some(_serial) = pg_common::begin() else {
        return;
    };
    let t = Instant::now();
    let with_password = pg_common::url_at(&pg_common::server_addr(), "bg_no_such_database")
        .replacen('@', ":hunter2@", 1);
    let err = match store::open(&with_password) {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(e) => e,
    };
    assert!(t.elapsed() < Duration::from_secs(2), "not retried");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Postgres { .. }), "{msg}");
    assert!(!msg.contains("hunter2") && msg.contains(":***@"), "{msg}");
    assert!(msg.contains("bg_no_such_database"), "{msg}");
    let bad = store::open(&format!("{}?schema=x;drop", base()));
    assert!(matches!(bad, Err(StoreError::BadUrl { .. })));
}

fn bulk(keys: usize) {
    let Some(schemas) = Schemas::begin() else {
        return;
    };
    let s = schemas.open("bg_bulk");
    let fence = run_a_takes_job(s.as_ref());
    let scope = s.ledger_scope("job", "day", true).unwrap().unwrap();
    let names: Vec<String> = (0..keys).map(|i| format!("item-{i:08}")).collect();
    let who = Committer {
        lock: "job",
        fence: Some(fence),
        run_id: "run-a",
    };
    let state = |i: usize| match i % 10 {
        0 => ItemState::Failed,
        1 => ItemState::InFlight,
        _ => ItemState::Done,
    };
    let updates: Vec<LedgerUpdate<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, k)| LedgerUpdate {
            key: k,
            state: state(i),
            error: (state(i) == ItemState::Failed).then_some("exit 1"),
        })
        .collect();
    let t = Instant::now();
    for chunk in updates.chunks(10_000) {
        assert!(commit(s.as_ref(), scope, who, 5_000, chunk).unwrap());
    }
    let commit = t.elapsed();
    let t = Instant::now();
    let (mut n, mut done, mut bytes) = (0usize, 0usize, 0usize);
    s.ledger_scan(scope, &mut |k, st, _| {
        n += 1;
        bytes += k.len();
        done += usize::from(st == ItemState::Done);
    })
    .unwrap();
    let scan = t.elapsed();
    eprintln!(
        "ledger of {keys} keys: commit (batches of 10,000) {commit:?} ({:.0} keys/s), \
         scan {scan:?} ({:.0} keys/s)",
        keys as f64 / commit.as_secs_f64(),
        keys as f64 / scan.as_secs_f64()
    );
    assert_eq!(n, keys);
    assert_eq!(done, keys / 10 * 8);
    assert!(bytes > 0);
    let counts = s.ledger_counts("job", Some("day")).unwrap();
    assert_eq!(counts[0].failed as usize, keys / 10);
    assert_eq!(counts[0].in_flight as usize, keys / 10);
}

#[test]
fn ledger_of_100k_keys() {
    bulk(100_000);
}

/// `cargo test --release --test store_postgres -- --ignored` for the
/// million-key figure.
#[test]
#[ignore]
fn ledger_of_1m_keys() {
    bulk(1_000_000);
}

/// A read command against a PostgreSQL server that is not there says why
/// at once (exit 69, the driver's cause), instead of retrying for half a
/// minute and printing "error connecting to server"; a database that does
/// not exist is named, not "db error".
#[test]
fn read_commands_name_the_postgres_cause_quickly() {
    if pg_common::begin().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("jobs")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = |state: &str| {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchguard"))
            .arg("--config-dir")
            .arg(tmp.path())
            .args(["--state", state, "status"])
            .env_remove("BATCHGUARD_STATE")
            .output()
            .unwrap();
        (out, t.elapsed())
    };
    let (out, took) = status(&format!("postgres://postgres@127.0.0.1:{port}/test"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("onnection refused"), "{err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let missing = pg_common::url_at(&pg_common::server_addr(), "bg_no_such_database");
    let (out, _) = status(&missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("database \"bg_no_such_database\" does not exist"),
        "{err}"
    );
}
