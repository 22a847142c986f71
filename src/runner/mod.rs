//! The runner: one invocation of one job, start to finish.
//!
//! Resolve params and templates, build the environment (env_file values
//! become secrets), take the lock and a fencing token, then for each attempt
//! create the run record and log, spawn the process tree under supervision,
//! keep the lease alive from a heartbeat thread (which also notices when a
//! newer run took the lock), forward our own TERM/INT/HUP to the tree, and
//! record how it ended. Retries back off exponentially with jitter while the
//! lock stays held.

mod control;
mod lock;
mod notice;

pub(crate) use control::{Control, Stop};

use crate::clock;
use crate::error::{Error, Result};
use crate::host;
use crate::logs::{self, RunLog};
use crate::outcome::{self, Outcome};
use crate::redact::Redactor;
use crate::store::{AcquireMode, RunEnd, RunRecord, RunnerIdentity, Store};
use batchguard_config::{Concurrency, Global, Job, template};
use batchguard_supervise::{self as supervise, CgroupPlacement, Limits, Spec};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// What every command that touches runs needs.
pub struct Context {
    pub store: Box<dyn Store>,
    pub state_url: String,
    pub global: Global,
    pub me: RunnerIdentity,
}

/// What the operator asked for on the command line.
#[derive(Default, Debug, Clone)]
pub struct Request {
    pub params: Vec<(String, String)>,
    pub scope: Option<String>,
    /// `run --shard I/N`: only the keys of shard I of N (SPEC §6).
    pub shard: Option<(u32, u32)>,
    /// `run --no-work`: a distributed coordinator that only waits.
    pub no_work: bool,
}

/// The result of `batchguard run`.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub exit_code: i32,
    pub run_id: String,
}

pub fn new_run_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Everything about the job that does not change between attempts.
pub(crate) struct Prepared {
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) scope: Option<String>,
    pub(crate) shard: Option<(u32, u32)>,
    pub(crate) no_work: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) redactor: Redactor,
    pub(crate) run_as: Option<supervise::RunAs>,
    pub(crate) tz: jiff::tz::TimeZone,
    pub(crate) today: String,
    pub(crate) yesterday: String,
}

fn builtin(job: &Job, run_id: &str, p: &Prepared, name: &str) -> Option<String> {
    match name {
        "job" => Some(job.name.clone()),
        "run_id" => Some(run_id.to_string()),
        "today" => Some(p.today.clone()),
        "yesterday" => Some(p.yesterday.clone()),
        _ => p.params.get(name).cloned(),
    }
}

fn render_all(
    job: &Job,
    run_id: &str,
    p: &Prepared,
    what: &str,
    templates: &[String],
) -> Result<Vec<String>> {
    templates
        .iter()
        .map(|t| {
            template::render(t, &|n| builtin(job, run_id, p, n)).map_err(|e| {
                Error::Usage(format!(
                    "job `{}`: cannot render {what} `{t}`: {e}",
                    job.name
                ))
            })
        })
        .collect()
}

pub(crate) fn prepare(job: &Job, req: &Request) -> Result<Prepared> {
    let tz = clock::zone(job.timezone.as_deref());
    let (today, yesterday) = clock::today_yesterday(clock::now_ms(), &tz);
    let mut p = Prepared {
        params: BTreeMap::new(),
        scope: None,
        shard: req.shard,
        no_work: req.no_work,
        env: Vec::new(),
        redactor: Redactor::default(),
        run_as: None,
        tz,
        today,
        yesterday,
    };
    // Param defaults may use the built-ins; --param overrides are literal.
    let mut params = BTreeMap::new();
    for (k, v) in &job.params {
        let value = render_all(job, "", &p, "param", std::slice::from_ref(v))?.remove(0);
        params.insert(k.clone(), value);
    }
    for (k, v) in &req.params {
        if !job.params.contains_key(k) {
            let known: Vec<&str> = job.params.keys().map(String::as_str).collect();
            return Err(Error::Usage(format!(
                "job `{}` has no param `{k}` (declared params: {}); declare it under [params]",
                job.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        params.insert(k.clone(), v.clone());
    }
    p.params = params;
    p.scope = match (
        &req.scope,
        job.items.as_ref().and_then(|i| i.scope.as_ref()),
    ) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(t)) => {
            Some(render_all(job, "", &p, "items.scope", std::slice::from_ref(t))?.remove(0))
        }
        (None, None) => None,
    };

    // Environment: the runner's, then env_file (secrets), then env.
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(k, _)| !k.to_string_lossy().starts_with("BATCHGUARD_"))
        .collect();
    let mut secrets = Vec::new();
    if let Some(path) = &job.env_file {
        let iter = dotenvy::from_path_iter(path).map_err(|e| Error::EnvFile {
            job: job.name.clone(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for item in iter {
            let (k, v) = item.map_err(|e| Error::EnvFile {
                job: job.name.clone(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
            secrets.push(v.clone());
            env.insert(k.into(), v.into());
        }
    }
    for (k, v) in &job.env {
        env.insert(k.into(), v.into());
    }
    for name in &job.secrets {
        if let Some(v) = env.get(&OsString::from(name)) {
            secrets.push(v.to_string_lossy().into_owned());
        }
    }
    if let Some(user) = &job.user {
        let run_as = supervise::RunAs::lookup(user)
            .map_err(|e| Error::Usage(format!("job `{}`: user `{user}`: {e}", job.name)))?;
        env.insert("USER".into(), user.into());
        env.insert("LOGNAME".into(), user.into());
        env.insert("HOME".into(), run_as.home.clone().into_os_string());
        p.run_as = Some(run_as);
    }
    p.env = env.into_iter().collect();
    p.redactor = Redactor::new(secrets);
    Ok(p)
}

fn acquire_mode(c: Concurrency) -> AcquireMode {
    match c {
        Concurrency::Forbid => AcquireMode::IfFree,
        Concurrency::Replace => AcquireMode::Replace,
        Concurrency::Allow => AcquireMode::TokenOnly,
    }
}

fn base_record(ctx: &Context, job: &Job, p: &Prepared, run_id: &str, attempt: u32) -> RunRecord {
    let now = clock::now_ms();
    RunRecord {
        id: run_id.to_string(),
        job: job.name.clone(),
        host: ctx.me.host.clone(),
        pid: ctx.me.pid,
        fence: 0,
        attempt,
        scope: p.scope.clone(),
        started_at: clock::rfc3339(now, &p.tz),
        ended_at: None,
        duration_ms: None,
        outcome: "running".into(),
        exit_code: None,
        signal: None,
        peak_memory_bytes: None,
        memory_enforcement: "none".into(),
        items: None,
        log_path: Some(
            logs::log_path(&ctx.global.log_dir, &job.name, run_id)
                .display()
                .to_string(),
        ),
        lock: job.lock.clone(),
        memory_max_bytes: job.memory_max,
        params: p.params.clone(),
        error: None,
        items_failed: Vec::new(),
        started_ms: now,
        runner: ctx.me.clone(),
        cgroup: None,
        pgid: None,
        heartbeat_ms: now,
    }
}

/// Record a run that does not start (`skipped`, exit 75) and notify it:
/// always when `always_notify`, else only if the job asked for `skipped`.
fn skip(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    mut skipped: RunRecord,
    reason: String,
    always_notify: bool,
) -> Result<Report> {
    skipped.outcome = Outcome::Skipped.as_str().into();
    skipped.ended_at = Some(skipped.started_at.clone());
    skipped.duration_ms = Some(0);
    skipped.log_path = None;
    skipped.error = Some(p.redactor.redact(&reason).into_owned());
    ctx.store.insert_run(&skipped)?;
    let end = RunEnd {
        ended_ms: skipped.started_ms,
        error: skipped.error.clone(),
        ..RunEnd::default()
    };
    notice::skipped(ctx, job, p, &skipped, &end, always_notify);
    if always_notify || std::io::stderr().is_terminal() {
        eprintln!(
            "batchguard: job `{}` skipped: {}",
            job.name,
            skipped.error.as_deref().unwrap_or_default()
        );
    }
    Ok(Report {
        outcome: Outcome::Skipped,
        exit_code: crate::exit::TEMPFAIL,
        run_id: skipped.id,
    })
}

/// G04: with `max_replica_lag` and `replica_dsn_env` set, a run does not
/// start while the replica lags more than that, or when its lag cannot be
/// checked (reading from a replica that is down or far behind is what the
/// declaration is there to prevent). `Some(reason)` means: do not start.
fn replica_gate(job: &Job, p: &Prepared) -> Option<String> {
    use crate::check::ReplicaProbe;
    let max = job.guideline.max_replica_lag?;
    let var = job.guideline.replica_dsn_env.as_deref()?;
    let limit = batchguard_config::format_duration(max);
    let Some(dsn) = p
        .env
        .iter()
        .find(|(k, _)| k.as_os_str() == std::ffi::OsStr::new(var))
        .map(|(_, v)| v.to_string_lossy().into_owned())
    else {
        return Some(format!(
            "cannot check the replica lag: {var} (replica_dsn_env) is not set; max_replica_lag is {limit}"
        ));
    };
    match crate::check::probe_replica(&dsn) {
        ReplicaProbe::Replica { lag } if lag > max => Some(format!(
            "the read replica lags {} behind its primary, more than max_replica_lag {limit} (G04)",
            batchguard_config::format_duration(lag)
        )),
        ReplicaProbe::Replica { .. } => None,
        ReplicaProbe::Primary => {
            tracing::warn!(
                "{var} points at a primary, not a replica: `batchguard check` fails G04; running anyway"
            );
            None
        }
        ReplicaProbe::DsnUnset { .. } => Some(format!(
            "cannot check the replica lag: {var} (replica_dsn_env) is not set"
        )),
        ReplicaProbe::Failed(e) => Some(format!(
            "cannot check the replica lag ({e}); max_replica_lag is {limit} (G04)"
        )),
    }
}

/// Run `job` under full supervision and record what happened.
pub fn run(ctx: &Context, job: &Job, req: &Request) -> Result<Report> {
    let p = prepare(job, req)?;
    tracing::debug!(job = %job.name, "prepared");
    let mode = acquire_mode(job.concurrency);
    let run_id = new_run_id();
    let first = base_record(ctx, job, &p, &run_id, 1);
    let on_lost = |run_id: &str| match ctx.store.get_run(run_id) {
        Ok(Some(lost)) if lost.job == job.name => notice::lost(ctx, job, &p, &lost),
        Ok(Some(lost)) => tracing::warn!(
            "run {run_id} of job {} sharing lock `{}` was lost; notify from that job's own runs",
            lost.job,
            job.lock
        ),
        _ => {}
    };
    if let Some(reason) = replica_gate(job, &p) {
        return skip(ctx, job, &p, first, reason, true);
    }
    let fence = match lock::take(ctx, &first, mode, job.kill_grace, &on_lost)? {
        lock::Taken::Fence(f) => f,
        lock::Taken::Held(h) => {
            let reason = format!(
                "lock `{}` is held by run {} (pid {} on {}, fence {})",
                h.lock, h.run_id, h.runner.pid, h.runner.host, h.fence
            );
            return skip(ctx, job, &p, first, reason, false);
        }
    };
    tracing::debug!(job = %job.name, fence, "lock taken");

    let control = Control::default();
    control.set_current_run(&run_id);
    let (sig_tx, sig_rx) = mpsc::channel::<i32>();
    let (hb_stop_tx, hb_stop_rx) = mpsc::channel::<()>();
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(|e| Error::io("install signal handlers for", "batchguard", e))?;
    let signals_handle = signals.handle();

    let report = std::thread::scope(|s| {
        s.spawn(|| {
            for sig in signals.forever() {
                control.on_signal(sig);
                let _ = sig_tx.send(sig);
            }
        });
        s.spawn(|| heartbeat_loop(ctx, job, &p, fence, mode, &control, hb_stop_rx));
        s.spawn(|| notice::ping_start(ctx, job, &run_id));
        let report = attempts(ctx, job, &p, fence, mode, first, &control, &sig_rx);
        let _ = hb_stop_tx.send(());
        signals_handle.close();
        report
    });
    if let Err(e) = logs::prune(
        ctx.store.as_ref(),
        &job.name,
        ctx.global.log_retention.as_millis() as i64,
    ) {
        tracing::warn!(error = %e, "log retention failed");
    }
    tracing::debug!("logs pruned");
    report
}

fn heartbeat_loop(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    fence: i64,
    mode: AcquireMode,
    control: &Control,
    stop: mpsc::Receiver<()>,
) {
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let mut interval =
        (ctx.global.lease / 6).clamp(Duration::from_millis(500), Duration::from_secs(10));
    if let Some(expected) = job.expected_duration {
        // Notice an overrun within a tenth of the expected duration.
        interval = interval.min((expected / 10).max(Duration::from_millis(100)));
    }
    let mut overrun_sent: Option<String> = None;
    loop {
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let run_id = control.current_run();
        let now = clock::now_ms();
        match ctx
            .store
            .heartbeat(&job.lock, fence, &run_id, now, lease_ms)
        {
            Ok(true) => {}
            Ok(false) if mode != AcquireMode::TokenOnly => {
                if control.stopping().is_none() {
                    tracing::warn!(job = %job.name, "lock `{}` moved to a newer run: stopping", job.lock);
                }
                control.request_stop(Stop::Fenced);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
        if let Some(expected) = job.expected_duration {
            if overrun_sent.as_deref() != Some(run_id.as_str()) {
                if let Ok(Some(run)) = ctx.store.get_run(&run_id) {
                    let elapsed = now - run.started_ms;
                    if run.outcome == "running" && elapsed > expected.as_millis() as i64 {
                        overrun_sent = Some(run_id.clone());
                        notice::overrun(ctx, job, p, &run, elapsed);
                    }
                }
            }
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces are distinct"
)]
fn attempts(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    fence: i64,
    mode: AcquireMode,
    first: RunRecord,
    control: &Control,
    sig_rx: &mpsc::Receiver<i32>,
) -> Result<Report> {
    let mut record = first;
    let mut attempt = 1u32;
    loop {
        if attempt > 1 {
            record = base_record(ctx, job, p, &new_run_id(), attempt);
            record.fence = fence;
            ctx.store.insert_run(&record)?;
            control.set_current_run(&record.id);
        }
        record.fence = fence;
        let (result, tail) = one_attempt(ctx, job, p, &record, mode, control)?;
        let outcome = result.outcome;
        let retry = outcome.retryable() && attempt <= job.retries && !control.signalled();
        // The last attempt records its end and releases the lock in one
        // transaction.
        let release_now =
            (!retry && mode != AcquireMode::TokenOnly).then_some((job.lock.as_str(), fence));
        if !result.items_failed.is_empty() {
            ctx.store
                .set_run_failed_items(&record.id, &result.items_failed)?;
        }
        ctx.store.finish_run(&record.id, release_now, &result.end)?;
        tracing::debug!(run = %record.id, "run recorded");
        if !retry {
            if outcome != Outcome::Success {
                report_failure(ctx, job, p, &record, &result, &tail);
            }
            notice::run_ended(
                ctx,
                job,
                p,
                &record,
                outcome,
                &result.end,
                &tail,
                &result.items_failed,
            );
            return Ok(Report {
                outcome,
                exit_code: result.code,
                run_id: record.id,
            });
        }
        let delay = backoff(job.retry_delay, attempt);
        tracing::info!(job = %job.name, attempt, "attempt failed ({}); retrying in {:?}", outcome.as_str(), delay);
        if let Ok(_sig) = sig_rx.recv_timeout(delay) {
            release(ctx, job, fence, mode);
            return Ok(Report {
                outcome,
                exit_code: result.code,
                run_id: record.id,
            });
        }
        attempt += 1;
    }
}

fn release(ctx: &Context, job: &Job, fence: i64, mode: AcquireMode) {
    if mode == AcquireMode::TokenOnly {
        return;
    }
    if let Err(e) = ctx.store.release_lock(&job.lock, fence) {
        tracing::warn!(error = %e, "cannot release lock `{}`; it expires with its lease", job.lock);
    }
}

/// `retry_delay` doubled per attempt, with ±20 % jitter so that many jobs
/// failing together do not retry together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << (attempt - 1).min(16));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2654435761);
    let factor = 0.8 + (nanos % 4001) as f64 / 10000.0;
    doubled.mul_f64(factor)
}

/// What one attempt needs, whatever kind of job it runs.
pub(crate) struct Attempt<'a> {
    pub ctx: &'a Context,
    pub job: &'a Job,
    pub p: &'a Prepared,
    pub record: &'a RunRecord,
    pub mode: AcquireMode,
    pub control: &'a Control,
    pub log: &'a Mutex<RunLog>,
    /// The job's environment including the BATCHGUARD_* variables.
    pub env: Vec<(OsString, OsString)>,
}

/// How an attempt ended.
pub(crate) struct AttemptResult {
    pub outcome: Outcome,
    pub code: i32,
    pub end: RunEnd,
    pub items_failed: Vec<String>,
}

impl Attempt<'_> {
    pub fn note(&self, text: &str) {
        lock_log(self.log).note(text);
    }

    /// Render templates of this job for this run (`item` for per-item).
    pub fn render(
        &self,
        what: &str,
        templates: &[String],
        item: Option<&str>,
    ) -> Result<Vec<String>> {
        let job = self.job;
        templates
            .iter()
            .map(|t| {
                template::render(t, &|n| match (n, item) {
                    ("item", Some(k)) => Some(k.to_string()),
                    _ => builtin(job, &self.record.id, self.p, n),
                })
                .map_err(|e| {
                    Error::Usage(format!(
                        "job `{}`: cannot render {what} `{t}`: {e}",
                        job.name
                    ))
                })
            })
            .collect()
    }

    /// A spec for a process of this run.
    pub fn spec(&self, argv: &[String], cgroup: CgroupPlacement) -> Spec {
        Spec {
            argv: argv.iter().map(OsString::from).collect(),
            cwd: Some(self.job.workdir.clone()),
            env: self.env.clone(),
            user: self.p.run_as.clone(),
            stdin: Default::default(),
            done_fd: None,
            cgroup,
        }
    }

    /// Has the token moved on (and this job has an exclusive lock)?
    pub fn fence_moved(&self) -> Result<bool> {
        Ok(self.mode != AcquireMode::TokenOnly
            && self.ctx.store.current_fence(&self.job.lock)? != Some(self.record.fence))
    }

    /// The outcome a stop request gives, if the run was stopped.
    pub fn stopped_outcome(&self) -> Option<(Outcome, i32, Option<i32>)> {
        self.control.stopping().map(|s| match s {
            Stop::Signal(sig) => (Outcome::Killed, crate::exit::signal(sig), Some(sig)),
            Stop::Fenced => (Outcome::Fenced, crate::exit::TEMPFAIL, None),
            Stop::Timeout => (Outcome::Timeout, crate::exit::TIMEOUT, None),
            Stop::Oom => (Outcome::Oom, crate::exit::OOM, Some(libc::SIGKILL)),
            Stop::Store => (Outcome::Failure, crate::exit::UNAVAILABLE, None),
        })
    }
}

/// The log of one run (attempt) of `job`.
fn open_log(ctx: &Context, job: &Job, p: &Prepared, record: &RunRecord) -> Result<RunLog> {
    RunLog::create(
        &ctx.global.log_dir,
        &job.name,
        &record.id,
        ctx.global.log_max_bytes,
        p.redactor.clone(),
        p.tz.clone(),
    )
}

pub(crate) fn lock_log(log: &Mutex<RunLog>) -> std::sync::MutexGuard<'_, RunLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn one_attempt(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    mode: AcquireMode,
    control: &Control,
) -> Result<(AttemptResult, Vec<String>)> {
    let log = Mutex::new(open_log(ctx, job, p, record)?);
    let env = attempt_env(ctx, job, p, record);
    let a = Attempt {
        ctx,
        job,
        p,
        record,
        mode,
        control,
        log: &log,
        env,
    };
    a.note(&format!(
        "run {} of job {} attempt {} fence {} on {} pid {}",
        record.id, job.name, record.attempt, record.fence, ctx.me.host, ctx.me.pid
    ));
    let mut result = if control.stopping().is_some() {
        a.note("not started: the run was asked to stop");
        let (outcome, code, signal) = a.stopped_outcome().unwrap_or((Outcome::Killed, 143, None));
        AttemptResult {
            outcome,
            code,
            end: RunEnd {
                signal,
                ..RunEnd::default()
            },
            items_failed: Vec::new(),
        }
    } else {
        match &job.items {
            None => plain(&a)?,
            Some(items) => crate::items::run(&a, items)?,
        }
    };
    // A run whose token moved on before it ended was fenced, whatever its
    // process tree did when it was stopped: its commits were refused from
    // that moment.
    if result.outcome != Outcome::Fenced && a.fence_moved()? {
        result.outcome = Outcome::Fenced;
        result.code = crate::exit::TEMPFAIL;
    }
    let now = clock::now_ms();
    result.end.ended_ms = now;
    result.end.ended_at = clock::rfc3339(now, &p.tz);
    result.end.outcome = result.outcome.as_str().to_string();
    a.note(&format!(
        "run {} ended: {} (exit code {}) after {}{}",
        record.id,
        result.outcome.as_str(),
        result.code,
        clock::human_ms(now - record.started_ms),
        result
            .end
            .peak_memory_bytes
            .map(|b| format!(", peak memory {}", batchguard_config::format_size(b)))
            .unwrap_or_default()
    ));
    drop(a);
    let tail = log.into_inner().unwrap_or_else(|p| p.into_inner()).finish();
    tracing::debug!(
        outcome = result.outcome.as_str(),
        "attempt recorded in the log"
    );
    Ok((result, tail))
}

/// The job's environment plus the BATCHGUARD_* variables of a run.
fn attempt_env(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
) -> Vec<(OsString, OsString)> {
    let mut env = p.env.clone();
    let fence = record.fence.to_string();
    let attempt_no = record.attempt.to_string();
    for (k, v) in [
        ("BATCHGUARD_JOB", job.name.as_str()),
        ("BATCHGUARD_RUN_ID", record.id.as_str()),
        ("BATCHGUARD_FENCE", fence.as_str()),
        ("BATCHGUARD_ATTEMPT", attempt_no.as_str()),
        ("BATCHGUARD_SCOPE", p.scope.as_deref().unwrap_or("")),
        ("BATCHGUARD_LOCK", job.lock.as_str()),
        ("BATCHGUARD_STATE", ctx.state_url.as_str()),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

/// An attempt for a distributed worker (`batchguard worker`): the
/// coordinator's run as `record` (its fence; the id is the worker's own,
/// for its log and cgroup), its own log and control.
pub(crate) fn with_worker_attempt<R>(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    control: &Control,
    f: impl FnOnce(&Attempt<'_>) -> R,
) -> Result<R> {
    let log = Mutex::new(open_log(ctx, job, p, record)?);
    let a = Attempt {
        ctx,
        job,
        p,
        record,
        mode: acquire_mode(job.concurrency),
        control,
        log: &log,
        env: attempt_env(ctx, job, p, record),
    };
    let r = f(&a);
    drop(a);
    let _ = log.into_inner().unwrap_or_else(|p| p.into_inner()).finish();
    Ok(r)
}

/// A job without items: one process tree.
fn plain(a: &Attempt<'_>) -> Result<AttemptResult> {
    let argv = a.render("command", &a.job.command, None)?;
    a.note(&format!("command: {argv:?}"));
    let spec = a.spec(
        &argv,
        CgroupPlacement::Create {
            name: a.record.id.clone(),
        },
    );
    let limits = Limits {
        timeout: a.job.timeout,
        kill_grace: a.job.kill_grace,
        memory_max: a.job.memory_max,
    };
    spawn_and_wait(a, &argv, spec, limits, "")
}

/// Spawn one process tree of the run, log its output (each line prefixed
/// with `prefix`), and turn its end into an attempt result.
pub(crate) fn spawn_and_wait(
    a: &Attempt<'_>,
    argv: &[String],
    spec: Spec,
    limits: Limits,
    prefix: &str,
) -> Result<AttemptResult> {
    match supervise::spawn(spec, limits) {
        Err(e) => Ok(spawn_failed(a, argv, &e)),
        Ok(child) => wait_child(a, child, prefix),
    }
}

/// The attempt result of a command that could not start (127 / 126).
pub(crate) fn spawn_failed(
    a: &Attempt<'_>,
    argv: &[String],
    e: &supervise::SpawnError,
) -> AttemptResult {
    let msg = format!("cannot start `{}` for job `{}`: {e}", argv[0], a.job.name);
    a.note(&msg);
    AttemptResult {
        outcome: Outcome::Failure,
        code: e.exit_code(),
        end: RunEnd {
            error: Some(a.p.redactor.redact(&msg).into_owned()),
            exit_code: Some(e.exit_code()),
            ..RunEnd::default()
        },
        items_failed: Vec::new(),
    }
}

/// Record where a spawned tree lives, wait for it (stoppable through the
/// run's control), and turn its end into an attempt result.
pub(crate) fn wait_child(
    a: &Attempt<'_>,
    child: supervise::Child,
    prefix: &str,
) -> Result<AttemptResult> {
    let mut end = RunEnd::default();
    let cgroup = child.cgroup_path().map(|c| c.display().to_string());
    a.ctx
        .store
        .set_run_process(&a.record.id, Some(child.pgid()), cgroup.as_deref())?;
    let id = a.control.register(child.stop_handle());
    tracing::debug!(pid = child.pid(), "spawned");
    let done = child.wait(|stream, line| log_line(a.log, stream.as_str(), prefix, line));
    a.control.unregister(id);
    tracing::debug!(end = ?done.end, "process tree ended");
    let (outcome, code, exit_code, signal) = outcome::from_end(&done.end);
    end.exit_code = exit_code;
    end.signal = signal;
    end.peak_memory_bytes = done.peak_memory_bytes;
    end.memory_enforcement = Some(done.enforcement.as_str().to_string());
    Ok(AttemptResult {
        outcome,
        code,
        end,
        items_failed: Vec::new(),
    })
}

pub(crate) fn log_line(log: &Mutex<RunLog>, stream: &str, prefix: &str, line: &[u8]) {
    let mut log = lock_log(log);
    if prefix.is_empty() {
        log.line(stream, line);
    } else {
        let mut buf = Vec::with_capacity(prefix.len() + line.len());
        buf.extend_from_slice(prefix.as_bytes());
        buf.extend_from_slice(line);
        log.line(stream, &buf);
    }
}

/// Quiet on success; on anything else, one block on stderr that cron mails
/// and a person can act on: what, where, the last lines and how to re-run.
fn report_failure(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    result: &AttemptResult,
    tail: &[String],
) {
    let (outcome, code) = (result.outcome, result.code);
    let mut msg = format!(
        "batchguard: job `{}` ended {} (exit code {}) on {}, run {}\n",
        job.name,
        outcome.as_str(),
        code,
        ctx.me.host,
        record.id
    );
    if let Some(path) = &record.log_path {
        msg.push_str(&format!("  log: {path}\n"));
    }
    if !result.items_failed.is_empty() {
        msg.push_str(&format!(
            "  failed items (first {}): {}\n",
            result.items_failed.len(),
            result.items_failed.join(", ")
        ));
    }
    if let Some(e) = &result.end.error {
        msg.push_str(&format!("  error: {e}\n"));
    }
    if !std::io::stderr().is_terminal() && !tail.is_empty() {
        msg.push_str("  last lines:\n");
        for line in tail {
            msg.push_str(&format!("    {line}\n"));
        }
    }
    msg.push_str(&format!("  re-run: {}\n", rerun_command(job, p)));
    eprint!("{}", p.redactor.redact(&msg));
}

/// The exact command that re-runs this job with the same params and scope.
fn rerun_command(job: &Job, p: &Prepared) -> String {
    let mut cmd = format!("batchguard run {}", job.name);
    for (k, v) in &p.params {
        cmd.push_str(&format!(" --param {}", shell_quote(&format!("{k}={v}"))));
    }
    if let Some(scope) = &p.scope {
        cmd.push_str(&format!(" --scope {}", shell_quote(scope)));
    }
    cmd
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:=/@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Record as lost every running run whose runner is gone (same machine: its
/// pid; elsewhere: its heartbeat is older than two leases), and notify it
/// when its job's configuration is known (`find_job`). Locks are left alone:
/// the next run that wants one cleans up leftovers first.
pub fn reap_lost(ctx: &Context, find_job: &dyn Fn(&str) -> Option<Job>) -> Result<usize> {
    let now = clock::now_ms();
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let mut n = 0;
    for run in ctx.store.running_runs()? {
        let alive = host::runner_alive(&ctx.me, &run.runner, run.heartbeat_ms + 2 * lease_ms, now);
        if !alive
            && ctx
                .store
                .mark_lost(&run.id, &clock::rfc3339(now, &clock::zone(None)), now)?
        {
            n += 1;
            if let Some(job) = find_job(&run.job) {
                match prepare(&job, &Request::default()) {
                    Ok(p) => notice::lost(ctx, &job, &p, &run),
                    Err(e) => tracing::warn!(error = %e, "cannot notify lost run {}", run.id),
                }
            }
        }
    }
    Ok(n)
}

/// `batchguard notify test JOB`: one test notification through each of the
/// job's channels, delivered directly (not through the outbox), each result
/// printed. Exit 1 if any channel failed or the job has none.
pub fn notify_test(ctx: &Context, job: &Job) -> i32 {
    if job.notify.channels.is_empty() {
        println!(
            "job `{}` has no notification channels: add [notify] channels = [\"...\"] (G08)",
            job.name
        );
        return crate::exit::FAILURE;
    }
    let p = match prepare(job, &Request::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("batchguard: {e}");
            return e.exit_code();
        }
    };
    let record = base_record(ctx, job, &p, "test", 1);
    let end = RunEnd::default();
    let mut payload = notice::payload(
        ctx,
        job,
        &p,
        &record,
        "test",
        Outcome::Failure,
        &end,
        &[],
        &[],
    );
    payload.run_id = None;
    payload.message = format!(
        "Test notification for job {} from {} (batchguard notify test): this is what a failure report will carry.",
        job.name, ctx.me.host
    );
    let json = serde_json::to_string(&payload).unwrap_or_default();
    let mut code = crate::exit::OK;
    for name in &job.notify.channels {
        let kind = ctx
            .global
            .channels
            .get(name)
            .map(|c| c.kind())
            .unwrap_or("?");
        match crate::notify::channel::deliver(&ctx.global, name, &payload.id, "test", &json) {
            Ok(()) => println!("{name} ({kind}): ok"),
            Err(e) => {
                println!("{name} ({kind}): FAILED: {e}");
                code = crate::exit::FAILURE;
            }
        }
    }
    code
}

/// The watchdog found that the fire at `fire` started no run: notify
/// `missed` (the job's channels, if it asked for the event).
pub fn notify_missed(ctx: &Context, job: &Job, fire: &jiff::Zoned) {
    if !crate::notify::wanted(job, "missed") {
        return;
    }
    let p = match prepare(job, &Request::default()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the missed notification of {}", job.name);
            return;
        }
    };
    let mut record = base_record(ctx, job, &p, "-", 1);
    record.started_at = clock::format_zoned(fire);
    record.log_path = None;
    let end = RunEnd::default();
    let mut payload = notice::payload(
        ctx,
        job,
        &p,
        &record,
        "missed",
        Outcome::Failure,
        &end,
        &[],
        &[],
    );
    payload.run_id = None;
    payload.outcome = None;
    payload.message = format!(
        "Job {} was scheduled at {} ({}) on {} but no run started within {}.",
        job.name,
        clock::format_zoned(fire),
        job.schedule.as_deref().unwrap_or("?"),
        ctx.me.host,
        batchguard_config::format_duration(ctx.global.missed_grace)
    );
    let _ = crate::notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, true);
}
