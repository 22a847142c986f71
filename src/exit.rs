//! Exit codes of `batchguard`, in one place (SPEC §4 table). The job's own
//! exit code passes through for `failure`; everything else is listed here.

/// `success`, and any read command that did what it was asked.
pub const OK: i32 = 0;
/// A `failure` whose job exit code is unknown, failed items, a `check` with
/// failing rules, or a run/job that was asked for and does not exist.
pub const FAILURE: i32 = 1;
/// Usage error: bad arguments.
pub const USAGE: i32 = 2;
/// The state store cannot be used (sysexits EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// A failure inside batchguard itself, not the job's (EX_SOFTWARE): a
/// cgroup that cannot be created, a thread that cannot start.
pub const SOFTWARE: i32 = 70;
/// An output file cannot be written (EX_CANTCREAT): `cron install` refusing
/// a cron.d file batchguard did not write, or one of another config dir.
pub const CANT_CREATE: i32 = 73;
/// An I/O error of batchguard itself, e.g. the log directory (EX_IOERR).
pub const IO_ERROR: i32 = 74;
/// `skipped` (lock held under `forbid`), `fenced`, and a refused `publish`
/// (sysexits EX_TEMPFAIL: try again later).
pub const TEMPFAIL: i32 = 75;
/// Configuration error (EX_CONFIG).
pub const CONFIG: i32 = 78;
/// `timeout`, as GNU timeout.
pub const TIMEOUT: i32 = 124;
/// The command exists but cannot be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// `oom`: 128 + SIGKILL.
pub const OOM: i32 = 137;

/// `killed`: 128 + the signal number.
pub fn signal(sig: i32) -> i32 {
    128 + sig
}
