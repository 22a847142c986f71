//! Cron schedules (SPEC §9, G13): when a job fires, in its time zone, the
//! way cron (cronie) fires it, and the `/etc/cron.d` files that make cron
//! run it.
//!
//! - [`schedule`] (the config crate's, re-exported: config validation and
//!   cron share one parser): parsing, fire times and cronie's rule for
//!   local clock changes (see that module for the DST decisions);
//! - [`flavor`]: which daemon runs here (cronie, Debian's cron, busybox);
//! - [`predict`]: when that daemon really fires a job, and `run --if-due`;
//! - [`install`]: rendering and atomic installation of `batchguard-JOB` files.

pub mod flavor;
pub mod install;
pub mod predict;
pub use batchguard_config::schedule;

pub use flavor::Flavor;
pub use install::{
    CronEntry, FILE_PREFIX, InstallReport, MARKER, WATCHDOG_FILE, file_name, install,
    installed_current, render, render_watchdog, watchdog_installed_current,
};
pub use predict::{Host, Rule, due_now, job_rule};
pub use schedule::{Schedule, ScheduleError};

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::path::PathBuf;

/// Where cron reads its system job files unless told otherwise
/// (`--dir` of `cron install` and `check`; the dashboard's findings).
pub const DEFAULT_DIR: &str = "/etc/cron.d";

/// What went wrong with a schedule, an entry or a cron.d file.
#[derive(thiserror::Error, Debug)]
pub enum CronError {
    /// A schedule cron would not accept.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// An entry that cannot be written as a cron.d line.
    #[error("cannot write a cron entry for job `{job}`: {reason}")]
    Entry { job: String, reason: String },
    /// The binary or config directory path cannot appear on a cron line.
    #[error("cannot use {what} {path} in a cron entry: {reason}")]
    Path {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The cron directory to install into is not there.
    #[error(
        "the cron directory {0} does not exist: is cron installed? Create it, or pass --dir DIR"
    )]
    NoDir(PathBuf),
    /// A file batchguard must write exists but is not one of its own.
    #[error(
        "refusing to overwrite {path}: it does not start with batchguard's marker line, so batchguard did not write it (move it away, or rename the job)"
    )]
    Foreign { path: PathBuf },
    /// A job file batchguard wrote for another config dir sits where this
    /// config dir's job file must go (two config dirs with one job name).
    #[error(
        "refusing to overwrite {path}: batchguard wrote it for the config dir {config_dir}; rename one of the two jobs (one cron.d directory holds one job of each name)"
    )]
    OtherConfig { path: PathBuf, config_dir: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CronError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CronError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The first `n` fire times strictly after `after`, in `tz`, ascending and
/// distinct, per SPEC §9 (cronie's rule for local time changes under three
/// hours): a fixed-time job whose wall time falls into a skipped range fires
/// once at the end of the gap (02:30 on a spring-forward night at 02:00 fires
/// at 03:00); in a repeated range it fires once, at the first occurrence; a
/// job whose minute or hour field starts with `*` (or `@hourly`) fires by
/// the clock: never in a gap, at both occurrences in a repeated range. See
/// [`schedule`] for the details. Fewer than `n` when the schedule stops
/// firing (e.g. `0 0 30 2 *` never fires).
pub fn next_fires(
    schedule: &str,
    tz: &TimeZone,
    after: Timestamp,
    n: usize,
) -> Result<Vec<Zoned>, CronError> {
    Ok(Schedule::parse(schedule)?.next_fires(tz, after, n))
}

/// The first fire time strictly after `after`, in `after`'s time zone, as
/// this host's cron daemon fires it ([`predict`]: `after`'s zone is the
/// job's, the host's when it is the system zone), or `None` for a schedule
/// that never fires again or does not parse (config validation rejects the
/// latter before it gets here).
pub fn next_after(schedule: &str, after: &Zoned) -> Option<Zoned> {
    let s = Schedule::parse(schedule).ok()?;
    let host = Host::current();
    let tz = after.time_zone();
    let job_tz = (tz != &host.zone).then_some(tz);
    Rule::for_job(job_tz, &host)
        .next_fires(&s, after.timestamp(), 1)
        .into_iter()
        .next()
}

/// The latest fire time at or before `at` (same rule as [`next_fires`]); the
/// watchdog uses it to detect a missed run.
pub fn last_fire_at_or_before(
    schedule: &str,
    tz: &TimeZone,
    at: Timestamp,
) -> Result<Option<Zoned>, CronError> {
    Ok(Schedule::parse(schedule)?.last_fire_at_or_before(tz, at))
}

/// The typical interval between fires (the median gap over the next 33
/// fires from now; see [`Schedule::interval_from`]), for `check`'s "p95
/// duration vs the schedule interval". `None` for an invalid schedule or one
/// that fires fewer than twice.
pub fn interval(schedule: &str, tz: &TimeZone) -> Option<std::time::Duration> {
    Schedule::parse(schedule)
        .ok()?
        .interval_from(tz, Timestamp::now())
}

/// What `check` learns of one job from cron: the typical interval of its
/// schedule in its time zone, and whether its file in `cron_dir` is what
/// [`render`] gives now for `flavor`, the daemon of this host
/// ([`flavor::host`]) (`None` when unscheduled, or when it cannot be told:
/// no `bin` or `config_dir`, an unreadable file). One source for
/// `batchguard check` and the dashboard's findings.
pub fn check_facts(
    cron_dir: PathBuf,
    bin: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    flavor: Flavor,
) -> impl Fn(&batchguard_config::Job) -> (Option<std::time::Duration>, Option<bool>) {
    move |job| {
        let Some(schedule) = &job.schedule else {
            return (None, None);
        };
        let tz = crate::clock::zone(job.timezone.as_deref());
        let current = match (&bin, &config_dir) {
            (Some(bin), Some(cdir)) => CronEntry::from_job(job)
                .and_then(|e| installed_current(&e, &cron_dir, bin, cdir, flavor).ok()),
            _ => None,
        };
        (interval(schedule, &tz), current)
    }
}

#[cfg(test)]
mod tests;
