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
    /// Bad arguments on the command line.
    #[error("{0}")]
    Usage(String),
    /// A template of a job could not be rendered at run time.
    #[error("job `{job}`: cannot render {what} `{template}`: {reason}")]
    Template {
        job: String,
        what: String,
        template: String,
        reason: String,
    },
    /// The job's `user` does not exist on this host.
    #[error("job `{job}`: user `{user}`: {reason}; create the user or fix `user`")]
    User {
        job: String,
        user: String,
        reason: String,
    },
    /// The lock changed hands too often while being taken.
    #[error("lock `{0}` keeps changing hands; try again")]
    LockContention(String),
    /// A failure inside batchguard itself (not the job's): the run is
    /// recorded `failure` with this message.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `cron install`, `cron next`: a cron.d file or entry problem.
    #[error(transparent)]
    Cron(#[from] crate::cron::CronError),
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
    /// The job's env_file cannot be read (the message names the file and
    /// line, never the line's text: it may hold a secret).
    #[error("env_file of job `{job}`: {source}")]
    EnvFile {
        job: String,
        source: batchguard_config::dotenv::DotenvError,
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
            Error::Config(_)
            | Error::EnvFile { .. }
            | Error::NoConfigDir(_)
            | Error::Template { .. }
            | Error::User { .. } => exit::CONFIG,
            Error::Usage(_) => exit::USAGE,
            Error::LockContention(_) => exit::TEMPFAIL,
            Error::Internal(_) => exit::SOFTWARE,
            Error::Store(_) => exit::UNAVAILABLE,
            Error::UnknownJob { .. } | Error::UnknownRun(_) => exit::FAILURE,
            Error::Io { .. } => exit::IO_ERROR,
            Error::Fenced { .. } => exit::TEMPFAIL,
            Error::Cron(e) => match e {
                crate::cron::CronError::Schedule(_) | crate::cron::CronError::Entry { .. } => {
                    exit::CONFIG
                }
                crate::cron::CronError::Path { .. }
                | crate::cron::CronError::NoDir(_)
                | crate::cron::CronError::Foreign { .. }
                | crate::cron::CronError::OtherConfig { .. } => exit::CANT_CREATE,
                crate::cron::CronError::Io { .. } => exit::IO_ERROR,
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::CronError;

    #[test]
    fn refused_cron_files_exit_with_cant_create_not_usage() {
        for e in [
            CronError::Foreign {
                path: "/etc/cron.d/batchguard-x".into(),
            },
            CronError::OtherConfig {
                path: "/etc/cron.d/batchguard-x".into(),
                config_dir: "/etc/other".into(),
            },
        ] {
            assert_eq!(Error::from(e).exit_code(), exit::CANT_CREATE);
        }
        let io = CronError::io("write", "/etc/cron.d/x", std::io::Error::other("full"));
        assert_eq!(Error::from(io).exit_code(), exit::IO_ERROR);
    }
}
