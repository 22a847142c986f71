//! The state store split by capability: what every backend keeps (runs
//! and locks, the item ledger, the notification outbox, the watchdog's
//! memory) and what only some offer (the distributed queue). [`Store`] is
//! the sum a backend implements; [`Store::queue`] says whether it serves the
//! queue. Callers import the traits (or [`prelude`]) to call their methods
//! on a `dyn Store`.

use super::{
    Committer, ItemState, LedgerEntry, LedgerUpdate, Liveness, LockAttempt, LockRequest,
    NotifyState, OutboxRow, QueueCounts, Result, RunEnd, RunQuery, RunRecord, ScopeCounts,
};

/// Everything callers need to call store methods on a `dyn Store`.
pub mod prelude {
    pub use super::{LedgerStore, OutboxStore, QueueStore, RunStore, Store, WatchStore};
}

/// A run whose log outlived the retention ([`RunStore::expired_logs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredLog {
    pub run_id: String,
    /// The log path the run recorded, if any.
    pub log_path: Option<String>,
}

/// What [`RunStore::while_fence_current`] runs under the fence.
pub type FencedAction<'a> = &'a mut dyn FnMut() -> std::io::Result<()>;

/// The answer of [`RunStore::while_fence_current`]: `Ok(false)` when the
/// fence was not current (the action did not run), else the action's own.
pub type Fenced = std::result::Result<bool, std::io::Error>;

/// A lease renewal ([`RunStore::heartbeat`]): `run_id`, holding `lock`
/// under `fence`, extends its lease to `now_ms + lease_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    pub lock: &'a str,
    pub fence: i64,
    pub run_id: &'a str,
    pub now_ms: i64,
    pub lease_ms: i64,
}

/// A batch of ledger updates ([`LedgerStore::ledger_commit`]) for one
/// scope, by one committer, at one time.
#[derive(Debug, Clone, Copy)]
pub struct LedgerCommit<'a> {
    pub scope_id: i64,
    pub who: Committer<'a>,
    pub now_ms: i64,
    pub updates: &'a [LedgerUpdate<'a>],
}

/// An outbox claim ([`OutboxStore::outbox_claim`]): up to `limit` rows due
/// by `due_ms`, leased until `now_ms + lease_ms`.
#[derive(Debug, Clone, Copy)]
pub struct OutboxClaim {
    pub due_ms: i64,
    pub now_ms: i64,
    pub lease_ms: i64,
    pub limit: usize,
}

/// A failed delivery of notification `id` on `channel`
/// ([`OutboxStore::outbox_failed`]).
#[derive(Debug, Clone, Copy)]
pub struct OutboxFailure<'a> {
    pub id: &'a str,
    pub channel: &'a str,
    pub error: &'a str,
    pub next_attempt_ms: i64,
}

/// A queue claim ([`QueueStore::queue_claim`]): up to `n` keys of a scope
/// for `worker`, leased until `now_ms + lease_ms`.
#[derive(Debug, Clone, Copy)]
pub struct QueueClaim<'a> {
    pub worker: &'a str,
    pub scope_id: i64,
    pub n: usize,
    pub now_ms: i64,
    pub lease_ms: i64,
}

/// Finished keys of a worker ([`QueueStore::queue_finish`]): the ledger
/// batch, and who acknowledges it in the queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueFinish<'a> {
    pub commit: LedgerCommit<'a>,
    pub worker: &'a str,
    pub max_attempts: u32,
}

/// A lease extension ([`QueueStore::queue_renew`]) of the `keys` `worker`
/// holds in a scope, to `lease_until_ms`.
#[derive(Debug, Clone, Copy)]
pub struct QueueRenew<'a> {
    pub scope_id: i64,
    pub worker: &'a str,
    pub keys: &'a [&'a str],
    pub lease_until_ms: i64,
}

/// Runs, locks and fencing tokens. Every method is one transaction.
pub trait RunStore: Send + Sync {
    /// Take (or fail to take) a lock and, in the same transaction, insert
    /// the run record with the fence it got.
    fn acquire(&self, req: &LockRequest<'_>, alive: Liveness<'_>) -> Result<LockAttempt>;
    /// Renew the lease; `false` means the lock moved on (the run is fenced).
    fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<bool>;
    /// The newest fence drawn for a lock.
    fn current_fence(&self, lock: &str) -> Result<Option<i64>>;
    /// Run `action` only while `fence` is the newest token of `lock`; the
    /// check and the action happen under the store's write lock, so no newer
    /// run can take the lock in between. Returns `false` if refused.
    fn while_fence_current(&self, lock: &str, fence: i64, f: FencedAction<'_>) -> Result<Fenced>;
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
    /// The runs a query selects: the one read each backend implements
    /// (with [`RunQuery`]'s SQL); the reads below are written on it.
    fn runs_matching(&self, query: &RunQuery<'_>) -> Result<Vec<RunRecord>>;
    fn get_run(&self, id: &str) -> Result<Option<RunRecord>> {
        first(self.runs_matching(&RunQuery::ById(id)))
    }
    /// Runs, newest first; all jobs when `job` is `None`.
    fn list_runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        self.runs_matching(&RunQuery::Newest { job, limit })
    }
    /// The newest run of each job that was not skipped (a skipped run when
    /// that is all there is), so a skip never hides a failure in `status`.
    fn last_runs(&self) -> Result<Vec<RunRecord>> {
        self.runs_matching(&RunQuery::LastPerJob)
    }
    /// The newest finished (not running, not skipped) run of a job.
    fn last_finished_run(&self, job: &str) -> Result<Option<RunRecord>> {
        first(self.runs_matching(&RunQuery::LastFinished(job)))
    }
    /// Runs whose outcome is still `running`.
    fn running_runs(&self) -> Result<Vec<RunRecord>> {
        self.runs_matching(&RunQuery::Running)
    }
    /// Runs of `job` that started before `before_ms` and whose logs were not
    /// pruned yet (at most `limit`, oldest first), for log retention: their
    /// ids and recorded log paths.
    fn expired_logs(&self, job: &str, before_ms: i64, limit: usize) -> Result<Vec<ExpiredLog>>;
    fn mark_log_pruned(&self, run_id: &str) -> Result<()>;
    /// Store the first failed item keys of a run (for reports).
    fn set_run_failed_items(&self, run_id: &str, keys: &[String]) -> Result<()>;
}

/// The first of a selection, if any.
fn first(runs: Result<Vec<RunRecord>>) -> Result<Option<RunRecord>> {
    Ok(runs?.into_iter().next())
}

/// The item ledger (G06), per job and scope.
pub trait LedgerStore: Send + Sync {
    /// The id of a job's scope; created when `create` is set.
    fn ledger_scope(&self, job: &str, scope: &str, create: bool) -> Result<Option<i64>>;
    /// Every entry of a scope, in no particular order.
    fn ledger_scan(&self, scope_id: i64, f: &mut dyn FnMut(&str, ItemState, u32)) -> Result<()>;
    /// Apply a batch of updates in one transaction, only while the
    /// committer's fence is still the newest of its lock. `false` means the
    /// whole batch was refused (the run is fenced).
    fn ledger_commit(&self, commit: &LedgerCommit<'_>) -> Result<bool>;
    /// Counts per scope of a job (one scope when given).
    fn ledger_counts(&self, job: &str, scope: Option<&str>) -> Result<Vec<ScopeCounts>>;
    /// Failed keys of a scope, most attempts first.
    fn ledger_failed(&self, scope_id: i64, limit: usize) -> Result<Vec<LedgerEntry>>;
    /// Forget a scope entirely (the explicit clean-and-redo). Returns the
    /// number of keys removed.
    fn ledger_reset(&self, job: &str, scope: &str) -> Result<u64>;
}

/// The notification outbox (G08) and the noise control's memory.
pub trait OutboxStore: Send + Sync {
    /// Store notifications before any delivery is tried.
    fn outbox_add(&self, rows: &[OutboxRow]) -> Result<()>;
    /// Claim up to `limit` undelivered rows due by `due_ms`, pushing their
    /// next attempt to `now_ms + lease_ms` so that concurrent flushers never
    /// deliver the same row at once.
    fn outbox_claim(&self, claim: &OutboxClaim) -> Result<Vec<OutboxRow>>;
    fn outbox_delivered(&self, id: &str, channel: &str, now_ms: i64) -> Result<()>;
    /// Record a failed delivery, to be tried again at `next_attempt_ms`.
    fn outbox_failed(&self, failure: &OutboxFailure<'_>) -> Result<()>;
    /// Undelivered rows (for `notify flush` reports and tests).
    fn outbox_pending(&self) -> Result<u64>;
    fn notify_state(&self, job: &str) -> Result<NotifyState>;
    fn set_notify_state(&self, job: &str, state: &NotifyState) -> Result<()>;
}

/// The watchdog's memory per scheduled job.
pub trait WatchStore: Send + Sync {
    /// Since when the watchdog watches `job` (recorded as `now_ms` on first
    /// sight), and the fire time of the last `missed` it raised.
    fn watch_state(&self, job: &str, now_ms: i64) -> Result<(i64, Option<i64>)>;
    /// Record that the fire at `fire_ms` was missed; `false` if that fire
    /// (or a later one) was already recorded, so each miss is raised once.
    fn record_missed(&self, job: &str, fire_ms: i64) -> Result<bool>;
}

/// The distributed queue (SPEC §6, docs/distributed.md), per ledger scope.
/// Only backends shared by many hosts (PostgreSQL) serve it.
pub trait QueueStore: Send + Sync {
    /// Queue keys (idempotent: keys already queued, claimed or done stay
    /// as they are; dead keys are queued again). Returns how many were new
    /// or revived.
    fn queue_enqueue(&self, scope_id: i64, keys: &[&str]) -> Result<u64>;
    /// Claim up to `n` keys for `worker` until `now_ms + lease_ms`: queued
    /// keys, and claimed keys whose lease expired. Keys other claimers are
    /// locking are skipped, never waited for.
    fn queue_claim(&self, claim: &QueueClaim<'_>) -> Result<Vec<String>>;
    /// Record finished keys: the ledger update (fenced like
    /// [`LedgerStore::ledger_commit`]) and the queue acknowledgement in one
    /// transaction. Done keys become done; a failed key goes back to the
    /// queue, or is dead once its ledger attempts reach `max_attempts`.
    /// `false` means the whole batch was refused (the coordinator's token
    /// moved on).
    fn queue_finish(&self, finish: &QueueFinish<'_>) -> Result<bool>;
    /// Give keys claimed by `worker` back to the queue (shutdown).
    fn queue_release(&self, scope_id: i64, worker: &str, keys: &[&str]) -> Result<u64>;
    /// Extend the lease of keys `worker` still holds; returns the keys it
    /// still holds (the others were lost: their lease expired and another
    /// worker claimed them, or they were finished elsewhere).
    fn queue_renew(&self, renew: &QueueRenew<'_>) -> Result<Vec<String>>;
    /// (queued, claimed, done, dead) keys of a scope.
    fn queue_counts(&self, scope_id: i64) -> Result<QueueCounts>;
}

/// A whole state store: every capability all backends share, and the
/// distributed queue where the backend has one.
pub trait Store: RunStore + LedgerStore + OutboxStore + WatchStore + Send + Sync {
    /// The distributed queue, or `None` (see [`super::no_queue`]).
    fn queue(&self) -> Option<&dyn QueueStore>;
    /// The process ends soon after this store is dropped: what closing
    /// would only free (memory, descriptors, maps) may be left to the
    /// kernel. Whatever the drop does that lasts (a checkpoint) still runs.
    fn ends_with_the_process(&self) {}
}
