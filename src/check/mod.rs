//! The guideline audit (`batchguard check`, SPEC §8): judges each job against
//! rules G01-G16 (docs: guideline.md) from its configuration, this host and
//! its run history, and says for each rule `pass`, `warn`, `fail` or
//! `unknown`, with a message saying why and how to fix it.
//!
//! Two halves: [`gather_host`] and [`gather_job`] collect facts (they read
//! `/proc`, crontabs, the user database, files, and connect to the declared
//! replica); [`check_job`] is pure and turns a job and its facts into a
//! [`JobReport`]. [`audit`] and [`command`] chain everything for the CLI;
//! what only the cron module knows (schedule interval, whether the cron.d
//! file is current) comes in through [`CronFacts`].
//!
//! Decisions beyond the SPEC (see each rule's function for details):
//! - G01 ignores loopback listeners and sshd's port 22 (management, not
//!   traffic); `[guideline] role_ok` turns the warning into a pass.
//! - G02 fails when one of the last 10 runs was OOM-killed, G03 when one hit
//!   its timeout: the guideline says exactly that this must not happen.
//! - G10 warns for `user = "root"` (uid 0 is not a service account).
//! - G13 flags user crontab (and `/etc/crontab`) lines naming the job even
//!   for unscheduled jobs.
//! - G16 also warns when the declared `expected_items` reaches 100,000.

mod facts;
mod rules;
mod stats;
#[cfg(test)]
mod tests;

use std::time::Duration;

use batchguard_config::{Global, Job};
use serde::Serialize;

use crate::store::Store;

pub use facts::{
    CrontabLine, HostFacts, InterpreterInfo, JobFacts, KeyFinding, Listener, ProgramKind,
    ReplicaProbe, UserInfo, crontab_command_lines, find_access_keys, gather_host, gather_job,
    inspect_program, interpreter_family, isolation_by_path, mask_key, parse_meminfo_total,
    parse_proc_net_tcp, probe_replica, scan_aws_file,
};
pub use stats::{LinearFit, percentile};

/// How many recent runs [`audit`] reads per job.
pub const HISTORY_LIMIT: usize = 50;

/// A rule's verdict. Ordered by severity: `Pass < Unknown < Warn < Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Unknown,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule's result for one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    /// `G01` … `G16`.
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    /// Where a `config` finding points (file, line, column, key).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// The place in a job file a `config` finding is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The report of a job whose file does not load: one failing `config`
/// finding per error, with its file, line and column, so a broken job
/// shows in the audit beside the others instead of hiding them (SPEC §8).
pub fn broken_job(name: &str, errors: &batchguard_config::Errors) -> JobReport {
    let rules = errors
        .0
        .iter()
        .map(|d| {
            let at = if d.line == 0 {
                d.file.display().to_string()
            } else {
                format!("{}:{}:{}", d.file.display(), d.line, d.column)
            };
            let key = d
                .key
                .as_deref()
                .map(|k| format!(" `{k}`"))
                .unwrap_or_default();
            let help = d
                .help
                .as_deref()
                .map(|h| format!("; fix: {h}"))
                .unwrap_or_default();
            RuleResult {
                id: "config",
                status: Status::Fail,
                message: format!("the job file does not load: {at}:{key} {}{help}", d.message),
                location: Some(Location {
                    file: d.file.display().to_string(),
                    line: d.line,
                    column: d.column,
                    key: d.key.clone(),
                }),
            }
        })
        .collect();
    JobReport {
        job: name.to_string(),
        rules,
    }
}

/// All 16 rules for one job, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobReport {
    pub job: String,
    pub rules: Vec<RuleResult>,
}

impl JobReport {
    /// The result of rule `id`.
    pub fn rule(&self, id: &str) -> Option<&RuleResult> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// What the audit needs from the cron module.
pub trait CronFacts {
    /// Time between two fires of the job's schedule (`None`: unscheduled or unknown).
    fn schedule_interval(&self, job: &Job) -> Option<Duration>;
    /// Whether the job's `/etc/cron.d` file is installed and current
    /// (`None`: could not be told).
    fn cron_file_current(&self, job: &Job) -> Option<bool>;
}

/// Any `Fn(&Job) -> (interval, cron_file_current)` closure is a [`CronFacts`].
impl<F> CronFacts for F
where
    F: Fn(&Job) -> (Option<Duration>, Option<bool>),
{
    fn schedule_interval(&self, job: &Job) -> Option<Duration> {
        self(job).0
    }
    fn cron_file_current(&self, job: &Job) -> Option<bool> {
        self(job).1
    }
}

/// Judges one job from gathered facts. Pure: no I/O. Always returns the 16
/// rules G01..G16 in order.
pub fn check_job(job: &Job, global: &Global, host: &HostFacts, facts: &JobFacts) -> JobReport {
    JobReport {
        job: job.name.clone(),
        rules: rules::all(job, global, host, facts),
    }
}

/// Gathers the facts for each job (history from `store`, newest
/// [`HISTORY_LIMIT`] runs; the cron facts from `cron`) and checks it.
pub fn audit(
    jobs: &[Job],
    global: &Global,
    store: &dyn Store,
    cron: &dyn CronFacts,
) -> Vec<JobReport> {
    let host = gather_host();
    jobs.iter()
        .map(|job| {
            let (history, history_error) = match store.list_runs(Some(&job.name), HISTORY_LIMIT) {
                Ok(h) => (h, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let mut facts = gather_job(job, history);
            facts.history_error = history_error;
            facts.schedule_interval = cron.schedule_interval(job);
            facts.cron_file_current = cron.cron_file_current(job);
            check_job(job, global, &host, &facts)
        })
        .collect()
}

/// `batchguard check`: audits `jobs`, prints the reports (text table or
/// the SPEC §8 JSON) on stdout, and returns the exit code.
pub fn command(
    jobs: &[Job],
    broken: Vec<JobReport>,
    global: &Global,
    store: &dyn Store,
    cron: &dyn CronFacts,
    json: bool,
    strict: bool,
) -> i32 {
    let mut reports = audit(jobs, global, store, cron);
    reports.extend(broken);
    reports.sort_by(|a, b| a.job.cmp(&b.job));
    if json {
        println!("{}", render_json(&reports));
    } else {
        print!("{}", render_text(&reports));
    }
    exit_code(&reports, strict)
}

/// `{"jobs": [{"job": …, "rules": [{"id", "status", "message"}…]}…]}`.
pub fn render_json(reports: &[JobReport]) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        jobs: &'a [JobReport],
    }
    serde_json::to_string_pretty(&Out { jobs: reports }).unwrap_or_else(|_| "{}".into())
}

/// A table `JOB RULE STATUS MESSAGE`, worst first (fail, warn, unknown,
/// pass; then job and rule order), and a summary line.
pub fn render_text(reports: &[JobReport]) -> String {
    let mut rows: Vec<(&str, &RuleResult)> = reports
        .iter()
        .flat_map(|r| r.rules.iter().map(move |x| (r.job.as_str(), x)))
        .collect();
    rows.sort_by(|a, b| {
        b.1.status
            .cmp(&a.1.status)
            .then_with(|| a.0.cmp(b.0))
            .then_with(|| a.1.id.cmp(b.1.id))
    });
    let jw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(3);
    let mut out = format!("{:<jw$}  RULE  {:<7}  MESSAGE\n", "JOB", "STATUS");
    for (job, r) in &rows {
        out.push_str(&format!(
            "{job:<jw$}  {:<4}  {:<7}  {}\n",
            r.id,
            r.status.as_str(),
            r.message
        ));
    }
    let count = |s: Status| rows.iter().filter(|r| r.1.status == s).count();
    out.push_str(&format!(
        "{} job{}: {} fail, {} warn, {} unknown, {} pass\n",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Unknown),
        count(Status::Pass),
    ));
    out
}

/// 1 if any rule fails (with `strict`, also if any warns), else 0.
pub fn exit_code(reports: &[JobReport], strict: bool) -> i32 {
    let worst = reports
        .iter()
        .flat_map(|r| &r.rules)
        .map(|r| r.status)
        .max()
        .unwrap_or(Status::Pass);
    match worst {
        Status::Fail => 1,
        Status::Warn if strict => 1,
        _ => 0,
    }
}
