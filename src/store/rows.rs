//! Run and holder rows, mapped once for every backend: one column list, one
//! reader from a result row to a [`RunRecord`] or [`Holder`] (over the small
//! [`Columns`] trait each driver's row implements), one list of values to
//! bind when inserting a run, readers for the other rows (outbox, noise
//! state, ledger counts and failures), ledger batches split by kind, and
//! the SQL of every selection of runs
//! ([`RunQuery`]). Only the [`Dialect`] (placeholders, booleans) is the
//! backend's.

use super::dashboard::{ItemTotals, LockHolder, RunBrief};
use super::{
    Holder, ItemCounts, ItemState, LedgerEntry, LedgerUpdate, NotifyState, OutboxRow, RunRecord,
    RunnerIdentity, ScopeCounts,
};

/// The columns of a run, in the order [`run_from`] reads them.
pub(crate) const RUN_COLUMNS: &str = "id, job, lock_name, host, boot_id, pid, pid_start, fence, \
     attempt, scope, params, started_at, started_ms, ended_at, duration_ms, outcome, exit_code, \
     signal, peak_memory_bytes, memory_max_bytes, memory_enforcement, items, log_path, cgroup, \
     pgid, heartbeat_ms, error, items_failed, adhoc, rerun";

/// The columns of a lock's holder, in the order [`holder_from`] reads them
/// (runner columns may be NULL: the run row can be missing).
const HOLDER_COLUMNS: &str = "l.lock_name, l.fence, l.run_id, l.lease_until_ms, r.host, \
     r.boot_id, r.pid, r.pid_start, r.cgroup, r.pgid";

/// Column access by position, as each driver's row offers it. Integers of
/// any width come back as `i64`.
pub(crate) trait Columns {
    type Error;
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn opt_str(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn i64(&self, i: usize) -> Result<i64, Self::Error>;
    fn str(&self, i: usize) -> Result<String, Self::Error>;
}

/// Reads the columns of a row one after the other.
struct Cursor<'r, R> {
    row: &'r R,
    next: usize,
}

impl<R: Columns> Cursor<'_, R> {
    /// The next column, read with `get`.
    fn take<T>(&mut self, get: fn(&R, usize) -> Result<T, R::Error>) -> Result<T, R::Error> {
        self.next += 1;
        get(self.row, self.next - 1)
    }
    fn i64(&mut self) -> Result<i64, R::Error> {
        self.take(R::i64)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, R::Error> {
        self.take(R::opt_i64)
    }
    fn str(&mut self) -> Result<String, R::Error> {
        self.take(R::str)
    }
    fn opt_str(&mut self) -> Result<Option<String>, R::Error> {
        self.take(R::opt_str)
    }
    fn i32(&mut self) -> Result<i32, R::Error> {
        Ok(narrow(self.i64()?))
    }
    fn count(&mut self) -> Result<u32, R::Error> {
        Ok(self.i64()?.clamp(0, u32::MAX.into()) as u32)
    }
    fn total(&mut self) -> Result<u64, R::Error> {
        Ok(self.i64()?.max(0) as u64)
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, R::Error> {
        Ok(self.opt_i64()?.map(narrow))
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, R::Error> {
        Ok(self.opt_i64()?.map(|b| b as u64))
    }
    /// A byte count that may be NULL, negatives read as 0.
    fn opt_bytes(&mut self) -> Result<Option<u64>, R::Error> {
        Ok(self.opt_i64()?.map(|b| b.max(0) as u64))
    }
    /// A JSON column, its default when NULL or unreadable.
    fn json<T: serde::de::DeserializeOwned + Default>(&mut self) -> Result<T, R::Error> {
        Ok(self.opt_json()?.unwrap_or_default())
    }
    fn opt_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, R::Error> {
        Ok(self.opt_str()?.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

fn narrow(v: i64) -> i32 {
    v.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

/// A run from a row of [`RUN_COLUMNS`].
pub(crate) fn run_from<R: Columns>(row: &R) -> Result<RunRecord, R::Error> {
    let mut c = Cursor { row, next: 0 };
    let (id, job, lock, host, boot_id) = (c.str()?, c.str()?, c.str()?, c.str()?, c.str()?);
    let (pid, pid_start, fence, attempt) = (c.i32()?, c.i64()?, c.i64()?, c.i64()?);
    Ok(RunRecord {
        id,
        job,
        lock,
        runner: RunnerIdentity {
            host: host.clone(),
            boot_id,
            pid,
            pid_start: pid_start as u64,
        },
        host,
        pid,
        fence,
        attempt: attempt.clamp(0, u32::MAX.into()) as u32,
        scope: c.opt_str()?,
        params: c.json()?,
        started_at: c.str()?,
        started_ms: c.i64()?,
        ended_at: c.opt_str()?,
        duration_ms: c.opt_i64()?,
        outcome: c.str()?,
        exit_code: c.opt_i32()?,
        signal: c.opt_i32()?,
        peak_memory_bytes: c.opt_u64()?,
        memory_max_bytes: c.opt_u64()?,
        memory_enforcement: c.str()?,
        items: c.opt_json::<ItemCounts>()?,
        log_path: c.opt_str()?,
        cgroup: c.opt_str()?,
        pgid: c.opt_i32()?,
        heartbeat_ms: c.i64()?,
        error: c.opt_str()?,
        items_failed: c.json()?,
        adhoc: c.i64()? != 0,
        rerun: c.opt_str()?,
    })
}

/// The holder of a lock from a row of [`holder_sql`].
pub(crate) fn holder_from<R: Columns>(row: &R) -> Result<Holder, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(Holder {
        lock: c.str()?,
        fence: c.i64()?,
        run_id: c.str()?,
        lease_until_ms: c.i64()?,
        runner: RunnerIdentity {
            host: c.opt_str()?.unwrap_or_default(),
            boot_id: c.opt_str()?.unwrap_or_default(),
            pid: c.opt_i32()?.unwrap_or(0),
            pid_start: c.opt_i64()?.unwrap_or(0) as u64,
        },
        cgroup: c.opt_str()?,
        pgid: c.opt_i32()?,
    })
}

/// The columns of an outbox row, in the order [`outbox_from`] reads them.
pub(crate) const OUTBOX_COLUMNS: &str =
    "id, channel, job, event, payload, created_ms, attempts, next_attempt_ms, last_error";

pub(crate) fn outbox_from<R: Columns>(row: &R) -> Result<OutboxRow, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(OutboxRow {
        id: c.str()?,
        channel: c.str()?,
        job: c.str()?,
        event: c.str()?,
        payload: c.str()?,
        created_ms: c.i64()?,
        attempts: c.count()?,
        next_attempt_ms: c.i64()?,
        last_error: c.opt_str()?,
    })
}

/// The columns of a job's noise state, in the order [`notify_from`] reads.
pub(crate) const NOTIFY_COLUMNS: &str =
    "failing_since_ms, failures, suppressed, last_sent_ms, overrun_run";

pub(crate) fn notify_from<R: Columns>(row: &R) -> Result<NotifyState, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(NotifyState {
        failing_since_ms: c.opt_i64()?,
        failures: c.count()?,
        suppressed: c.count()?,
        last_sent_ms: c.opt_i64()?,
        overrun_run: c.opt_str()?,
    })
}

/// A failed ledger key from `key, attempts, last_error, run_id`.
pub(crate) fn failed_from<R: Columns>(row: &R) -> Result<LedgerEntry, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(LedgerEntry {
        key: c.str()?,
        state: ItemState::Failed,
        attempts: c.count()?,
        last_error: c.opt_str()?,
        run_id: c.opt_str()?,
    })
}

/// A scope's counts from `scope, done, failed, in_flight`.
pub(crate) fn scope_counts_from<R: Columns>(row: &R) -> Result<ScopeCounts, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(ScopeCounts {
        scope: c.str()?,
        done: c.total()?,
        failed: c.total()?,
        in_flight: c.total()?,
    })
}

/// The columns of a [`RunBrief`], in the order [`brief_from`] reads them.
pub(crate) const BRIEF_COLUMNS: &str =
    "id, job, outcome, started_ms, ended_ms, duration_ms, peak_memory_bytes, memory_max_bytes";

/// The runs of a [`Window`](super::dashboard::Window), newest first:
/// `(job,) from_ms, to_ms, limit` bound in that order, placeholders spelled
/// with `mark` (two statements, so each uses its index).
pub(crate) fn window_sql(mark: char, by_job: bool) -> String {
    let m = |i: usize| format!("{mark}{}", i + usize::from(by_job));
    let job = if by_job {
        format!("job = {mark}1 AND ")
    } else {
        String::new()
    };
    format!(
        "SELECT {BRIEF_COLUMNS} FROM runs WHERE {job}started_ms >= {} AND started_ms < {} \
         ORDER BY started_ms DESC LIMIT {}",
        m(1),
        m(2),
        m(3)
    )
}

/// A brief run from a row of [`BRIEF_COLUMNS`].
pub(crate) fn brief_from<R: Columns>(row: &R) -> Result<RunBrief, R::Error> {
    brief_at(&mut Cursor { row, next: 0 })
}

fn brief_at<R: Columns>(c: &mut Cursor<'_, R>) -> Result<RunBrief, R::Error> {
    Ok(RunBrief {
        id: c.str()?,
        job: c.str()?,
        outcome: c.str()?,
        started_ms: c.i64()?,
        ended_ms: c.opt_i64()?,
        duration_ms: c.opt_i64()?,
        peak_memory_bytes: c.opt_bytes()?,
        memory_max_bytes: c.opt_bytes()?,
    })
}

/// A brief run from [`BRIEF_COLUMNS`] followed by one more integer (the
/// start of the job's newest run).
pub(crate) fn brief_and_newest_from<R: Columns>(row: &R) -> Result<(RunBrief, i64), R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok((brief_at(&mut c)?, c.i64()?))
}

/// Every job that has runs: the finished ones are counted per job in
/// `run_totals`, the running ones are in the partial index `runs_running`.
pub(crate) const RUN_JOBS_SQL: &str = "SELECT job FROM run_totals UNION \
     SELECT job FROM runs WHERE outcome = 'running' ORDER BY 1";

/// A job's name from the first column.
pub(crate) fn job_from<R: Columns>(row: &R) -> Result<String, R::Error> {
    row.str(0)
}

/// Finished runs per job and outcome, read by [`run_total_from`].
pub(crate) const RUN_TOTALS_SQL: &str =
    "SELECT job, outcome, n FROM run_totals ORDER BY job, outcome";

/// A row of [`RUN_TOTALS_SQL`].
pub(crate) fn run_total_from<R: Columns>(row: &R) -> Result<(String, String, u64), R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok((c.str()?, c.str()?, c.total()?))
}

/// An outcome and how many runs ended with it.
pub(crate) fn outcome_count_from<R: Columns>(row: &R) -> Result<(String, u64), R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok((c.str()?, c.total()?))
}

/// A job's ledger totals from `job, done, failed, in_flight`.
pub(crate) fn item_totals_from<R: Columns>(row: &R) -> Result<ItemTotals, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(ItemTotals {
        job: c.str()?,
        done: c.total()?,
        failed: c.total()?,
        in_flight: c.total()?,
    })
}

/// Every lock held now, with its run's job and runner, read by
/// [`lock_holder_from`].
pub(crate) const LOCK_HOLDERS_SQL: &str = "SELECT l.lock_name, l.fence, l.run_id, \
     COALESCE(r.job, ''), COALESCE(r.host, ''), COALESCE(r.pid, 0), l.lease_until_ms \
     FROM locks l LEFT JOIN runs r ON r.id = l.run_id ORDER BY l.lock_name";

/// A row of [`LOCK_HOLDERS_SQL`].
pub(crate) fn lock_holder_from<R: Columns>(row: &R) -> Result<LockHolder, R::Error> {
    let mut c = Cursor { row, next: 0 };
    Ok(LockHolder {
        lock: c.str()?,
        fence: c.i64()?,
        run_id: c.str()?,
        job: c.str()?,
        host: c.str()?,
        pid: c.i32()?,
        lease_until_ms: c.i64()?,
    })
}

/// A count or limit as an SQL integer.
pub(crate) fn limit(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

/// The query for the holder of the lock named by the first parameter,
/// written with the backend's placeholder (`?1`, `$1`).
pub(crate) fn holder_sql(p1: &str) -> String {
    format!(
        "SELECT {HOLDER_COLUMNS} FROM locks l LEFT JOIN runs r ON r.id = l.run_id \
         WHERE l.lock_name = {p1}"
    )
}

/// A value to bind, typed as the PostgreSQL column is (SQLite takes any).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    I32(Option<i32>),
    I64(Option<i64>),
    Text(Option<String>),
}

/// The insert of a run: [`RUN_COLUMNS`] and `ended_ms`, bound by
/// [`run_values`]; `mark` is the placeholder prefix (`?` or `$`).
pub(crate) fn insert_run_sql(mark: char) -> String {
    let n = RUN_COLUMNS.split(',').count() + 1;
    let marks: Vec<String> = (1..=n).map(|i| format!("{mark}{i}")).collect();
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}, ended_ms) VALUES ({})",
        marks.join(", ")
    )
}

/// The values of [`insert_run_sql`] for `run` holding `fence`.
pub(crate) fn run_values(run: &RunRecord, fence: i64) -> Vec<Value> {
    use Value::{I32, I64, Text};
    let text = |s: &str| Text(Some(s.to_string()));
    let u64s = |v: Option<u64>| I64(v.map(|b| b as i64));
    let ended_ms = run
        .ended_at
        .as_ref()
        .map(|_| run.started_ms + run.duration_ms.unwrap_or(0));
    vec![
        text(&run.id),
        text(&run.job),
        text(&run.lock),
        text(&run.host),
        text(&run.runner.boot_id),
        I32(Some(run.runner.pid)),
        I64(Some(run.runner.pid_start as i64)),
        I64(Some(fence)),
        I64(Some(run.attempt.into())),
        Text(run.scope.clone()),
        text(&serde_json::to_string(&run.params).unwrap_or_else(|_| "{}".into())),
        text(&run.started_at),
        I64(Some(run.started_ms)),
        Text(run.ended_at.clone()),
        I64(run.duration_ms),
        text(&run.outcome),
        I32(run.exit_code),
        I32(run.signal),
        u64s(run.peak_memory_bytes),
        u64s(run.memory_max_bytes),
        text(&run.memory_enforcement),
        Text(items_json(run.items.as_ref())),
        Text(run.log_path.clone()),
        Text(run.cgroup.clone()),
        I32(run.pgid),
        I64(Some(run.heartbeat_ms)),
        Text(run.error.clone()),
        Text(failed_json(&run.items_failed)),
        I64(Some(run.adhoc.into())),
        Text(run.rerun.clone()),
        I64(ended_ms),
    ]
}

/// A batch of ledger updates split by kind, for one statement per kind.
pub(crate) struct Split<'a> {
    pub in_flight: Vec<&'a str>,
    pub done: Vec<&'a str>,
    pub failed: Vec<&'a str>,
    /// The error of each failed key, in the same order.
    pub errors: Vec<&'a str>,
}

impl<'a> Split<'a> {
    pub fn new(updates: &[LedgerUpdate<'a>]) -> Split<'a> {
        let mut s = Split {
            in_flight: Vec::new(),
            done: Vec::new(),
            failed: Vec::new(),
            errors: Vec::new(),
        };
        for u in updates {
            match u.state {
                ItemState::InFlight => s.in_flight.push(u.key),
                ItemState::Done => s.done.push(u.key),
                ItemState::Failed => {
                    s.failed.push(u.key);
                    s.errors.push(u.error.unwrap_or(""));
                }
            }
        }
        s
    }
}

/// What a backend spells its own way in the shared SQL.
pub(crate) struct Dialect {
    /// The placeholder prefix: `?` (SQLite) or `$` (PostgreSQL).
    pub mark: char,
    /// The condition "the run's log was not pruned yet".
    pub logs_kept: &'static str,
    /// Written after `FROM runs` in log retention's query: SQLite's planner,
    /// without statistics, picks `runs_job_started` over the partial index
    /// `runs_logs_kept` (same columns) and then reads every pruned run of the
    /// job at every run (22 ms per run with 100,000 of them).
    pub logs_kept_index: &'static str,
}

/// A selection of runs, as [`RunStore`](super::RunStore)'s reads ask them
/// of a backend. What each one means is decided here, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunQuery<'a> {
    /// The run with this id.
    ById(&'a str),
    /// The newest runs (of one job, or of all), at most `limit`.
    Newest { job: Option<&'a str>, limit: usize },
    /// The newest run of each job that was not skipped (a skipped run when
    /// that is all there is).
    LastPerJob,
    /// The newest finished (not running, not skipped) run of a job.
    LastFinished(&'a str),
    /// Runs still `running`, oldest first.
    Running,
    /// A page of a job's runs older than `before_seq`, newest first, at
    /// most `limit`.
    Page {
        job: &'a str,
        before_seq: i64,
        limit: usize,
    },
    /// Finished runs of `job` started before `before_ms` whose logs are
    /// kept, oldest first, at most `limit`.
    LogsBefore {
        job: &'a str,
        before_ms: i64,
        limit: usize,
    },
}

/// What log retention reads of a run whose log expired (in this order).
const EXPIRED_LOG_COLUMNS: &str = "id, log_path";

/// Log retention's query ([`RunQuery::LogsBefore`] reading only
/// [`EXPIRED_LOG_COLUMNS`]) in `d`'s SQL, and its arguments.
pub(crate) fn expired_logs_sql(
    d: &Dialect,
    job: &str,
    before_ms: i64,
    limit: usize,
) -> (String, Vec<Value>) {
    let query = RunQuery::LogsBefore {
        job,
        before_ms,
        limit,
    };
    query.selecting(d, EXPIRED_LOG_COLUMNS)
}

impl RunQuery<'_> {
    /// The query in `d`'s SQL, reading [`RUN_COLUMNS`], and its arguments.
    pub(crate) fn sql(&self, d: &Dialect) -> (String, Vec<Value>) {
        self.selecting(d, RUN_COLUMNS)
    }

    /// The query reading only `columns`. SQLite's cost of preparing a
    /// statement grows with the columns it reads, and every invocation
    /// prepares its statements anew: log retention, on every run's path,
    /// reads the two it needs ([`EXPIRED_LOG_COLUMNS`]).
    pub(crate) fn selecting(&self, d: &Dialect, columns: &str) -> (String, Vec<Value>) {
        let (clause, args) = self.clause(d);
        let clause = clause.replace('$', &d.mark.to_string());
        (format!("SELECT {columns} FROM runs {clause}"), args)
    }

    /// A `LIMIT` is written into the SQL as a number, not bound: SQLite's
    /// planner reads a bound LIMIT and then prepares the statement again
    /// once it is bound (one more parse of the query at every first use).
    fn clause(&self, d: &Dialect) -> (String, Vec<Value>) {
        let text = |s: &str| Value::Text(Some(s.to_string()));
        match *self {
            RunQuery::ById(id) => ("WHERE id = $1".into(), vec![text(id)]),
            RunQuery::Newest {
                job: Some(job),
                limit,
            } => (
                format!(
                    "WHERE job = $1 ORDER BY seq DESC LIMIT {}",
                    self::limit(limit)
                ),
                vec![text(job)],
            ),
            RunQuery::Newest { job: None, limit } => (
                format!("ORDER BY seq DESC LIMIT {}", self::limit(limit)),
                Vec::new(),
            ),
            RunQuery::LastPerJob => (
                "WHERE seq IN (SELECT COALESCE(MAX(CASE WHEN outcome <> 'skipped' THEN seq END), \
                 MAX(seq)) FROM runs GROUP BY job) ORDER BY job"
                    .into(),
                Vec::new(),
            ),
            RunQuery::LastFinished(job) => (
                "WHERE job = $1 AND outcome NOT IN ('running', 'skipped') \
                 ORDER BY seq DESC LIMIT 1"
                    .into(),
                vec![text(job)],
            ),
            RunQuery::Running => ("WHERE outcome = 'running' ORDER BY seq".into(), Vec::new()),
            RunQuery::Page {
                job,
                before_seq,
                limit,
            } => (
                format!(
                    "WHERE job = $1 AND seq < $2 ORDER BY seq DESC LIMIT {}",
                    self::limit(limit)
                ),
                vec![text(job), Value::I64(Some(before_seq))],
            ),
            RunQuery::LogsBefore {
                job,
                before_ms,
                limit,
            } => (
                format!(
                    "{}WHERE job = $1 AND started_ms < $2 AND {} AND log_path IS NOT NULL \
                     AND outcome <> 'running' ORDER BY seq LIMIT {}",
                    d.logs_kept_index,
                    d.logs_kept,
                    self::limit(limit)
                ),
                vec![text(job), Value::I64(Some(before_ms))],
            ),
        }
    }
}

/// Item counts as stored (JSON), `None` for none.
pub(crate) fn items_json(items: Option<&ItemCounts>) -> Option<String> {
    items.and_then(|i| serde_json::to_string(i).ok())
}

/// The first failed keys of a run as stored (JSON), `None` for none.
pub(crate) fn failed_json(keys: &[String]) -> Option<String> {
    (!keys.is_empty()).then(|| serde_json::to_string(keys).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_binds_one_value_per_column() {
        let who = RunnerIdentity {
            host: "h".into(),
            boot_id: "b".into(),
            pid: 1,
            pid_start: 1,
        };
        let run = crate::store::conformance::record("r", "job", &who);
        let sql = insert_run_sql('$');
        assert!(sql.ends_with("$31)"), "{sql}");
        assert_eq!(run_values(&run, 1).len(), 31);
    }

    #[test]
    fn run_queries_use_the_dialect() {
        let d = Dialect {
            mark: '?',
            logs_kept: "log_pruned = 0",
            logs_kept_index: "INDEXED BY runs_logs_kept ",
        };
        let q = RunQuery::LogsBefore {
            job: "j",
            before_ms: 5,
            limit: 2,
        };
        let (sql, args) = q.sql(&d);
        assert!(
            sql.contains("job = ?1 AND started_ms < ?2 AND log_pruned = 0"),
            "{sql}"
        );
        assert_eq!(args.len(), 2, "the limit is written, not bound");
        assert!(sql.ends_with("LIMIT 2"), "{sql}");
        assert!(!sql.contains('$'));
    }
}
