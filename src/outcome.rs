//! How a run ended, in the SPEC's words (§4), carrying what the words need
//! (the job's exit code, the signal), and the one mapping from an outcome
//! to the exit code of `batchguard run` ([`Outcome::exit_code`]). With
//! [`crate::error::Error::exit_code`] it is the only place that decides an
//! exit code; the numbers themselves are the constants in [`crate::exit`].

use crate::exit;
use batchguard_supervise::{End, StopReason};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A non-zero exit of the job (its code), failed items (1), a command
    /// that could not start (126/127), or a failure inside batchguard (the
    /// error's code).
    Failure {
        code: i32,
    },
    Timeout,
    Oom,
    /// Ended by a signal from outside.
    Killed {
        signal: i32,
    },
    Fenced,
    Skipped,
    Lost,
}

impl Outcome {
    /// `failure` with the exit code batchguard returns for it.
    pub fn failure(code: i32) -> Outcome {
        Outcome::Failure { code }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure { .. } => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Killed { .. } => "killed",
            Outcome::Fenced => "fenced",
            Outcome::Skipped => "skipped",
            Outcome::Lost => "lost",
        }
    }

    /// The exit code of `batchguard run` for this outcome (SPEC §4 table).
    /// `lost` is only ever recorded later, never returned; it maps to 1.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => exit::OK,
            Outcome::Failure { code } => code,
            Outcome::Timeout => exit::TIMEOUT,
            Outcome::Oom => exit::OOM,
            Outcome::Killed { signal } => exit::signal(signal),
            Outcome::Fenced | Outcome::Skipped => exit::TEMPFAIL,
            Outcome::Lost => exit::FAILURE,
        }
    }

    /// The signal that ended the run, as recorded.
    pub fn signal(self) -> Option<i32> {
        match self {
            Outcome::Killed { signal } => Some(signal),
            Outcome::Oom => Some(libc::SIGKILL),
            _ => None,
        }
    }

    pub fn is_success(self) -> bool {
        self == Outcome::Success
    }

    /// Worth another attempt under `retries`.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Outcome::Failure { .. } | Outcome::Timeout | Outcome::Oom
        )
    }

    /// The outcome recorded as `name` with its exit code and signal (the
    /// inverse of [`Outcome::as_str`]); an unknown name reads as a failure.
    pub fn parse(name: &str, exit_code: Option<i32>, signal: Option<i32>) -> Outcome {
        match name {
            "success" => Outcome::Success,
            "timeout" => Outcome::Timeout,
            "oom" => Outcome::Oom,
            "killed" => Outcome::Killed {
                signal: signal.unwrap_or(libc::SIGTERM),
            },
            "fenced" => Outcome::Fenced,
            "skipped" => Outcome::Skipped,
            "lost" => Outcome::Lost,
            _ => Outcome::Failure {
                code: exit_code.filter(|c| *c != 0).unwrap_or(exit::FAILURE),
            },
        }
    }

    /// The outcome of a finished process tree, and the job's own exit code
    /// when it exited.
    pub fn from_end(end: &End) -> (Outcome, Option<i32>) {
        match *end {
            End::Exited(0) => (Outcome::Success, Some(0)),
            End::Exited(code) => (Outcome::Failure { code }, Some(code)),
            End::Signaled(signal) | End::Stopped(StopReason::Signal(signal)) => {
                (Outcome::Killed { signal }, None)
            }
            End::TimedOut => (Outcome::Timeout, None),
            End::OutOfMemory => (Outcome::Oom, None),
            End::Stopped(StopReason::Fenced) => (Outcome::Fenced, None),
            End::Stopped(StopReason::Requested) => (
                Outcome::Killed {
                    signal: libc::SIGTERM,
                },
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_spec_table() {
        let table = [
            (Outcome::Success, 0),
            (Outcome::failure(3), 3),
            (Outcome::Timeout, 124),
            (Outcome::Oom, 137),
            (Outcome::Killed { signal: 15 }, 143),
            (Outcome::Fenced, 75),
            (Outcome::Skipped, 75),
        ];
        for (o, code) in table {
            assert_eq!(o.exit_code(), code, "{o:?}");
        }
        assert_eq!(Outcome::Oom.signal(), Some(libc::SIGKILL));
        assert_eq!(
            Outcome::from_end(&End::Exited(4)),
            (Outcome::failure(4), Some(4))
        );
    }
}
