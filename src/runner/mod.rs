//! The runner: one invocation of one job, start to finish.
//!
//! Resolve params and templates, build the environment (env_file values
//! become secrets), take the lock and a fencing token, then for each attempt
//! create the run record and log, spawn the process tree under supervision,
//! keep the lease alive from a heartbeat thread (which also notices when a
//! newer run took the lock), forward our own TERM/INT/HUP to the tree, and
//! record how it ended. Retries back off exponentially with jitter while the
//! lock stays held.

mod attempt;
mod control;
mod lock;
mod notice;
mod prepare;

use attempt::one_attempt;
pub(crate) use attempt::{
    Attempt, AttemptResult, log_line, spawn_failed, wait_child, with_worker_attempt,
};
pub(crate) use control::{Control, Stop};
pub(crate) use prepare::{Prepared, builtin, prepare, rerun_command};

use crate::clock;
use crate::error::{Error, Result};
use crate::host;
use crate::logs;
use crate::outcome::Outcome;
use crate::store::{AcquireMode, RunEnd, RunRecord, RunnerIdentity, Store};
use batchguard_config::{Concurrency, Global, Job};
use batchguard_supervise as supervise;
use std::io::IsTerminal;
use std::sync::mpsc;
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

pub(crate) fn acquire_mode(c: Concurrency) -> AcquireMode {
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
        // Known before the spawn: a runner killed right after spawning
        // still leaves the way to its tree in the record.
        cgroup: supervise::planned_cgroup(run_id, supervise::detect())
            .map(|p| p.display().to_string()),
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
    // metrics textfile (SPEC §10)
    crate::serve::after_run(ctx);
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
        // Only jobs with a ping channel pay for the thread.
        if notice::has_ping_channel(ctx, job) {
            s.spawn(|| notice::ping_start(ctx, job, &run_id));
        }
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
    // metrics textfile (SPEC §10)
    crate::serve::after_run(ctx);
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
