//! The machine's floor for one recorded run (bench/overhead.py): the least
//! a run can do that has the durable parts of the contract, and nothing of
//! batchguard's own. One SQLite store like batchguard's (WAL,
//! `synchronous = NORMAL`, 2 KiB pages, the WAL checkpointed at 256 pages,
//! the connection left to the exit) with a lock table holding fencing
//! tokens and a run table with one index; one write transaction takes the
//! lock (or skips, exit 75, when a live lease holds it) and records the
//! run; the child's output goes straight into `LOG_DIR/JOB/RUN.log` (no
//! pipes, no lines, no time stamps); one write transaction records the end
//! and releases the lock. With `--cgroup PARENT`, a memory cgroup made
//! under PARENT for the run, with a limit, which the child joins before
//! exec (v1 through `tasks`) and which is removed after.
//!
//! No configuration, no templates, no timeout, no signals, no publish
//! socket, no notification, no lease renewal, no orphan check: what is
//! left is the kernel's exec and exit, the store's first connection (WAL
//! index rebuild, schema) and two small transactions, the log file, the
//! cgroup, the child's spawn and wait.
//!
//!     cargo build --release --example run_floor
//!     run_floor STATE LOG_DIR JOB [--cgroup PARENT] -- PROGRAM [ARGS...]

use rusqlite::{Connection, OptionalExtension, params};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS locks (
    lock_name TEXT PRIMARY KEY,
    fence INTEGER NOT NULL,
    run_id TEXT,
    lease_until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    fence INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT NOT NULL,
    exit_code INTEGER
);
CREATE INDEX IF NOT EXISTS runs_job_started ON runs (job, started_ms);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("run_floor: {what}: {e}");
    ExitCode::from(70)
}

/// A new memory cgroup for the run under `parent`, with a 1 GiB limit, and
/// the file a process joins it through.
#[inline(never)]
fn make_cgroup(parent: &Path, run_id: &str) -> std::io::Result<(PathBuf, File)> {
    let dir = parent.join(run_id);
    std::fs::create_dir(&dir)?;
    let v1 = dir.join("tasks").exists();
    let limit = if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(dir.join(limit), "1073741824")?;
    let join =
        OpenOptions::new()
            .write(true)
            .open(dir.join(if v1 { "tasks" } else { "cgroup.procs" }))?;
    Ok((dir, join))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dash) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: run_floor STATE LOG_DIR JOB [--cgroup PARENT] -- PROGRAM [ARGS...]");
        return ExitCode::from(64);
    };
    let (head, argv) = (&args[..dash], &args[dash + 1..]);
    let (Some(state), Some(log_dir), Some(job), Some(program)) =
        (head.first(), head.get(1), head.get(2), argv.first())
    else {
        eprintln!("usage: run_floor STATE LOG_DIR JOB [--cgroup PARENT] -- PROGRAM [ARGS...]");
        return ExitCode::from(64);
    };
    let cgroup_parent = match head.get(3).map(String::as_str) {
        Some("--cgroup") => head.get(4).map(PathBuf::from),
        _ => None,
    };
    let started = now_ms();
    let run_id = format!("{started:x}{:08x}", std::process::id());

    let db = match open_store(state) {
        Ok(db) => db,
        Err(code) => return code,
    };

    let taken = take_lock(&db, job, &run_id, started);
    let fence = match taken {
        Ok(Some(fence)) => fence,
        Ok(None) => return ExitCode::from(75),
        Err(e) => return fail("take the lock", e),
    };

    let log = match open_log(Path::new(log_dir), job, &run_id, fence) {
        Ok(f) => f,
        Err(e) => return fail("create the log", e),
    };
    let cgroup = match cgroup_parent.as_deref().map(|p| make_cgroup(p, &run_id)) {
        Some(Ok(pair)) => Some(pair),
        Some(Err(e)) => return fail("make the cgroup", e),
        None => None,
    };

    let (out, err) = match (log.try_clone(), log.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return fail("duplicate the log", e),
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    if let Some((_, join)) = &cgroup {
        use std::os::fd::AsRawFd;
        let fd = join.as_raw_fd();
        // SAFETY: one write(2) of a static buffer, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let status = match run_child(&mut cmd) {
        Ok(s) => s,
        Err(e) => return fail("start the child", e),
    };
    if let Some((dir, _)) = &cgroup {
        remove_cgroup(dir);
    }
    let code = status.code().unwrap_or(128);

    let ended = record_end(&db, job, &run_id, fence, code);
    if let Err(e) = ended {
        return fail("record the end", e);
    }
    // As batchguard: the exit releases the store; a close would only free.
    std::mem::forget(db);
    ExitCode::from(code.clamp(0, 255) as u8)
}

// One function per part of the run (never inlined), so that a profile
// (bench/run_phases.py) attributes the floor's time the way it does
// batchguard's.

/// The store's first connection: the settings, then the schema (created
/// once; on a store this program made, only read, as every run's first
/// statement does).
#[inline(never)]
fn open_store(state: &str) -> Result<Connection, ExitCode> {
    let db = Connection::open(state).map_err(|e| fail("open the store", e))?;
    db.execute_batch(
        "PRAGMA page_size = 2048; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA wal_autocheckpoint = 256; PRAGMA busy_timeout = 5000;",
    )
    .map_err(|e| fail("set the store up", e))?;
    db.execute_batch(SCHEMA)
        .map_err(|e| fail("create the tables", e))?;
    Ok(db)
}

/// The lock and the run row, in one transaction: the fence, or `None`
/// when a live lease holds the lock.
#[inline(never)]
fn take_lock(
    db: &Connection,
    job: &str,
    run_id: &str,
    started: i64,
) -> rusqlite::Result<Option<i64>> {
    db.execute_batch("BEGIN IMMEDIATE")?;
    let holder: Option<(Option<String>, i64)> = db
        .query_row(
            "SELECT run_id, lease_until_ms FROM locks WHERE lock_name = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((Some(_), until)) = holder {
        if until > started {
            db.execute_batch("ROLLBACK")?;
            return Ok(None);
        }
    }
    let fence: i64 = db.query_row(
        "INSERT INTO locks (lock_name, fence, run_id, lease_until_ms) VALUES (?1, 1, ?2, ?3) \
         ON CONFLICT (lock_name) DO UPDATE SET fence = fence + 1, run_id = excluded.run_id, \
         lease_until_ms = excluded.lease_until_ms RETURNING fence",
        params![job, run_id, started + 60_000],
        |r| r.get(0),
    )?;
    db.execute(
        "INSERT INTO runs (id, job, fence, started_ms, outcome) VALUES (?1, ?2, ?3, ?4, 'running')",
        params![run_id, job, fence, started],
    )?;
    db.execute_batch("COMMIT")?;
    Ok(Some(fence))
}

/// The run's log file, `LOG_DIR/JOB/RUN.log`, with its first line.
#[inline(never)]
fn open_log(log_dir: &Path, job: &str, run_id: &str, fence: i64) -> std::io::Result<File> {
    let job_dir = log_dir.join(job);
    std::fs::create_dir_all(&job_dir)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(job_dir.join(format!("{run_id}.log")))?;
    writeln!(log, "run {run_id} of job {job} fence {fence}")?;
    Ok(log)
}

/// The run's cgroup, once its process has ended.
#[inline(never)]
fn remove_cgroup(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// Start the child and wait for it.
#[inline(never)]
fn run_child(cmd: &mut Command) -> std::io::Result<std::process::ExitStatus> {
    cmd.status()
}

/// The end, with the lock released, in one transaction.
#[inline(never)]
fn record_end(
    db: &Connection,
    job: &str,
    run_id: &str,
    fence: i64,
    code: i32,
) -> rusqlite::Result<()> {
    db.execute_batch("BEGIN IMMEDIATE")?;
    db.execute(
        "UPDATE runs SET ended_ms = ?1, outcome = ?2, exit_code = ?3 WHERE id = ?4",
        params![
            now_ms(),
            if code == 0 { "success" } else { "failure" },
            code,
            run_id
        ],
    )?;
    db.execute(
        "UPDATE locks SET run_id = NULL WHERE lock_name = ?1 AND fence = ?2",
        params![job, fence],
    )?;
    db.execute_batch("COMMIT")
}
