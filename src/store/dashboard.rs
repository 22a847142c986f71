//! Read methods for `batchguard serve` (SPEC §10) that must stay fast on a
//! store of 1,000 jobs and 1,000,000 runs: every method is a handful of index
//! seeks (or one query built from them), never a scan of the runs table.
//!
//! Both backends implement [`DashboardStore`] in a separate block at the end
//! of their file; migration 6 of each backend adds what these reads need:
//! - indexes `runs (job, outcome, seq)` (newest success of a job),
//!   `runs (job, started_ms)` (a job's runs in a time range) and
//!   `runs (started_ms)` (the timeline);
//! - `run_totals (job, outcome, n)`, kept in the transaction that inserts
//!   or ends a run (PostgreSQL's by triggers, SQLite's by the backend's
//!   own statements since its migration 9), so the
//!   Prometheus counter `batchguard_job_runs_total` is one small read instead
//!   of counting a million rows on every scrape (and after every run, for the
//!   textfile).
//!
//! [`open_dashboard`] opens a store by URL like [`super::open`]; the handle
//! also serves the plain [`Store`] methods through [`DashboardStore::store`].

use super::{Backend, Result, RunRecord, Store};
use serde::Serialize;
use std::ops::Range;

/// Runs that started in `ms` (Unix milliseconds, end excluded), of one job
/// or of all, at most `limit` (the newest).
#[derive(Clone, Debug)]
pub struct Window<'a> {
    pub job: Option<&'a str>,
    pub ms: Range<i64>,
    pub limit: usize,
}

/// A run as the charts, strips and the timeline need it (no params, no log).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunBrief {
    pub id: String,
    pub job: String,
    pub outcome: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
}

/// Who holds a lock now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    pub lock: String,
    pub fence: i64,
    pub run_id: String,
    /// The holding run's job and runner (empty when the run row is gone).
    pub job: String,
    pub host: String,
    pub pid: i32,
    pub lease_until_ms: i64,
}

/// A job's ledger summed over its scopes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ItemTotals {
    pub job: String,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
}

/// Dashboard reads; see the module documentation.
pub trait DashboardStore: Send + Sync {
    /// The same store, for the ordinary [`Store`] methods.
    fn store(&self) -> &dyn Store;
    /// Every job that has runs, sorted (from `run_totals` and the running runs).
    fn run_jobs(&self) -> Result<Vec<String>>;
    /// The newest `n` runs (any outcome) of each of `jobs`, newest first.
    /// Jobs without runs are left out.
    fn recent_runs(&self, jobs: &[String], n: usize) -> Result<Vec<(String, Vec<RunBrief>)>>;
    /// The newest run of each of `jobs` that was not skipped (the newest
    /// skipped one when that is all there is), like [`Store::last_runs`].
    fn last_runs_of(&self, jobs: &[String]) -> Result<Vec<RunRecord>>;
    /// [`DashboardStore::last_runs_of`], brief (for ordering many jobs),
    /// each with the start of the job's newest run of any outcome.
    fn last_briefs(&self, jobs: &[String]) -> Result<Vec<(RunBrief, i64)>>;
    /// The newest successful run of each of `jobs`.
    fn last_successes(&self, jobs: &[String]) -> Result<Vec<RunBrief>>;
    /// A page of a job's runs, newest first: at most `limit` runs older than
    /// the run `before` (a run id; `None`: from the newest). `Ok(None)` when
    /// `before` is not a run of this job.
    fn runs_page(
        &self,
        job: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<RunRecord>>> {
        let before_seq = match before {
            None => i64::MAX,
            Some(id) => match self.run_seq(job, id)? {
                Some(seq) => seq,
                None => return Ok(None),
            },
        };
        let page = super::RunQuery::Page {
            job,
            before_seq,
            limit,
        };
        self.store().runs_matching(&page).map(Some)
    }
    /// The position (`seq`) of run `id` of `job`, if it is one.
    fn run_seq(&self, job: &str, id: &str) -> Result<Option<i64>>;
    /// Runs that started in `ms` (Unix milliseconds, end excluded), of one
    /// job or all, oldest first; when more than `limit` did, the newest
    /// `limit` of them.
    fn runs_between(&self, w: &Window<'_>) -> Result<Vec<RunBrief>>;
    /// How many runs of `job` that started at or after `since_ms` ended
    /// with each outcome (`running` included).
    fn outcome_counts(&self, job: &str, since_ms: i64) -> Result<Vec<(String, u64)>>;
    /// Finished runs ever recorded per job and outcome.
    fn run_totals(&self) -> Result<Vec<(String, String, u64)>>;
    /// Every job's ledger counts (summed over its scopes).
    fn item_totals(&self) -> Result<Vec<ItemTotals>>;
    /// Every lock held now.
    fn lock_holders(&self) -> Result<Vec<LockHolder>>;
}

/// Open the store named by `url` (as [`super::open`]) for the dashboard.
pub fn open_dashboard(url: &str) -> Result<Box<dyn DashboardStore>> {
    Ok(match super::open_backend(url)? {
        Backend::Sqlite(s) => s,
        Backend::Postgres(s) => s,
    })
}
