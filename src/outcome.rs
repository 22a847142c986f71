//! How a run ended, in the SPEC's words, and the exit code `batchguard run`
//! returns for it.

use crate::exit;
use batchguard_supervise::{End, StopReason};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Timeout,
    Oom,
    Killed,
    Fenced,
    Skipped,
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Killed => "killed",
            Outcome::Fenced => "fenced",
            Outcome::Skipped => "skipped",
            Outcome::Lost => "lost",
        }
    }

    /// Worth another attempt under `retries`.
    pub fn retryable(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::Timeout | Outcome::Oom)
    }
}

/// The outcome of a finished process tree: (outcome, exit code of
/// `batchguard run`, the job's own exit code, the signal that ended it).
pub fn from_end(end: &End) -> (Outcome, i32, Option<i32>, Option<i32>) {
    match *end {
        End::Exited(0) => (Outcome::Success, exit::OK, Some(0), None),
        End::Exited(code) => (Outcome::Failure, code, Some(code), None),
        End::Signaled(sig) => (Outcome::Killed, exit::signal(sig), None, Some(sig)),
        End::TimedOut => (Outcome::Timeout, exit::TIMEOUT, None, None),
        End::OutOfMemory => (Outcome::Oom, exit::OOM, None, Some(libc::SIGKILL)),
        End::Stopped(StopReason::Fenced) => (Outcome::Fenced, exit::TEMPFAIL, None, None),
        End::Stopped(StopReason::Signal(sig)) => {
            (Outcome::Killed, exit::signal(sig), None, Some(sig))
        }
        End::Stopped(StopReason::Requested) => (
            Outcome::Killed,
            exit::signal(libc::SIGTERM),
            None,
            Some(libc::SIGTERM),
        ),
    }
}
