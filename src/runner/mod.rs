//! The runner: one invocation of one job, start to finish. It only
//! orchestrates; the pieces are elsewhere:
//!
//! prepare ([`crate::exec::prepare`]) → replica gate → lock ([`lock`]) →
//! attempts (each one [`crate::exec::Attempt`]: a plain process tree, or
//! the item engine [`crate::items`]) → record → notify ([`notice`]).
//!
//! While the lock is held a heartbeat thread renews its lease (and notices
//! when a newer run took it), and our own TERM/INT/HUP are forwarded to
//! the tree. Retries back off exponentially with jitter while the lock
//! stays held. Whatever happens after the lock is taken (the job fails,
//! batchguard fails inside an attempt, a signal arrives between retries),
//! the last attempt is recorded, the lock released and the outcome
//! notified: [`Run::conclude`] is the one exit of the attempts loop.

mod lock;
mod notice;
mod spool;

pub use notice::{notify_missed, notify_test};

use crate::clock;
use crate::error::{Error, Result};
use crate::exec::{
    self, Attempt, AttemptResult, Context, Control, Prepared, Request, Stop, acquire_mode,
    new_run_id, prepare, rerun_command,
};
use crate::host;
use crate::logs;
use crate::outcome::Outcome;
use crate::store::{AcquireMode, RunEnd, RunRecord};
use batchguard_config::Job;
use batchguard_supervise::{self as supervise, CgroupPlacement};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// The result of `batchguard run`.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub run_id: String,
}

impl Report {
    pub fn exit_code(&self) -> i32 {
        self.outcome.exit_code()
    }
}

fn base_record(ctx: &Context, job: &Job, p: &Prepared, run_id: &str, attempt: u32) -> RunRecord {
    let now = clock::now_ms();
    let started_at = clock::rfc3339(now, &p.tz);
    let log = logs::log_path(&ctx.global.log_dir, &job.name, run_id);
    RunRecord {
        attempt,
        scope: p.scope.clone(),
        log_path: Some(log.display().to_string()),
        memory_max_bytes: job.memory_max,
        adhoc: ctx.invocation.exec.is_some(),
        rerun: Some(rerun_command(ctx, job, p)),
        // A param whose value is a secret is recorded as `***` (SPEC §4).
        params: p
            .params
            .iter()
            .map(|(k, v)| (k.clone(), p.redactor.redact(v).into_owned()))
            .collect(),
        // Known before the spawn: a runner killed right after spawning
        // still leaves the way to its tree in the record.
        cgroup: supervise::planned_cgroup(run_id, supervise::detect())
            .map(|p| p.display().to_string()),
        ..RunRecord::running(run_id, &job.name, &job.lock, &ctx.me, now, started_at)
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

/// Record the outcomes kept in the local spool (see [`spool`]); `run`
/// calls it before taking its lock.
pub fn replay_spool(ctx: &Context, find_job: &dyn Fn(&str) -> Option<Job>) -> usize {
    spool::replay(ctx, find_job)
}

/// Run `job` under full supervision and record what happened.
pub fn run(ctx: &Context, job: &Job, req: &Request) -> Result<Report> {
    let p = prepare(job, req, &ctx.global)?;
    tracing::debug!(job = %job.name, "prepared");
    let mode = acquire_mode(job.concurrency);
    let first = base_record(ctx, job, &p, &new_run_id(), 1);
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
    control.set_current_run(&first.id);
    let run = Run {
        ctx,
        job,
        p: &p,
        fence,
        mode,
        control: &control,
    };
    run.supervised(first)
}

/// A run that holds its lock (or, for `allow`, its token).
struct Run<'a> {
    ctx: &'a Context,
    job: &'a Job,
    p: &'a Prepared,
    fence: i64,
    mode: AcquireMode,
    control: &'a Control,
}

impl Run<'_> {
    /// The attempts, with the signal forwarder, the heartbeat and the start
    /// ping around them.
    fn supervised(&self, first: RunRecord) -> Result<Report> {
        let (sig_tx, sig_rx) = mpsc::channel::<i32>();
        let (hb_stop_tx, hb_stop_rx) = mpsc::channel::<()>();
        let signals = match signal_hook::iterator::Signals::new([
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
        ]) {
            Ok(s) => s,
            Err(e) => {
                let e = Error::io("install signal handlers for", "batchguard", e);
                let result = internal_failure(self.p, &e);
                return self.give_up(first, result);
            }
        };
        let signals_handle = signals.handle();
        let publish = crate::publish::Service::bind(&first.id, self.p.run_as.as_ref())
            .inspect_err(|e| tracing::warn!(error = %e, "no publish socket for this run"))
            .ok();
        let grant = crate::publish::Grant {
            store: self.ctx.store.as_ref(),
            lock: &self.job.lock,
            fence: self.fence,
            run_as: self.p.run_as.as_ref(),
        };
        let (publish, grant) = (&publish, &grant);
        let signals = Mutex::new(Some(signals));
        let hb_stop_rx = Mutex::new(Some(hb_stop_rx));
        let started = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The helpers: one thread forwards our signals to the job, one
            // renews the lease and, between two renewals, answers the job's
            // publish requests. They start 100 ms into the child's wait (or
            // before whatever else needs them: items, an overrun to watch,
            // a retry's wait): a job that ends sooner never pays for two
            // threads, and a signal that comes meanwhile waits in
            // signal-hook's pipe until the forwarder starts.
            let start = || {
                if started.swap(true, Ordering::SeqCst) {
                    return;
                }
                tracing::debug!("helper threads started");
                if let Some(mut signals) = take(&signals) {
                    let sig_tx = sig_tx.clone();
                    s.spawn(move || {
                        for sig in signals.forever() {
                            self.control.on_signal(sig);
                            let _ = sig_tx.send(sig);
                        }
                    });
                }
                match publish {
                    Some(service) => {
                        s.spawn(move || heartbeat_loop(self, |d| service.serve_for(grant, d)));
                    }
                    None => {
                        if let Some(rx) = take(&hb_stop_rx) {
                            s.spawn(move || {
                                heartbeat_loop(self, |d| {
                                    matches!(
                                        rx.recv_timeout(d),
                                        Err(mpsc::RecvTimeoutError::Timeout)
                                    )
                                })
                            });
                        }
                    }
                }
            };
            // Only jobs with a ping channel pay for the thread.
            if notice::has_ping_channel(self.ctx, self.job) {
                s.spawn(|| notice::ping_start(self.ctx, self.job, &first.id));
            }
            // An overrun is noticed within a tenth of the expected
            // duration, counted from the run's start: the renewal thread
            // watches from the start.
            if self.job.expected_duration.is_some() {
                start();
            }
            let socket = publish.as_ref().map(|s| s.path());
            let report = self.attempts(first.clone(), &sig_rx, socket, &start);
            if started.load(Ordering::SeqCst) {
                let _ = hb_stop_tx.send(());
                signals_handle.close();
                if let Some(service) = publish {
                    service.stop();
                }
            } else {
                // The renewal thread's first task, done here instead.
                prune_logs(self);
            }
            report
        })
    }

    /// Attempt, and retry while the outcome is retryable, `retries` allows
    /// and no signal came. Every path ends in [`Run::conclude`].
    fn attempts(
        &self,
        first: RunRecord,
        sig_rx: &mpsc::Receiver<i32>,
        publish: Option<&std::path::Path>,
        helpers: &(dyn Fn() + Sync),
    ) -> Result<Report> {
        let mut record = first;
        let mut attempt = 1u32;
        loop {
            record.fence = self.fence;
            let (result, tail) = self.one_attempt(&record, publish, helpers);
            let outcome = result.outcome;
            let retry =
                outcome.retryable() && attempt <= self.job.retries && !self.control.signalled();
            if !retry {
                return self.conclude(record, result, tail, true);
            }
            self.record_end(&record, &result, false);
            let delay = backoff(self.job.retry_delay, attempt);
            tracing::info!(job = %self.job.name, attempt, "attempt failed ({}); retrying in {:?}", outcome.as_str(), delay);
            // The wait below must hear our signals and keep the lease.
            helpers();
            if sig_rx.recv_timeout(delay).is_ok() {
                // A signal between attempts ends the run with the last
                // attempt's outcome, reported like any other end.
                return self.conclude(record, result, tail, false);
            }
            attempt += 1;
            match self.next_record(attempt) {
                Ok(next) => record = next,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start attempt {attempt}");
                    return self.conclude(record, result, tail, false);
                }
            }
        }
    }

    fn next_record(&self, attempt: u32) -> Result<RunRecord> {
        let mut record = base_record(self.ctx, self.job, self.p, &new_run_id(), attempt);
        record.fence = self.fence;
        self.ctx.store.insert_run(&record)?;
        self.control.set_current_run(&record.id);
        Ok(record)
    }

    /// The end of the run: the last attempt recorded (and, with
    /// `record_now`, its end written, the lock released in the same
    /// transaction), the lock released in any case, the failure reported
    /// on stderr and the outcome notified.
    fn conclude(
        &self,
        record: RunRecord,
        result: AttemptResult,
        tail: Vec<String>,
        record_now: bool,
    ) -> Result<Report> {
        let mut spooled = None;
        if record_now && !self.record_end(&record, &result, true) {
            spooled = self.spool(&record, &result, &tail);
        } else if !record_now {
            self.release();
        }
        let told = match &spooled {
            // The replay of the entry notifies, once the store works again.
            Some(_) => notice::Told::NotStored,
            None => notice::run_ended(
                self.ctx,
                self.job,
                self.p,
                &record,
                result.outcome,
                &result.end,
                &tail,
                &result.items_failed,
            ),
        };
        // Cron mails stderr: it follows the noise policy (SPEC §7).
        if (!result.outcome.is_success() && told != notice::Told::Suppressed) || spooled.is_some() {
            report_failure(self.ctx, self.job, self.p, &record, &result, &tail);
        }
        if let Some(path) = &spooled {
            eprintln!(
                "batchguard: the end of run {} could not be recorded (the state store failed); \
                 kept in {} for the next batchguard invocation to record and notify",
                record.id,
                path.display()
            );
        }
        Ok(Report {
            outcome: result.outcome,
            run_id: record.id,
        })
    }

    /// The store would not take the run's end: keep it in the local spool
    /// (with the lock to release), so it is recorded and notified later.
    fn spool(
        &self,
        record: &RunRecord,
        result: &AttemptResult,
        tail: &[String],
    ) -> Option<std::path::PathBuf> {
        let release =
            (self.mode != AcquireMode::TokenOnly).then_some((self.job.lock.as_str(), self.fence));
        let entry = spool::Entry::from_end(
            &self.ctx.state_url,
            &self.job.name,
            &record.id,
            release,
            &result.end,
            &result.items_failed,
            tail,
        );
        let path = spool::write(&self.ctx.state_url, &entry);
        if path.is_none() {
            tracing::error!(run = %record.id, "the run's end could be neither recorded nor spooled");
        }
        path
    }

    /// A run that could not even attempt: record why and end it.
    fn give_up(&self, record: RunRecord, mut result: AttemptResult) -> Result<Report> {
        let now = clock::now_ms();
        result.end.ended_ms = now;
        result.end.ended_at = clock::rfc3339(now, &self.p.tz);
        result.end.outcome = result.outcome.as_str().to_string();
        self.conclude(record, result, Vec::new(), true)
    }

    /// Write the attempt's end (releasing the lock with it when `last`).
    /// `false` when the store refused it.
    fn record_end(&self, record: &RunRecord, result: &AttemptResult, last: bool) -> bool {
        let release = (last && self.mode != AcquireMode::TokenOnly)
            .then_some((self.job.lock.as_str(), self.fence));
        let store = self.ctx.store.as_ref();
        let written = (|| {
            if !result.items_failed.is_empty() {
                store.set_run_failed_items(&record.id, &result.items_failed)?;
            }
            store.finish_run(&record.id, release, &result.end)
        })();
        match written {
            Ok(()) => {
                tracing::debug!(run = %record.id, "run recorded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, run = %record.id, "cannot record the end of the run");
                false
            }
        }
    }

    fn release(&self) {
        if self.mode == AcquireMode::TokenOnly {
            return;
        }
        if let Err(e) = self.ctx.store.release_lock(&self.job.lock, self.fence) {
            tracing::warn!(error = %e, "cannot release lock `{}`; it expires with its lease", self.job.lock);
        }
    }

    /// One attempt, start to end. Never fails: a failure inside batchguard
    /// becomes the attempt's `failure` outcome with the error as its
    /// message (SPEC §11).
    fn one_attempt(
        &self,
        record: &RunRecord,
        publish: Option<&std::path::Path>,
        helpers: &(dyn Fn() + Sync),
    ) -> (AttemptResult, Vec<String>) {
        let log = match exec::open_attempt_log(&self.ctx.global, self.job, self.p, record) {
            Ok(log) => log,
            Err(e) => return (self.ended(internal_failure(self.p, &e)), Vec::new()),
        };
        let a = Attempt::new(
            self.ctx.store.as_ref(),
            publish,
            self.job,
            self.p,
            record,
            self.mode,
            self.control,
            log,
        )
        .with_helpers(helpers);
        a.note(&format!(
            "run {} of job {} attempt {} fence {} on {} pid {}",
            record.id,
            self.job.name,
            record.attempt,
            record.fence,
            self.ctx.me.host,
            self.ctx.me.pid
        ));
        if let Some(user) = &self.p.already_user {
            a.note(&format!(
                "already running as user {user}: no privilege switch; without root (or a delegated cgroup) memory_max is enforced by polling. Let cron start batchguard as root (docs/install.md)"
            ));
        }
        let result = self.body(&a).unwrap_or_else(|e| {
            a.note(&format!("batchguard failed inside the attempt: {e}"));
            internal_failure(self.p, &e)
        });
        // The end is the job's: stamped before anything waits for the store.
        let mut result = self.ended(result);
        // A run whose token moved on before it ended was fenced, whatever
        // its process tree did when it was stopped: its commits were
        // refused from that moment.
        match a.fence_moved() {
            Ok(true) if result.outcome != Outcome::Fenced => {
                result.outcome = Outcome::Fenced;
                result.end.outcome = result.outcome.as_str().to_string();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the fence at the end"),
        }
        if let Some(cut) = a.log_cut() {
            result.end.error.get_or_insert(cut);
        }
        a.note(&format!(
            "run {} ended: {} (exit code {}) after {}{}",
            record.id,
            result.outcome.as_str(),
            result.outcome.exit_code(),
            clock::human_ms(result.end.ended_ms - record.started_ms),
            result
                .end
                .peak_memory_bytes
                .map(|b| format!(", peak memory {}", batchguard_config::format_size(b)))
                .unwrap_or_default()
        ));
        (result, a.finish())
    }

    /// Stamp the end time and outcome on a result.
    fn ended(&self, mut result: AttemptResult) -> AttemptResult {
        let now = clock::now_ms();
        result.end.ended_ms = now;
        result.end.ended_at = clock::rfc3339(now, &self.p.tz);
        result.end.outcome = result.outcome.as_str().to_string();
        result
    }

    /// What the attempt runs: nothing when the run is already stopping, a
    /// plain process tree, or the item engine.
    fn body(&self, a: &Attempt<'_>) -> Result<AttemptResult> {
        if let Some(outcome) = a.stopped_outcome() {
            a.note("not started: the run was asked to stop");
            let end = RunEnd {
                signal: outcome.signal(),
                ..RunEnd::default()
            };
            return Ok(AttemptResult::new(outcome, end));
        }
        match &self.job.items {
            None => plain(a),
            Some(items) => crate::items::run(a, items),
        }
    }
}

/// The result of an attempt that failed inside batchguard.
fn internal_failure(p: &Prepared, e: &Error) -> AttemptResult {
    AttemptResult::failed(
        Outcome::failure(e.exit_code()),
        p.redactor.redact(&e.to_string()).into_owned(),
        RunEnd::default(),
    )
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
    a.spawn_and_wait(&argv, spec, a.run_limits())
}

/// Delete the job's run logs older than `log_retention` (SPEC §1).
fn prune_logs(run: &Run<'_>) {
    let (ctx, job) = (run.ctx, run.job);
    if let Err(e) = logs::prune(
        ctx.store.as_ref(),
        &ctx.global.log_dir,
        &job.name,
        ctx.global.log_retention.as_millis() as i64,
    ) {
        tracing::warn!(error = %e, "log retention failed");
    }
}

/// Take what a mutex holds (once).
fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Prune the job's expired logs, then renew the lease until told to stop;
/// a lease that moved on stops the run (`fenced`); an overrun is notified
/// once per attempt. `wait(d)` passes `d` between two renewals (serving
/// the publish socket, or just waiting) and says `false` once the run is
/// over.
fn heartbeat_loop(run: &Run<'_>, mut wait: impl FnMut(Duration) -> bool) {
    let Run {
        ctx,
        job,
        p,
        fence,
        mode,
        control,
    } = *run;
    // Log retention is done while the job runs, off the path from the
    // job's end to the runner's exit.
    prune_logs(run);
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let mut interval =
        (ctx.global.lease / 6).clamp(Duration::from_millis(500), Duration::from_secs(10));
    if let Some(expected) = job.expected_duration {
        // Notice an overrun within a tenth of the expected duration.
        interval = interval.min((expected / 10).max(Duration::from_millis(100)));
    }
    let mut overrun_sent: Option<String> = None;
    loop {
        if !wait(interval) {
            return;
        }
        let run_id = control.current_run();
        let now = clock::now_ms();
        match ctx.store.heartbeat(&crate::store::Heartbeat {
            lock: &job.lock,
            fence,
            run_id: &run_id,
            now_ms: now,
            lease_ms,
        }) {
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
    let (outcome, code) = (result.outcome, result.outcome.exit_code());
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
            msg.push_str(&format!("    {}\n", crate::sanitize::printable(line)));
        }
    }
    msg.push_str(&format!("  re-run: {}\n", rerun_command(ctx, job, p)));
    eprint!("{}", p.redactor.redact(&msg));
}

/// Record as lost every running run whose runner is gone (same machine:
/// its pid; elsewhere: its heartbeat is older than two leases), and notify
/// it when its job's configuration is known (`find_job`). A lost run whose
/// process tree still runs on this machine stays `running` until its
/// job's `timeout` has passed; then its leftovers are stopped and it is
/// recorded lost (SPEC §9). Locks are left alone: the next run that wants
/// one cleans up first.
pub fn reap_lost(ctx: &Context, find_job: &dyn Fn(&str) -> Option<Job>) -> Result<usize> {
    // Outcomes kept in the spool are real ends, not losses: record them
    // first.
    spool::replay(ctx, find_job);
    let now = clock::now_ms();
    let lease_ms = ctx.global.lease.as_millis() as i64;
    let mut n = 0;
    for run in ctx.store.running_runs()? {
        let alive = host::runner_alive(&ctx.me, &run.runner, run.heartbeat_ms + 2 * lease_ms, now);
        if alive {
            continue;
        }
        let job = find_job(&run.job);
        if host::same_machine(&ctx.me, &run.runner) && !stop_orphans(&run, job.as_ref(), now) {
            continue;
        }
        if ctx
            .store
            .mark_lost(&run.id, &clock::rfc3339(now, &clock::zone(None)), now)?
        {
            n += 1;
            if let Some(job) = job {
                match prepare(&job, &Request::default(), &ctx.global) {
                    Ok(p) => notice::lost(ctx, &job, &p, &run),
                    Err(e) => tracing::warn!(error = %e, "cannot notify lost run {}", run.id),
                }
            }
        }
    }
    Ok(n)
}

/// The orphaned tree of a lost run on this machine: `true` when it is gone
/// (or was stopped now because the job's `timeout` has passed), `false`
/// while it may still run.
fn stop_orphans(run: &RunRecord, job: Option<&Job>, now_ms: i64) -> bool {
    let (cgroup, pgid) = lock::verified_tree(&run.id, run.cgroup.as_deref(), run.pgid);
    if !supervise::tree_alive(cgroup.as_deref(), pgid) {
        return true;
    }
    let Some(timeout) = job.and_then(|j| j.timeout) else {
        return false;
    };
    if now_ms < run.started_ms + timeout.as_millis() as i64 {
        return false;
    }
    let grace = job.map_or(Duration::from_secs(10), |j| j.kill_grace);
    tracing::warn!(run = %run.id, "the runner of run {} died and its timeout has passed: stopping what it left", run.id);
    supervise::kill_leftovers(cgroup.as_deref(), pgid, grace);
    !supervise::tree_alive(cgroup.as_deref(), pgid)
}
