//! The state store: one trait for everything batchguard must remember across
//! invocations and hosts (runs, locks and their fencing tokens; later the
//! item ledger, the notification outbox and the distributed queue).
//!
//! Backends implement [`Store`] with their own SQL and numbered migrations:
//! [`sqlite`] (embedded, the default) now, PostgreSQL behind the same trait.
//! The trait is synchronous: every call is one short transaction, and the
//! runner is a small multi-threaded program, not an async service.
//!
//! Locking model (see docs/locking.md): a lock row names the run holding it,
//! the host identity of its runner (hostname, boot id, pid and pid start
//! time) and a lease renewed by heartbeat. Fencing tokens live in their own
//! table and only ever increase, whatever happens to the lock rows.

#[doc(hidden)]
pub mod conformance;
pub mod dashboard;
pub mod postgres;
pub mod sqlite;

use serde::Serialize;
use std::path::PathBuf;

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
    #[error("state store {url}: {source}")]
    Postgres {
        /// The URL with its password redacted.
        url: String,
        source: ::postgres::Error,
    },
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
    pub lock: &'a str,
    pub run_id: &'a str,
    pub runner: &'a RunnerIdentity,
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

/// How a run ended, written once by [`Store::finish_run`].
#[derive(Clone, Debug, Default, PartialEq)]
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

/// The state store. Every method is one transaction.
pub trait Store: Send + Sync {
    /// Take (or fail to take) a lock and, in the same transaction, insert
    /// the run record with the fence it got.
    fn acquire(
        &self,
        req: &LockRequest<'_>,
        alive: Liveness<'_>,
        run: &RunRecord,
    ) -> Result<LockAttempt>;
    /// Renew the lease; `false` means the lock moved on (the run is fenced).
    fn heartbeat(
        &self,
        lock: &str,
        fence: i64,
        run_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool>;
    /// The newest fence drawn for a lock.
    fn current_fence(&self, lock: &str) -> Result<Option<i64>>;
    /// Run `action` only while `fence` is the newest token of `lock`; the
    /// check and the action happen under the store's write lock, so no newer
    /// run can take the lock in between. Returns `false` if refused.
    fn while_fence_current(
        &self,
        lock: &str,
        fence: i64,
        action: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<std::result::Result<bool, std::io::Error>>;
    /// Record where the run's process tree lives.
    fn set_run_process(&self, run_id: &str, pgid: Option<i32>, cgroup: Option<&str>) -> Result<()>;
    /// Record how a run ended and, with `release = Some((lock, fence))`,
    /// release that lock if the run still holds it (one transaction).
    fn finish_run(&self, run_id: &str, release: Option<(&str, i64)>, end: &RunEnd) -> Result<()>;
    /// Release a lock if `fence` still holds it.
    fn release_lock(&self, lock: &str, fence: i64) -> Result<()>;
    /// Insert a run that never started (skipped).
    fn insert_run(&self, run: &RunRecord) -> Result<()>;
    /// Mark a running run as lost (its runner died). `false` if it had
    /// already ended.
    fn mark_lost(&self, run_id: &str, ended_at: &str, ended_ms: i64) -> Result<bool>;
    fn get_run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Runs, newest first; all jobs when `job` is `None`.
    fn list_runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>>;
    /// The newest run of each job that was not skipped (a skipped run when
    /// that is all there is), so a skip never hides a failure in `status`.
    fn last_runs(&self) -> Result<Vec<RunRecord>>;
    /// The newest finished (not running, not skipped) run of a job.
    fn last_finished_run(&self, job: &str) -> Result<Option<RunRecord>>;
    /// Runs whose outcome is still `running`.
    fn running_runs(&self) -> Result<Vec<RunRecord>>;
    /// Runs of `job` that started before `before_ms` and whose logs were not
    /// pruned yet (at most `limit`), for log retention.
    fn runs_with_logs_before(
        &self,
        job: &str,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<RunRecord>>;
    fn mark_log_pruned(&self, run_id: &str) -> Result<()>;
    /// Store the first failed item keys of a run (for reports).
    fn set_run_failed_items(&self, run_id: &str, keys: &[String]) -> Result<()>;

    // The item ledger (G06), per job and scope.
    /// The id of a job's scope; created when `create` is set.
    fn ledger_scope(&self, job: &str, scope: &str, create: bool) -> Result<Option<i64>>;
    /// Every entry of a scope, in no particular order.
    fn ledger_scan(&self, scope_id: i64, f: &mut dyn FnMut(&str, ItemState, u32)) -> Result<()>;
    /// Apply a batch of updates in one transaction, only while the
    /// committer's fence is still the newest of its lock. `false` means the
    /// whole batch was refused (the run is fenced).
    fn ledger_commit(
        &self,
        scope_id: i64,
        who: Committer<'_>,
        now_ms: i64,
        updates: &[LedgerUpdate<'_>],
    ) -> Result<bool>;
    /// Counts per scope of a job (one scope when given).
    fn ledger_counts(&self, job: &str, scope: Option<&str>) -> Result<Vec<ScopeCounts>>;
    /// Failed keys of a scope, most attempts first.
    fn ledger_failed(&self, scope_id: i64, limit: usize) -> Result<Vec<LedgerEntry>>;
    /// Forget a scope entirely (the explicit clean-and-redo). Returns the
    /// number of keys removed.
    fn ledger_reset(&self, job: &str, scope: &str) -> Result<u64>;

    // The notification outbox (G08).
    /// Store notifications before any delivery is tried.
    fn outbox_add(&self, rows: &[OutboxRow]) -> Result<()>;
    /// Claim up to `limit` undelivered rows due by `due_ms`, pushing their
    /// next attempt to `now_ms + lease_ms` so that concurrent flushers never
    /// deliver the same row at once.
    fn outbox_claim(
        &self,
        due_ms: i64,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>>;
    fn outbox_delivered(&self, id: &str, channel: &str, now_ms: i64) -> Result<()>;
    fn outbox_failed(
        &self,
        id: &str,
        channel: &str,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<()>;
    /// Undelivered rows (for `notify flush` reports and tests).
    fn outbox_pending(&self) -> Result<u64>;
    fn notify_state(&self, job: &str) -> Result<NotifyState>;
    fn set_notify_state(&self, job: &str, state: &NotifyState) -> Result<()>;

    // The distributed queue (SPEC §6, docs/distributed.md), per ledger
    // scope. Only the PostgreSQL backend serves it.
    /// Queue keys (idempotent: keys already queued, claimed or done stay
    /// as they are; dead keys are queued again). Returns how many were new
    /// or revived.
    fn queue_enqueue(&self, scope_id: i64, keys: &[&str]) -> Result<u64> {
        let _ = (scope_id, keys);
        Err(no_queue())
    }
    /// Claim up to `n` keys for `worker` until `now_ms + lease_ms`: queued
    /// keys, and claimed keys whose lease expired. Keys other claimers are
    /// locking are skipped, never waited for.
    fn queue_claim(
        &self,
        scope_id: i64,
        worker: &str,
        n: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<String>> {
        let _ = (scope_id, worker, n, now_ms, lease_ms);
        Err(no_queue())
    }
    /// Record finished keys: the ledger update (fenced like
    /// [`Store::ledger_commit`]) and the queue acknowledgement in one
    /// transaction. Done keys become done; a failed key goes back to the
    /// queue, or is dead once its ledger attempts reach `max_attempts`.
    /// `false` means the whole batch was refused (the coordinator's token
    /// moved on).
    fn queue_finish(
        &self,
        scope_id: i64,
        who: Committer<'_>,
        worker: &str,
        now_ms: i64,
        max_attempts: u32,
        updates: &[LedgerUpdate<'_>],
    ) -> Result<bool> {
        let _ = (scope_id, who, worker, now_ms, max_attempts, updates);
        Err(no_queue())
    }
    /// Give keys claimed by `worker` back to the queue (shutdown).
    fn queue_release(&self, scope_id: i64, worker: &str, keys: &[&str]) -> Result<u64> {
        let _ = (scope_id, worker, keys);
        Err(no_queue())
    }
    /// Extend the lease of keys `worker` still holds; returns the keys it
    /// still holds (the others were lost: their lease expired and another
    /// worker claimed them, or they were finished elsewhere).
    fn queue_renew(
        &self,
        scope_id: i64,
        worker: &str,
        keys: &[&str],
        lease_until_ms: i64,
    ) -> Result<Vec<String>> {
        let _ = (scope_id, worker, keys, lease_until_ms);
        Err(no_queue())
    }
    /// (queued, claimed, done, dead) keys of a scope.
    fn queue_counts(&self, scope_id: i64) -> Result<QueueCounts> {
        let _ = scope_id;
        Err(no_queue())
    }

    // The watchdog's memory per scheduled job.
    /// Since when the watchdog watches `job` (recorded as `now_ms` on first
    /// sight), and the fire time of the last `missed` it raised.
    fn watch_state(&self, job: &str, now_ms: i64) -> Result<(i64, Option<i64>)>;
    /// Record that the fire at `fire_ms` was missed; `false` if that fire
    /// (or a later one) was already recorded, so each miss is raised once.
    fn record_missed(&self, job: &str, fire_ms: i64) -> Result<bool>;
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
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        Ok(Box::new(sqlite::SqliteStore::open(url, path.as_ref())?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(postgres::PostgresStore::open(url)?))
    } else {
        Err(StoreError::UnsupportedUrl(postgres::redact_url(url)))
    }
}
