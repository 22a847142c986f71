//! Distributed items (SPEC §6, G16) against a real PostgreSQL (127.0.0.1:5432,
//! trust auth, database `test`; override with `BATCHGUARD_TEST_PG`), driving
//! the real binary: a coordinator and workers, a worker killed mid-batch,
//! two coordinators at once, static shards. Each test has a schema of its
//! own (`?schema=…`, dropped at the end) and config dirs under /tmp; the
//! tests run one at a time (they spawn many processes each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_batchguard");
mod pg_common;
#[path = "support/mod.rs"]
mod support;
use pg_common::{admin, base, next_id};
use support::wait_for;

/// One test's world: a schema, a config dir, a log dir, and `n` keys in
/// `keys.txt`.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    schema: String,
    state: String,
    /// How many keys `keys.txt` holds.
    n: usize,
    started: Instant,
    /// The lock that runs this binary's PostgreSQL tests one at a time
    /// (released after the schema is dropped).
    _serial: Option<MutexGuard<'static, ()>>,
}

impl World {
    /// The world of a test that needs the server, holding the lock that
    /// runs these tests one at a time; `None` (the test returns) when the
    /// server does not answer: see [`pg_common::begin`].
    fn begin(prefix: &str, n: usize) -> Option<World> {
        let serial = pg_common::begin()?;
        Some(World::create(prefix, n, Some(serial)))
    }

    /// A world for a test that does not use the server.
    fn new(prefix: &str, n: usize) -> World {
        World::create(prefix, n, None)
    }

    fn create(prefix: &str, n: usize, serial: Option<MutexGuard<'static, ()>>) -> World {
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
            n,
            started: Instant::now(),
            _serial: serial,
        };
        w.write(
            "etc/batchguard.toml",
            &format!("log_dir = \"{}\"\n", w.root.join("log").display()),
        );
        let keys: String = (0..n).map(|i| format!("key-{i:06}\n")).collect();
        w.write("keys.txt", &keys);
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

    /// The source file of the `n` keys.
    fn keys(&self) -> PathBuf {
        self.path("keys.txt")
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

    /// Job `name`: the [`handler`](World::handler) run on each key, with
    /// the job lines `extra`.
    fn job(&self, name: &str, sleep: &str, extra: &str) {
        let h = self.handler(sleep);
        self.write(
            &format!("etc/jobs/{name}.toml"),
            &format!(
                "[items]\nsource_file = \"{}\"\nrun = [\"sh\", \"{}\", \"{{item}}\"]\n{extra}",
                self.keys().display(),
                h.display()
            ),
        );
    }

    /// Stream-mode job `name`: `sh -c SCRIPT` reads the keys on stdin and
    /// reports the done ones on fd 3; with the job lines `extra`.
    fn stream_job(&self, name: &str, script: &str, extra: &str) {
        self.write(
            &format!("etc/jobs/{name}.toml"),
            &format!(
                "command = [\"sh\", \"-c\", \"{script}\"]\n[items]\nmode = \"stream\"\n\
                 source_file = \"{}\"\n{extra}",
                self.keys().display()
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

    /// Run job `name` with its coordinator alone and expect it to exit with
    /// `code` within a minute.
    fn expect_run(&self, name: &str, code: i32) {
        let coord = self.spawn(&["run", name]);
        expect_exit(
            &format!("{name} coordinator"),
            coord,
            Duration::from_secs(60),
            code,
        );
    }

    /// Run job `dist` with a coordinator and `workers` workers
    /// (`batchguard worker dist ARGS`): the coordinator must exit 0 within
    /// `limit`, then each worker within 30 s, with every key done by the
    /// one run.
    fn run_with_workers(&self, workers: usize, args: &[&str], limit: Duration) {
        let coord = self.start_coordinator();
        let worker_args = [&["worker", "dist"], args].concat();
        let workers: Vec<Child> = (0..workers).map(|_| self.spawn(&worker_args)).collect();
        expect_exit("coordinator", coord, limit, 0);
        for (i, wk) in workers.into_iter().enumerate() {
            expect_exit(&format!("worker {i}"), wk, Duration::from_secs(30), 0);
        }
        self.assert_every_key_done();
        assert_eq!(self.count("SELECT count(DISTINCT run_id) FROM ledger"), 1);
    }

    /// Wait until all `n` keys are queued.
    fn wait_queued(&self) {
        wait_for("the queue", Duration::from_secs(20), || {
            self.count("SELECT count(*) FROM queue") == self.n as i64
        });
    }

    /// Wait until the handler has processed `keys` keys.
    fn wait_processed(&self, keys: usize, limit: Duration) {
        wait_for(&format!("{keys} keys processed"), limit, || {
            self.processed().len() >= keys
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

    /// Say on stderr how long the test took to get to `what`.
    fn report(&self, what: &str) {
        eprintln!("{what}: {:?}", self.started.elapsed());
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

    /// Every one of the `n` keys was processed; how many times keys were
    /// redone.
    fn redone(&self) -> usize {
        let seen = self.processed();
        assert_eq!(seen.len(), self.n, "every key processed");
        seen.values().map(|c| c - 1).sum()
    }

    fn assert_every_key_done(&self) {
        assert_eq!(
            self.count("SELECT count(*) FROM ledger WHERE state = 1"),
            self.n as i64,
            "every key done in the ledger"
        );
        assert_eq!(
            self.count("SELECT count(*) FROM queue WHERE state = 2"),
            self.n as i64,
            "every key done in the queue"
        );
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

/// The job lines of a distributed job: `parallelism` (when given), and
/// batches of `batch` keys leased for `lease`.
fn distributed(parallelism: Option<usize>, batch: usize, lease: &str) -> String {
    let parallelism = parallelism.map_or(String::new(), |p| format!("parallelism = {p}\n"));
    format!("{parallelism}[distributed]\nenabled = true\nbatch = {batch}\nlease = \"{lease}\"\n")
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

#[test]
fn coordinator_and_two_workers_do_every_key_once() {
    let Some(w) = World::begin("many", 20_000) else {
        return;
    };
    w.job("dist", "0", &distributed(Some(4), 200, "30s"));
    w.run_with_workers(2, &["--concurrency", "4"], Duration::from_secs(240));
    let extra = w.redone();
    let twice: Vec<_> = w.processed().into_iter().filter(|(_, c)| *c > 1).collect();
    assert_eq!(extra, 0, "keys processed twice: {twice:?}");
    // The coordinator and both workers shared the work.
    assert_eq!(
        w.count("SELECT count(DISTINCT claimed_by) FROM queue WHERE state = 2"),
        3
    );
    w.report("20,000 keys, coordinator + 2 workers");
}

#[test]
fn stream_mode_coordinator_and_a_worker_do_every_key_once() {
    let Some(w) = World::begin("stream", 20_000) else {
        return;
    };
    w.stream_job("dist", "exec cat >&3", &distributed(None, 1000, "30s"));
    w.run_with_workers(1, &[], Duration::from_secs(120));
    // Each key reported done once: a redone key would count 2 attempts.
    assert_eq!(
        w.count("SELECT count(*) FROM ledger WHERE state = 1 AND attempts = 1"),
        w.n as i64,
        "every key done exactly once"
    );
    w.report("stream mode, 20,000 keys, coordinator + 1 worker");
}

#[test]
fn stream_mode_keys_a_batch_command_does_not_report_fail_or_go_back() {
    let Some(w) = World::begin("streamfail", 50) else {
        return;
    };
    // Exit 0 without reporting key-000007: that key fails (max_attempts 1,
    // so it is dead and the run ends failure).
    w.stream_job(
        "lazy",
        "while read k; do [ $k = key-000007 ] || echo $k >&3; done",
        "max_attempts = 1\n[distributed]\nenabled = true\nbatch = 10\n",
    );
    w.expect_run("lazy", 1);
    assert_eq!(w.count("SELECT count(*) FROM queue WHERE state = 2"), 49);
    assert_eq!(
        w.count("SELECT count(*) FROM queue WHERE state = 3 AND key = 'key-000007'"),
        1
    );
    // A failing command: its run fails, and the keys it did not report go
    // back to the queue (none is lost or recorded).
    w.stream_job(
        "broken",
        "read k; echo $k >&3; exit 3",
        "[distributed]\nenabled = true\nbatch = 10\n",
    );
    w.expect_run("broken", 3);
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
    let Some(w) = World::begin("kill", 400) else {
        return;
    };
    let batch = 40;
    w.job("dist", "0.05", &distributed(Some(4), batch, "2s"));
    let coord = w.spawn(&["run", "dist", "--no-work"]);
    wait_for("the coordinator run", Duration::from_secs(20), || {
        w.running() == 1 && w.count("SELECT count(*) FROM queue") == w.n as i64
    });
    let mut victim = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    w.wait_processed(20, Duration::from_secs(20));
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
    w.assert_every_key_done();
    let extra = w.redone();
    assert!(
        extra <= batch,
        "{extra} duplicates: more than the killed worker's batch of {batch}"
    );
    w.report(&format!("kill test: {extra} keys redone (bound {batch})"));
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
    let Some(w) = World::begin("ha", 20) else {
        return;
    };
    w.job("dist", "0.1", &distributed(Some(2), 5, "10s"));
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
    w.assert_every_key_done();
    assert_eq!(w.redone(), 0, "no key processed twice");
    w.report("HA test");
}

#[test]
fn three_shards_process_every_key_exactly_once() {
    let Some(w) = World::begin("shard", 3000) else {
        return;
    };
    w.job("sharded", "0", "parallelism = 4\n");
    w.migrate("sharded");
    let shards: Vec<Child> = (0..3)
        .map(|i| w.spawn(&["run", "sharded", "--shard", &format!("{i}/3")]))
        .collect();
    for (i, s) in shards.into_iter().enumerate() {
        expect_exit(&format!("shard {i}/3"), s, Duration::from_secs(120), 0);
    }
    assert_eq!(w.redone(), 0, "no key processed twice");
    assert_eq!(
        w.count("SELECT count(*) FROM ledger WHERE state = 1"),
        w.n as i64
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
        let n = w.n as u64;
        assert!(done > n / 5 && done < n / 2, "shard size {done}");
    }
    w.report("3 shards of 3000 keys");
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
    let Some(w) = World::begin("dead", 30) else {
        return;
    };
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
            w.keys().display(),
            h.display()
        ),
    );
    w.expect_run("dist", 1);
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
    let Some(w) = World::begin("term", 200) else {
        return;
    };
    // A long lease: only the release on SIGTERM lets others finish quickly.
    w.job("dist", "0.05", &distributed(None, 50, "60s"));
    let coord = w.spawn(&["run", "dist", "--no-work"]);
    w.wait_queued();
    let victim = w.spawn(&["worker", "dist", "--concurrency", "2"]);
    w.wait_processed(5, Duration::from_secs(20));
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
    w.assert_every_key_done();
    assert_eq!(w.processed().len(), w.n);
    w.report("SIGTERM test");
}

/// Stretch: PostgreSQL restarted mid-run (needs root and pg_ctlcluster;
/// skipped otherwise). The store's retries carry the coordinator and the
/// worker over the restart; nothing is lost.
#[test]
fn postgres_restart_mid_run_loses_nothing() {
    let Some(w) = World::begin("restart", 3000) else {
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
    w.job("dist", "0.01", &distributed(Some(4), 50, "20s"));
    let coord = w.spawn(&["run", "dist"]);
    w.wait_queued();
    let worker = w.spawn(&["worker", "dist", "--concurrency", "4"]);
    w.wait_processed(300, Duration::from_secs(30));
    let st = Command::new(ctl)
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster");
    assert!(st.success(), "restart failed: {st:?}");
    let restarted = Instant::now();
    expect_exit("coordinator", coord, Duration::from_secs(180), 0);
    expect_exit("worker", worker, Duration::from_secs(60), 0);
    w.assert_every_key_done();
    let extra = w.redone();
    eprintln!(
        "restart test: {extra} keys redone, run ended {:?} after the restart, {:?} in all",
        restarted.elapsed(),
        w.started.elapsed()
    );
}

#[test]
fn sqlite_refuses_distributed_items_clearly() {
    let w = World::new("sqlite", 5);
    w.job("dist", "0", "[distributed]\nenabled = true\n");
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
