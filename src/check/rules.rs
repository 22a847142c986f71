//! The sixteen rules, one function each. Pure: they read the job, the
//! global settings and the gathered facts, nothing else. Each rule collects
//! findings with their status; the rule's status is the worst finding and
//! its message lists the findings worst first.

use std::time::Duration;

use batchguard_config::{
    Concurrency, Event, Global, Job, Reads, SchemaChange, format_duration, format_size,
};

use super::facts::{HostFacts, JobFacts, ProgramKind, ReplicaProbe, interpreter_family};
use super::stats::{LinearFit, percent, percentile};
use super::{RuleResult, Status};
use crate::store::RunRecord;

/// Runs considered for "recent" peaks, timeouts and OOMs.
const RECENT: usize = 10;
/// Successful runs considered for the duration percentile.
const RECENT_SUCCESSES: usize = 20;
/// Runs with item counts needed for a fit.
const MIN_FIT_RUNS: usize = 3;
/// Warn from this share (percent) of a limit.
const WARN_PCT: u64 = 80;
/// G16: keys per run from which one host is not enough.
const LARGE_KEYS: u64 = 100_000;
/// G16: a growing trend matters from this many keys.
const GROWING_KEYS: u64 = 10_000;
/// G01: ports of host management, not of traffic served.
const MANAGEMENT_PORTS: &[(u16, &str)] = &[(22, "ssh")];

struct Findings {
    id: &'static str,
    parts: Vec<(Status, String)>,
}

impl Findings {
    fn new(id: &'static str) -> Findings {
        Findings {
            id,
            parts: Vec::new(),
        }
    }
    fn add(&mut self, status: Status, msg: impl Into<String>) {
        self.parts.push((status, msg.into()));
    }
    fn done(mut self) -> RuleResult {
        // Stable: same-status findings keep their order.
        self.parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        let status = self.parts.first().map_or(Status::Pass, |p| p.0);
        let message = self
            .parts
            .into_iter()
            .map(|p| p.1)
            .collect::<Vec<_>>()
            .join("; ");
        RuleResult {
            id: self.id,
            status,
            message,
            location: None,
        }
    }
}

/// The result of a rule that comes to exactly one finding.
fn verdict(id: &'static str, status: Status, message: String) -> RuleResult {
    RuleResult {
        id,
        status,
        message,
        location: None,
    }
}

pub(super) fn all(job: &Job, global: &Global, host: &HostFacts, f: &JobFacts) -> Vec<RuleResult> {
    vec![
        g01(job, host),
        g02(job, host, f),
        g03(job, f),
        g04(job, f),
        g05(job),
        g06(job),
        g07(job),
        g08(job, global),
        g09(job),
        g10(job, f),
        g11(job),
        g12(job),
        g13(job, host, f),
        g14(job, f),
        g15(job, f),
        g16(job, f),
    ]
}

// ------------------------------------------------------------ helpers

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for humans: whole seconds from 1 s up.
fn dur(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format_duration(Duration::from_secs(d.as_secs()))
    } else {
        format_duration(d)
    }
}

fn dur_ms(ms: u64) -> String {
    dur(Duration::from_millis(ms))
}

fn list<T: AsRef<str>>(items: &[T], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .map(|i| i.as_ref())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

/// Finished runs (not `running`, not `skipped`), newest first.
fn finished(f: &JobFacts) -> impl Iterator<Item = &RunRecord> {
    f.history
        .iter()
        .filter(|r| r.outcome != "running" && r.outcome != "skipped")
}

/// The number of keys a run saw: done in this run plus skipped as done earlier.
fn item_count(r: &RunRecord) -> Option<u64> {
    let c = r.items?;
    let n = c.total + c.skipped;
    let n = if n == 0 { c.done } else { n };
    (n > 0).then_some(n)
}

/// Least-squares fit of `value` against item count over successful runs.
/// `Err` says why there is none.
fn fit_against_items(
    f: &JobFacts,
    value: impl Fn(&RunRecord) -> Option<f64>,
) -> Result<LinearFit, String> {
    let points: Vec<(f64, f64)> = finished(f)
        .filter(|r| r.outcome == "success")
        .filter_map(|r| Some((item_count(r)? as f64, value(r)?)))
        .collect();
    if points.len() < MIN_FIT_RUNS {
        return Err(format!(
            "not enough history to extrapolate to expected_items ({} successful runs with item counts, need {MIN_FIT_RUNS})",
            points.len()
        ));
    }
    LinearFit::fit(&points).ok_or_else(|| {
        "cannot extrapolate to expected_items: the recorded runs all saw the same number of items"
            .to_string()
    })
}

fn history_note(fs: &mut Findings, f: &JobFacts) {
    if let Some(e) = &f.history_error {
        fs.add(Status::Unknown, format!("run history unavailable: {e}"));
    }
}

// ------------------------------------------------------------ G01

/// G01: batches run on dedicated batch servers.
fn g01(job: &Job, host: &HostFacts) -> RuleResult {
    let mut fs = Findings::new("G01");
    if let Some(e) = &host.listening_error {
        fs.add(
            Status::Unknown,
            format!("cannot read the listening sockets ({e}); check by hand that this host serves no other traffic"),
        );
        return fs.done();
    }
    let mgmt = |port: u16| MANAGEMENT_PORTS.iter().find(|(p, _)| *p == port);
    let external: Vec<String> = host
        .listening
        .iter()
        .filter(|l| !l.is_loopback() && mgmt(l.port).is_none())
        .map(|l| l.describe())
        .collect();
    let loopback = host.listening.iter().filter(|l| l.is_loopback()).count();
    // Each management service once, however many addresses it listens on.
    let management = host
        .listening
        .iter()
        .filter(|l| !l.is_loopback())
        .filter_map(|l| mgmt(l.port).map(|(p, _)| *p))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if external.is_empty() {
        fs.add(
            Status::Pass,
            "no network service listens on a non-loopback address: the host looks dedicated to batches",
        );
    } else if let Some(why) = &job.guideline.role_ok {
        fs.add(
            Status::Pass,
            format!(
                "services listen on {}, declared acceptable: \"{why}\"",
                list(&external, 3)
            ),
        );
    } else {
        fs.add(
            Status::Warn,
            format!(
                "this host also serves network traffic ({}): run batches on a dedicated batch server, or declare why this host is fine with [guideline] role_ok = \"…\"",
                list(&external, 3)
            ),
        );
    }
    // The rest is context, kept to a count so the line stays readable.
    let ignored = loopback + management;
    if ignored > 0 {
        fs.add(
            Status::Pass,
            format!("{ignored} loopback or management listener(s) ignored"),
        );
    }
    fs.done()
}

// ------------------------------------------------------------ G02

/// G02: a batch is not OOM-killed at the data volume expected over its lifetime.
fn g02(job: &Job, host: &HostFacts, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G02");
    history_note(&mut fs, f);
    let recent: Vec<&RunRecord> = finished(f).take(RECENT).collect();
    let peak = recent.iter().filter_map(|r| r.peak_memory_bytes).max();
    let ooms = recent.iter().filter(|r| r.outcome == "oom").count();
    let Some(max) = job.memory_max else {
        let hint = match peak {
            Some(p) => format!(
                " (peak memory over the last {} runs: {}; e.g. memory_max = \"{}\")",
                recent.len(),
                format_size(p),
                format_size(suggest_limit(p))
            ),
            None => String::new(),
        };
        fs.add(
            Status::Fail,
            format!(
                "memory_max is not set: nothing bounds the run, so it can grow until the kernel OOM killer kills it or other processes on the host; set memory_max{hint}"
            ),
        );
        return fs.done();
    };
    let max_s = format_size(max);
    if ooms > 0 {
        fs.add(
            Status::Fail,
            format!(
                "{ooms} of the last {} runs were killed at memory_max {max_s}: raise memory_max or make the job use less memory (process items in batches, stream instead of loading everything)",
                recent.len()
            ),
        );
    }
    match peak {
        Some(p) => {
            let pct = percent(p as f64, max as f64);
            let msg = format!(
                "peak memory {} over the last {} runs is {pct}% of memory_max {max_s}",
                format_size(p),
                recent.len()
            );
            if pct >= WARN_PCT {
                fs.add(
                    Status::Warn,
                    format!("{msg}: raise memory_max or reduce the job's memory before a larger run is OOM-killed"),
                );
            } else {
                fs.add(Status::Pass, msg);
            }
        }
        None => fs.add(
            Status::Pass,
            format!("memory_max {max_s} is enforced per run; no peak memory recorded yet"),
        ),
    }
    if let Some(ram) = host.host_memory_bytes
        && max > ram
    {
        fs.add(
            Status::Warn,
            format!(
                "memory_max {max_s} is more than this host's RAM {}: the host runs out of memory before the limit acts; lower memory_max or use a larger batch server",
                format_size(ram)
            ),
        );
    }
    if let Some(expected) = job.guideline.expected_items {
        g02_predicted_peak(&mut fs, f, expected, max);
    }
    fs.done()
}

/// G02, at the data volume expected: the peak memory predicted from the
/// runs' item counts against `max`.
fn g02_predicted_peak(fs: &mut Findings, f: &JobFacts, expected: u64, max: u64) {
    let max_s = format_size(max);
    match fit_against_items(f, |r| r.peak_memory_bytes.map(|b| b as f64)) {
        Ok(fit) => {
            let pred = fit.predict(expected as f64).max(0.0);
            let pred_s = format_size(pred.min(u64::MAX as f64) as u64);
            let pct = percent(pred, max as f64);
            let how = format!(
                "least-squares over {} runs: {} per item",
                fit.n,
                format_size(fit.slope.max(0.0).round() as u64)
            );
            let msg = format!(
                "at expected_items {} the predicted peak memory is {pred_s} ({how}), {pct}% of memory_max {max_s}",
                thousands(expected)
            );
            if pred > max as f64 {
                fs.add(
                    Status::Fail,
                    format!("{msg}: the job will be OOM-killed as its data grows; raise memory_max or make memory independent of the item count (stream the items)"),
                );
            } else if pct >= WARN_PCT {
                fs.add(
                    Status::Warn,
                    format!("{msg}: little headroom left as the data grows"),
                );
            } else {
                fs.add(Status::Pass, msg);
            }
        }
        Err(why) => fs.add(Status::Pass, why),
    }
}

/// 1.5 × `peak`, rounded up to a multiple of 64 MiB.
fn suggest_limit(peak: u64) -> u64 {
    let step = 64u64 << 20;
    (peak.saturating_mul(3) / 2).div_ceil(step).max(1) * step
}

// ------------------------------------------------------------ G03

/// G03: a batch finishes within its expected time.
fn g03(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G03");
    history_note(&mut fs, f);
    match job.timeout {
        None => fs.add(
            Status::Fail,
            "timeout is not set: a hung run never ends and holds its lock, so later runs never start; set timeout (hard limit, e.g. twice the usual duration)",
        ),
        Some(t) => fs.add(Status::Pass, format!("timeout {}", dur(t))),
    }
    if job.expected_duration.is_none() {
        fs.add(
            Status::Warn,
            "expected_duration is not set: a run that slows down is not noticed until it times out; set expected_duration (an overrun is notified)",
        );
    }
    let recent: Vec<&RunRecord> = finished(f).take(RECENT).collect();
    let timeouts = recent.iter().filter(|r| r.outcome == "timeout").count();
    if timeouts > 0 {
        fs.add(
            Status::Fail,
            format!(
                "{timeouts} of the last {} runs hit the timeout: find why they were slow (log, data volume) and fix or split the work; raise timeout only if the duration is expected",
                recent.len()
            ),
        );
    }
    g03_recent_durations(&mut fs, job, f);
    if let Some(expected) = job.guideline.expected_items {
        g03_predicted_duration(&mut fs, job, f, expected);
    }
    fs.done()
}

/// G03 over the recent successful runs: their p95 duration against
/// `expected_duration` and the schedule interval.
fn g03_recent_durations(fs: &mut Findings, job: &Job, f: &JobFacts) {
    let durations: Vec<u64> = finished(f)
        .filter(|r| r.outcome == "success")
        .filter_map(|r| r.duration_ms.and_then(|d| u64::try_from(d).ok()))
        .take(RECENT_SUCCESSES)
        .collect();
    if let Some(p95) = percentile(&durations, 95.0) {
        let base = format!(
            "p95 duration {} of the last {} successful runs",
            dur_ms(p95),
            durations.len()
        );
        match job.expected_duration {
            Some(e) if p95 as u128 > e.as_millis() => fs.add(
                Status::Warn,
                format!(
                    "{base} exceeds expected_duration {}: speed the job up, or raise expected_duration if this is the new normal",
                    dur(e)
                ),
            ),
            Some(e) => fs.add(
                Status::Pass,
                format!("{base} is within expected_duration {}", dur(e)),
            ),
            None => fs.add(Status::Pass, base.clone()),
        }
        if let Some(iv) = f.schedule_interval.filter(|d| !d.is_zero()) {
            let pct = percent(p95 as f64, iv.as_millis() as f64);
            if p95 as u128 > iv.as_millis() {
                fs.add(
                    Status::Fail,
                    format!(
                        "{base} exceeds the schedule interval {}: runs will overlap (with concurrency = forbid the next ones are skipped); schedule less often, speed the job up, or spread it (G16)",
                        dur(iv)
                    ),
                );
            } else if pct >= WARN_PCT {
                fs.add(
                    Status::Warn,
                    format!(
                        "{base} is {pct}% of the schedule interval {}: runs will soon overlap; schedule less often or speed the job up",
                        dur(iv)
                    ),
                );
            } else {
                fs.add(
                    Status::Pass,
                    format!("{pct}% of the schedule interval {}", dur(iv)),
                );
            }
        }
    } else {
        fs.add(Status::Pass, "no successful run recorded yet");
    }
}

/// G03, at the data volume expected: the duration predicted from the
/// runs' item counts against the timeout.
fn g03_predicted_duration(fs: &mut Findings, job: &Job, f: &JobFacts, expected: u64) {
    match fit_against_items(f, |r| r.duration_ms.map(|d| d as f64)) {
        Ok(fit) => {
            let pred = fit.predict(expected as f64).max(0.0);
            let pred_s = dur_ms(pred.min(u64::MAX as f64) as u64);
            let msg = format!(
                "at expected_items {} the predicted duration is {pred_s} (least-squares over {} runs)",
                thousands(expected),
                fit.n
            );
            match job.timeout {
                Some(t) => {
                    let pct = percent(pred, t.as_millis() as f64);
                    if pred > t.as_millis() as f64 {
                        fs.add(
                            Status::Fail,
                            format!(
                                "{msg}, over timeout {}: the job will time out as its data grows; make it faster, spread it over workers (G16), or raise timeout",
                                dur(t)
                            ),
                        );
                    } else if pct >= WARN_PCT {
                        fs.add(
                            Status::Warn,
                            format!(
                                "{msg}, {pct}% of timeout {}: little headroom as the data grows",
                                dur(t)
                            ),
                        );
                    } else {
                        fs.add(Status::Pass, format!("{msg}, {pct}% of timeout {}", dur(t)));
                    }
                }
                None => fs.add(Status::Pass, msg),
            }
        }
        Err(why) => fs.add(Status::Pass, why),
    }
}

// ------------------------------------------------------------ G04

/// G04: reads go to a read replica wherever possible.
fn g04(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G04");
    let g = &job.guideline;
    match g.reads {
        None => fs.add(
            Status::Warn,
            "where the job reads from is not declared: set [guideline] reads = \"replica\" (with replica_dsn_env so check can verify it), \"primary\" or \"none\"",
        ),
        Some(Reads::None) => {
            fs.add(Status::Pass, "declared: the job reads no database");
            return fs.done();
        }
        Some(Reads::Primary) => fs.add(
            Status::Warn,
            "declared reads = \"primary\": reads load the production primary; point them at a read replica where possible (reads = \"replica\", replica_dsn_env)",
        ),
        Some(Reads::Replica) => {
            if g.replica_dsn_env.is_none() {
                fs.add(
                    Status::Unknown,
                    "declared reads = \"replica\" but no replica_dsn_env: check cannot verify the DSN is a replica; set replica_dsn_env to the variable holding it",
                );
            }
        }
    }
    let var = g.replica_dsn_env.as_deref().unwrap_or("the DSN");
    match &f.replica {
        None => {}
        Some(ReplicaProbe::DsnUnset { var }) => fs.add(
            Status::Unknown,
            format!("{var} is not set in the job's env, its env_file or check's environment: cannot verify the replica"),
        ),
        Some(ReplicaProbe::Failed(e)) => fs.add(
            Status::Unknown,
            format!("cannot verify the replica in {var}: {e}"),
        ),
        Some(ReplicaProbe::Primary) => fs.add(
            Status::Fail,
            format!(
                "the database in {var} is a primary, not a replica (pg_is_in_recovery() is false): the job's reads load production; point {var} at a read replica"
            ),
        ),
        Some(ReplicaProbe::Replica { lag }) => {
            let lag_s = dur(*lag);
            match g.max_replica_lag {
                Some(max) if *lag > max => fs.add(
                    Status::Fail,
                    format!(
                        "{var} is a replica lagging {lag_s}, over max_replica_lag {}: runs refuse to start until it catches up; fix replication or raise max_replica_lag",
                        dur(max)
                    ),
                ),
                Some(max) if percent(lag.as_secs_f64(), max.as_secs_f64()) >= WARN_PCT => fs.add(
                    Status::Warn,
                    format!(
                        "{var} is a replica lagging {lag_s}, close to max_replica_lag {}",
                        dur(max)
                    ),
                ),
                Some(max) => fs.add(
                    Status::Pass,
                    format!(
                        "{var} is a replica (lag {lag_s}, max_replica_lag {})",
                        dur(max)
                    ),
                ),
                None => fs.add(
                    Status::Pass,
                    format!(
                        "{var} is a replica (lag {lag_s}); set max_replica_lag to refuse runs on stale data"
                    ),
                ),
            }
        }
    }
    if fs.parts.is_empty() {
        fs.add(Status::Pass, "reads declared");
    }
    fs.done()
}

// ------------------------------------------------------------ G05 G06 G07

/// G05: the write load on production has been estimated.
fn g05(job: &Job) -> RuleResult {
    let rate = job.items.as_ref().and_then(|i| i.rate);
    let (status, message): (Status, String) = match (&job.guideline.write_impact, rate) {
        (Some(w), _) => (
            Status::Pass,
            format!("write impact declared: \"{w}\""),
        ),
        (None, Some(r)) => (
            Status::Pass,
            format!("items start at most {r}: the write rate is bounded"),
        ),
        (None, None) => (
            Status::Warn,
            "the write load on production is not estimated: declare [guideline] write_impact = \"~N row updates on TABLE, at most M/s\", and bound it with [items] rate".into(),
        ),
    };
    verdict("G05", status, message)
}

/// G06: idempotent re-runs.
fn g06(job: &Job) -> RuleResult {
    let (status, message): (Status, String) = match (&job.items, &job.guideline.clean) {
        (Some(_), _) => (
            Status::Pass,
            "[items]: finished keys are recorded in the ledger and skipped on re-run".into(),
        ),
        (None, Some(clean)) => (
            Status::Pass,
            format!("clean step declared: `{}` runs before a redo", clean.join(" ")),
        ),
        (None, None) => (
            Status::Warn,
            "nothing makes a re-run safe: a run that dies halfway and is re-run may process items twice; use [items] (the ledger skips finished keys) or declare the clean step with [guideline] clean = [\"…\"]".into(),
        ),
    };
    verdict("G06", status, message)
}

/// G07: overlapping runs never cause inconsistency.
fn g07(job: &Job) -> RuleResult {
    let (status, message): (Status, String) = match job.concurrency {
        Concurrency::Forbid => (
            Status::Pass,
            format!("concurrency = forbid: a run that starts while another holds lock `{}` is skipped", job.lock),
        ),
        Concurrency::Replace => (
            Status::Pass,
            format!("concurrency = replace: a new run fences the older one on lock `{}`; commit results through the ledger or `batchguard publish` so the older run cannot overwrite them", job.lock),
        ),
        Concurrency::Allow => match &job.guideline.overlap_safe {
            Some(why) => (
                Status::Pass,
                format!("concurrency = allow, declared safe: \"{why}\""),
            ),
            None => (
                Status::Fail,
                "concurrency = allow: overlapping runs may overwrite each other's results; use forbid or replace, or declare why overlaps are safe with [guideline] overlap_safe = \"…\"".into(),
            ),
        },
    };
    verdict("G07", status, message)
}

// ------------------------------------------------------------ G08 G09

/// G08: failures are notified to the team.
fn g08(job: &Job, global: &Global) -> RuleResult {
    let mut fs = Findings::new("G08");
    let n = &job.notify;
    if n.channels.is_empty() {
        fs.add(
            Status::Fail,
            "no notification channel: failures go unnoticed; set [notify] channels = [\"…\"] (or notify in [defaults] of batchguard.toml)",
        );
    } else if !n.on.contains(&Event::Failure) {
        fs.add(
            Status::Fail,
            format!(
                "notify.on ({}) lacks \"failure\": failures go unnoticed; add it",
                n.on.iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    } else {
        fs.add(
            Status::Pass,
            format!(
                "failures are notified to {}",
                n.channels
                    .iter()
                    .map(|c| match global.channels.get(c) {
                        Some(ch) => format!("{c} ({})", ch.kind()),
                        None => c.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let missing: Vec<&str> = [Event::Timeout, Event::Oom, Event::Lost]
            .into_iter()
            .filter(|e| !n.on.contains(e))
            .map(|e| e.as_str())
            .collect();
        if !missing.is_empty() {
            fs.add(
                Status::Pass,
                format!("consider notifying {} too", missing.join(", ")),
            );
        }
    }
    fs.done()
}

/// G09: a failure notification carries the re-processing steps.
fn g09(job: &Job) -> RuleResult {
    let r = &job.runbook;
    let (status, message): (Status, String) = match (&r.url, &r.verify, &r.notes) {
        (Some(u), _, _) => (
            Status::Pass,
            format!("notifications link the runbook {u} and carry the exact re-run command"),
        ),
        (None, Some(_), _) => (
            Status::Pass,
            "notifications carry the verify step and the exact re-run command; add runbook.url for the full procedure".into(),
        ),
        (None, None, Some(_)) => (
            Status::Warn,
            "the runbook has notes only: add runbook.verify (how to confirm the result) or runbook.url so whoever reads the alert can act".into(),
        ),
        (None, None, None) => (
            Status::Fail,
            "no runbook: a failure alert says what failed but not how to re-process it; add [runbook] url, verify and notes".into(),
        ),
    };
    verdict("G09", status, message)
}

// ------------------------------------------------------------ G10 G11 G12

/// G10: runs as a service account, never writing under a personal home.
fn g10(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G10");
    let paths_ok =
        "log_dir, artifact_dir and workdir under a personal home are refused at config load";
    let Some(name) = &job.user else {
        fs.add(
            Status::Warn,
            "user is not set: the job runs as whoever invokes batchguard (root from /etc/cron.d, or a personal account); set user = \"…\" to a service account (system uid, nologin shell)",
        );
        fs.add(Status::Pass, paths_ok);
        return fs.done();
    };
    match &f.run_user {
        Some(Err(e)) => fs.add(
            Status::Fail,
            format!("{e}: runs cannot start; create the service account (useradd --system --shell /usr/sbin/nologin {name})"),
        ),
        None => fs.add(
            Status::Unknown,
            format!("user `{name}` was not looked up"),
        ),
        Some(Ok(u)) => {
            let shell = u
                .shell
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let no_login = shell == "nologin" || shell == "false";
            let who = format!("`{}` (uid {}, shell {})", u.name, u.uid, u.shell.display());
            if u.uid == 0 {
                fs.add(
                    Status::Warn,
                    format!("runs as root {who}: a bug or a compromised dependency owns the host; use a dedicated service account"),
                );
            } else if u.uid < 1000 || no_login {
                fs.add(Status::Pass, format!("runs as service account {who}"));
                fs.add(Status::Pass, paths_ok);
            } else {
                fs.add(
                    Status::Fail,
                    format!("runs as login user {who}: a person's account (home, keys, leaving staff) must not carry production batches; use a service account (system uid, nologin shell)"),
                );
            }
        }
    }
    fs.done()
}

/// G11: nothing else in the batch affects production; not verifiable.
fn g11(job: &Job) -> RuleResult {
    let g = &job.guideline;
    let mut declared = Vec::new();
    if let Some(r) = g.reads {
        declared.push(format!("reads = {r}"));
    }
    if g.write_impact.is_some() {
        declared.push("write_impact".to_string());
    }
    let declared = if declared.is_empty() {
        String::new()
    } else {
        format!(" beyond what is declared ({})", declared.join(", "))
    };
    verdict(
        "G11",
        Status::Unknown,
        format!(
            "not verifiable: confirm in review that the job affects no production server (caches, queues, APIs, file shares){declared}, and note it in runbook.notes"
        ),
    )
}

/// G12: schema changes reviewed by the owners.
fn g12(job: &Job) -> RuleResult {
    let mut fs = Findings::new("G12");
    match &job.guideline.schema_change {
        None => fs.add(
            Status::Pass,
            "no schema change declared (declare [guideline] schema_change = false to make it explicit)",
        ),
        Some(SchemaChange::No) => fs.add(Status::Pass, "declared: the job changes no schema"),
        Some(SchemaChange::Unreviewed) => fs.add(
            Status::Fail,
            "schema_change = true without a review: have the owners review it and declare schema_change = { reviewed_by = [\"…\"], ref = \"PR-…\" }",
        ),
        Some(SchemaChange::Reviewed {
            reviewed_by,
            reference,
        }) if reviewed_by.is_empty() => fs.add(
            Status::Fail,
            format!(
                "schema change{} declared without a reviewer: have the owners review it and name them in schema_change.reviewed_by = [\"…\"]",
                reference
                    .as_ref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            ),
        ),
        Some(SchemaChange::Reviewed {
            reviewed_by,
            reference,
        }) => fs.add(
            Status::Pass,
            format!(
                "schema change reviewed by {}{}",
                reviewed_by.join(", "),
                reference
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
    }
    fs.done()
}

// ------------------------------------------------------------ G13

/// What identifies the job's command in a crontab line: the first argv
/// element that is not an interpreter, shell or `env` (a script or binary).
fn command_signature(job: &Job) -> Option<String> {
    let argv: &[String] = if !job.command.is_empty() {
        &job.command
    } else {
        job.items.as_ref()?.run.as_deref()?
    };
    argv.iter()
        .find(|a| {
            let name = a.rsplit('/').next().unwrap_or(a);
            !a.starts_with('-')
                && !a.contains('{')
                && interpreter_family(name).is_none()
                && !matches!(name, "env" | "sh" | "bash" | "dash" | "zsh")
        })
        .map(|a| a.strip_prefix("./").unwrap_or(a).to_string())
        .filter(|s| s.len() >= 4)
}

/// Whether a crontab line runs `job`: it calls batchguard naming the job,
/// or it runs the job's command itself.
pub(super) fn crontab_line_runs(job: &Job, line: &str) -> bool {
    let tokens = || line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    if line.contains("batchguard") && tokens().any(|t| t == job.name) {
        return true;
    }
    command_signature(job).is_some_and(|sig| line.contains(&sig))
}

/// Why `schedule` never fires (`0 0 30 2 *`), if it does not.
fn never_fires(schedule: &str) -> Option<String> {
    batchguard_config::schedule::Schedule::parse(schedule)
        .ok()?
        .never_fires()
}

/// G13: cron schedules live as files under /etc/cron.d.
fn g13(job: &Job, host: &HostFacts, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G13");
    let hits: Vec<String> = host
        .crontab_lines
        .iter()
        .filter(|l| crontab_line_runs(job, &l.text))
        .map(|l| format!("{}:{} `{}`", l.path.display(), l.line, l.text))
        .collect();
    if !hits.is_empty() {
        fs.add(
            Status::Fail,
            format!(
                "a crontab outside /etc/cron.d runs this job: {}; remove those lines (crontab -e -u USER) and schedule it with `schedule` and `batchguard cron install`",
                list(&hits, 5)
            ),
        );
    }
    let file = format!("/etc/cron.d/batchguard-{}", job.name);
    // The daemon decides what the file must say (CRON_TZ or --if-due).
    let daemon = crate::cron::flavor::host().describe();
    match (&job.schedule, f.cron_file_current) {
        (None, _) => fs.add(Status::Pass, "not scheduled"),
        (Some(s), Some(true)) => fs.add(
            Status::Pass,
            format!("schedule \"{s}\" is installed in {file} and current; cron daemon: {daemon}"),
        ),
        (Some(s), Some(false)) => fs.add(
            Status::Fail,
            format!("schedule \"{s}\": {file} is missing or outdated for the cron daemon here, {daemon}; run `batchguard cron install`"),
        ),
        (Some(s), None) => fs.add(
            Status::Unknown,
            format!("schedule \"{s}\": cannot tell whether {file} is current (cron daemon: {daemon}); run `batchguard cron install`"),
        ),
    }
    if let Some(w) = job.schedule.as_deref().and_then(never_fires) {
        fs.add(Status::Warn, w);
    }
    if !host.crontab_unreadable.is_empty() {
        fs.add(
            Status::Unknown,
            format!(
                "user crontabs not readable ({}): run check as root to scan them",
                list(&host.crontab_unreadable, 3)
            ),
        );
    }
    fs.done()
}

// ------------------------------------------------------------ G14

/// G14: cloud access never uses a personal (long-term) access key.
fn g14(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G14");
    let long: Vec<String> = f
        .aws_keys
        .iter()
        .filter(|k| k.long_term)
        .map(|k| format!("{} in {}", k.masked, k.place))
        .collect();
    let temp: Vec<String> = f
        .aws_keys
        .iter()
        .filter(|k| !k.long_term)
        .map(|k| k.place.clone())
        .collect();
    if !long.is_empty() {
        fs.add(
            Status::Fail,
            format!(
                "long-term AWS access key (AKIA…) {}: such keys belong to a person or outlive their purpose and leak; use an IAM role (instance profile) or short-lived credentials (SSO, sts assume-role), then deactivate the key",
                list(&long, 5)
            ),
        );
    }
    if !temp.is_empty() {
        fs.add(
            Status::Pass,
            format!("temporary credentials (ASIA…) only in {}", list(&temp, 5)),
        );
    }
    for n in &f.aws_notes {
        fs.add(Status::Unknown, format!("could not scan {n}"));
    }
    if !f.short_secrets.is_empty() {
        fs.add(
            Status::Warn,
            format!(
                "secret values shorter than {} characters cannot be redacted safely and are shown as they are: {}; use longer secrets, or move settings that are not secret from env_file to env",
                crate::redact::MIN_SECRET_LEN,
                list(&f.short_secrets, 5)
            ),
        );
    }
    if fs.parts.is_empty() {
        let whose = match (&job.user, f.found_user()) {
            (Some(_), Some(u)) => format!("{}'s ~/.aws", u.name),
            _ => "the run user's ~/.aws".to_string(),
        };
        fs.add(
            Status::Pass,
            format!("no AWS access key in env, env_file or {whose}"),
        );
    }
    fs.done()
}

// ------------------------------------------------------------ G15

fn isolate_howto(family: &str, job: &Job) -> String {
    let wd = if job.workdir == std::path::Path::new("/") {
        format!("/srv/{}", job.name)
    } else {
        job.workdir.display().to_string()
    };
    match family {
        "python" => format!(
            "create a virtualenv (python3 -m venv {wd}/.venv && {wd}/.venv/bin/pip install -r requirements.txt) and use command = [\"{wd}/.venv/bin/python\", …]"
        ),
        "ruby" => "install gems per project (bundle config set --local path vendor/bundle && bundle install) and run through bundle exec".to_string(),
        "node" => "install dependencies per project (npm ci into node_modules) and pin the runtime (a node under /opt, nix, or a container)".to_string(),
        "perl" => "install modules per project with carton (local/) and run through carton exec".to_string(),
        "php" => "install dependencies per project with composer (vendor/) and pin the runtime (a php under /opt, or a container)".to_string(),
        _ => "run it from an isolated environment (virtualenv, bundler, container)".to_string(),
    }
}

/// G15: dependencies never touch the global environment.
fn g15(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G15");
    let i = &f.interpreter;
    let path = i
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| i.program.clone());
    let via = i
        .via
        .as_ref()
        .map(|v| format!(" ({v})"))
        .unwrap_or_default();
    match &i.kind {
        ProgramKind::NoCommand => fs.add(Status::Unknown, "no command to inspect"),
        ProgramKind::Unresolved(why) => fs.add(
            Status::Unknown,
            format!("cannot inspect the command's interpreter: {why}"),
        ),
        ProgramKind::Wrapper(w) => {
            fs.add(Status::Pass, format!("`{}` runs through {w}", i.program))
        }
        ProgramKind::Interpreter(fam) => match &i.isolation {
            Some(iso) => fs.add(Status::Pass, format!("{path}{via} runs in {iso}")),
            None => fs.add(
                Status::Warn,
                format!(
                    "{path}{via} is the global {fam} interpreter: installing or upgrading a library for another job (or the OS) can break this one; {}",
                    isolate_howto(fam, job)
                ),
            ),
        },
        ProgramKind::Shell(sh) => fs.add(
            Status::Pass,
            format!(
                "`{}`{via} is a {sh} script: make sure the tools it calls come from isolated environments (virtualenv, bundler, containers)",
                i.program
            ),
        ),
        ProgramKind::Binary => match &i.isolation {
            Some(iso) => fs.add(Status::Pass, format!("{path}{via} runs in {iso}")),
            None => fs.add(
                Status::Pass,
                format!("{path}{via} is a compiled or self-contained program, not a shared interpreter"),
            ),
        },
    }
    fs.done()
}

// ------------------------------------------------------------ G16

/// G16: large or growing work can be spread over several instances.
fn g16(job: &Job, f: &JobFacts) -> RuleResult {
    let mut fs = Findings::new("G16");
    if job.items.is_none() {
        fs.add(
            Status::Pass,
            "not an [items] job; if its data grows, move the work to [items] so it can be spread over workers",
        );
        return fs.done();
    }
    if job.distributed.enabled {
        fs.add(
            Status::Pass,
            "[distributed] enabled: keys are spread over `batchguard worker` hosts through the PostgreSQL queue",
        );
        return fs.done();
    }
    history_note(&mut fs, f);
    let how = "enable [distributed] (a postgres:// state store and `batchguard worker JOB` on more hosts) or shard with `run --shard I/N`";
    // Newest first.
    let counts: Vec<u64> = finished(f)
        .filter_map(item_count)
        .take(RECENT_SUCCESSES)
        .collect();
    let max = counts.iter().copied().max();
    if let Some(m) = max.filter(|m| *m >= LARGE_KEYS) {
        fs.add(
            Status::Warn,
            format!("recent runs saw up to {} keys, too many for one host to keep up as they grow; {how}", thousands(m)),
        );
    }
    if counts.len() >= MIN_FIT_RUNS {
        let points: Vec<(f64, f64)> = counts
            .iter()
            .rev()
            .enumerate()
            .map(|(i, c)| (i as f64, *c as f64))
            .collect();
        let latest = counts[0];
        if let Some(fit) = LinearFit::fit(&points)
            && fit.slope > 0.0
            && latest >= GROWING_KEYS
        {
            fs.add(
                Status::Warn,
                format!(
                    "the key count is growing (about +{} per run over {} runs, latest {}): prepare to spread the work; {how}",
                    thousands(fit.slope.round() as u64),
                    fit.n,
                    thousands(latest)
                ),
            );
        }
    }
    if let Some(e) = job.guideline.expected_items.filter(|e| *e >= LARGE_KEYS) {
        fs.add(
            Status::Warn,
            format!("expected_items {} is large; {how}", thousands(e)),
        );
    }
    if fs.parts.iter().all(|p| p.0 != Status::Warn) {
        fs.add(
            Status::Pass,
            match counts.first() {
                Some(l) => format!(
                    "{} keys in the latest run and no growth trend: one host is enough",
                    thousands(*l)
                ),
                None => "no runs with item counts yet".to_string(),
            },
        );
    }
    fs.done()
}
