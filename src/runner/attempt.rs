//! One attempt of a run: its log, its environment, the process tree(s) it
//! spawns under supervision, and how they ended.

use crate::clock;
use crate::error::{Error, Result};
use crate::logs::RunLog;
use crate::outcome::{self, Outcome};
use crate::store::{AcquireMode, RunEnd, RunRecord};
use batchguard_config::{Job, template};
use batchguard_supervise::{self as supervise, CgroupPlacement, Limits, Spec};
use std::ffi::OsString;
use std::sync::Mutex;

use super::{Context, Control, Prepared, Stop, acquire_mode, builtin};

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
pub(crate) fn open_log(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
) -> Result<RunLog> {
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

pub(crate) fn one_attempt(
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
pub(crate) fn attempt_env(
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
pub(crate) fn plain(a: &Attempt<'_>) -> Result<AttemptResult> {
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
