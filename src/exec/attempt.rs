//! The context of one attempt (its record, log, environment and control)
//! and the two primitives every mode builds on: spawn one process tree of
//! the attempt, and wait for it, logging its output, into an
//! [`AttemptResult`].

use crate::error::Result;
use crate::logs::RunLog;
use crate::outcome::Outcome;
use crate::store::{AcquireMode, RunEnd, RunRecord, Store};
use batchguard_config::{Global, Job, template};
use batchguard_supervise::{self as supervise, CgroupPlacement, Limits, Spec};
use std::ffi::OsString;
use std::sync::Mutex;

use super::prepare::{builtin, template_error};
use super::{Control, Prepared, Stop};

/// How long a child runs before its run's helpers start (see
/// [`Attempt::start_helpers`]): long enough that a job straddling it is a
/// rare job, short enough that a signal or a publish request waits for it
/// unnoticed.
const HELPERS_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// What one attempt needs, whatever kind of job it runs. It holds the
/// store and this attempt's pieces, never the whole application.
pub(crate) struct Attempt<'a> {
    pub store: &'a dyn Store,
    pub job: &'a Job,
    pub p: &'a Prepared,
    pub record: &'a RunRecord,
    pub mode: AcquireMode,
    pub control: &'a Control,
    pub log: Mutex<RunLog>,
    /// The job's environment including the BATCHGUARD_* variables.
    pub env: Vec<(OsString, OsString)>,
    /// Starts the run's helpers (the signal forwarder, the lease renewal
    /// and the publish socket's server) if they are not running yet: a
    /// child that ends within [`HELPERS_AFTER`] never needs them.
    helpers: Option<&'a (dyn Fn() + Sync)>,
}

/// How an attempt ended.
pub(crate) struct AttemptResult {
    pub outcome: Outcome,
    pub end: RunEnd,
    pub items_failed: Vec<String>,
}

impl AttemptResult {
    pub fn new(outcome: Outcome, end: RunEnd) -> AttemptResult {
        AttemptResult {
            outcome,
            end,
            items_failed: Vec::new(),
        }
    }

    /// A failure of batchguard or of the job's setup: the message is the
    /// run's `error`.
    pub fn failed(outcome: Outcome, error: String, end: RunEnd) -> AttemptResult {
        AttemptResult::new(
            outcome,
            RunEnd {
                error: Some(error),
                ..end
            },
        )
    }
}

/// The log of one attempt of `job`.
pub(crate) fn open_attempt_log(
    global: &Global,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
) -> Result<RunLog> {
    RunLog::create(
        &global.log_dir,
        &job.name,
        &record.id,
        global.log_max_bytes,
        p.redactor.clone(),
        p.tz.clone(),
    )
}

impl<'a> Attempt<'a> {
    /// An attempt of `record` writing to `log`; `publish` is the run's
    /// publish socket, handed to the job.
    #[expect(clippy::too_many_arguments, reason = "the attempt's parts, named")]
    pub fn new(
        store: &'a dyn Store,
        publish: Option<&std::path::Path>,
        job: &'a Job,
        p: &'a Prepared,
        record: &'a RunRecord,
        mode: AcquireMode,
        control: &'a Control,
        log: RunLog,
    ) -> Attempt<'a> {
        Attempt {
            store,
            job,
            p,
            record,
            mode,
            control,
            log: Mutex::new(log),
            env: attempt_env(publish, job, p, record),
            helpers: None,
        }
    }

    /// The attempt of a run whose helpers `start` starts (see
    /// [`Attempt::start_helpers`]).
    pub fn with_helpers(self, start: &'a (dyn Fn() + Sync)) -> Attempt<'a> {
        Attempt {
            helpers: Some(start),
            ..self
        }
    }

    /// Make sure the run's helpers run (a no-op once they do).
    pub fn start_helpers(&self) {
        if let Some(start) = self.helpers {
            start();
        }
    }

    /// Close the log; returns its last lines (for reports).
    pub fn finish(self) -> Vec<String> {
        self.log
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finish()
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, RunLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the log stopped growing before its end (the free-space floor).
    pub fn log_cut(&self) -> Option<String> {
        self.lock_log().cut().map(str::to_string)
    }

    /// A line of batchguard's own in the run's log.
    pub fn note(&self, text: &str) {
        self.lock_log().note(text);
    }

    /// A line of a process's output, each prefixed with `prefix`.
    pub fn log_line(&self, stream: &str, prefix: &str, line: &[u8]) {
        let mut log = self.lock_log();
        if prefix.is_empty() {
            log.line(stream, line);
        } else {
            let mut buf = Vec::with_capacity(prefix.len() + line.len());
            buf.extend_from_slice(prefix.as_bytes());
            buf.extend_from_slice(line);
            log.line(stream, &buf);
        }
    }

    /// Render templates of this job for this run (`item` for per-item).
    pub fn render(
        &self,
        what: &str,
        templates: &[String],
        item: Option<&str>,
    ) -> Result<Vec<String>> {
        templates
            .iter()
            .map(|t| {
                template::render(t, &|n| match (n, item) {
                    ("item", Some(k)) => Some(k.to_string()),
                    _ => builtin(self.job, &self.record.id, self.p, n),
                })
                .map_err(|e| template_error(self.job, what, t, e))
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

    /// The job's own limits, for a process tree that is the whole run.
    pub fn run_limits(&self) -> Limits {
        Limits {
            timeout: self.job.timeout,
            kill_grace: self.job.kill_grace,
            memory_max: self.job.memory_max,
        }
    }

    /// Has the token moved on (and this job has an exclusive lock)?
    pub fn fence_moved(&self) -> Result<bool> {
        Ok(self.mode != AcquireMode::TokenOnly
            && self.store.current_fence(&self.job.lock)? != Some(self.record.fence))
    }

    /// The outcome a stop request gives, if the run was stopped.
    pub fn stopped_outcome(&self) -> Option<Outcome> {
        self.control.stopping().map(|s| match s {
            Stop::Signal(signal) => Outcome::Killed { signal },
            Stop::Fenced => Outcome::Fenced,
            Stop::Timeout => Outcome::Timeout,
            Stop::Oom => Outcome::Oom,
            Stop::Store => Outcome::failure(crate::exit::UNAVAILABLE),
        })
    }

    /// Spawn one process tree of the run and wait for it.
    pub fn spawn_and_wait(
        &self,
        argv: &[String],
        spec: Spec,
        limits: Limits,
    ) -> Result<AttemptResult> {
        match supervise::spawn(spec, limits) {
            Err(e) => Ok(self.spawn_failed(argv, &e)),
            Ok(child) => self.wait_child(child, ""),
        }
    }

    /// The attempt result of a command that could not start (127 / 126).
    pub fn spawn_failed(&self, argv: &[String], e: &supervise::SpawnError) -> AttemptResult {
        let msg = format!(
            "cannot start `{}` for job `{}`: {e}",
            argv[0], self.job.name
        );
        self.note(&msg);
        AttemptResult::failed(
            Outcome::failure(e.exit_code()),
            self.p.redactor.redact(&msg).into_owned(),
            RunEnd {
                exit_code: Some(e.exit_code()),
                ..RunEnd::default()
            },
        )
    }

    /// Record where a spawned tree lives, wait for it (stoppable through
    /// the run's control), and turn its end into an attempt result.
    pub fn wait_child(&self, child: supervise::Child, prefix: &str) -> Result<AttemptResult> {
        let cgroup = child.cgroup_path().map(|c| c.display().to_string());
        let pgid = child.pgid();
        let record_process = || {
            self.store
                .set_run_process(&self.record.id, Some(pgid), cgroup.as_deref())
        };
        // A tree in the cgroup the run's record already names (it was
        // planned before the spawn) is found through that cgroup should the
        // runner die: its process group, a second way to it, is recorded
        // when the job lasts (with the helpers), so a job that ends sooner
        // costs no write transaction here. Any other tree is recorded now.
        let in_recorded_cgroup = cgroup.is_some() && cgroup == self.record.cgroup;
        if !in_recorded_cgroup {
            record_process()?;
        }
        let id = self.control.register(child.stop_handle());
        tracing::debug!(pid = child.pid(), "spawned");
        let done = child.wait_then(
            |stream, line| self.log_line(stream.as_str(), prefix, line),
            HELPERS_AFTER,
            || {
                if in_recorded_cgroup {
                    if let Err(e) = record_process() {
                        tracing::warn!(error = %e, "cannot record the job's process group; its cgroup is recorded");
                    }
                }
                self.start_helpers()
            },
        );
        self.control.unregister(id);
        tracing::debug!(end = ?done.end, "process tree ended");
        let (outcome, exit_code) = Outcome::from_end(&done.end);
        Ok(AttemptResult::new(
            outcome,
            RunEnd {
                exit_code,
                signal: outcome.signal(),
                peak_memory_bytes: done.peak_memory_bytes,
                memory_enforcement: Some(done.enforcement.as_str().to_string()),
                ..RunEnd::default()
            },
        ))
    }
}

/// The job's environment plus the BATCHGUARD_* variables of a run (never
/// the state store's URL: the job asks the runner, SPEC §4).
fn attempt_env(
    publish: Option<&std::path::Path>,
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
    ] {
        env.push((k.into(), v.into()));
    }
    if let Some(path) = publish {
        env.push((crate::publish::SOCKET_VAR.into(), path.into()));
    }
    env
}
