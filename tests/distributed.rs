//! Distributed items (SPEC §6, G16) against a real PostgreSQL (127.0.0.1:5432,
//! trust auth, database `test`; override with `BATCHGUARD_TEST_PG`), driving
//! the real binary: a coordinator and workers, a worker killed mid-batch,
//! two coordinators at once, static shards. Each test has a schema of its
//! own (`?schema=…`, dropped at the end) and config dirs under /tmp; the
//! tests run one at a time (they spawn many processes each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_batchguard");
mod pg_common;
#[path = "support/mod.rs"]
mod support;
use pg_common::{admin, base, next_id};
use support::wait_for;

/// One test's world: a schema, a config dir, a log dir.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    schema: String,
    state: String,
}

impl World {
    fn new(prefix: &str) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("bg-dist-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("etc/jobs")).unwrap();
        let schema = format!("dist_{prefix}_{}_{}", std::process::id(), next_id());
        let state = format!("{}?schema={schema}", base());
        let w = World {
            _tmp: tmp,
            root,
            schema,
            state,
        };
        w.write(
            "etc/batchguard.toml",
            &format!("log_dir = \"{}\"\n", w.root.join("log").display()),
        );
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `n` keys in a source file.
    fn keys(&self, n: usize) -> PathBuf {
        let text: String = (0..n).map(|i| format!("key-{i:06}\n")).collect();
        self.write("keys.txt", &text)
    }

    /// A handler appending its key to `out` after sleeping `sleep`.
    fn handler(&self, sleep: &str) -> PathBuf {
        let out = self.path("out");
        self.write(
            "handler.sh",
            &format!(
                "#!/bin/sh\n{}echo \"$1\" >> {}\n",
                if sleep == "0" {
                    String::new()
                } else {
                    format!("sleep {sleep}\n")
                },
                out.display()
            ),
        )
    }

    fn job(&self, name: &str, n: usize, sleep: &str, extra: &str) {
        let keys = self.keys(n);
        let h = self.handler(sleep);
        self.write(
            &format!("etc/jobs/{name}.toml"),
            &format!(
                "[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\n{extra}",
                keys.display(),
                h.display()
            ),
        );
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config-dir")
            .arg(self.path("etc"))
            .args(args)
            .env("BATCHGUARD_STATE", &self.state)
            .env_remove("BATCHGUARD_CONFIG_DIR")
            .env_remove("BATCHGUARD_CGROUP")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args).spawn().expect("spawn batchguard")
    }

    /// An admin connection that sees this world's schema.
    fn client(&self) -> postgres::Client {
        let mut c = admin();
        c.batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .unwrap();
        c
    }

    fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .ok()
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    }

    fn running(&self) -> i64 {
        self.count("SELECT count(*) FROM runs WHERE outcome = 'running'")
    }

    /// Start the coordinator of job `dist` and wait until its run is recorded.
    fn start_coordinator(&self) -> Child {
        let coord = self.spawn(&["run", "dist"]);
        wait_for("the coordinator run", Duration::from_secs(20), || {
            self.running() == 1
        });
        coord
    }

    /// Wait until `n` keys are queued.
    fn wait_queued(&self, n: usize) {
        wait_for("the queue", Duration::from_secs(20), || {
            self.count("SELECT count(*) FROM queue") == n as i64
        });
    }

    /// Create the schema before a race (`batchguard ledger JOB`), so that
    /// racers race for the lock and not for the migration.
    fn migrate(&self, job: &str) {
        let (st, err) = finish(
            "ledger",
            self.spawn(&["ledger", job]),
            Duration::from_secs(20),
        );
        assert!(st.success(), "{err}");
    }

    /// Keys and how often the handler processed each.
    fn processed(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for l in std::fs::read_to_string(self.path("out"))
            .unwrap_or_default()
            .lines()
        {
            *m.entry(l.to_string()).or_default() += 1;
        }
        m
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&base(), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ));
        }
    }
}

/// Wait for a child, killing it (and failing) after `limit`; prints its
/// stderr when it did not exit as expected.
fn finish(what: &str, mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (st, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn expect_code(what: &str, (st, err): &(ExitStatus, String), code: i32) {
    assert_eq!(st.code(), Some(code), "{what}: {st:?}; stderr:\n{err}");
}

/// [`finish`] `child` and expect it to exit with `code`.
fn expect_exit(what: &str, child: Child, limit: Duration, code: i32) {
    expect_code(what, &finish(what, child, limit), code);
}

/// Every one of the `n` keys was processed; how many times keys were redone.
fn redone(w: &World, n: usize) -> usize {
    let seen = w.processed();
    assert_eq!(seen.len(), n, "every key processed");
    seen.values().map(|c| c - 1).sum()
}

fn assert_every_key_done(w: &World, n: usize) {
    assert_eq!(
        w.count("SELECT count(*) FROM ledger WHERE state = 1"),
        n as i64,
        "every key done in the ledger"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM queue WHERE state = 2"),
        n as i64,
        "every key done in the queue"
    );
}

#[test]
fn coordinator_and_two_workers_do_every_key_once() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("many");
    let n = 20_000;
    w.job(
        "dist",
        n,
        "0",
        "parallelism = 4\n[distributed]\nenabled = true\nbatch = 200\nlease = \"30s\"\n",
    );
    let coord = w.start_coordinator();
    let workers: Vec<Child> = (0..2)
        .map(|_| w.spawn(&["worker", "dist", "--concurrency", "4"]))
        .collect();
    expect_exit("coordinator", coord, Duration::from_secs(240), 0);
    for (i, wk) in workers.into_iter().enumerate() {
        expect_exit(&format!("worker {i}"), wk, Duration::from_secs(30), 0);
    }
    assert_every_key_done(&w, n);
    let extra = redone(&w, n);
    let twice: Vec<_> = w.processed().into_iter().filter(|(_, c)| *c > 1).collect();
    assert_eq!(extra, 0, "keys processed twice: {twice:?}");
    // The coordinator and both workers shared the work.
    assert_eq!(
        w.count("SELECT count(DISTINCT claimed_by) FROM queue WHERE state = 2"),
        3
    );
    assert_eq!(w.count("SELECT count(DISTINCT run_id) FROM ledger"), 1);
    eprintln!("20,000 keys, coordinator + 2 workers: {:?}", t0.elapsed());
}

#[test]
fn stream_mode_coordinator_and_a_worker_do_every_key_once() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("stream");
    let n = 20_000;
    let keys = w.keys(n);
    w.write(
        "etc/jobs/dist.toml",
        &format!(
            "command = [\"sh\", \"-c\", \"exec cat >&3\"]\n[items]\nmode = \"stream\"\n\
             source_file = \"{}\"\n[distributed]\nenabled = true\nbatch = 1000\nlease = \"30s\"\n",
            keys.display()
        ),
    );
    let coord = w.start_coordinator();
    let worker = w.spawn(&["worker", "dist"]);
    expect_exit("coordinator", coord, Duration::from_secs(120), 0);
    expect_exit("worker", worker, Duration::from_secs(30), 0);
    assert_every_key_done(&w, n);
    // Each key reported done once: a redone key would count 2 attempts.
    assert_eq!(
        w.count("SELECT count(*) FROM ledger WHERE state = 1 AND attempts = 1"),
        n as i64,
        "every key done exactly once"
    );
    assert_eq!(w.count("SELECT count(DISTINCT run_id) FROM ledger"), 1);
    eprintln!(
        "stream mode, 20,000 keys, coordinator + 1 worker: {:?}",
        t0.elapsed()
    );
}

#[test]
fn stream_mode_keys_a_batch_command_does_not_report_fail_or_go_back() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let w = World::new("streamfail");
    let n = 50;
    let keys = w.keys(n);
    // Exit 0 without reporting key-000007: that key fails (max_attempts 1,
    // so it is dead and the run ends failure).
    w.write(
        "etc/jobs/lazy.toml",
        &format!(
            "command = [\"sh\", \"-c\", \"while read k; do [ $k = key-000007 ] || echo $k >&3; done\"]\n\
             [items]\nmode = \"stream\"\nsource_file = \"{}\"\nmax_attempts = 1\n\
             [distributed]\nenabled = true\nbatch = 10\n",
            keys.display()
        ),
    );
    let lazy = w.spawn(&["run", "lazy"]);
    expect_exit("lazy coordinator", lazy, Duration::from_secs(60), 1);
    assert_eq!(w.count("SELECT count(*) FROM queue WHERE state = 2"), 49);
    assert_eq!(
        w.count("SELECT count(*) FROM queue WHERE state = 3 AND key = 'key-000007'"),
        1
    );
    // A failing command: its run fails, and the keys it did not report go
    // back to the queue (none is lost or recorded).
    w.write(
        "etc/jobs/broken.toml",
        &format!(
            "command = [\"sh\", \"-c\", \"read k; echo $k >&3; exit 3\"]\n\
             [items]\nmode = \"stream\"\nsource_file = \"{}\"\n\
             [distributed]\nenabled = true\nbatch = 10\n",
            keys.display()
        ),
    );
    let broken = w.spawn(&["run", "broken"]);
    expect_exit("broken coordinator", broken, Duration::from_secs(60), 3);
    let scope = "(SELECT id FROM ledger_scopes WHERE job = 'broken')";
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM queue WHERE scope_id = {scope} AND state = 2"
        )),
        1
    );
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM queue WHERE scope_id = {scope} AND state = 0"
        )),
        49
    );
}

#[test]
fn a_killed_workers_keys_are_reclaimed_after_the_lease() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("kill");
    let (n, batch) = (400, 40);
    w.job(
        "dist",
        n,
        "0.05",
        &format!(
            "parallelism = 4\n[distributed]\nenabled = true\nbatch = {batch}\nlease = \"2s\"\n"
        ),
    );
    let coord = w.spawn(&["run", "dist", "--no-work"]);
    wait_for("the coordinator run", Duration::from_secs(20), || {
        w.running() == 1 && w.count("SELECT count(*) FROM queue") == n as i64
    });
    let mut victim = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    wait_for("the victim's first keys", Duration::from_secs(20), || {
        w.processed().len() >= 20
    });
    let survivor = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    let held = w.count("SELECT count(*) FROM queue WHERE state = 1");
    let victim_pid = victim.id();
    victim.kill().unwrap(); // SIGKILL
    assert!(held > 0, "the victim held a batch when killed");
    let _ = victim.wait();
    expect_exit("coordinator", coord, Duration::from_secs(120), 0);
    expect_exit("survivor", survivor, Duration::from_secs(30), 0);
    // Let any orphaned handler of the victim finish its line.
    std::thread::sleep(Duration::from_millis(300));
    assert_every_key_done(&w, n);
    let extra = redone(&w, n);
    assert!(
        extra <= batch,
        "{extra} duplicates: more than the killed worker's batch of {batch}"
    );
    eprintln!(
        "kill test: {extra} keys redone (bound {batch}), {:?}",
        t0.elapsed()
    );
    // The survivor removed the dead worker's cgroup on its way out.
    assert!(
        worker_cgroups(victim_pid).is_empty(),
        "the killed worker's cgroup is left: {:?}",
        worker_cgroups(victim_pid)
    );
}

/// The cgroup directories named after worker `pid` (cgroup v1 or v2 layout).
fn worker_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    let mut parents = vec![std::path::PathBuf::from("/sys/fs/cgroup/batchguard")];
    if let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") {
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            if let (Some(_), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) {
                if ctl.split(',').any(|c| c == "memory") {
                    parents.push(format!("/sys/fs/cgroup/memory{path}/batchguard").into());
                }
            }
        }
    }
    let prefix = format!("w-{pid}-");
    parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect()
}

#[test]
fn two_coordinators_at_once_one_runs_one_is_skipped() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("ha");
    w.job(
        "dist",
        20,
        "0.1",
        "parallelism = 2\n[distributed]\nenabled = true\nbatch = 5\nlease = \"10s\"\n",
    );
    w.migrate("dist");
    let a = w.spawn(&["run", "dist"]);
    let b = w.spawn(&["run", "dist"]);
    let ra = finish("first", a, Duration::from_secs(60));
    let rb = finish("second", b, Duration::from_secs(60));
    let mut codes = [ra.0.code(), rb.0.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(75)],
        "one runs, one is skipped; stderr:\n{}\n---\n{}",
        ra.1,
        rb.1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM runs WHERE outcome = 'skipped'"),
        1
    );
    assert_every_key_done(&w, 20);
    assert_eq!(redone(&w, 20), 0, "no key processed twice");
    eprintln!("HA test: {:?}", t0.elapsed());
}

#[test]
fn three_shards_process_every_key_exactly_once() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("shard");
    let n = 3000;
    w.job("sharded", n, "0", "parallelism = 4\n");
    w.migrate("sharded");
    let shards: Vec<Child> = (0..3)
        .map(|i| w.spawn(&["run", "sharded", "--shard", &format!("{i}/3")]))
        .collect();
    for (i, s) in shards.into_iter().enumerate() {
        expect_exit(&format!("shard {i}/3"), s, Duration::from_secs(120), 0);
    }
    assert_eq!(redone(&w, n), 0, "no key processed twice");
    assert_eq!(
        w.count("SELECT count(*) FROM ledger WHERE state = 1"),
        n as i64
    );
    // Three runs, each with a share of the keys.
    for r in w
        .client()
        .query("SELECT items FROM runs WHERE outcome = 'success'", &[])
        .unwrap()
    {
        let items: String = r.get(0);
        let v: serde_json::Value = serde_json::from_str(&items).unwrap();
        let done = v["done"].as_u64().unwrap();
        assert!(
            done > n as u64 / 5 && done < n as u64 / 2,
            "shard size {done}"
        );
    }
    eprintln!("3 shards of 3000 keys: {:?}", t0.elapsed());
}

#[test]
fn fnv1a_is_the_documented_hash() {
    // Reference values of FNV-1a 64.
    assert_eq!(
        batchguard::items::distributed::fnv1a64(b""),
        0xcbf29ce484222325
    );
    assert_eq!(
        batchguard::items::distributed::fnv1a64(b"a"),
        0xaf63dc4c8601ec8c
    );
}

#[test]
fn dead_keys_fail_the_coordinator_run() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let w = World::new("dead");
    let keys = w.keys(30);
    let h = w.write(
        "handler.sh",
        &format!(
            "#!/bin/sh\n[ \"$1\" = key-000007 ] && {{ echo nope >&2; exit 3; }}\necho \"$1\" >> {}\n",
            w.path("out").display()
        ),
    );
    w.write(
        "etc/jobs/dist.toml",
        &format!(
            "[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\nmax_attempts = 2\n\
             [distributed]\nenabled = true\nbatch = 4\n",
            keys.display(),
            h.display()
        ),
    );
    let coord = w.spawn(&["run", "dist"]);
    expect_exit("coordinator", coord, Duration::from_secs(60), 1);
    assert_eq!(w.count("SELECT count(*) FROM queue WHERE state = 3"), 1);
    assert_eq!(w.count("SELECT count(*) FROM queue WHERE state = 2"), 29);
    assert_eq!(
        w.count("SELECT attempts::bigint FROM ledger WHERE key = 'key-000007' AND state = 2"),
        2
    );
    let failed: Option<String> = w
        .client()
        .query_one("SELECT items_failed FROM runs WHERE job = 'dist'", &[])
        .unwrap()
        .get(0);
    assert_eq!(failed.as_deref(), Some("[\"key-000007\"]"));
}

#[test]
fn sigterm_gives_a_workers_keys_back_at_once() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let t0 = Instant::now();
    let w = World::new("term");
    let n = 200;
    // A long lease: only the release on SIGTERM lets others finish quickly.
    w.job(
        "dist",
        n,
        "0.05",
        "[distributed]\nenabled = true\nbatch = 50\nlease = \"60s\"\n",
    );
    let coord = w.spawn(&["run", "dist", "--no-work"]);
    w.wait_queued(n);
    let victim = w.spawn(&["worker", "dist", "--concurrency", "2"]);
    wait_for("the victim's first keys", Duration::from_secs(20), || {
        w.processed().len() >= 5
    });
    let t = Instant::now();
    let rc = unsafe { libc::kill(victim.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    expect_exit("victim after SIGTERM", victim, Duration::from_secs(10), 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow stop: {:?}",
        t.elapsed()
    );
    assert_eq!(
        w.count("SELECT count(*) FROM queue WHERE state = 1"),
        0,
        "nothing left claimed"
    );
    let other = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    expect_exit("coordinator", coord, Duration::from_secs(40), 0);
    expect_exit("worker", other, Duration::from_secs(20), 0);
    assert_every_key_done(&w, n);
    assert_eq!(w.processed().len(), n);
    eprintln!("SIGTERM test: {:?}", t0.elapsed());
}

/// Stretch: PostgreSQL restarted mid-run (needs root and pg_ctlcluster;
/// skipped otherwise). The store's retries carry the coordinator and the
/// worker over the restart; nothing is lost.
#[test]
fn postgres_restart_mid_run_loses_nothing() {
    let Some(_g) = pg_common::begin() else {
        return;
    };
    let ctl = Path::new("/usr/bin/pg_ctlcluster");
    if !ctl.exists()
        || unsafe { libc::geteuid() } != 0
        || std::env::var_os("BATCHGUARD_TEST_PG").is_some()
    {
        return support::cannot_run(
            "postgres_restart_mid_run_loses_nothing",
            "needs root, pg_ctlcluster and the local test cluster (not BATCHGUARD_TEST_PG)",
        );
    }
    // The local cluster serving the test database, whatever its version.
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("main").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .max()
    else {
        return support::cannot_run(
            "postgres_restart_mid_run_loses_nothing",
            "no cluster `main` under /etc/postgresql",
        );
    };
    let t0 = Instant::now();
    let w = World::new("restart");
    let n = 3000;
    w.job(
        "dist",
        n,
        "0.01",
        "parallelism = 4\n[distributed]\nenabled = true\nbatch = 50\nlease = \"20s\"\n",
    );
    let coord = w.spawn(&["run", "dist"]);
    w.wait_queued(n);
    let worker = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    wait_for("some progress", Duration::from_secs(30), || {
        w.processed().len() >= 300
    });
    let st = Command::new(ctl)
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster");
    assert!(st.success(), "restart failed: {st:?}");
    let restarted = Instant::now();
    expect_exit("coordinator", coord, Duration::from_secs(180), 0);
    expect_exit("worker", worker, Duration::from_secs(60), 0);
    assert_every_key_done(&w, n);
    let extra = redone(&w, n);
    eprintln!(
        "restart test: {extra} keys redone, run ended {:?} after the restart, {:?} in all",
        restarted.elapsed(),
        t0.elapsed()
    );
}

#[test]
fn sqlite_refuses_distributed_items_clearly() {
    let w = World::new("sqlite");
    w.job("dist", 5, "0", "[distributed]\nenabled = true\n");
    let sqlite = format!("sqlite:{}", w.path("state.db").display());
    let on_sqlite = |args: &[&str]| {
        w.cmd(args)
            .env("BATCHGUARD_STATE", &sqlite)
            .output()
            .unwrap()
    };
    let run = on_sqlite(&["run", "dist"]);
    assert_eq!(run.status.code(), Some(1));
    let worker = on_sqlite(&["worker", "dist"]);
    let err = String::from_utf8_lossy(&worker.stderr);
    assert!(
        err.contains("distributed items need a postgres:// state store"),
        "{err}"
    );
    let show = on_sqlite(&["runs", "dist", "--format", "json"]);
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(
        out.contains("distributed items need a postgres:// state store"),
        "{out}"
    );
}
