//! The execution layer: what every run, item and worker stands on, below
//! the runner's orchestration and the item engine.
//!
//! - [`Context`]: the application (the store, the global settings, who we
//!   are), built once per invocation by the CLI;
//! - [`prepare`]: everything about a job that does not change between its
//!   attempts (params, scope, environment, user, re-run command);
//! - [`Attempt`]: the context of one attempt (its record, log, environment
//!   and control), with no way back to the whole application;
//! - [`Control`] / [`Stop`]: stopping a run's process trees from any thread;
//! - spawning one process tree and turning its end into an
//!   [`AttemptResult`] carrying an [`Outcome`].
//!
//! This layer knows nothing of locks policy, retries or notifications
//! (the runner) nor of keys and ledgers (the items engine).

mod attempt;
mod control;
mod prepare;

pub(crate) use attempt::{Attempt, AttemptResult, open_attempt_log};
pub use control::{Control, Stop};
pub(crate) use prepare::{Prepared, builtin, prepare, rerun_command, shell_quote};

use crate::store::{AcquireMode, RunnerIdentity, Store};
use batchguard_config::{Concurrency, Global};

/// What every command that touches runs needs.
pub struct Context {
    pub store: Box<dyn Store>,
    pub state_url: String,
    pub global: Global,
    pub me: RunnerIdentity,
    /// How this invocation was called, for the exact re-run command.
    pub invocation: Invocation,
}

/// What the re-run command must repeat of this invocation (SPEC §4).
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `--config-dir`, when not the default.
    pub config_dir: Option<std::path::PathBuf>,
    /// `run --file PATH`.
    pub file: Option<std::path::PathBuf>,
    /// An `exec` run: its arguments after `exec`.
    pub exec: Option<Vec<String>>,
    /// A read command (`status`, `runs`, `show`): what it records (lost
    /// runs, spooled outcomes) is notified through the outbox, delivered
    /// by the next run or the watchdog, never by someone looking.
    pub read_only: bool,
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

/// A new run id (a ULID: sortable by start time).
pub fn new_run_id() -> String {
    crate::id::new_ulid()
}

/// How a job's `concurrency` takes its lock.
pub(crate) fn acquire_mode(c: Concurrency) -> AcquireMode {
    match c {
        Concurrency::Forbid => AcquireMode::IfFree,
        Concurrency::Replace => AcquireMode::Replace,
        Concurrency::Allow => AcquireMode::TokenOnly,
    }
}
