//! batchguard's error type and the one place that turns errors into exit
//! codes ([`Error::exit_code`]). Messages name the job, the command, the path
//! and the cause, so the line printed at 3 a.m. says what to do.

use crate::exit;
use crate::store::StoreError;
use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// One or more configuration errors, already rendered with file, line,
    /// column and the fix.
    #[error("{0}")]
    Config(#[from] batchguard_config::Errors),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no job `{job}` in {dir}/jobs (known jobs: {known})")]
    UnknownJob {
        job: String,
        dir: PathBuf,
        known: String,
    },
    #[error(
        "the configuration directory {0} does not exist: pass --config-dir DIR or set BATCHGUARD_CONFIG_DIR"
    )]
    NoConfigDir(PathBuf),
    #[error("no run `{0}` in the state store")]
    UnknownRun(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("env_file {path} of job `{job}`: {reason}")]
    EnvFile {
        job: String,
        path: PathBuf,
        reason: String,
    },
    /// `publish` was refused because a newer run holds the lock.
    #[error(
        "publish refused: run token {fence} of lock `{lock}` is no longer the newest ({current}); {dest} left unchanged"
    )]
    Fenced {
        lock: String,
        fence: i64,
        current: String,
        dest: PathBuf,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::EnvFile { .. } | Error::NoConfigDir(_) => exit::CONFIG,
            Error::Usage(_) => exit::USAGE,
            Error::Store(_) => exit::UNAVAILABLE,
            Error::UnknownJob { .. } | Error::UnknownRun(_) => exit::FAILURE,
            Error::Io { .. } => exit::IO_ERROR,
            Error::Fenced { .. } => exit::TEMPFAIL,
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
