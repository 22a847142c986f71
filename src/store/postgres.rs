//! The PostgreSQL backend of the state store (`postgres://…`), the shared
//! store for many hosts (SPEC §6).
//!
//! Same tables, constraints and semantics as [`super::sqlite`], which is the
//! reference, plus the distributed queue ([`QueueStore`]), which only a
//! store shared by the hosts can serve. Where SQLite serialises every
//! writer on its one write lock, this backend takes row locks on the
//! `fences` row of the lock concerned, so that drawing a fencing token,
//! committing ledger batches and publishing under a token exclude each
//! other exactly where they must and nowhere else.
//!
//! - **Migrations** are numbered, recorded in `batchguard_schema_version`
//!   and applied in one transaction under `pg_advisory_xact_lock`, so hosts
//!   starting for the first time at once do not race.
//! - **Connections** come from a small pool (created lazily, at most
//!   `pool_size`, default 8). Every connection sets
//!   `application_name = batchguard` unless the URL names another.
//! - **Resilience**: a call that fails because the connection broke (server
//!   restart, terminated backend, network error) or on a serialisation
//!   failure or deadlock is retried on a fresh connection with backoff
//!   (100 ms doubling, at most 5 s apart, for about 30 s in all), so a
//!   PostgreSQL restart during a run does not lose the run. Any other SQL
//!   error is returned at once. A commit whose acknowledgement was lost is
//!   ambiguous; the retries are written so that this is harmless where it
//!   matters (`acquire` recognises its own committed run, publishing under
//!   a token re-checks the token instead of running the action twice).
//! - Connections use TCP keepalives (30 s idle, 3 probes 10 s apart)
//!   unless the URL sets `keepalives_idle`, so a server host that vanished
//!   silently is noticed too.
//! - **URL parameters** of our own, stripped before connecting:
//!   `schema=NAME` (use, and create if missing, that schema: tests give each
//!   store a fresh one) and `pool_size=N`. Everything else is passed to the
//!   driver. TLS is not supported (the driver is built without a TLS
//!   connector): `sslmode=require` fails to connect.
//! - Passwords never appear in errors or logs: the URL kept is redacted.

use super::policy::{self, Decision};
use super::rows::{self, Columns, NOTIFY_COLUMNS, OUTBOX_COLUMNS, Split, Value};
use super::{
    ExpiredLog, Fenced, FencedAction, Heartbeat, Holder, ItemState, LedgerCommit, LedgerEntry,
    LedgerStore, Liveness, LockAttempt, LockRequest, NotifyState, OutboxClaim, OutboxFailure,
    OutboxRow, OutboxStore, QueueClaim, QueueCounts, QueueFinish, QueueRenew, QueueStore, Result,
    RunEnd, RunQuery, RunRecord, RunStore, ScopeCounts, Store, StoreError, WatchStore,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Numbered migrations; index + 1 is the schema version they lead to. Up
/// to 5 (the queue) the numbering is the SQLite backend's, one step per
/// feature; each backend numbers its own steps from there.
/// This backend's migrations (src/store/schema.rs).
fn migrations() -> &'static [String] {
    super::schema::migrations(super::schema::Backend::Postgres)
}

const DEFAULT_POOL_SIZE: usize = 8;
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(30);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Why a call inside a transaction failed: a driver error (maybe worth a
/// retry) or a final answer.
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

type Step<T> = std::result::Result<T, Fail>;

/// The connection broke: drop the client and retry on a fresh one.
fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01-03: admin/crash shutdown, cannot
        // connect now (starting up); 53300: too many connections.
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    // I/O and connect errors carry the io::Error; a bad host name or
    // port is InvalidInput and will not get better by waiting.
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() != std::io::ErrorKind::InvalidInput)
}

/// Worth another try: the connection broke, or the transaction lost a
/// serialisation race or a deadlock (it was rolled back whole).
fn is_retryable(e: &postgres::Error) -> bool {
    is_connection_error(e)
        || e.as_db_error()
            .is_some_and(|db| matches!(db.code().code(), "40001" | "40P01"))
}

/// A driver error as a person needs it: the server's own message and
/// SQLSTATE (`database "x" does not exist`), or the cause under a connect
/// error (`Connection refused`), never a bare "db error".
pub(crate) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({} {})", db.message(), db.severity(), db.code().code());
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The URL with any password replaced by `***` (the one redactor).
pub use crate::redact::redact_url;

/// A schema name as an SQL identifier (validated to `[A-Za-z0-9_]`).
fn quote_ident(name: &str) -> String {
    format!("\"{name}\"")
}

struct PoolState {
    idle: Vec<Client>,
    /// Clients in existence: idle or checked out.
    open: usize,
}

/// A small pool: clients are made on demand, at most `max` exist, and a
/// client that broke is dropped instead of returned.
struct Pool {
    config: postgres::Config,
    schema: Option<String>,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self) -> std::result::Result<Conn<'_>, postgres::Error> {
        let mut st = self.lock();
        loop {
            if let Some(client) = st.idle.pop() {
                if client.is_closed() {
                    st.open -= 1;
                    drop(st);
                    drop(client);
                    st = self.lock();
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                    broken: false,
                });
            }
            if st.open < self.max {
                st.open += 1;
                break;
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        match self.connect() {
            Ok(client) => Ok(Conn {
                pool: self,
                client: Some(client),
                broken: false,
            }),
            Err(e) => {
                self.lock().open -= 1;
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    fn connect(&self) -> std::result::Result<Client, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        if let Some(schema) = &self.schema {
            client.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))?;
        }
        Ok(client)
    }
}

/// A checked-out client; back to the pool on drop unless broken.
struct Conn<'p> {
    pool: &'p Pool,
    client: Option<Client>,
    broken: bool,
}

impl Conn<'_> {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("client present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut st = self.pool.lock();
        if self.broken || client.is_closed() {
            st.open -= 1;
            drop(st);
            self.pool.freed.notify_one();
            drop(client);
        } else {
            st.idle.push(client);
            drop(st);
            self.pool.freed.notify_one();
        }
    }
}

/// How this backend spells the shared SQL.
const DIALECT: rows::Dialect = rows::Dialect {
    mark: '$',
    logs_kept: "NOT log_pruned",
    logs_kept_index: "",
};

pub struct PostgresStore {
    /// The URL with its password redacted.
    url: String,
    pool: Pool,
    retry_for: Duration,
}

impl PostgresStore {
    /// Connect (lazily: one connection now, for the migrations) and bring
    /// the schema up to date.
    pub fn open(url: &str) -> Result<PostgresStore> {
        PostgresStore::open_with(url, RETRY_FOR)
    }

    /// [`PostgresStore::open`], riding out a broken connection for at most
    /// `retry_for` (a read command asks for a short one: a person waits).
    pub fn open_with(url: &str, retry_for: Duration) -> Result<PostgresStore> {
        let redacted = redact_url(url);
        let bad = |detail: String| StoreError::BadUrl {
            url: redacted.clone(),
            detail,
        };
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut schema = None;
        let mut pool_size = DEFAULT_POOL_SIZE;
        let mut rest = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "schema" => {
                    if v.is_empty()
                        || v.len() > 63
                        || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(bad(format!(
                            "schema `{v}`: use 1 to 63 letters, digits and underscores"
                        )));
                    }
                    schema = Some(v.to_string());
                }
                "pool_size" => {
                    pool_size = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad(format!("pool_size `{v}`: use 1 to 64")))?;
                }
                _ => rest.push(part),
            }
        }
        let driver_url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config =
            postgres::Config::from_str(&driver_url).map_err(|source| StoreError::Postgres {
                url: redacted.clone(),
                source,
            })?;
        if config.get_application_name().is_none() {
            config.application_name("batchguard");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(
                Duration::from_secs(10).min(retry_for.max(Duration::from_secs(3))),
            );
        }
        // A server that vanished without a word (host down, network cut)
        // is noticed within about a minute instead of the 2 h default, so
        // the call fails over to the retry loop.
        if !driver_url.contains("keepalives_idle") {
            config
                .keepalives_idle(Duration::from_secs(30))
                .keepalives_interval(Duration::from_secs(10))
                .keepalives_retries(3);
        }
        let store = PostgresStore {
            url: redacted,
            pool: Pool {
                config,
                schema,
                max: pool_size,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            retry_for,
        };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            url: self.url.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &'static str, detail: impl ToString) -> StoreError {
        StoreError::Corrupt {
            url: self.url.clone(),
            what,
            detail: detail.to_string(),
        }
    }

    /// Run `f` on a pooled connection; retry on a fresh one while the
    /// failure is a broken connection (or a lost serialisation race), with
    /// backoff, for up to `retry_for`. `f` gets the attempt number (0 first).
    fn with<T>(&self, what: &str, mut f: impl FnMut(&mut Client, u32) -> Step<T>) -> Result<T> {
        let start = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut attempt = 0u32;
        loop {
            let res = match self.pool.get() {
                Ok(mut conn) => {
                    let res = f(conn.client(), attempt);
                    if let Err(Fail::Pg(e)) = &res {
                        if is_connection_error(e) {
                            conn.broken = true;
                        }
                    }
                    res
                }
                Err(e) => Err(Fail::Pg(e)),
            };
            match res {
                Ok(v) => return Ok(v),
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Pg(e))
                    if is_retryable(&e) && start.elapsed() + delay <= self.retry_for =>
                {
                    tracing::warn!(
                        store = %self.url,
                        attempt = attempt + 1,
                        "{what}: {e}; retrying in {} ms",
                        delay.as_millis()
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_DELAY);
                    attempt += 1;
                }
                Err(Fail::Pg(e)) => return Err(self.err(e)),
            }
        }
    }

    fn migrate(&self) -> Result<()> {
        let known = super::schema::migration_count(super::schema::Backend::Postgres) as i64;
        let schema = self.pool.schema.clone();
        self.with("migrate", |c, _| {
            // Fast path: already up to date, no lock taken.
            if let Some(version) = schema_version(c)? {
                if version == known {
                    return Ok(());
                }
            }
            let mut tx = c.transaction()?;
            let key = format!("batchguard:migrate:{}", schema.as_deref().unwrap_or(""));
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
                &[&key],
            )?;
            if let Some(schema) = &schema {
                let exists = tx
                    .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])?
                    .is_some();
                if !exists {
                    tx.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(schema)))?;
                }
            }
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS batchguard_schema_version (\
                 version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )?;
            // Re-read under the lock: another host may have migrated.
            let version = schema_version(&mut tx)?.unwrap_or(0);
            if version > known {
                return Err(Fail::Store(StoreError::SchemaTooNew {
                    url: self.url.clone(),
                    found: version,
                    known,
                }));
            }
            for (i, sql) in migrations().iter().enumerate().skip(version as usize) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO batchguard_schema_version (version, applied_ms) VALUES ($1, $2)",
                    &[&((i + 1) as i64), &crate::clock::now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The runs `sql` (reading `RUN_COLUMNS`) selects.
    fn runs_where(&self, sql: &str, args: Vec<Value>) -> Result<Vec<RunRecord>> {
        self.select("read runs", sql, args, rows::run_from)
    }

    /// The rows `sql` selects with `args` (retried as `what`), each read
    /// with `read`.
    fn select<T>(
        &self,
        what: &str,
        sql: &str,
        args: Vec<Value>,
        read: fn(&Row) -> std::result::Result<T, postgres::Error>,
    ) -> Result<Vec<T>> {
        let values: Vec<Box<dyn ToSql + Sync>> = args.into_iter().map(to_sql).collect();
        let rows = self.with(what, |c, _| Ok(c.query(sql, &refs(&values))?))?;
        self.map_rows(&rows, read)
    }

    /// Rows read with one of the shared readers.
    fn map_rows<T>(
        &self,
        rows: &[Row],
        read: fn(&Row) -> std::result::Result<T, postgres::Error>,
    ) -> Result<Vec<T>> {
        rows.iter()
            .map(|r| read(r).map_err(|e| self.err(e)))
            .collect()
    }

    /// One statement, retried like everything else; returns rows affected.
    fn exec(&self, what: &str, sql: &str, args: &Params<'_>) -> Result<u64> {
        self.with(what, |c, _| Ok(c.execute(sql, args)?))
    }
}

fn schema_version(c: &mut impl GenericClient) -> std::result::Result<Option<i64>, postgres::Error> {
    let exists: Option<String> = c
        .query_one("SELECT to_regclass('batchguard_schema_version')::text", &[])?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let version: Option<i64> = c
        .query_one("SELECT max(version) FROM batchguard_schema_version", &[])?
        .get(0);
    Ok(Some(version.unwrap_or(0)))
}

fn holder(c: &mut impl GenericClient, lock: &str) -> std::result::Result<Option<Holder>, Fail> {
    let row = c.query_opt(rows::holder_sql("$1").as_str(), &[&lock])?;
    Ok(row.as_ref().map(rows::holder_from).transpose()?)
}

fn insert_run_in(
    c: &mut impl GenericClient,
    run: &RunRecord,
    fence: i64,
) -> std::result::Result<(), postgres::Error> {
    let values: Vec<Box<dyn ToSql + Sync>> = rows::run_values(run, fence)
        .into_iter()
        .map(to_sql)
        .collect();
    c.execute(rows::insert_run_sql('$').as_str(), &refs(&values))?;
    Ok(())
}

/// Boxed arguments as the driver takes them.
fn refs(values: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v.as_ref()).collect()
}

/// A shared row value as the driver's, typed like its column.
fn to_sql(v: Value) -> Box<dyn ToSql + Sync> {
    match v {
        Value::I32(v) => Box::new(v),
        Value::I64(v) => Box::new(v),
        Value::Text(v) => Box::new(v),
    }
}

impl Columns for Row {
    type Error = postgres::Error;
    fn opt_i64(&self, i: usize) -> std::result::Result<Option<i64>, postgres::Error> {
        use postgres::types::Type;
        match *self.columns()[i].type_() {
            Type::INT2 => Ok(self.try_get::<_, Option<i16>>(i)?.map(i64::from)),
            Type::INT4 => Ok(self.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            _ => self.try_get(i),
        }
    }
    fn opt_str(&self, i: usize) -> std::result::Result<Option<String>, postgres::Error> {
        self.try_get(i)
    }
    fn i64(&self, i: usize) -> std::result::Result<i64, postgres::Error> {
        match self.opt_i64(i)? {
            Some(v) => Ok(v),
            None => self.try_get(i), // NULL: the driver's error says so
        }
    }
    fn str(&self, i: usize) -> std::result::Result<String, postgres::Error> {
        self.try_get(i)
    }
}

fn fence_for_share(
    c: &mut impl GenericClient,
    lock: &str,
) -> std::result::Result<Option<i64>, postgres::Error> {
    Ok(c.query_opt(
        "SELECT last_fence FROM fences WHERE lock_name = $1 FOR SHARE",
        &[&lock],
    )?
    .map(|r| r.get(0)))
}

/// Apply a batch to the ledger inside `tx`, only while the committer's
/// fence is the newest of its lock (`false`: refused, nothing written).
fn apply_ledger(
    tx: &mut postgres::Transaction<'_>,
    commit: &LedgerCommit<'_>,
    split: &Split<'_>,
) -> std::result::Result<bool, postgres::Error> {
    let LedgerCommit {
        scope_id,
        who,
        now_ms,
        ..
    } = *commit;
    let fence = match who.fence {
        Some(fence) => {
            // FOR SHARE: no newer token can be drawn until we commit.
            if fence_for_share(tx, who.lock)? != Some(fence) {
                return Ok(false);
            }
            fence
        }
        None => 0,
    };
    // One statement per kind of update over arrays, in-flight first
    // (a key started and finished in one batch ends done). A key
    // may appear twice in a batch, which SQLite applies one after
    // the other and ON CONFLICT DO UPDATE here refuses: duplicates
    // are folded first (attempts counted, the last error kept), to
    // the same result. Keys are sorted so that concurrent batches
    // lock rows in one order.
    if !split.in_flight.is_empty() {
        upsert_ledger(
            tx,
            "SELECT $1::bigint, k, 0, 0, NULL, $3::text, $4::bigint, $5::bigint \
             FROM (SELECT DISTINCT k FROM unnest($2::text[]) AS u(k)) t \
             ORDER BY k COLLATE \"C\" \
             ON CONFLICT (scope_id, key) DO UPDATE SET state = 0, \
             run_id = EXCLUDED.run_id, fence = EXCLUDED.fence, \
             updated_ms = EXCLUDED.updated_ms WHERE ledger.state <> 1",
            &[&scope_id, &split.in_flight, &who.run_id, &fence, &now_ms],
        )?;
    }
    if !split.done.is_empty() {
        let counted = "FROM (SELECT k, count(*)::int AS n FROM unnest($2::text[]) AS u(k) \
                       GROUP BY k) t ORDER BY k COLLATE \"C\"";
        upsert_ledger(
            tx,
            &format!(
                "SELECT $1::bigint, k, 1, n, NULL, $3::text, $4::bigint, $5::bigint {counted} \
                 ON CONFLICT (scope_id, key) DO UPDATE SET state = 1, \
                 attempts = ledger.attempts + EXCLUDED.attempts, last_error = NULL, \
                 run_id = EXCLUDED.run_id, fence = EXCLUDED.fence, \
                 updated_ms = EXCLUDED.updated_ms"
            ),
            &[&scope_id, &split.done, &who.run_id, &fence, &now_ms],
        )?;
    }
    if !split.failed.is_empty() {
        // The last error of a key failing twice in the batch is kept.
        let errors = &split.errors;
        upsert_ledger(
            tx,
            "SELECT $1::bigint, k, 2, n, e, $4::text, $5::bigint, $6::bigint \
             FROM (SELECT k, count(*)::int AS n, (array_agg(e ORDER BY o DESC))[1] AS e \
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(k, e, o) \
             GROUP BY k) t ORDER BY k COLLATE \"C\" \
             ON CONFLICT (scope_id, key) DO UPDATE SET state = 2, \
             attempts = ledger.attempts + EXCLUDED.attempts, \
             last_error = EXCLUDED.last_error, run_id = EXCLUDED.run_id, \
             fence = EXCLUDED.fence, updated_ms = EXCLUDED.updated_ms",
            &[
                &scope_id,
                &split.failed,
                errors,
                &who.run_id,
                &fence,
                &now_ms,
            ],
        )?;
    }
    Ok(true)
}

/// `INSERT INTO ledger (all its columns) ` followed by `rest` (the rows
/// and what a conflict updates).
fn upsert_ledger(
    tx: &mut postgres::Transaction<'_>,
    rest: &str,
    params: &Params<'_>,
) -> std::result::Result<u64, postgres::Error> {
    tx.execute(
        &format!(
            "INSERT INTO ledger (scope_id, key, state, attempts, last_error, run_id, \
             fence, updated_ms) {rest}"
        ),
        params,
    )
}

impl Store for PostgresStore {
    /// The queue lives here: every host shares this store.
    fn queue(&self) -> Option<&dyn QueueStore> {
        Some(self)
    }
}

impl RunStore for PostgresStore {
    fn acquire(&self, req: &LockRequest<'_>, alive: Liveness<'_>) -> Result<LockAttempt> {
        let run = req.run;
        self.with("acquire", |c, attempt| {
            let mut tx = c.transaction()?;
            if attempt > 0 {
                // The previous attempt may have committed before its
                // connection broke: our run row says so.
                if let Some(r) = tx.query_opt("SELECT fence FROM runs WHERE id = $1", &[&run.id])? {
                    let fence: i64 = r.try_get(0)?;
                    tx.commit()?;
                    return Ok(LockAttempt::Acquired {
                        fence,
                        replaced: None,
                    });
                }
            }
            // Lock the fences row, creating it first if needed, so that two
            // acquirers serialise even when neither row exists yet (the
            // second waits on the first's uninserted key). A fresh row
            // already holds token 1; it vanishes with a rollback.
            let fresh = tx
                .query_opt(
                    "INSERT INTO fences (lock_name, last_fence) VALUES ($1, 1) \
                     ON CONFLICT (lock_name) DO NOTHING RETURNING last_fence",
                    &[&req.run.lock],
                )?
                .is_some();
            if !fresh {
                tx.execute(
                    "SELECT last_fence FROM fences WHERE lock_name = $1 FOR UPDATE",
                    &[&req.run.lock],
                )?;
            }
            let holder = if req.mode.holds_lock() {
                holder(&mut tx, &req.run.lock)?
            } else {
                None
            };
            let replaced = match policy::decide(holder, req, alive) {
                Decision::Take { replaced } => replaced,
                Decision::Refuse(attempt) => return Ok(attempt),
            };
            let fence: i64 = if fresh {
                1
            } else {
                tx.query_one(
                    "UPDATE fences SET last_fence = last_fence + 1 WHERE lock_name = $1 \
                     RETURNING last_fence",
                    &[&req.run.lock],
                )?
                .try_get(0)?
            };
            if req.mode.holds_lock() {
                tx.execute(
                    "INSERT INTO locks (lock_name, fence, run_id, lease_until_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (lock_name) DO UPDATE \
                     SET fence = EXCLUDED.fence, run_id = EXCLUDED.run_id, \
                     lease_until_ms = EXCLUDED.lease_until_ms",
                    &[
                        &req.run.lock,
                        &fence,
                        &req.run.id,
                        &(req.now_ms + req.lease_ms),
                    ],
                )?;
            }
            insert_run_in(&mut tx, run, fence)?;
            tx.commit()?;
            Ok(LockAttempt::Acquired { fence, replaced })
        })
    }

    fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<bool> {
        let until = beat.now_ms + beat.lease_ms;
        self.with("heartbeat", |c, _| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET heartbeat_ms = $2 WHERE id = $1",
                &[&beat.run_id, &beat.now_ms],
            )?;
            let held = tx.execute(
                "UPDATE locks SET lease_until_ms = $4 \
                 WHERE lock_name = $1 AND fence = $2 AND run_id = $3",
                &[&beat.lock, &beat.fence, &beat.run_id, &until],
            )?;
            tx.commit()?;
            Ok(held == 1)
        })
    }

    fn current_fence(&self, lock: &str) -> Result<Option<i64>> {
        self.with("current_fence", |c, _| {
            Ok(c.query_opt(
                "SELECT last_fence FROM fences WHERE lock_name = $1",
                &[&lock],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn while_fence_current(&self, lock: &str, fence: i64, f: FencedAction<'_>) -> Result<Fenced> {
        let mut outcome: Option<std::io::Result<()>> = None;
        let url = self.url.clone();
        let accepted = self.with("while_fence_current", |c, _| {
            if outcome.is_some() {
                // The action ran but the commit's answer was lost with the
                // connection (which released our row lock, maybe early).
                // Fences only grow: if ours is still the newest, no newer
                // run existed at any moment of the action.
                let current: Option<i64> = c
                    .query_opt(
                        "SELECT last_fence FROM fences WHERE lock_name = $1",
                        &[&lock],
                    )?
                    .map(|r| r.get(0));
                return if current == Some(fence) {
                    Ok(true)
                } else {
                    Err(Fail::Store(StoreError::Unconfirmed {
                        url: url.clone(),
                        detail: format!(
                            "the connection broke while acting under fence {fence} of lock \
                             `{lock}`, and a newer fence {current:?} was drawn since"
                        ),
                    }))
                };
            }
            let mut tx = c.transaction()?;
            // FOR SHARE: a newer acquirer (FOR UPDATE on this row) waits
            // until the action is done and we commit.
            if fence_for_share(&mut tx, lock)? != Some(fence) {
                return Ok(false);
            }
            outcome = Some(f());
            tx.commit()?;
            Ok(true)
        })?;
        if !accepted {
            return Ok(Ok(false));
        }
        Ok(outcome.unwrap_or(Ok(())).map(|()| true))
    }

    fn set_run_process(&self, run_id: &str, pgid: Option<i32>, cgroup: Option<&str>) -> Result<()> {
        self.exec(
            "set_run_process",
            "UPDATE runs SET pgid = $2, cgroup = $3 WHERE id = $1",
            &[&run_id, &pgid, &cgroup],
        )?;
        Ok(())
    }

    fn finish_run(&self, run_id: &str, release: Option<(&str, i64)>, end: &RunEnd) -> Result<()> {
        let items = rows::items_json(end.items.as_ref());
        let peak = end.peak_memory_bytes.map(|b| b as i64);
        self.with("finish_run", |c, _| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET ended_at = $2, ended_ms = $3, duration_ms = $3 - started_ms, \
                 outcome = $4, exit_code = $5, signal = $6, peak_memory_bytes = $7, \
                 memory_enforcement = COALESCE($8, memory_enforcement), \
                 items = COALESCE($9, items), error = $10 \
                 WHERE id = $1 AND outcome = 'running'",
                &[
                    &run_id,
                    &end.ended_at,
                    &end.ended_ms,
                    &end.outcome,
                    &end.exit_code,
                    &end.signal,
                    &peak,
                    &end.memory_enforcement,
                    &items,
                    &end.error,
                ],
            )?;
            if let Some((lock, fence)) = release {
                tx.execute(
                    "DELETE FROM locks WHERE lock_name = $1 AND fence = $2",
                    &[&lock, &fence],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn release_lock(&self, lock: &str, fence: i64) -> Result<()> {
        self.exec(
            "release_lock",
            "DELETE FROM locks WHERE lock_name = $1 AND fence = $2",
            &[&lock, &fence],
        )?;
        Ok(())
    }

    fn insert_run(&self, run: &RunRecord) -> Result<()> {
        self.with("insert_run", |c, attempt| {
            if attempt > 0
                && c.query_opt("SELECT 1 FROM runs WHERE id = $1", &[&run.id])?
                    .is_some()
            {
                return Ok(()); // the first attempt committed after all
            }
            Ok(insert_run_in(c, run, run.fence)?)
        })
    }

    fn mark_lost(&self, run_id: &str, ended_at: &str, ended_ms: i64) -> Result<bool> {
        self.with("mark_lost", |c, attempt| {
            let n = c.execute(
                "UPDATE runs SET outcome = 'lost', ended_at = $2, ended_ms = $3, \
                 duration_ms = GREATEST(heartbeat_ms, started_ms) - started_ms \
                 WHERE id = $1 AND outcome = 'running'",
                &[&run_id, &ended_at, &ended_ms],
            )?;
            if n == 0 && attempt > 0 {
                // Our first attempt may have committed unacknowledged.
                return Ok(c
                    .query_opt(
                        "SELECT 1 FROM runs WHERE id = $1 AND outcome = 'lost' \
                         AND ended_at = $2 AND ended_ms = $3",
                        &[&run_id, &ended_at, &ended_ms],
                    )?
                    .is_some());
            }
            Ok(n == 1)
        })
    }

    fn runs_matching(&self, query: &RunQuery<'_>) -> Result<Vec<RunRecord>> {
        let (sql, args) = query.sql(&DIALECT);
        self.runs_where(&sql, args)
    }

    fn mark_log_pruned(&self, run_id: &str) -> Result<()> {
        self.exec(
            "mark_log_pruned",
            "UPDATE runs SET log_pruned = true WHERE id = $1",
            &[&run_id],
        )?;
        Ok(())
    }

    fn expired_logs(&self, job: &str, before_ms: i64, limit: usize) -> Result<Vec<ExpiredLog>> {
        let (sql, args) = rows::expired_logs_sql(&DIALECT, job, before_ms, limit);
        self.select("read expired logs", &sql, args, |r| {
            Ok(ExpiredLog {
                run_id: r.try_get(0)?,
                log_path: r.try_get(1)?,
            })
        })
    }

    fn set_run_failed_items(&self, run_id: &str, keys: &[String]) -> Result<()> {
        self.exec(
            "set_run_failed_items",
            "UPDATE runs SET items_failed = $2 WHERE id = $1",
            &[&run_id, &rows::failed_json(keys)],
        )?;
        Ok(())
    }
}

impl LedgerStore for PostgresStore {
    fn ledger_scope(&self, job: &str, scope: &str, create: bool) -> Result<Option<i64>> {
        self.with("ledger_scope", |c, _| {
            let find = |c: &mut Client| {
                c.query_opt(
                    "SELECT id FROM ledger_scopes WHERE job = $1 AND scope = $2",
                    &[&job, &scope],
                )
                .map(|r| r.map(|r| r.get::<_, i64>(0)))
            };
            if let Some(id) = find(c)? {
                return Ok(Some(id));
            }
            if !create {
                return Ok(None);
            }
            // A concurrent creator makes ON CONFLICT wait for its commit;
            // the next statement (new snapshot) then sees its row.
            if let Some(r) = c.query_opt(
                "INSERT INTO ledger_scopes (job, scope, created_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (job, scope) DO NOTHING RETURNING id",
                &[&job, &scope, &crate::clock::now_ms()],
            )? {
                return Ok(Some(r.try_get(0)?));
            }
            Ok(find(c)?)
        })
    }

    fn ledger_scan(&self, scope_id: i64, f: &mut dyn FnMut(&str, ItemState, u32)) -> Result<()> {
        let mut delivered = false;
        self.with("ledger_scan", |c, _| {
            // Rows stream from the server as they are read: a million keys
            // never sit in memory at once.
            let mut rows = c.query_raw(
                "SELECT key, state, attempts FROM ledger WHERE scope_id = $1",
                [scope_id],
            )?;
            loop {
                let row = match rows.next() {
                    Ok(Some(row)) => row,
                    Ok(None) => break,
                    // Keys already handed out cannot be taken back: a
                    // failure midway is final.
                    Err(e) if delivered => return Err(Fail::Store(self.err(e))),
                    Err(e) => return Err(Fail::Pg(e)),
                };
                let key: &str = row.try_get(0)?;
                let state: i16 = row.try_get(1)?;
                let attempts: i32 = row.try_get(2)?;
                let state = ItemState::from_code(i64::from(state))
                    .ok_or_else(|| Fail::Store(self.corrupt("ledger.state", state)))?;
                delivered = true;
                f(key, state, attempts.max(0) as u32);
            }
            Ok(())
        })
    }

    fn ledger_commit(&self, commit: &LedgerCommit<'_>) -> Result<bool> {
        let split = Split::new(commit.updates);
        self.with("ledger_commit", |c, _| {
            let mut tx = c.transaction()?;
            if !apply_ledger(&mut tx, commit, &split)? {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn ledger_counts(&self, job: &str, scope: Option<&str>) -> Result<Vec<ScopeCounts>> {
        let rows = self.with("ledger_counts", |c, _| {
            Ok(c.query(
                "SELECT s.scope, \
                 count(*) FILTER (WHERE l.state = 1), count(*) FILTER (WHERE l.state = 2), \
                 count(*) FILTER (WHERE l.state = 0) \
                 FROM ledger_scopes s LEFT JOIN ledger l ON l.scope_id = s.id \
                 WHERE s.job = $1 AND ($2::text IS NULL OR s.scope = $2::text) \
                 GROUP BY s.id, s.scope ORDER BY s.scope",
                &[&job, &scope],
            )?)
        })?;
        self.map_rows(&rows, rows::scope_counts_from)
    }

    fn ledger_failed(&self, scope_id: i64, limit: usize) -> Result<Vec<LedgerEntry>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self.with("ledger_failed", |c, _| {
            Ok(c.query(
                "SELECT key, attempts, last_error, run_id FROM ledger \
                 WHERE scope_id = $1 AND state = 2 ORDER BY attempts DESC, key LIMIT $2",
                &[&scope_id, &limit],
            )?)
        })?;
        self.map_rows(&rows, rows::failed_from)
    }

    fn ledger_reset(&self, job: &str, scope: &str) -> Result<u64> {
        self.with("ledger_reset", |c, _| {
            let mut tx = c.transaction()?;
            let Some(r) = tx.query_opt(
                "SELECT id FROM ledger_scopes WHERE job = $1 AND scope = $2 FOR UPDATE",
                &[&job, &scope],
            )?
            else {
                return Ok(0);
            };
            let id: i64 = r.try_get(0)?;
            let n = tx.execute("DELETE FROM ledger WHERE scope_id = $1", &[&id])?;
            tx.execute("DELETE FROM ledger_scopes WHERE id = $1", &[&id])?;
            tx.commit()?;
            Ok(n)
        })
    }
}

impl OutboxStore for PostgresStore {
    fn outbox_add(&self, rows: &[OutboxRow]) -> Result<()> {
        self.with("outbox_add", |c, _| {
            let mut tx = c.transaction()?;
            let st = tx.prepare(
                "INSERT INTO outbox (id, channel, job, event, payload, created_ms, attempts, \
                 next_attempt_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, $7) \
                 ON CONFLICT (id, channel) DO NOTHING",
            )?;
            for r in rows {
                tx.execute(
                    &st,
                    &[
                        &r.id,
                        &r.channel,
                        &r.job,
                        &r.event,
                        &r.payload,
                        &r.created_ms,
                        &r.next_attempt_ms,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn outbox_claim(&self, claim: &OutboxClaim) -> Result<Vec<OutboxRow>> {
        let limit = claim.limit.min(i64::MAX as usize) as i64;
        let until = claim.now_ms + claim.lease_ms;
        // Rows another flusher is claiming right now are skipped, not
        // waited for; the rows returned show their state before the claim.
        let sql = format!(
            "WITH c AS (SELECT {OUTBOX_COLUMNS} FROM outbox \
             WHERE delivered_ms IS NULL AND next_attempt_ms <= $1 \
             ORDER BY created_ms LIMIT $2 FOR UPDATE SKIP LOCKED), \
             u AS (UPDATE outbox o SET next_attempt_ms = $3 FROM c \
             WHERE o.id = c.id AND o.channel = c.channel) \
             SELECT * FROM c ORDER BY created_ms"
        );
        let rows = self.with("outbox_claim", |c, _| {
            Ok(c.query(sql.as_str(), &[&claim.due_ms, &limit, &until])?)
        })?;
        self.map_rows(&rows, rows::outbox_from)
    }

    fn outbox_delivered(&self, id: &str, channel: &str, now_ms: i64) -> Result<()> {
        self.exec(
            "outbox_delivered",
            "UPDATE outbox SET delivered_ms = $3, attempts = attempts + 1, last_error = NULL \
             WHERE id = $1 AND channel = $2",
            &[&id, &channel, &now_ms],
        )?;
        Ok(())
    }

    fn outbox_failed(&self, f: &OutboxFailure<'_>) -> Result<()> {
        self.exec(
            "outbox_failed",
            "UPDATE outbox SET attempts = attempts + 1, last_error = $3, next_attempt_ms = $4 \
             WHERE id = $1 AND channel = $2 AND delivered_ms IS NULL",
            &[&f.id, &f.channel, &f.error, &f.next_attempt_ms],
        )?;
        Ok(())
    }

    fn outbox_pending(&self) -> Result<u64> {
        self.with("outbox_pending", |c, _| {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM outbox WHERE delivered_ms IS NULL",
                    &[],
                )?
                .try_get(0)?;
            Ok(n as u64)
        })
    }

    fn notify_state(&self, job: &str) -> Result<NotifyState> {
        let sql = format!("SELECT {NOTIFY_COLUMNS} FROM notify_state WHERE job = $1");
        let rows = self.with("notify_state", |c, _| Ok(c.query(sql.as_str(), &[&job])?))?;
        let state = self.map_rows(&rows, rows::notify_from)?.into_iter().next();
        Ok(state.unwrap_or_default())
    }

    fn set_notify_state(&self, job: &str, st: &NotifyState) -> Result<()> {
        self.exec(
            "set_notify_state",
            "INSERT INTO notify_state (job, failing_since_ms, failures, suppressed, \
             last_sent_ms, overrun_run) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (job) DO UPDATE SET failing_since_ms = EXCLUDED.failing_since_ms, \
             failures = EXCLUDED.failures, suppressed = EXCLUDED.suppressed, \
             last_sent_ms = EXCLUDED.last_sent_ms, overrun_run = EXCLUDED.overrun_run",
            &[
                &job,
                &st.failing_since_ms,
                &i64::from(st.failures),
                &i64::from(st.suppressed),
                &st.last_sent_ms,
                &st.overrun_run,
            ],
        )?;
        Ok(())
    }
}

impl QueueStore for PostgresStore {
    fn queue_enqueue(&self, scope_id: i64, keys: &[&str]) -> Result<u64> {
        let mut added = 0;
        // Chunks keep each statement (and its parameter) a sensible size.
        for chunk in keys.chunks(10_000) {
            added += self.exec(
                "queue_enqueue",
                "INSERT INTO queue (scope_id, key) \
                 SELECT $1::bigint, k FROM unnest($2::text[]) AS u(k) ORDER BY k COLLATE \"C\" \
                 ON CONFLICT (scope_id, key) DO UPDATE SET state = 0, attempts = 0, \
                 claimed_by = NULL, lease_until_ms = 0, last_error = NULL \
                 WHERE queue.state = 3",
                &[&scope_id, &chunk],
            )?;
        }
        Ok(added)
    }

    fn queue_claim(&self, claim: &QueueClaim<'_>) -> Result<Vec<String>> {
        let QueueClaim {
            scope_id,
            worker,
            n,
            now_ms,
            lease_ms,
        } = *claim;
        let n = n.min(i64::MAX as usize) as i64;
        let rows = self.with("queue_claim", |c, _| {
            Ok(c.query(
                "WITH c AS (SELECT key FROM queue WHERE scope_id = $1 \
                 AND (state = 0 OR (state = 1 AND lease_until_ms < $3)) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE queue q SET state = 1, claimed_by = $4, lease_until_ms = $5 \
                 FROM c WHERE q.scope_id = $1 AND q.key = c.key RETURNING q.key",
                &[&scope_id, &n, &now_ms, &worker, &(now_ms + lease_ms)],
            )?)
        })?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.err(e)))
            .collect()
    }

    fn queue_finish(&self, finish: &QueueFinish<'_>) -> Result<bool> {
        let QueueFinish {
            commit,
            worker,
            max_attempts,
        } = *finish;
        let scope_id = commit.scope_id;
        let split = Split::new(commit.updates);
        let max_attempts = max_attempts.min(i32::MAX as u32) as i32;
        self.with("queue_finish", |c, _| {
            let mut tx = c.transaction()?;
            if !apply_ledger(&mut tx, &commit, &split)? {
                return Ok(false);
            }
            if !split.done.is_empty() {
                // Whoever claims it now, the key is done (by `worker`).
                tx.execute(
                    "UPDATE queue SET state = 2, claimed_by = $3, last_error = NULL \
                     WHERE scope_id = $1 AND key = ANY($2::text[]) AND state <> 2",
                    &[&scope_id, &split.done, &worker],
                )?;
            }
            if !split.failed.is_empty() {
                // Back to the queue, or dead once the ledger's attempts
                // (across runs) reach max_attempts; only while still ours.
                tx.execute(
                    "UPDATE queue q SET state = CASE WHEN l.attempts >= $4 THEN 3 ELSE 0 END, \
                     attempts = q.attempts + 1, claimed_by = NULL, lease_until_ms = 0, \
                     last_error = l.last_error FROM ledger l \
                     WHERE q.scope_id = $1 AND q.key = ANY($2::text[]) AND q.state = 1 \
                     AND q.claimed_by = $3 AND l.scope_id = q.scope_id AND l.key = q.key",
                    &[&scope_id, &split.failed, &worker, &max_attempts],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn queue_release(&self, scope_id: i64, worker: &str, keys: &[&str]) -> Result<u64> {
        self.exec(
            "queue_release",
            "UPDATE queue SET state = 0, claimed_by = NULL, lease_until_ms = 0 \
             WHERE scope_id = $1 AND claimed_by = $2 AND state = 1 AND key = ANY($3::text[])",
            &[&scope_id, &worker, &keys],
        )
    }

    fn queue_renew(&self, r: &QueueRenew<'_>) -> Result<Vec<String>> {
        let rows = self.with("queue_renew", |c, _| {
            Ok(c.query(
                "UPDATE queue SET lease_until_ms = $4 WHERE scope_id = $1 AND claimed_by = $2 \
                 AND state = 1 AND key = ANY($3::text[]) RETURNING key",
                &[&r.scope_id, &r.worker, &r.keys, &r.lease_until_ms],
            )?)
        })?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.err(e)))
            .collect()
    }

    fn queue_counts(&self, scope_id: i64) -> Result<QueueCounts> {
        let r = self.with("queue_counts", |c, _| {
            Ok(c.query_one(
                "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1), \
                 count(*) FILTER (WHERE state = 2), count(*) FILTER (WHERE state = 3) \
                 FROM queue WHERE scope_id = $1",
                &[&scope_id],
            )?)
        })?;
        let get = |i: usize| -> Result<u64> {
            Ok(r.try_get::<_, i64>(i).map_err(|e| self.err(e))?.max(0) as u64)
        };
        Ok(QueueCounts {
            queued: get(0)?,
            claimed: get(1)?,
            done: get(2)?,
            dead: get(3)?,
        })
    }
}

impl WatchStore for PostgresStore {
    fn watch_state(&self, job: &str, now_ms: i64) -> Result<(i64, Option<i64>)> {
        self.with("watch_state", |c, _| {
            c.execute(
                "INSERT INTO watchdog (job, since_ms) VALUES ($1, $2) ON CONFLICT (job) DO NOTHING",
                &[&job, &now_ms],
            )?;
            let r = c.query_one(
                "SELECT since_ms, last_missed_fire_ms FROM watchdog WHERE job = $1",
                &[&job],
            )?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    fn record_missed(&self, job: &str, fire_ms: i64) -> Result<bool> {
        self.with("record_missed", |c, attempt| {
            let n = c.execute(
                "UPDATE watchdog SET last_missed_fire_ms = $2 WHERE job = $1 \
                 AND (last_missed_fire_ms IS NULL OR last_missed_fire_ms < $2)",
                &[&job, &fire_ms],
            )?;
            if n == 0 && attempt > 0 {
                // Our first attempt may have committed unacknowledged.
                return Ok(c
                    .query_opt(
                        "SELECT 1 FROM watchdog WHERE job = $1 AND last_missed_fire_ms = $2",
                        &[&job, &fire_ms],
                    )?
                    .is_some());
            }
            Ok(n == 1)
        })
    }
}

// The dashboard's reads (SPEC §10); see src/store/dashboard.rs. The rows
// are read by the shared readers of `rows`.
mod dashboard_impl {
    use super::super::dashboard::{DashboardStore, ItemTotals, LockHolder, RunBrief, Window};
    use super::super::rows::{self, BRIEF_COLUMNS as BRIEF, RUN_COLUMNS, limit as clamp};
    use super::{PostgresStore, Result, RunRecord, Store};
    use postgres::Row;
    use postgres::types::ToSql;

    type Read<T> = fn(&Row) -> std::result::Result<T, postgres::Error>;

    /// For each of the jobs in `$1` (in their order), as `j.name`, the
    /// lateral selection that follows.
    const PER_JOB: &str = "FROM unnest($1::text[]) WITH ORDINALITY AS j(name, ord) \
         CROSS JOIN LATERAL";

    /// The newest run of job `j.name` that was not skipped (the newest
    /// skipped one when that is all there is), as `r`.
    const LAST_RUN_OF: &str = "(SELECT * FROM runs WHERE seq = COALESCE(\
         (SELECT seq FROM runs WHERE job = j.name COLLATE \"C\" \
          AND outcome <> 'skipped' ORDER BY seq DESC LIMIT 1), \
         (SELECT max(seq) FROM runs WHERE job = j.name COLLATE \"C\"))) r ORDER BY j.ord";

    /// `columns` of `r`.
    fn of_r(columns: &str) -> String {
        columns
            .split(", ")
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    impl PostgresStore {
        /// Every row `sql` selects with `args`, read with `read`.
        fn read_all<T>(
            &self,
            what: &str,
            sql: &str,
            args: &[&(dyn ToSql + Sync)],
            read: Read<T>,
        ) -> Result<Vec<T>> {
            let rows = self.with(what, |c, _| Ok(c.query(sql, args)?))?;
            self.map_rows(&rows, read)
        }

        /// [`PostgresStore::read_all`] with the names of `jobs` as `$1`.
        fn read_per_job<T>(
            &self,
            what: &str,
            sql: &str,
            jobs: &[String],
            read: Read<T>,
        ) -> Result<Vec<T>> {
            let names: Vec<&str> = jobs.iter().map(String::as_str).collect();
            self.read_all(what, sql, &[&names], read)
        }
    }

    impl DashboardStore for PostgresStore {
        fn store(&self) -> &dyn Store {
            self
        }

        fn run_jobs(&self) -> Result<Vec<String>> {
            self.read_all(
                "dashboard run_jobs",
                rows::RUN_JOBS_SQL,
                &[],
                rows::job_from,
            )
        }

        fn recent_runs(&self, jobs: &[String], n: usize) -> Result<Vec<(String, Vec<RunBrief>)>> {
            let names: Vec<&str> = jobs.iter().map(String::as_str).collect();
            let briefs = self.read_all(
                "dashboard recent_runs",
                &format!(
                    "SELECT r.* {PER_JOB} (SELECT {BRIEF} FROM runs \
                     WHERE job = j.name COLLATE \"C\" ORDER BY seq DESC LIMIT $2) r \
                     ORDER BY j.ord"
                ),
                &[&names, &clamp(n)],
                rows::brief_from,
            )?;
            let mut out: Vec<(String, Vec<RunBrief>)> = Vec::new();
            for b in briefs {
                match out.last_mut() {
                    Some((job, list)) if *job == b.job => list.push(b),
                    _ => out.push((b.job.clone(), vec![b])),
                }
            }
            Ok(out)
        }

        fn last_runs_of(&self, jobs: &[String]) -> Result<Vec<RunRecord>> {
            let cols = of_r(RUN_COLUMNS);
            self.read_per_job(
                "dashboard last_runs_of",
                &format!("SELECT {cols} {PER_JOB} {LAST_RUN_OF}"),
                jobs,
                rows::run_from,
            )
        }

        fn last_briefs(&self, jobs: &[String]) -> Result<Vec<(RunBrief, i64)>> {
            let cols = of_r(BRIEF);
            self.read_per_job(
                "dashboard last_briefs",
                &format!(
                    "SELECT {cols}, (SELECT started_ms FROM runs \
                     WHERE job = j.name COLLATE \"C\" ORDER BY seq DESC LIMIT 1) \
                     {PER_JOB} {LAST_RUN_OF}"
                ),
                jobs,
                rows::brief_and_newest_from,
            )
        }

        fn last_successes(&self, jobs: &[String]) -> Result<Vec<RunBrief>> {
            self.read_per_job(
                "dashboard last_successes",
                &format!(
                    "SELECT r.* {PER_JOB} (SELECT {BRIEF} FROM runs \
                     WHERE job = j.name COLLATE \"C\" AND outcome = 'success' \
                     ORDER BY seq DESC LIMIT 1) r ORDER BY j.ord"
                ),
                jobs,
                rows::brief_from,
            )
        }

        fn run_seq(&self, job: &str, id: &str) -> Result<Option<i64>> {
            let row = self.with("dashboard run_seq", |c, _| {
                Ok(c.query_opt(
                    "SELECT seq FROM runs WHERE id = $1 AND job = $2",
                    &[&id, &job],
                )?)
            })?;
            row.map(|r| r.try_get::<_, i64>(0).map_err(|e| self.err(e)))
                .transpose()
        }

        fn runs_between(&self, w: &Window<'_>) -> Result<Vec<RunBrief>> {
            let (from_ms, to_ms, limit) = (w.ms.start, w.ms.end, clamp(w.limit));
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&from_ms, &to_ms, &limit];
            if let Some(job) = &w.job {
                args.insert(0, job);
            }
            let sql = rows::window_sql('$', w.job.is_some());
            let mut out = self.read_all("dashboard runs_between", &sql, &args, rows::brief_from)?;
            out.reverse();
            Ok(out)
        }

        fn outcome_counts(&self, job: &str, since_ms: i64) -> Result<Vec<(String, u64)>> {
            self.read_all(
                "dashboard outcome_counts",
                "SELECT outcome, count(*) FROM runs WHERE job = $1 AND started_ms >= $2 \
                 GROUP BY outcome ORDER BY outcome",
                &[&job, &since_ms],
                rows::outcome_count_from,
            )
        }

        fn run_totals(&self) -> Result<Vec<(String, String, u64)>> {
            self.read_all(
                "dashboard run_totals",
                rows::RUN_TOTALS_SQL,
                &[],
                rows::run_total_from,
            )
        }

        fn item_totals(&self) -> Result<Vec<ItemTotals>> {
            self.read_all(
                "dashboard item_totals",
                "SELECT s.job, count(*) FILTER (WHERE l.state = 1), \
                 count(*) FILTER (WHERE l.state = 2), count(*) FILTER (WHERE l.state = 0) \
                 FROM ledger_scopes s LEFT JOIN ledger l ON l.scope_id = s.id \
                 GROUP BY s.job ORDER BY s.job",
                &[],
                rows::item_totals_from,
            )
        }

        fn lock_holders(&self) -> Result<Vec<LockHolder>> {
            self.read_all(
                "dashboard lock_holders",
                rows::LOCK_HOLDERS_SQL,
                &[],
                rows::lock_holder_from,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_leave_the_url_redactor() {
        assert_eq!(
            redact_url("postgres://bg:s3cr%40t@db.example:5432/state?schema=x"),
            "postgres://bg:***@db.example:5432/state?schema=x"
        );
        assert_eq!(
            redact_url("postgresql://db/state?user=bg&password=hunter2&sslmode=disable"),
            "postgresql://db/state?user=bg&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }
}
