//! What the read commands print: compact text tables for people, and the
//! SPEC §4 JSON shapes for scripts.

use super::Format;
use crate::clock;
use crate::error::{Error, Result};
use crate::exec::Context;
use crate::exit;
use crate::store::RunRecord;
use batchguard_config::{Job, format_size};
use serde_json::json;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

fn print_json(v: &impl serde::Serialize) -> Result<i32> {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    println!("{text}");
    Ok(exit::OK)
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn code_or_signal(r: &RunRecord) -> String {
    match (r.exit_code, r.signal) {
        (_, Some(s)) => format!("sig {s}"),
        (Some(c), None) => c.to_string(),
        (None, None) => "-".into(),
    }
}

fn memory(r: &RunRecord) -> String {
    match (r.peak_memory_bytes, r.memory_max_bytes) {
        (Some(p), Some(m)) => format!("{} / {}", format_size(p), format_size(m)),
        (Some(p), None) => format_size(p),
        _ => "-".into(),
    }
}

/// `show`'s memory line: the peak, and the limit with what enforced it,
/// or that there was none.
fn memory_line(r: &RunRecord) -> String {
    let peak = r.peak_memory_bytes.map_or("peak unknown".to_string(), |p| {
        format!("peak {}", format_size(p))
    });
    match r.memory_max_bytes {
        Some(max) => format!(
            "{peak} of memory_max {} (enforced by {})",
            format_size(max),
            r.memory_enforcement
        ),
        None => format!("{peak}, no memory_max"),
    }
}

pub fn runs(runs: &[RunRecord], format: Format) -> Result<i32> {
    if format == Format::Json {
        return print_json(&runs);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.started_at.clone(),
                dash(r.duration_ms.map(clock::human_ms)),
                r.outcome.clone(),
                code_or_signal(r),
                memory(r),
                r.fence.to_string(),
                r.attempt.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "RUN",
                "STARTED",
                "DURATION",
                "OUTCOME",
                "EXIT",
                "PEAK MEMORY",
                "FENCE",
                "ATTEMPT"
            ],
            &rows
        )
    );
    Ok(exit::OK)
}

pub fn show(r: &RunRecord, format: Format) -> Result<i32> {
    if format == Format::Json {
        return print_json(r);
    }
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    kv("run", r.id.clone());
    kv("job", r.job.clone());
    kv("outcome", r.outcome.clone());
    kv("exit", code_or_signal(r));
    kv("host", format!("{} (pid {})", r.host, r.pid));
    kv("started", r.started_at.clone());
    kv("ended", dash(r.ended_at.clone()));
    kv("duration", dash(r.duration_ms.map(clock::human_ms)));
    kv("memory", memory_line(r));
    kv("lock", format!("{} fence {}", r.lock, r.fence));
    kv("attempt", r.attempt.to_string());
    if let Some(scope) = &r.scope {
        kv("scope", scope.clone());
    }
    if !r.params.is_empty() {
        let p: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        kv("params", p.join(" "));
    }
    if let Some(i) = &r.items {
        kv(
            "items",
            format!(
                "{} total, {} done, {} skipped, {} failed",
                i.total, i.done, i.skipped, i.failed
            ),
        );
    }
    if let Some(e) = &r.error {
        kv("error", e.clone());
    }
    kv("log", dash(r.log_path.clone()));
    if let Some(rerun) = &r.rerun {
        kv("re-run", rerun.clone());
    }
    print!("{out}");
    Ok(exit::OK)
}

pub fn status(ctx: &Context, jobs: &[Job], format: Format) -> Result<i32> {
    let last = ctx.store.last_runs()?;
    let now = jiff::Zoned::now();
    let mut entries = Vec::new();
    let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    for r in &last {
        if !names.contains(&r.job.as_str()) {
            names.push(r.job.as_str());
        }
    }
    names.sort();
    for name in names {
        let job = jobs.iter().find(|j| j.name == name);
        let run = last.iter().find(|r| r.job == name);
        let next = job.and_then(|j| {
            let sched = j.schedule.as_deref()?;
            let tz = clock::zone(j.timezone.as_deref());
            crate::cron::next_after(sched, &now.with_time_zone(tz))
        });
        let sched_state = match job {
            Some(j) => crate::watchdog::schedule_state(ctx, j, now.timestamp())?,
            None => None,
        };
        let (late, missed) = sched_state
            .as_ref()
            .map_or((false, false), |s| (s.late, s.missed));
        entries.push(json!({
            "job": name,
            "configured": job.is_some(),
            "schedule": job.and_then(|j| j.schedule.clone()),
            "last_run": run,
            "outcome": run.map(|r| r.outcome.clone()),
            "duration_ms": run.and_then(|r| r.duration_ms),
            "running": run.is_some_and(|r| r.outcome == "running"),
            "next_run": next.as_ref().map(clock::format_zoned),
            "late": late,
            "missed": missed,
            "last_scheduled": sched_state.as_ref().map(|s| clock::format_zoned(&s.last_fire)),
        }));
    }
    if format == Format::Json {
        return print_json(&json!({ "jobs": entries }));
    }
    // One zone for every row of a column: this host's.
    let here = clock::zone(None);
    let at = |v: &serde_json::Value| dash(v.as_str().and_then(|t| in_zone(t, &here)));
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().map(str::to_string);
            vec![
                s("job").unwrap_or_default(),
                at(&e["last_run"]["started_at"]),
                dash(s("outcome")),
                dash(e["duration_ms"].as_i64().map(clock::human_ms)),
                at(&e["next_run"]),
                dash(s("schedule")),
                health(e, now.timestamp().as_millisecond()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "JOB", "LAST RUN", "OUTCOME", "DURATION", "NEXT RUN", "SCHEDULE", "STATE"
            ],
            &rows
        )
    );
    Ok(exit::OK)
}

/// An RFC 3339 time shown in `tz`, to the second.
fn in_zone(t: &str, tz: &jiff::tz::TimeZone) -> Option<String> {
    let ts: jiff::Timestamp = t.parse().ok()?;
    Some(
        ts.to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
    )
}

/// `status`'s STATE column: what the operator should make of the job now
/// (the OUTCOME column already says how the last run ended).
fn health(e: &serde_json::Value, now_ms: i64) -> String {
    if e["missed"] == true {
        return "MISSED".into();
    }
    if e["late"] == true {
        return "late".into();
    }
    if e["running"] == true {
        let started = e["last_run"]["started_at"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond());
        return match started {
            Some(s) => format!("running for {}", clock::human_ms(now_ms - s)),
            None => "running".into(),
        };
    }
    match e["outcome"].as_str() {
        None => "never ran".into(),
        Some("success") | Some("skipped") => "ok".into(),
        Some(_) if e["configured"] == false => "not configured".into(),
        Some(_) => "FAILING".into(),
    }
}

pub fn logs(ctx: &Context, run_id: &str, follow: bool) -> Result<i32> {
    let run = ctx
        .store
        .get_run(run_id)?
        .ok_or_else(|| Error::UnknownRun(run_id.to_string()))?;
    if run.log_path.is_none() {
        eprintln!("batchguard: run {run_id} has no log ({})", run.outcome);
        return Ok(exit::OK);
    }
    // The run's own log, never a path read back from the store as such.
    let path = crate::logs::log_path(&ctx.global.log_dir, &run.job, &run.id);
    let mut file = std::fs::File::open(&path).map_err(|e| Error::io("open log", &path, e))?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::new();
    let mut pos = 0u64;
    loop {
        buf.clear();
        file.seek(SeekFrom::Start(pos))
            .and_then(|_| file.read_to_end(&mut buf))
            .map_err(|e| Error::io("read log", &path, e))?;
        pos += buf.len() as u64;
        let shown = crate::sanitize::printable_bytes(&buf);
        if stdout
            .write_all(&shown)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(exit::OK); // reader went away (e.g. `| head`)
        }
        if !follow {
            return Ok(exit::OK);
        }
        crate::runner::reap_lost(ctx, &|_| None)?;
        let running = ctx
            .store
            .get_run(run_id)?
            .is_some_and(|r| r.outcome == "running");
        if !running && buf.is_empty() {
            return Ok(exit::OK);
        }
        if buf.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn ledger(
    ctx: &Context,
    job: &str,
    scope: Option<&str>,
    limit: usize,
    max_attempts: Option<u32>,
    format: Format,
) -> Result<i32> {
    let counts = ctx.store.ledger_counts(job, scope)?;
    let mut scopes = Vec::new();
    for c in &counts {
        let failed = match ctx.store.ledger_scope(job, &c.scope, false)? {
            Some(id) => ctx.store.ledger_failed(id, limit)?,
            None => Vec::new(),
        };
        let dead = max_attempts.map(|m| failed.iter().filter(|e| e.attempts >= m).count());
        scopes.push((c, failed, dead));
    }
    if format == Format::Json {
        let v: Vec<_> = scopes
            .iter()
            .map(|(c, failed, dead)| {
                json!({
                    "scope": c.scope, "done": c.done, "failed": c.failed,
                    "in_flight": c.in_flight, "failed_for_good_listed": dead,
                    "failed_keys": failed,
                })
            })
            .collect();
        return print_json(&json!({ "job": job, "max_attempts": max_attempts, "scopes": v }));
    }
    if scopes.is_empty() {
        println!(
            "job `{job}` has no ledger{}",
            scope.map(|s| format!(" scope {s:?}")).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = scopes
        .iter()
        .map(|(c, _, _)| {
            vec![
                if c.scope.is_empty() {
                    "(default)".into()
                } else {
                    c.scope.clone()
                },
                c.done.to_string(),
                c.failed.to_string(),
                c.in_flight.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["SCOPE", "DONE", "FAILED", "IN FLIGHT"], &rows)
    );
    for (c, failed, _) in &scopes {
        if failed.is_empty() {
            continue;
        }
        println!(
            "\nfailed keys of scope {:?}{}:",
            c.scope,
            max_attempts
                .map(|m| format!(" (max_attempts {m})"))
                .unwrap_or_default()
        );
        for e in failed {
            let dead = max_attempts.is_some_and(|m| e.attempts >= m);
            println!(
                "  {}  {} attempt{}{}  {}",
                e.key,
                e.attempts,
                if e.attempts == 1 { "" } else { "s" },
                if dead { " (failed for good)" } else { "" },
                e.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(exit::OK)
}
