//! The embedded SQLite backend of the state store (the default).
//!
//! One database file, WAL journal so readers never block the writer, and
//! `BEGIN IMMEDIATE` for every transaction that writes, so concurrent
//! runners queue on SQLite's write lock (with a busy timeout) instead of
//! failing. `synchronous = NORMAL`: a committed transaction survives the
//! crash or SIGKILL of any process; only a power loss can take back the last
//! commits (see docs/locking.md). Migrations are numbered and recorded in
//! `PRAGMA user_version`. There is no distributed queue here (it needs a
//! store shared by the hosts): [`Store::queue`] is `None`.

use super::policy::{self, Decision};
use super::rows::{self, Columns, NOTIFY_COLUMNS, OUTBOX_COLUMNS, Split, Value};
use super::{
    ExpiredLog, Fenced, FencedAction, Heartbeat, Holder, ItemState, LedgerCommit, LedgerEntry,
    LedgerStore, Liveness, LockAttempt, LockRequest, NotifyState, OutboxClaim, OutboxFailure,
    OutboxRow, OutboxStore, QueueStore, Result, RunEnd, RunQuery, RunRecord, RunStore, ScopeCounts,
    Store, StoreError, WatchStore,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Numbered migrations; index + 1 is the schema version they lead to.
/// This backend's migrations (src/store/schema.rs).
fn migrations() -> &'static [String] {
    super::schema::migrations(super::schema::Backend::Sqlite)
}

/// How this backend spells the shared SQL.
const DIALECT: rows::Dialect = rows::Dialect {
    mark: '?',
    logs_kept: "log_pruned = 0",
    logs_kept_index: "INDEXED BY runs_logs_kept ",
};

pub struct SqliteStore {
    url: String,
    /// Closed on drop unless [`Store::ends_with_the_process`] said not to.
    conn: std::mem::ManuallyDrop<Mutex<Connection>>,
    leave_open: std::sync::atomic::AtomicBool,
    /// The write-ahead log, whose size decides the checkpoint on close.
    wal: std::path::PathBuf,
}

/// The page size of a store this build creates. Every run writes about 19
/// pages to the WAL (the run row, its indexes, the lock, the fence), and
/// the next invocation reads every frame back to rebuild the WAL index, so
/// a run's cost follows the page size: 2 KiB pages halve both against
/// SQLite's 4 KiB default for 0.2 ms less per run, while the ledger's
/// stream mode loses about 12% (docs/performance.md). A store keeps the
/// page size it was created with.
const NEW_STORE_PAGE_SIZE: u32 = 2048;

/// Above this many pages' worth of frames the WAL is checkpointed and
/// truncated when a store closes (1 MiB of 4 KiB pages, 512 KiB of 2 KiB
/// ones: a checkpoint about every 13 runs either way). Every CLI
/// invocation that opens the store first rebuilds the WAL index by reading
/// every frame of the WAL, so it is kept small; below it, closing costs
/// nothing (no checkpoint, no fsync).
const WAL_TRUNCATE_AT_PAGES: u64 = 256;

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.truncate_a_big_wal();
        if !self.leave_open.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: dropped once, here, and never used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.conn) };
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The store holds job output and params: no other user may read it
/// (SPEC §1). A new file is made 0600 before SQLite creates its WAL and
/// shared-memory files (which copy its mode); an existing one more open
/// than 0640 is narrowed to that. Says whether the file is new (empty).
fn keep_private(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let new = meta.len() == 0;
    let mode = meta.permissions().mode() & 0o777;
    let private = if new { 0o600 } else { mode & 0o640 };
    if private != mode {
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot make the state store private");
        }
    }
    new
}

impl SqliteStore {
    /// Open (creating and migrating when new) the store at `path`. Several
    /// processes opening a brand-new store at once race for the switch to
    /// WAL mode, which SQLite reports as busy without waiting: that first
    /// setup is retried for a while instead of failing (exit 69).
    pub fn open(url: &str, path: &Path) -> Result<SqliteStore> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(10);
        loop {
            match SqliteStore::open_once(url, path) {
                Err(StoreError::Sqlite { source, .. })
                    if is_busy(&source) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %source, "the new store is busy; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    fn open_once(url: &str, path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let err = |source| StoreError::Sqlite {
            url: url.to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        let new = keep_private(path);
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        if new {
            // Only an empty database takes a page size (before its first
            // write; on one another process has just created, a no-op).
            conn.pragma_update(None, "page_size", NEW_STORE_PAGE_SIZE)
                .map_err(err)?;
        }
        // One batch of pragmas: WAL (persistent, but cheap to re-assert),
        // pages read through a shared mapping instead of one pread each (a
        // fresh process starts with a cold page cache on every invocation),
        // and NORMAL sync, which in WAL mode survives any process crash.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA mmap_size = 268435456; \
             PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;",
        )
        .map_err(err)?;
        // Every CLI invocation opens and closes the store: without this the
        // last close would checkpoint and delete the WAL (two fsyncs) every
        // time. Checkpoints still happen automatically as the WAL grows.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let store = SqliteStore {
            url: url.to_string(),
            conn: std::mem::ManuallyDrop::new(Mutex::new(conn)),
            leave_open: Default::default(),
            wal: wal.into(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Checkpoint and truncate the WAL when it holds more than
    /// [`WAL_TRUNCATE_AT_PAGES`] pages' worth.
    fn truncate_a_big_wal(&self) {
        let Ok(wal) = std::fs::metadata(&self.wal) else {
            return;
        };
        let conn = self.conn();
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap_or(4096);
        if wal.len() > WAL_TRUNCATE_AT_PAGES * page.unsigned_abs() {
            // Best effort: a busy database just keeps its WAL a while longer.
            let _ = conn.busy_timeout(Duration::from_millis(200));
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::debug!(error = %e, "WAL checkpoint on close skipped");
            }
        }
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            url: self.url.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned mutex is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let known = super::schema::migration_count(super::schema::Backend::Sqlite) as i64;
        let mut conn = self.conn();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version == known {
            return Ok(());
        }
        let tx = self.begin(&mut conn)?;
        // Re-read under the write lock: another process may have migrated.
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > known {
            return Err(StoreError::SchemaTooNew {
                url: self.url.clone(),
                found: version,
                known,
            });
        }
        for (i, sql) in migrations().iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(|e| self.err(e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn holder(&self, tx: &Connection, lock: &str) -> Result<Option<Holder>> {
        tx.prepare_cached(&rows::holder_sql("?1"))
            .and_then(|mut st| st.query_row([lock], |r| rows::holder_from(r)).optional())
            .map_err(|e| self.err(e))
    }

    /// Inserts `run`, inside the caller's transaction: a run that is
    /// already over (a skipped one) is counted in `run_totals` with it.
    fn insert_run_in(&self, conn: &Connection, run: &RunRecord, fence: i64) -> Result<()> {
        let values = rows::run_values(run, fence).into_iter().map(to_sql);
        conn.prepare_cached(&rows::insert_run_sql('?'))
            .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
            .and_then(|_| match run.outcome.as_str() {
                "running" => Ok(()),
                _ => count_ended(conn, &run.id),
            })
            .map_err(|e| self.err(e))
    }

    /// The runs `sql` (reading `RUN_COLUMNS`) selects.
    /// A transaction that writes: it takes SQLite's write lock now.
    fn begin<'c>(&self, conn: &'c mut Connection) -> Result<Tx<'c>> {
        Tx::immediate(conn).map_err(|e| self.err(e))
    }

    fn runs_where(&self, sql: &str, args: Vec<Value>) -> Result<Vec<RunRecord>> {
        self.select(sql, args, |r| rows::run_from(r))
    }

    /// The rows `sql` selects with `args`, each read with `read`.
    fn select<T>(
        &self,
        sql: &str,
        args: Vec<Value>,
        read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let args = rusqlite::params_from_iter(args.into_iter().map(to_sql));
        stmt.query_map(args, read)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }
}

/// A `BEGIN IMMEDIATE` transaction that rolls back unless committed, like
/// rusqlite's own, but through cached statements: `BEGIN` and `COMMIT` are
/// parsed once per connection instead of once per transaction (a per-item
/// run commits after every key).
struct Tx<'c> {
    conn: &'c Connection,
}

impl<'c> Tx<'c> {
    fn immediate(conn: &'c mut Connection) -> rusqlite::Result<Tx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Tx { conn })
    }

    /// After a failed `COMMIT` the transaction is still open, and the drop
    /// rolls it back.
    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    /// Still inside the transaction (not committed, or the commit failed):
    /// roll it back. After a commit SQLite is back in autocommit mode.
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "SQLite rollback failed");
            }
        }
    }
}

/// A non-empty batch as one JSON parameter (for `json_each`).
fn json_batch<T: serde::Serialize>(items: &[T]) -> Option<String> {
    (!items.is_empty()).then(|| serde_json::to_string(items).unwrap_or_else(|_| "[]".into()))
}

// The ledger statements of a batch, one per kind of update, the keys given
// as one JSON array (?2), in this order: a batch of thousands of rows costs three
// statements, not thousands (json_each is SQLite's own, in C). In-flight
// markers go first, so a key started and finished in one batch ends done.
const LEDGER_IN_FLIGHT: &str = "INSERT INTO ledger (scope_id, key, state, attempts, last_error, \
     run_id, fence, updated_ms) SELECT ?1, value, 0, 0, NULL, ?3, ?4, ?5 FROM json_each(?2) \
     WHERE true ON CONFLICT (scope_id, key) DO UPDATE SET state = 0, run_id = ?3, \
     fence = ?4, updated_ms = ?5 WHERE state <> 1";
const LEDGER_DONE: &str = "INSERT INTO ledger (scope_id, key, state, attempts, last_error, \
     run_id, fence, updated_ms) SELECT ?1, value, 1, 1, NULL, ?3, ?4, ?5 FROM json_each(?2) \
     WHERE true ON CONFLICT (scope_id, key) DO UPDATE SET state = 1, \
     attempts = attempts + 1, last_error = NULL, run_id = ?3, fence = ?4, updated_ms = ?5";
/// Failed keys come as `[key, error]` pairs.
const LEDGER_FAILED: &str = "INSERT INTO ledger (scope_id, key, state, attempts, last_error, \
     run_id, fence, updated_ms) SELECT ?1, value ->> 0, 2, 1, value ->> 1, ?3, ?4, ?5 \
     FROM json_each(?2) WHERE true ON CONFLICT (scope_id, key) DO UPDATE SET state = 2, \
     attempts = attempts + 1, last_error = excluded.last_error, run_id = ?3, fence = ?4, \
     updated_ms = ?5";

/// The run `run_id` has ended: one more of its job's runs with its
/// outcome in `run_totals` (the dashboard's counts,
/// `src/store/dashboard.rs`). Called in the transaction that ends the run,
/// so the counts never disagree with `runs`; `running` is never counted.
fn count_ended(conn: &Connection, run_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_totals (job, outcome, n) SELECT job, outcome, 1 FROM runs \
         WHERE id = ?1 ON CONFLICT (job, outcome) DO UPDATE SET n = n + 1",
    )?
    .execute([run_id])?;
    Ok(())
}

/// Ends the running run `run_id` with `update` (whose `?1` is that id),
/// and counts it; false when it was not running.
fn end_running(
    conn: &Connection,
    run_id: &str,
    update: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<bool> {
    let ended = conn.prepare_cached(update)?.execute(params)? == 1;
    if ended {
        count_ended(conn, run_id)?;
    }
    Ok(ended)
}

/// The newest fence drawn for `lock`.
fn last_fence(conn: &Connection, lock: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT last_fence FROM fences WHERE lock_name = ?1")?
        .query_row([lock], |r| r.get(0))
        .optional()
}

fn bump_fence(conn: &Connection, lock: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "INSERT INTO fences (lock_name, last_fence) VALUES (?1, 1) \
         ON CONFLICT (lock_name) DO UPDATE SET last_fence = last_fence + 1 \
         RETURNING last_fence",
        [lock],
        |r| r.get(0),
    )
}

/// A shared row value as SQLite's.
fn to_sql(v: Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match v {
        Value::I32(v) => v.map_or(Sql::Null, |v| Sql::Integer(v.into())),
        Value::I64(v) => v.map_or(Sql::Null, Sql::Integer),
        Value::Text(v) => v.map_or(Sql::Null, Sql::Text),
    }
}

impl Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn opt_i64(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn opt_str(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn i64(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn str(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
}

impl Store for SqliteStore {
    /// The queue needs a store shared by the hosts: not this one.
    fn queue(&self) -> Option<&dyn QueueStore> {
        None
    }

    /// Not closing leaves nothing behind: with `NO_CKPT_ON_CLOSE` a close
    /// writes nothing, and the process's exit releases SQLite's file locks
    /// and shared memory as a close would.
    fn ends_with_the_process(&self) {
        self.leave_open
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RunStore for SqliteStore {
    fn acquire(&self, req: &LockRequest<'_>, alive: Liveness<'_>) -> Result<LockAttempt> {
        let run = req.run;
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        let holder = if req.mode.holds_lock() {
            self.holder(&tx, &req.run.lock)?
        } else {
            None
        };
        let replaced = match policy::decide(holder, req, alive) {
            Decision::Take { replaced } => replaced,
            Decision::Refuse(attempt) => return Ok(attempt),
        };
        let fence = bump_fence(&tx, &req.run.lock).map_err(|e| self.err(e))?;
        if req.mode.holds_lock() {
            tx.execute(
                "INSERT INTO locks (lock_name, fence, run_id, lease_until_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (lock_name) DO UPDATE SET fence = ?2, run_id = ?3, lease_until_ms = ?4",
                params![&req.run.lock, fence, req.run.id, req.now_ms + req.lease_ms],
            )
            .map_err(|e| self.err(e))?;
        }
        self.insert_run_in(&tx, run, fence)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(LockAttempt::Acquired { fence, replaced })
    }

    fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<bool> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        tx.execute(
            "UPDATE runs SET heartbeat_ms = ?2 WHERE id = ?1",
            params![beat.run_id, beat.now_ms],
        )
        .map_err(|e| self.err(e))?;
        let held = tx
            .execute(
                "UPDATE locks SET lease_until_ms = ?4 WHERE lock_name = ?1 AND fence = ?2 AND run_id = ?3",
                params![beat.lock, beat.fence, beat.run_id, beat.now_ms + beat.lease_ms],
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(held == 1)
    }

    fn current_fence(&self, lock: &str) -> Result<Option<i64>> {
        last_fence(&self.conn(), lock).map_err(|e| self.err(e))
    }

    fn while_fence_current(&self, lock: &str, fence: i64, f: FencedAction<'_>) -> Result<Fenced> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        if last_fence(&tx, lock).map_err(|e| self.err(e))? != Some(fence) {
            return Ok(Ok(false));
        }
        // The write lock is held until the transaction ends: no other run
        // can draw a newer fence while the action runs.
        let result = f();
        tx.commit().map_err(|e| self.err(e))?;
        Ok(result.map(|()| true))
    }

    fn set_run_process(&self, run_id: &str, pgid: Option<i32>, cgroup: Option<&str>) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET pgid = ?2, cgroup = ?3 WHERE id = ?1",
                params![run_id, pgid, cgroup],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn finish_run(&self, run_id: &str, release: Option<(&str, i64)>, end: &RunEnd) -> Result<()> {
        let items = rows::items_json(end.items.as_ref());
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        end_running(
            &tx,
            run_id,
            "UPDATE runs SET ended_at = ?2, ended_ms = ?3, duration_ms = ?3 - started_ms, \
             outcome = ?4, exit_code = ?5, signal = ?6, peak_memory_bytes = ?7, \
             memory_enforcement = COALESCE(?8, memory_enforcement), items = COALESCE(?9, items), \
             error = ?10 WHERE id = ?1 AND outcome = 'running'",
            params![
                run_id,
                end.ended_at,
                end.ended_ms,
                end.outcome,
                end.exit_code,
                end.signal,
                end.peak_memory_bytes.map(|b| b as i64),
                end.memory_enforcement,
                items,
                end.error,
            ],
        )
        .map_err(|e| self.err(e))?;
        if let Some((lock, fence)) = release {
            tx.execute(
                "DELETE FROM locks WHERE lock_name = ?1 AND fence = ?2",
                params![lock, fence],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn release_lock(&self, lock: &str, fence: i64) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM locks WHERE lock_name = ?1 AND fence = ?2",
                params![lock, fence],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_run(&self, run: &RunRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        self.insert_run_in(&tx, run, run.fence)?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn mark_lost(&self, run_id: &str, ended_at: &str, ended_ms: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        let lost = end_running(
            &tx,
            run_id,
            "UPDATE runs SET outcome = 'lost', ended_at = ?2, ended_ms = ?3, \
             duration_ms = MAX(heartbeat_ms, started_ms) - started_ms \
             WHERE id = ?1 AND outcome = 'running'",
            params![run_id, ended_at, ended_ms],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(lost)
    }

    fn runs_matching(&self, query: &RunQuery<'_>) -> Result<Vec<RunRecord>> {
        let (sql, args) = query.sql(&DIALECT);
        self.runs_where(&sql, args)
    }

    fn mark_log_pruned(&self, run_id: &str) -> Result<()> {
        self.conn()
            .execute("UPDATE runs SET log_pruned = 1 WHERE id = ?1", [run_id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn expired_logs(&self, job: &str, before_ms: i64, limit: usize) -> Result<Vec<ExpiredLog>> {
        let (sql, args) = rows::expired_logs_sql(&DIALECT, job, before_ms, limit);
        self.select(&sql, args, |r| {
            Ok(ExpiredLog {
                run_id: r.get(0)?,
                log_path: r.get(1)?,
            })
        })
    }

    fn set_run_failed_items(&self, run_id: &str, keys: &[String]) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET items_failed = ?2 WHERE id = ?1",
                params![run_id, rows::failed_json(keys)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl LedgerStore for SqliteStore {
    fn ledger_scope(&self, job: &str, scope: &str, create: bool) -> Result<Option<i64>> {
        let conn = self.conn();
        let find = |conn: &Connection| {
            conn.query_row(
                "SELECT id FROM ledger_scopes WHERE job = ?1 AND scope = ?2",
                params![job, scope],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        };
        if let Some(id) = find(&conn).map_err(|e| self.err(e))? {
            return Ok(Some(id));
        }
        if !create {
            return Ok(None);
        }
        conn.execute(
            "INSERT INTO ledger_scopes (job, scope, created_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (job, scope) DO NOTHING",
            params![job, scope, crate::clock::now_ms()],
        )
        .map_err(|e| self.err(e))?;
        find(&conn).map_err(|e| self.err(e))
    }

    fn ledger_scan(&self, scope_id: i64, f: &mut dyn FnMut(&str, ItemState, u32)) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key, state, attempts FROM ledger WHERE scope_id = ?1")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([scope_id]).map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let key = row.get_ref(0).map_err(|e| self.err(e))?;
            let key = key.as_str().map_err(|e| self.err(e.into()))?;
            let state: i64 = row.get(1).map_err(|e| self.err(e))?;
            let attempts: i64 = row.get(2).map_err(|e| self.err(e))?;
            let state = ItemState::from_code(state).ok_or_else(|| StoreError::Corrupt {
                url: self.url.clone(),
                what: "ledger.state",
                detail: state.to_string(),
            })?;
            f(key, state, attempts.max(0) as u32);
        }
        Ok(())
    }

    fn ledger_commit(&self, commit: &LedgerCommit<'_>) -> Result<bool> {
        let LedgerCommit {
            scope_id,
            who,
            now_ms,
            updates,
        } = *commit;
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        let fence = match who.fence {
            Some(fence) => {
                if last_fence(&tx, who.lock).map_err(|e| self.err(e))? != Some(fence) {
                    return Ok(false);
                }
                fence
            }
            None => 0,
        };
        // One statement per kind of update, in-flight first (see LEDGER_*).
        let split = Split::new(updates);
        let failed: Vec<(&str, &str)> = split.failed.iter().copied().zip(split.errors).collect();
        let batches = [
            (LEDGER_IN_FLIGHT, json_batch(&split.in_flight)),
            (LEDGER_DONE, json_batch(&split.done)),
            (LEDGER_FAILED, json_batch(&failed)),
        ];
        for (sql, batch) in batches {
            let Some(batch) = batch else { continue };
            tx.prepare_cached(sql)
                .and_then(|mut st| st.execute(params![scope_id, batch, who.run_id, fence, now_ms]))
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn ledger_counts(&self, job: &str, scope: Option<&str>) -> Result<Vec<ScopeCounts>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.scope, \
                 COALESCE(SUM(l.state = 1), 0), COALESCE(SUM(l.state = 2), 0), \
                 COALESCE(SUM(l.state = 0), 0) \
                 FROM ledger_scopes s LEFT JOIN ledger l ON l.scope_id = s.id \
                 WHERE s.job = ?1 AND (?2 IS NULL OR s.scope = ?2) \
                 GROUP BY s.id ORDER BY s.scope",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![job, scope], |r| rows::scope_counts_from(r))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn ledger_failed(&self, scope_id: i64, limit: usize) -> Result<Vec<LedgerEntry>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT key, attempts, last_error, run_id FROM ledger \
                 WHERE scope_id = ?1 AND state = 2 ORDER BY attempts DESC, key LIMIT {}",
                rows::limit(limit)
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![scope_id], |r| rows::failed_from(r))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn ledger_reset(&self, job: &str, scope: &str) -> Result<u64> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM ledger_scopes WHERE job = ?1 AND scope = ?2",
                params![job, scope],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(id) = id else {
            return Ok(0);
        };
        let n = tx
            .execute("DELETE FROM ledger WHERE scope_id = ?1", [id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM ledger_scopes WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n as u64)
    }
}

impl OutboxStore for SqliteStore {
    fn outbox_add(&self, rows: &[OutboxRow]) -> Result<()> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO outbox (id, channel, job, event, payload, created_ms, attempts, \
                     next_attempt_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7) \
                     ON CONFLICT (id, channel) DO NOTHING",
                )
                .map_err(|e| self.err(e))?;
            for r in rows {
                st.execute(params![
                    r.id,
                    r.channel,
                    r.job,
                    r.event,
                    r.payload,
                    r.created_ms,
                    r.next_attempt_ms
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn outbox_claim(&self, claim: &OutboxClaim) -> Result<Vec<OutboxRow>> {
        let mut conn = self.conn();
        let tx = self.begin(&mut conn)?;
        let rows = {
            let mut st = tx
                .prepare_cached(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox \
                     WHERE delivered_ms IS NULL AND next_attempt_ms <= ?1 \
                     ORDER BY created_ms LIMIT {}",
                    rows::limit(claim.limit)
                ))
                .map_err(|e| self.err(e))?;
            st.query_map(params![claim.due_ms], |r| rows::outbox_from(r))
                .map_err(|e| self.err(e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?
        };
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE outbox SET next_attempt_ms = ?3 WHERE id = ?1 AND channel = ?2",
                )
                .map_err(|e| self.err(e))?;
            for r in &rows {
                st.execute(params![r.id, r.channel, claim.now_ms + claim.lease_ms])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn outbox_delivered(&self, id: &str, channel: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE outbox SET delivered_ms = ?3, attempts = attempts + 1, last_error = NULL \
                 WHERE id = ?1 AND channel = ?2",
                params![id, channel, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn outbox_failed(&self, f: &OutboxFailure<'_>) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?3, next_attempt_ms = ?4 \
                 WHERE id = ?1 AND channel = ?2 AND delivered_ms IS NULL",
                params![f.id, f.channel, f.error, f.next_attempt_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn outbox_pending(&self) -> Result<u64> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE delivered_ms IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn notify_state(&self, job: &str) -> Result<NotifyState> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {NOTIFY_COLUMNS} FROM notify_state WHERE job = ?1"),
                [job],
                |r| rows::notify_from(r),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or_default())
    }

    fn set_notify_state(&self, job: &str, st: &NotifyState) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO notify_state (job, failing_since_ms, failures, suppressed, \
                 last_sent_ms, overrun_run) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (job) DO UPDATE SET failing_since_ms = ?2, failures = ?3, \
                 suppressed = ?4, last_sent_ms = ?5, overrun_run = ?6",
                params![
                    job,
                    st.failing_since_ms,
                    st.failures,
                    st.suppressed,
                    st.last_sent_ms,
                    st.overrun_run
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl WatchStore for SqliteStore {
    fn watch_state(&self, job: &str, now_ms: i64) -> Result<(i64, Option<i64>)> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO watchdog (job, since_ms) VALUES (?1, ?2) ON CONFLICT (job) DO NOTHING",
            params![job, now_ms],
        )
        .map_err(|e| self.err(e))?;
        conn.query_row(
            "SELECT since_ms, last_missed_fire_ms FROM watchdog WHERE job = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| self.err(e))
    }

    fn record_missed(&self, job: &str, fire_ms: i64) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE watchdog SET last_missed_fire_ms = ?2 WHERE job = ?1 \
                 AND (last_missed_fire_ms IS NULL OR last_missed_fire_ms < ?2)",
                params![job, fire_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::{SqliteStore, migrations};
    use rusqlite::Connection;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// No run query is prepared twice at its first use. SQLite's planner
    /// reads a bound LIMIT, and a statement whose plan depends on a bound
    /// value is prepared again once the value is bound: for a whole
    /// `exec /bin/true` run, one such query (log retention's) was 7% of all
    /// instructions.
    #[test]
    fn run_queries_are_prepared_once() {
        use super::super::rows::RunQuery;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&format!("sqlite:{}", path.display()), &path).unwrap();
        let queries = [
            RunQuery::ById("r"),
            RunQuery::Newest {
                job: Some("j"),
                limit: 5,
            },
            RunQuery::Newest {
                job: None,
                limit: 5,
            },
            RunQuery::LastPerJob,
            RunQuery::LastFinished("j"),
            RunQuery::Running,
            RunQuery::Page {
                job: "j",
                before_seq: 9,
                limit: 5,
            },
            RunQuery::LogsBefore {
                job: "j",
                before_ms: 9,
                limit: 200,
            },
        ];
        let conn = store.conn();
        for q in &queries {
            let (sql, args) = q.sql(&super::DIALECT);
            let mut st = conn.prepare(&sql).unwrap();
            let args = rusqlite::params_from_iter(args.into_iter().map(super::to_sql));
            let mut rows = st.query(args).unwrap();
            while rows.next().unwrap().is_some() {}
            drop(rows);
            let again = st.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(again, 0, "prepared {again} more time(s): {sql}");
        }
        // Log retention reads only the runs whose logs are kept, however
        // many were pruned before.
        let (sql, _) = RunQuery::LogsBefore {
            job: "j",
            before_ms: 9,
            limit: 200,
        }
        .sql(&super::DIALECT);
        let plan: String = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(["j", "9"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("; ");
        assert!(plan.contains("USING INDEX runs_logs_kept"), "{plan}");
    }

    /// A new store takes 2 KiB pages; one created with SQLite's 4 KiB
    /// keeps them. Either way the WAL is truncated on close once it holds
    /// more than 256 pages' worth, so a store of either size checkpoints
    /// about as often.
    #[test]
    fn new_stores_take_small_pages_and_the_wal_cap_follows_the_page_size() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |store: &SqliteStore| -> i64 {
            store
                .conn()
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap()
        };
        // 600 KB of WAL: over 2 KiB pages' cap (512 KiB), under 4 KiB's (1 MiB).
        let grow_wal = |store: &SqliteStore| {
            store
                .conn()
                .execute_batch(
                    "CREATE TABLE filler (b BLOB); INSERT INTO filler VALUES (zeroblob(600000));",
                )
                .unwrap();
        };
        let wal_len = |path: &std::path::Path| {
            std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len())
        };

        let new = dir.path().join("new.db");
        let store = SqliteStore::open(&format!("sqlite:{}", new.display()), &new).unwrap();
        assert_eq!(page_size(&store), super::NEW_STORE_PAGE_SIZE as i64);
        grow_wal(&store);
        assert!(wal_len(&new) > 512 * 1024, "{}", wal_len(&new));
        drop(store);
        assert_eq!(wal_len(&new), 0, "a WAL over the cap is truncated on close");

        let old = dir.path().join("old.db");
        {
            let conn = Connection::open(&old).unwrap();
            conn.execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE first (x);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&format!("sqlite:{}", old.display()), &old).unwrap();
        assert_eq!(page_size(&store), 4096, "an existing store keeps its pages");
        grow_wal(&store);
        drop(store);
        assert!(
            wal_len(&old) > 512 * 1024,
            "under 4 KiB pages' cap the WAL stays: {}",
            wal_len(&old)
        );
    }

    /// The build's SQLite is the lean one `.cargo/config.toml` asks for
    /// (cargo reads that file when it runs inside the checkout).
    #[test]
    fn sqlite_is_built_without_the_modules_a_store_never_uses() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        for absent in ["ENABLE_FTS5", "ENABLE_FTS3", "ENABLE_RTREE", "ENABLE_STAT4"] {
            assert!(
                !options.iter().any(|o| o == absent),
                "{absent} in {options:?}"
            );
        }
    }

    #[test]
    fn a_store_of_schema_5_migrates_and_loses_the_unused_queue_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &migrations()[..5] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            assert!(tables(&conn).contains(&"queue".to_string()));
        }
        let url = format!("sqlite:{}", path.display());
        drop(SqliteStore::open(&url, &path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, migrations().len() as i64);
        assert!(!tables(&conn).contains(&"queue".to_string()));
        assert!(tables(&conn).contains(&"ledger".to_string()));
    }

    /// A store whose triggers kept `run_totals` (schema 8) loses them, and
    /// the counts go on from where the triggers left them, once per run.
    #[test]
    fn a_store_of_schema_8_keeps_its_counts_without_triggers() {
        use super::super::conformance::record;
        use super::super::{RunEnd, RunStore, RunnerIdentity};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v8.db");
        let who = RunnerIdentity {
            host: "h".into(),
            boot_id: "b".into(),
            pid: 1,
            pid_start: 1,
        };
        let url = format!("sqlite:{}", path.display());
        let triggers = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &migrations()[..8] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 8).unwrap();
            assert_eq!(triggers(&conn), 2);
        }
        let end = |outcome: &str| RunEnd {
            ended_at: "2026-11-30T00:00:02.000+00:00".into(),
            ended_ms: 2_000,
            outcome: outcome.into(),
            ..RunEnd::default()
        };
        // Before: the triggers count (as a build of schema 8 did).
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO runs (id, job, lock_name, host, boot_id, pid, pid_start, fence, \
                 attempt, started_at, started_ms, outcome, memory_enforcement, heartbeat_ms) \
                 VALUES ('old', 'j', 'j', 'h', 'b', 1, 1, 1, 1, 't', 1, 'running', 'none', 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "UPDATE runs SET outcome = 'success', ended_ms = 2 WHERE id = 'old'",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&url, &path).unwrap();
        store.insert_run(&record("r1", "j", &who)).unwrap();
        store.finish_run("r1", None, &end("success")).unwrap();
        store.finish_run("r1", None, &end("failure")).unwrap();
        store.insert_run(&record("r2", "j", &who)).unwrap();
        assert!(store.mark_lost("r2", "t", 3_000).unwrap());
        assert!(!store.mark_lost("r2", "t", 3_000).unwrap());
        let mut skipped = record("r3", "k", &who);
        skipped.outcome = "skipped".into();
        skipped.ended_at = Some("2026-11-30T00:00:00.000+00:00".into());
        skipped.duration_ms = Some(0);
        store.insert_run(&skipped).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(triggers(&conn), 0);
        let counts = |sql: &str| -> Vec<(String, String, i64)> {
            let mut st = conn.prepare(sql).unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let totals = counts("SELECT job, outcome, n FROM run_totals ORDER BY 1, 2");
        assert_eq!(
            totals,
            counts(
                "SELECT job, outcome, count(*) FROM runs WHERE outcome <> 'running' \
                 GROUP BY 1, 2 ORDER BY 1, 2"
            )
        );
        assert_eq!(
            totals,
            [
                ("j".into(), "lost".into(), 1),
                ("j".into(), "success".into(), 2),
                ("k".into(), "skipped".into(), 1)
            ]
        );
    }
}

// The dashboard's reads (SPEC §10); see src/store/dashboard.rs. The rows
// are read by the shared readers of `rows`.
mod dashboard_impl {
    use super::super::dashboard::{DashboardStore, ItemTotals, LockHolder, RunBrief, Window};
    use super::super::rows::{self, BRIEF_COLUMNS as BRIEF, RUN_COLUMNS, limit as clamp};
    use super::{Result, RunRecord, SqliteStore, Store};
    use rusqlite::{OptionalExtension, Row, params};

    impl SqliteStore {
        /// Every row `sql` selects with `args`, read with `read`.
        fn read_all<T>(
            &self,
            sql: &str,
            args: impl rusqlite::Params,
            read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
        ) -> Result<Vec<T>> {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
            stmt.query_map(args, read)
                .and_then(|rows| rows.collect())
                .map_err(|e| self.err(e))
        }

        /// The first row `sql` selects for each of `jobs` (the job is ?1),
        /// read with `read`; jobs without one are left out.
        fn first_per_job<T>(
            &self,
            sql: &str,
            jobs: &[String],
            read: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
        ) -> Result<Vec<T>> {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                if let Some(r) = stmt
                    .query_row([job], &read)
                    .optional()
                    .map_err(|e| self.err(e))?
                {
                    out.push(r);
                }
            }
            Ok(out)
        }
    }

    /// The newest run of job ?1 that was not skipped (the newest skipped
    /// one when that is all there is).
    const LAST_RUN_OF: &str = "FROM runs WHERE seq = COALESCE(\
         (SELECT seq FROM runs WHERE job = ?1 AND outcome <> 'skipped' \
          ORDER BY seq DESC LIMIT 1), \
         (SELECT MAX(seq) FROM runs WHERE job = ?1))";

    impl DashboardStore for SqliteStore {
        fn store(&self) -> &dyn Store {
            self
        }

        fn run_jobs(&self) -> Result<Vec<String>> {
            self.read_all(rows::RUN_JOBS_SQL, [], |r| rows::job_from(r))
        }

        fn recent_runs(&self, jobs: &[String], n: usize) -> Result<Vec<(String, Vec<RunBrief>)>> {
            let sql = format!(
                "SELECT {BRIEF} FROM runs WHERE job = ?1 ORDER BY seq DESC LIMIT {}",
                clamp(n)
            );
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let runs = self.read_all(&sql, params![job], |r| rows::brief_from(r))?;
                if !runs.is_empty() {
                    out.push((job.clone(), runs));
                }
            }
            Ok(out)
        }

        fn last_runs_of(&self, jobs: &[String]) -> Result<Vec<RunRecord>> {
            let sql = format!("SELECT {RUN_COLUMNS} {LAST_RUN_OF}");
            self.first_per_job(&sql, jobs, |r| rows::run_from(r))
        }

        fn last_briefs(&self, jobs: &[String]) -> Result<Vec<(RunBrief, i64)>> {
            let sql = format!(
                "SELECT {BRIEF}, (SELECT started_ms FROM runs WHERE job = ?1 \
                 ORDER BY seq DESC LIMIT 1) {LAST_RUN_OF}"
            );
            self.first_per_job(&sql, jobs, |r| rows::brief_and_newest_from(r))
        }

        fn last_successes(&self, jobs: &[String]) -> Result<Vec<RunBrief>> {
            let sql = format!(
                "SELECT {BRIEF} FROM runs WHERE job = ?1 AND outcome = 'success' \
                 ORDER BY seq DESC LIMIT 1"
            );
            self.first_per_job(&sql, jobs, |r| rows::brief_from(r))
        }

        fn run_seq(&self, job: &str, id: &str) -> Result<Option<i64>> {
            self.conn()
                .query_row(
                    "SELECT seq FROM runs WHERE id = ?1 AND job = ?2",
                    [id, job],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))
        }

        fn runs_between(&self, w: &Window<'_>) -> Result<Vec<RunBrief>> {
            let (from_ms, to_ms, limit) = (w.ms.start, w.ms.end, clamp(w.limit));
            let sql = rows::window_sql('?', w.job.is_some());
            let mut rows = match w.job {
                Some(job) => self.read_all(&sql, params![job, from_ms, to_ms, limit], |r| {
                    rows::brief_from(r)
                }),
                None => self.read_all(&sql, params![from_ms, to_ms, limit], |r| {
                    rows::brief_from(r)
                }),
            }?;
            rows.reverse();
            Ok(rows)
        }

        fn outcome_counts(&self, job: &str, since_ms: i64) -> Result<Vec<(String, u64)>> {
            self.read_all(
                "SELECT outcome, COUNT(*) FROM runs WHERE job = ?1 AND started_ms >= ?2 \
                 GROUP BY outcome ORDER BY outcome",
                params![job, since_ms],
                |r| rows::outcome_count_from(r),
            )
        }

        fn run_totals(&self) -> Result<Vec<(String, String, u64)>> {
            self.read_all(rows::RUN_TOTALS_SQL, [], |r| rows::run_total_from(r))
        }

        fn item_totals(&self) -> Result<Vec<ItemTotals>> {
            self.read_all(
                "SELECT s.job, COALESCE(SUM(l.state = 1), 0), COALESCE(SUM(l.state = 2), 0), \
                 COALESCE(SUM(l.state = 0), 0) \
                 FROM ledger_scopes s LEFT JOIN ledger l ON l.scope_id = s.id \
                 GROUP BY s.job ORDER BY s.job",
                [],
                |r| rows::item_totals_from(r),
            )
        }

        fn lock_holders(&self) -> Result<Vec<LockHolder>> {
            self.read_all(rows::LOCK_HOLDERS_SQL, [], |r| rows::lock_holder_from(r))
        }
    }
}
