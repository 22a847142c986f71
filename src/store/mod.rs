//! The state store: everything batchguard must remember across invocations
//! and hosts (runs, locks and their fencing tokens, the item ledger, the
//! notification outbox, the watchdog's memory and the distributed queue).
//!
//! The store is split by capability ([`traits`]): [`RunStore`],
//! [`LedgerStore`], [`OutboxStore`], [`WatchStore`] and the optional
//! [`QueueStore`], summed up by [`Store`], whose [`Store::queue`] tells
//! whether the backend serves the queue. Backends ([`sqlite`], embedded, the
//! default; [`postgres`], shared by many hosts) implement them with their
//! own SQL and numbered migrations; what is decided the same way for both
//! lives above them: the lock policy ([`policy`]), and the mapping of rows
//! and the SQL of the run reads (`rows`). Every call is one short,
//! synchronous transaction: the runner is a small multi-threaded program,
//! not an async service.
//!
//! Locking model (see docs/locking.md): a lock row names the run holding it,
//! the host identity of its runner (hostname, boot id, pid and pid start
//! time) and a lease renewed by heartbeat. Fencing tokens live in their own
//! table and only ever increase, whatever happens to the lock rows.

#[doc(hidden)]
pub mod conformance;
pub mod dashboard;
pub mod policy;
pub mod postgres;
pub(crate) mod rows;
pub(crate) mod schema;
pub mod sqlite;
pub mod traits;

pub use rows::RunQuery;
pub use traits::{
    ExpiredLog, Fenced, FencedAction, Heartbeat, LedgerCommit, LedgerStore, OutboxClaim,
    OutboxFailure, OutboxStore, QueueClaim, QueueFinish, QueueRenew, QueueStore, RunStore, Store,
    WatchStore, prelude,
};

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Errors of the state store. They name the store and what was being done.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("unsupported state store URL `{0}`: use sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state store {url}: {source}")]
    Sqlite {
        url: String,
        source: rusqlite::Error,
    },
    #[error(
        "state store {url}: schema version {found} is newer than this batchguard knows ({known}); upgrade batchguard"
    )]
    SchemaTooNew { url: String, found: i64, known: i64 },
    #[error("state store {url}: {}", postgres::describe(source))]
    Postgres {
        /// The URL with its password redacted.
        url: String,
        source: ::postgres::Error,
    },
    /// A read command found no store where the URL points: it never
    /// creates one (nothing has run with this state store yet).
    #[error(
        "no state store at {path}: nothing has run with this --state yet (check --state, BATCHGUARD_STATE or `state` in batchguard.toml)"
    )]
    Missing { path: PathBuf },
    #[error("invalid state store URL {url}: {detail}")]
    BadUrl { url: String, detail: String },
    /// The outcome of an action could not be confirmed (the connection to
    /// the store broke at the wrong moment).
    #[error("state store {url}: {detail}")]
    Unconfirmed { url: String, detail: String },
    /// The backend does not offer this feature.
    #[error("{0}")]
    Unsupported(String),
    #[error("state store {url}: corrupt value in {what}: {detail}")]
    Corrupt {
        url: String,
        what: &'static str,
        detail: String,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a runner process lives, so another invocation can tell whether it
/// is still alive: same boot id means same machine and boot, and then the
/// pid together with its start time identifies the process exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunnerIdentity {
    pub host: String,
    pub boot_id: String,
    pub pid: i32,
    pub pid_start: u64,
}

/// The current holder of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub lock: String,
    pub fence: i64,
    pub run_id: String,
    pub runner: RunnerIdentity,
    pub lease_until_ms: i64,
    /// The holder's job process tree, once spawned (for cleaning up orphans).
    pub cgroup: Option<String>,
    pub pgid: Option<i32>,
}

/// How to treat a lock that is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireMode {
    /// Take the lock only if nobody holds it (`forbid`).
    IfFree,
    /// Take the lock even from a live holder (`replace`).
    Replace,
    /// No mutual exclusion (`allow`): only draw a new fencing token.
    TokenOnly,
}

/// A request to take a lock for a run.
#[derive(Clone, Debug)]
pub struct LockRequest<'a> {
    /// The run that takes its lock (`run.lock`): recorded in the same
    /// transaction.
    pub run: &'a RunRecord,
    pub now_ms: i64,
    pub lease_ms: i64,
    pub mode: AcquireMode,
    /// A holder with this fence was found dead and its leftovers cleaned up
    /// by the caller: it may be taken over.
    pub cleaned_fence: Option<i64>,
}

/// What happened when a lock was requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockAttempt {
    /// The lock is ours with this fencing token. `replaced` is the live
    /// holder that a `replace` took it from.
    Acquired {
        fence: i64,
        replaced: Option<Holder>,
    },
    /// A live run holds it (`forbid`).
    Held(Holder),
    /// The holder's runner is dead: the caller must stop its leftover
    /// processes and record its run as lost, then ask again with
    /// `cleaned_fence` set.
    Stale(Holder),
}

/// Liveness of a lock holder as judged by the caller (it knows this host).
pub type Liveness<'a> = &'a dyn Fn(&Holder, i64) -> bool;

/// The item counts of a run (SPEC §4 `items`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ItemCounts {
    pub total: u64,
    pub done: u64,
    pub skipped: u64,
    pub failed: u64,
}

/// One run (one attempt) of a job, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub job: String,
    pub host: String,
    pub pid: i32,
    pub fence: i64,
    pub attempt: u32,
    pub scope: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// `running` until the run ends, then one of the SPEC outcomes.
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_enforcement: String,
    pub items: Option<ItemCounts>,
    pub log_path: Option<String>,
    // Not part of the SPEC JSON shape, but useful and additive.
    pub lock: String,
    pub memory_max_bytes: Option<u64>,
    pub params: std::collections::BTreeMap<String, String>,
    pub error: Option<String>,
    /// The first failed item keys (up to 20), for reports.
    pub items_failed: Vec<String>,
    /// An `exec` run (SPEC §4): never a run of a configured job.
    pub adhoc: bool,
    /// The command that re-runs this run, pasted into a root shell on its
    /// host (SPEC §4), as its runner was invoked.
    pub rerun: Option<String>,
    #[serde(skip)]
    pub started_ms: i64,
    #[serde(skip)]
    pub runner: RunnerIdentity,
    #[serde(skip)]
    pub cgroup: Option<String>,
    #[serde(skip)]
    pub pgid: Option<i32>,
    #[serde(skip)]
    pub heartbeat_ms: i64,
}

impl RunRecord {
    /// A run of `job` under `lock` that starts now (`started_ms`, shown as
    /// `started_at`) on `runner`: `running`, fence 0 until the lock is
    /// taken, nothing measured yet.
    pub fn running(
        id: &str,
        job: &str,
        lock: &str,
        runner: &RunnerIdentity,
        started_ms: i64,
        started_at: String,
    ) -> RunRecord {
        RunRecord {
            id: id.into(),
            job: job.into(),
            host: runner.host.clone(),
            pid: runner.pid,
            fence: 0,
            attempt: 1,
            scope: None,
            started_at,
            ended_at: None,
            duration_ms: None,
            outcome: "running".into(),
            exit_code: None,
            signal: None,
            peak_memory_bytes: None,
            memory_enforcement: "none".into(),
            items: None,
            log_path: None,
            lock: lock.into(),
            memory_max_bytes: None,
            params: Default::default(),
            error: None,
            items_failed: Vec::new(),
            adhoc: false,
            rerun: None,
            started_ms,
            runner: runner.clone(),
            cgroup: None,
            pgid: None,
            heartbeat_ms: started_ms,
        }
    }
}

/// How a run ended, written once by [`RunStore::finish_run`] (or kept in
/// the runner's spool until it can be).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RunEnd {
    pub ended_at: String,
    pub ended_ms: i64,
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_enforcement: Option<String>,
    pub items: Option<ItemCounts>,
    pub error: Option<String>,
}

/// Where a key stands in the ledger of its job and scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Handed to a process that has not finished it (yet): a crash re-does it.
    InFlight,
    Done,
    Failed,
}

impl ItemState {
    pub fn code(self) -> i64 {
        match self {
            ItemState::InFlight => 0,
            ItemState::Done => 1,
            ItemState::Failed => 2,
        }
    }
    pub fn from_code(code: i64) -> Option<ItemState> {
        match code {
            0 => Some(ItemState::InFlight),
            1 => Some(ItemState::Done),
            2 => Some(ItemState::Failed),
            _ => None,
        }
    }
}

/// One change to the ledger, committed in batches (group commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerUpdate<'a> {
    pub key: &'a str,
    pub state: ItemState,
    /// Why it failed (redacted), for `Failed`.
    pub error: Option<&'a str>,
}

/// A key as the ledger shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub key: String,
    pub state: ItemState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub run_id: Option<String>,
}

/// Counts of one scope of a job's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScopeCounts {
    pub scope: String,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
}

/// Whose commits the ledger accepts: the run holding `fence` of `lock`
/// (or anybody, for `allow` jobs, which have no exclusive lock).
#[derive(Clone, Copy, Debug)]
pub struct Committer<'a> {
    pub lock: &'a str,
    pub fence: Option<i64>,
    pub run_id: &'a str,
}

/// One notification for one channel, as kept in the outbox until delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// The notification's id (also its `Idempotency-Key`).
    pub id: String,
    pub channel: String,
    pub job: String,
    pub event: String,
    /// The JSON payload, secrets already redacted.
    pub payload: String,
    pub created_ms: i64,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

/// What the noise control remembers per job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyState {
    /// Set while the job is failing: when its current failure streak began.
    pub failing_since_ms: Option<i64>,
    /// Bad runs in the current streak.
    pub failures: u32,
    /// Bad runs not reported yet (summarised by the next digest).
    pub suppressed: u32,
    pub last_sent_ms: Option<i64>,
    /// The run whose overrun was already notified.
    pub overrun_run: Option<String>,
}

/// Counts of a scope's distributed queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub queued: u64,
    pub claimed: u64,
    pub done: u64,
    pub dead: u64,
}

/// The error of backends without the distributed queue.
pub fn no_queue() -> StoreError {
    StoreError::Unsupported("distributed items need a postgres:// state store".into())
}

/// Open the store named by a URL (`sqlite:PATH`, or `postgres://…` /
/// `postgresql://…` for the shared PostgreSQL store).
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    Ok(open_backend(url)?.into_store())
}

/// Open the store at `url` for a read command: like [`open`], but a SQLite
/// file that does not exist is [`StoreError::Missing`] instead of a new,
/// empty store (and a directory) created by a command that only reads.
/// A PostgreSQL server that does not answer fails it within about
/// [`READ_RETRY`] instead of the runner's 30 s of retries.
pub fn open_existing(url: &str) -> Result<Box<dyn Store>> {
    if let Some(path) = sqlite_path(url) {
        if !Path::new(path).exists() {
            return Err(StoreError::Missing { path: path.into() });
        }
    }
    Ok(open_backend_with(url, READ_RETRY)?.into_store())
}

/// How long a read command rides out an unreachable PostgreSQL server.
pub const READ_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("sqlite:")?;
    Some(path.strip_prefix("//").unwrap_or(path))
}

/// A store opened by URL, of the backend the URL names (boxed, as the
/// callers keep it).
pub(crate) enum Backend {
    Sqlite(Box<sqlite::SqliteStore>),
    Postgres(Box<postgres::PostgresStore>),
}

impl Backend {
    fn into_store(self) -> Box<dyn Store> {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(s) => s,
        }
    }
}

/// Open the backend named by `url`, as [`open`] describes.
pub(crate) fn open_backend(url: &str) -> Result<Backend> {
    open_backend_with(url, postgres::RETRY_FOR)
}

fn open_backend_with(url: &str, pg_retry: std::time::Duration) -> Result<Backend> {
    if let Some(path) = sqlite_path(url) {
        let store = sqlite::SqliteStore::open(url, path.as_ref())?;
        Ok(Backend::Sqlite(Box::new(store)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres(Box::new(
            postgres::PostgresStore::open_with(url, pg_retry)?,
        )))
    } else {
        Err(StoreError::UnsupportedUrl(postgres::redact_url(url)))
    }
}
