//! The Prometheus metrics (SPEC §10), served at `/metrics` and written to
//! `metrics_textfile` after every run for node_exporter's textfile
//! collector.
//!
//! Per-job metrics cover the configured jobs only: their names are bounded
//! by the configuration, while ad-hoc `exec --name` names are chosen per
//! invocation and could grow without bound. No run ids, no scopes, no
//! sample timestamps.

use super::ServeError;
use super::view;
use crate::store::dashboard::DashboardStore;
use batchguard_config::{Global, Job};
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Every outcome `batchguard_job_runs_total` has a sample for (zero
/// included, so `increase()` sees the first one).
const OUTCOMES: &[&str] = &[
    "success", "failure", "timeout", "oom", "killed", "fenced", "skipped", "lost",
];

/// A label value in the text format: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }
    fn job(&mut self, job: &str, value: String) {
        self.samples
            .push((format!("{{job=\"{}\"}}", label(job)), value));
    }
    /// A sample of `job` with one more label.
    fn job_and(&mut self, job: &str, key: &str, value: &str, n: u64) {
        self.samples.push((
            format!("{{job=\"{}\",{key}=\"{value}\"}}", label(job)),
            n.to_string(),
        ));
    }
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{labels} {v}", self.name);
        }
    }
}

/// The families [`render`] writes, in this order: name, type, help.
const FAMILIES: [(&str, &str, &str); 11] = [
    (
        "batchguard_job_last_run_timestamp_seconds",
        "gauge",
        "Start of the job's newest run that was not skipped (Unix seconds).",
    ),
    (
        "batchguard_job_last_success_timestamp_seconds",
        "gauge",
        "End of the job's newest successful run (Unix seconds).",
    ),
    (
        "batchguard_job_last_duration_seconds",
        "gauge",
        "Duration of the job's newest finished run.",
    ),
    (
        "batchguard_job_last_peak_memory_bytes",
        "gauge",
        "Peak memory of the job's newest run.",
    ),
    (
        "batchguard_job_memory_max_bytes",
        "gauge",
        "The job's memory_max.",
    ),
    (
        "batchguard_job_next_run_timestamp_seconds",
        "gauge",
        "The job's next scheduled fire (Unix seconds).",
    ),
    (
        "batchguard_job_runs_total",
        "counter",
        "Finished runs of the job by outcome.",
    ),
    (
        "batchguard_job_items_total",
        "gauge",
        "Keys in the job's item ledger (all scopes) by state: done, failed, pending (in flight).",
    ),
    (
        "batchguard_job_running",
        "gauge",
        "1 while a run of the job is running.",
    ),
    (
        "batchguard_job_missed",
        "gauge",
        "1 when the job's latest scheduled fire did not start within missed_grace.",
    ),
    (
        "batchguard_outbox_pending",
        "gauge",
        "Notifications stored but not delivered yet.",
    ),
];

/// The metrics in the Prometheus text format (version 0.0.4).
pub fn render(
    store: &dyn DashboardStore,
    global: &Global,
    jobs: &[Job],
    fires: &view::FireCache,
    since: &dyn Fn(&Job) -> Option<Timestamp>,
) -> crate::store::Result<String> {
    let now = Timestamp::now();
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let briefs = store.last_briefs(&names)?;
    let newest: HashMap<String, i64> = briefs.iter().map(|(b, n)| (b.job.clone(), *n)).collect();
    let last: HashMap<String, _> = briefs
        .into_iter()
        .map(|(r, _)| (r.job.clone(), r))
        .collect();
    let success: HashMap<String, _> = store
        .last_successes(&names)?
        .into_iter()
        .map(|r| (r.job.clone(), r))
        .collect();
    let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (job, outcome, n) in store.run_totals()? {
        totals.insert((job, outcome), n);
    }
    let items: HashMap<String, _> = store
        .item_totals()?
        .into_iter()
        .map(|t| (t.job.clone(), t))
        .collect();
    let running = store.store().running_runs()?;
    let pending = store.store().outbox_pending()?;
    let grace_ms = global.missed_grace.as_millis() as i64;

    let [
        mut last_run,
        mut last_success,
        mut duration,
        mut peak,
        mut mem_max,
        mut next,
        mut runs_total,
        mut items_total,
        mut running_f,
        mut missed,
        mut outbox,
    ] = FAMILIES.map(|(name, kind, help)| Family::new(name, kind, help));
    for job in jobs {
        let name = job.name.as_str();
        if let Some(r) = last.get(name) {
            if r.outcome != "skipped" {
                last_run.job(name, seconds(r.started_ms));
            }
            if let Some(d) = r.duration_ms.filter(|_| r.outcome != "running") {
                duration.job(name, seconds(d));
            }
            if let Some(p) = r.peak_memory_bytes {
                peak.job(name, p.to_string());
            }
        }
        if let Some(s) = success.get(name) {
            let end = s
                .ended_ms
                .unwrap_or(s.started_ms + s.duration_ms.unwrap_or(0));
            last_success.job(name, seconds(end));
        }
        if let Some(m) = job.memory_max {
            mem_max.job(name, m.to_string());
        }
        let f = fires.get(job, now);
        if let Some(n) = &f.next {
            next.job(name, seconds(n.timestamp().as_millisecond()));
        }
        for outcome in OUTCOMES {
            let n = totals
                .get(&(name.to_string(), outcome.to_string()))
                .copied()
                .unwrap_or(0);
            runs_total.job_and(name, "outcome", outcome, n);
        }
        let t = items.get(name).cloned().unwrap_or_default();
        for (state, n) in [
            ("done", t.done),
            ("failed", t.failed),
            ("pending", t.in_flight),
        ] {
            items_total.job_and(name, "state", state, n);
        }
        let is_running = running.iter().any(|r| r.job == name);
        running_f.job(name, u8::from(is_running).to_string());
        let is_missed = view::sched_state(
            since(job),
            f.last.as_ref(),
            newest.get(name).copied(),
            grace_ms,
            now,
        )
        .is_some_and(|s| s.missed);
        missed.job(name, u8::from(is_missed).to_string());
    }
    outbox.samples.push((String::new(), pending.to_string()));

    let mut out = String::new();
    for f in [
        &last_run,
        &last_success,
        &duration,
        &peak,
        &mem_max,
        &next,
        &runs_total,
        &items_total,
        &running_f,
        &missed,
        &outbox,
    ] {
        f.write(&mut out);
    }
    Ok(out)
}

/// Write the metrics to `global.metrics_textfile` atomically: a temporary
/// file in the same directory, synced, then renamed over the target, so
/// node_exporter never reads half a file. Nothing to do without the key.
pub fn write_textfile(
    store: &dyn DashboardStore,
    global: &Global,
    jobs: &[Job],
) -> Result<(), ServeError> {
    let Some(path) = &global.metrics_textfile else {
        return Ok(());
    };
    let fires = view::FireCache::default();
    let text = render(store, global, jobs, &fires, &view::configured_since)?;
    let err = |source| ServeError::Textfile {
        path: path.clone(),
        source,
    };
    // node_exporter runs as another user: readable whatever the umask.
    crate::atomic_file::replace(path, text.as_bytes(), 0o644).map_err(err)?;
    tracing::debug!(path = %path.display(), "metrics textfile written");
    Ok(())
}
