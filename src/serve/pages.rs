//! The HTML pages: jobs, job, run, timeline, login and errors. Rendered on
//! the server; every value from a job, its output or the store goes
//! through [`esc`].

use super::http::{Fail, Query, Resp, RouteResult, encode};
use super::svg::{self, Limit, outcome_class};
use super::view::{self, JobState};
use super::{App, Configs};
use crate::clock;
use crate::store::RunRecord;
use crate::store::dashboard::{RunBrief, Window};
use batchguard_config::{Job, format_size};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");

/// Jobs per page of `/`.
const JOBS_PER_PAGE: u64 = 100;
/// Runs per page of the job page's table and of the API.
pub const RUNS_PER_PAGE: u64 = 50;
/// One page of log text.
pub const LOG_PAGE: u64 = 64 * 1024;
/// Chart points per range at most.
const CHART_POINTS: usize = 2000;
/// Runs the timeline draws at most.
const TIMELINE_RUNS: usize = 5000;

impl From<String> for Fail {
    fn from(m: String) -> Fail {
        Fail::Bad(m)
    }
}

/// HTML-escape, and make control characters visible: terminal escapes
/// (ESC shows as ␛), other C0/C1 controls and bidirectional overrides can
/// neither run nor rearrange anything in the page.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            '\r' => {}
            '\u{7f}' => out.push('\u{2421}'),
            c if (c as u32) < 0x20 => {
                out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'))
            }
            '\u{80}'..='\u{9f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · batchguard</title><link rel=\"stylesheet\" href=\"/assets/app.css\">\
         <script src=\"/assets/app.js\" defer></script></head><body>\
         <header class=\"top\"><a class=\"brand\" href=\"/\">batchguard</a><a href=\"/\">Jobs</a>\
         <a href=\"/timeline\">Timeline</a><a href=\"/metrics\">Metrics</a>\
         <span class=\"right\">read-only dashboard</span></header><main>{body}</main></body></html>\n",
        t = esc(title)
    )
}

pub fn error_page(status: u16, msg: &str) -> String {
    layout(
        &format!("{status}"),
        &format!(
            "<h1>{status}</h1><p class=\"error\">{}</p><p><a href=\"/\">All jobs</a></p>",
            esc(msg)
        ),
    )
}

pub fn login_page(wrong: bool) -> String {
    let msg = if wrong {
        "<p class=\"error\">That token is not right.</p>"
    } else {
        ""
    };
    layout(
        "Log in",
        &format!(
            "<form class=\"login\" method=\"post\" action=\"/login\"><h1>batchguard</h1>{msg}\
             <label for=\"token\">Access token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Log in</button>\
             <p class=\"muted small\">Or send <code>Authorization: Bearer TOKEN</code>.</p></form>"
        ),
    )
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

fn outcome_badge(outcome: &str) -> String {
    badge(outcome_class(outcome), outcome)
}

/// A time in `tz` (the job's zone), and the same time in the viewer's
/// zone (filled in by app.js).
fn time_pair(ms: i64, tz: &TimeZone) -> String {
    let iso = clock::rfc3339(ms, &TimeZone::UTC);
    format!(
        "{}<br><time class=\"muted small\" datetime=\"{iso}\" data-local></time>",
        time_one(ms, tz)
    )
}

fn time_one(ms: i64, tz: &TimeZone) -> String {
    let iso = clock::rfc3339(ms, &TimeZone::UTC);
    format!(
        "<time datetime=\"{iso}\" title=\"{}\">{}</time>",
        esc(&clock::rfc3339(ms, tz)),
        esc(&short_time(ms, tz))
    )
}

/// `2026-11-30 03:30:00 JST`: a time in a zone, for tables.
fn short_time(ms: i64, tz: &TimeZone) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

fn dash() -> String {
    "<span class=\"muted\">-</span>".into()
}

fn human(ms: i64) -> String {
    clock::human_ms(ms)
}

fn dur(d: std::time::Duration) -> String {
    batchguard_config::format_duration(d)
}

fn zone_of(job: Option<&Job>) -> TimeZone {
    clock::zone(job.and_then(|j| j.timezone.as_deref()))
}

/// `Ok(())` for a name that can be a job's.
fn check_job_name(name: &str) -> Result<(), Fail> {
    if batchguard_config::is_valid_job_name(name) {
        Ok(())
    } else {
        Err(Fail::NotFound(format!("no job `{name}`")))
    }
}

/// The run `id` of the store, `NotFound` when it is none (or cannot be a
/// run id).
pub fn find_run(app: &App, id: &str) -> Result<RunRecord, Fail> {
    check_run_id(id)?;
    app.store
        .store()
        .get_run(id)?
        .ok_or_else(|| Fail::NotFound(format!("no run `{id}`")))
}

/// The first `n` failed keys of `job`'s item scope `scope` (none when the
/// scope was never recorded).
fn failed_keys(
    app: &App,
    job: &str,
    scope: &str,
    n: usize,
) -> crate::store::Result<Vec<crate::store::LedgerEntry>> {
    let store = app.store.store();
    match store.ledger_scope(job, scope, false)? {
        Some(id) => store.ledger_failed(id, n),
        None => Ok(Vec::new()),
    }
}

/// A failed key, its attempts and its last error, escaped for HTML.
fn failed_cells(e: &crate::store::LedgerEntry) -> [String; 3] {
    [
        esc(&e.key),
        e.attempts.to_string(),
        esc(e.last_error.as_deref().unwrap_or("")),
    ]
}

/// Run ids are ULIDs; anything else cannot be one.
pub fn check_run_id(id: &str) -> Result<(), Fail> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(Fail::NotFound(format!("no run `{id}`")))
    }
}

fn duration_cell(last: Option<&RunBrief>, job: Option<&Job>) -> String {
    let Some(ms) = last.and_then(|r| r.duration_ms) else {
        return dash();
    };
    let soft = job.and_then(|j| j.expected_duration);
    let hard = job.and_then(|j| j.timeout);
    if soft.is_none() && hard.is_none() {
        return esc(&human(ms));
    }
    let mut limits = Vec::new();
    if let Some(s) = soft {
        limits.push(format!("expected {}", dur(s)));
    }
    if let Some(h) = hard {
        limits.push(format!("timeout {}", dur(h)));
    }
    format!(
        "{} {}<br><span class=\"muted small\">{}</span>",
        esc(&human(ms)),
        svg::gauge(
            ms as f64,
            soft.map(|d| d.as_millis() as f64),
            hard.map(|d| d.as_millis() as f64),
            &format!("{} of {}", human(ms), limits.join(", ")),
        ),
        esc(&limits.join(" · "))
    )
}

fn memory_cell(last: Option<&RunBrief>, job: Option<&Job>) -> String {
    let Some(peak) = last.and_then(|r| r.peak_memory_bytes) else {
        return dash();
    };
    let max = job
        .and_then(|j| j.memory_max)
        .or(last.and_then(|r| r.memory_max_bytes));
    if max.is_none() {
        return esc(&format_size(peak));
    }
    format!(
        "{} {}<br><span class=\"muted small\">{}</span>",
        esc(&format_size(peak)),
        svg::gauge(
            peak as f64,
            None,
            max.map(|m| m as f64),
            &format!("peak {}", format_size(peak))
        ),
        max.map(|m| format!("memory_max {}", format_size(m)))
            .map(|s| esc(&s))
            .unwrap_or_default()
    )
}

fn state_cell(s: &JobState) -> String {
    let mut out = Vec::new();
    if s.broken.is_some() {
        out.push(badge("st-broken", "config error"));
    }
    if s.missed() {
        out.push(badge("st-missed", "MISSED"));
    } else if s.late() {
        out.push(badge("st-late", "late"));
    }
    if s.running {
        out.push(badge("o-running", "running"));
    }
    if s.last.as_ref().is_some_and(|r| view::is_bad(&r.outcome)) {
        out.push(badge("o-failure", "failing"));
    }
    out.join(" ")
}

fn holder_cell(s: &JobState) -> String {
    match &s.holder {
        None => dash(),
        Some(h) => format!(
            "<a href=\"/runs/{id}\">{id_short}</a><br><span class=\"muted small\">{who} · fence {f}</span>",
            id = esc(&h.run_id),
            id_short = esc(h.run_id.get(..10).unwrap_or(&h.run_id)),
            who = esc(&format!("{} pid {}", h.host, h.pid)),
            f = h.fence
        ),
    }
}

/// `/`: every job, failing and missed first.
pub fn jobs(app: &App, q: &Query) -> RouteResult {
    let page = q.num("page", 1, 1, 1_000_000)?;
    let per = q.num("per_page", JOBS_PER_PAGE, 1, 1000)?;
    let cfg = app.configs();
    let mut states = view::job_states(app.store.as_ref(), &cfg, &app.fires, Timestamp::now())?;
    let total = states.len() as u64;
    let pages = total.div_ceil(per).max(1);
    if page > pages {
        return Err(Fail::NotFound(format!("page {page} of {pages}")));
    }
    let failing = states.iter().filter(|s| s.rank() == 0).count();
    let mut body = format!(
        "<h1>Jobs</h1><p class=\"muted\">{total} jobs, {failing} failing or missed · state store {}</p>",
        esc(&app.state_shown)
    );
    body.push_str(
        "<div class=\"wrap\"><table class=\"jobs\"><thead><tr><th>Job</th><th>Last run</th>\
         <th>Last 20 runs</th><th>Duration</th><th>Peak memory</th><th>Next fire</th>\
         <th>State</th><th>Lock holder</th></tr></thead><tbody>",
    );
    let start = ((page - 1) * per) as usize;
    let end = (start + per as usize).min(states.len());
    let shown = &mut states[start..end];
    view::fill_page(app.store.as_ref(), shown, true)?;
    for s in shown.iter() {
        let job = s.job;
        let tz = zone_of(job);
        let desc = job
            .and_then(|j| j.description.as_deref())
            .map(|d| format!("<br><span class=\"muted small\">{}</span>", esc(d)))
            .unwrap_or_default();
        let last = match &s.last {
            Some(r) => format!(
                "{} <span class=\"small\"><a href=\"/runs/{}\">{}</a></span>",
                outcome_badge(&r.outcome),
                esc(&r.id),
                time_one(r.started_ms, &tz)
            ),
            None => "<span class=\"muted\">never ran</span>".into(),
        };
        let next = match &s.next {
            Some(z) => time_pair(z.timestamp().as_millisecond(), &tz),
            None => dash(),
        };
        let _ = write!(
            body,
            "<tr class=\"rank{}\"><td><a href=\"/jobs/{}\">{}</a>{desc}</td><td>{last}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"small\">{next}</td><td>{}</td><td class=\"small\">{}</td></tr>",
            s.rank(),
            encode(&s.name),
            esc(&s.name),
            svg::strip(&s.recent, view::STRIP, &tz),
            duration_cell(s.last.as_ref(), job),
            memory_cell(s.last.as_ref(), job),
            state_cell(s),
            holder_cell(s),
        );
    }
    body.push_str("</tbody></table></div>");
    if pages > 1 {
        body.push_str("<div class=\"pager\">");
        if page > 1 {
            let _ = write!(body, "<a href=\"/?page={}\">← previous</a>", page - 1);
        }
        let _ = write!(body, "<span>page {page} of {pages}</span>");
        if page < pages {
            let _ = write!(body, "<a href=\"/?page={}\">next →</a>", page + 1);
        }
        body.push_str("</div>");
    }
    Ok(Resp::html(200, layout("Jobs", &body)))
}

/// A time range from `range=7d` (any duration up to 10 years) or
/// `from=`/`to=` (RFC 3339 times or dates).
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub label: String,
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t.as_millisecond());
    }
    let d = s.parse::<jiff::civil::Date>().ok()?;
    Some(d.to_zoned(TimeZone::UTC).ok()?.timestamp().as_millisecond())
}

pub fn range(q: &Query, default: &str) -> Result<Range, Fail> {
    let now = clock::now_ms();
    let to_ms = match q.get("to") {
        Some(t) => parse_time(t).ok_or_else(|| {
            Fail::Bad(format!(
                "`to` = `{t}` is not an RFC 3339 time or YYYY-MM-DD"
            ))
        })?,
        None => now,
    };
    if let Some(f) = q.get("from") {
        let from_ms = parse_time(f).ok_or_else(|| {
            Fail::Bad(format!(
                "`from` = `{f}` is not an RFC 3339 time or YYYY-MM-DD"
            ))
        })?;
        if from_ms >= to_ms {
            return Err(Fail::Bad("`from` must be before `to`".into()));
        }
        return Ok(Range {
            from_ms,
            to_ms,
            label: String::new(),
        });
    }
    let label = q.get("range").unwrap_or(default).to_string();
    let d = batchguard_config::parse_duration(&label)
        .ok()
        .filter(|d| d.as_secs() >= 60 && d.as_secs() <= 3650 * 86_400)
        .ok_or_else(|| {
            Fail::Bad(format!(
                "`range` = `{label}` must be a duration from 1m to 3650d (e.g. 24h, 7d)"
            ))
        })?;
    Ok(Range {
        from_ms: to_ms - d.as_millis() as i64,
        to_ms,
        label,
    })
}

fn range_links(base: &str, current: &str, choices: &[&str]) -> String {
    let mut s = String::from("<p class=\"ranges\">Range: ");
    for c in choices {
        let on = if *c == current { " class=\"on\"" } else { "" };
        let _ = write!(s, "<a{on} href=\"{base}?range={c}\">{c}</a>");
    }
    // Any range: dates (or RFC 3339 times) in the query.
    let _ = write!(
        s,
        "</p><form class=\"ranges\" method=\"get\" action=\"{base}\">From \
         <input type=\"date\" name=\"from\" required> to \
         <input type=\"date\" name=\"to\" required> <button type=\"submit\">Show</button></form>"
    );
    s
}

/// The `check` findings of one job (SPEC §8).
pub fn findings(app: &App, cfg: &Configs, job: &Job) -> crate::check::JobReport {
    let facts = crate::cron::check_facts(
        crate::cron::DEFAULT_DIR.into(),
        std::env::current_exe().and_then(|p| p.canonicalize()).ok(),
        std::path::absolute(&app.dir).ok(),
        crate::cron::flavor::host(),
    );
    crate::check::audit(
        std::slice::from_ref(job),
        &cfg.global,
        app.store.store(),
        &facts,
    )
    .into_iter()
    .next()
    .unwrap_or(crate::check::JobReport {
        job: job.name.clone(),
        rules: Vec::new(),
    })
}

/// Whether `name` is a job the dashboard knows (configured, broken or with runs).
pub fn known_job(app: &App, cfg: &Configs, name: &str) -> Result<bool, Fail> {
    Ok(cfg.job(name).is_some()
        || cfg.broken.iter().any(|(n, _)| n == name)
        || !app.store.recent_runs(&[name.to_string()], 1)?.is_empty())
}

/// `/jobs/NAME`.
pub fn job(app: &App, name: &str, q: &Query) -> RouteResult {
    check_job_name(name)?;
    let cfg = app.configs();
    if !known_job(app, &cfg, name)? {
        return Err(Fail::NotFound(format!("no job `{name}`")));
    }
    let r = range(q, "7d")?;
    let job = cfg.job(name);
    let tz = zone_of(job);
    let before = q.get("before");
    if let Some(b) = before {
        check_run_id(b)?;
    }
    let mut body = format!("<h1>Job {}</h1>", esc(name));
    if let Some((_, e)) = cfg.broken.iter().find(|(n, _)| n == name) {
        let _ = write!(
            body,
            "<p>{}</p><pre class=\"log\">{}</pre>",
            badge("st-broken", "config error"),
            esc(e)
        );
    }
    if let Some(j) = job {
        job_summary(&mut body, j, &tz);
    }
    let base = format!("/jobs/{}", encode(name));
    history_section(&mut body, app, name, job, &r, &tz, &base)?;
    outcomes_section(&mut body, app, name, &r)?;
    ledger_section(&mut body, app, name)?;
    if let Some(j) = job {
        findings_section(&mut body, &findings(app, &cfg, j));
    }
    runs_section(&mut body, app, name, before, &tz, &base)?;
    Ok(Resp::html(200, layout(&format!("Job {name}"), &body)))
}

/// The job's settings, and its next fires in its zone and the reader's.
fn job_summary(body: &mut String, j: &Job, tz: &TimeZone) {
    body.push_str("<table class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(body, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    };
    if let Some(d) = &j.description {
        kv("description", esc(d));
    }
    kv(
        "command",
        format!("<code>{}</code>", esc(&shell_words(&j.command))),
    );
    kv(
        "schedule",
        j.schedule
            .as_deref()
            .map(|s| {
                format!(
                    "<code>{}</code> ({})",
                    esc(s),
                    esc(j.timezone.as_deref().unwrap_or("host zone"))
                )
            })
            .unwrap_or_else(dash),
    );
    kv(
        "limits",
        esc(&format!(
            "timeout {} · expected {} · memory_max {}",
            j.timeout.map(dur).unwrap_or_else(|| "-".into()),
            j.expected_duration.map(dur).unwrap_or_else(|| "-".into()),
            j.memory_max.map(format_size).unwrap_or_else(|| "-".into())
        )),
    );
    kv(
        "lock",
        esc(&format!("{} ({})", j.lock, j.concurrency.as_str())),
    );
    body.push_str("</table>");
    if let Some(s) = &j.schedule {
        body.push_str("<h2>Next fires</h2><table><tr><th>Job's zone</th><th>Your zone</th></tr>");
        let fires = crate::cron::next_fires(s, tz, Timestamp::now(), 5).unwrap_or_default();
        for f in fires {
            let ms = f.timestamp().as_millisecond();
            let iso = clock::rfc3339(ms, &TimeZone::UTC);
            let _ = write!(
                body,
                "<tr><td>{}</td><td><time datetime=\"{iso}\" data-local>{iso}</time></td></tr>",
                time_one(ms, tz)
            );
        }
        body.push_str("</table>");
    }
}

/// Duration and peak-memory charts of the range, with the job's limits.
fn history_section(
    body: &mut String,
    app: &App,
    name: &str,
    job: Option<&Job>,
    r: &Range,
    tz: &TimeZone,
    base: &str,
) -> Result<(), Fail> {
    body.push_str("<h2>History</h2>");
    body.push_str(&range_links(
        base,
        &r.label,
        &["24h", "7d", "30d", "90d", "365d"],
    ));
    let runs = app.store.runs_between(&Window {
        job: Some(name),
        ms: r.from_ms..r.to_ms,
        limit: CHART_POINTS,
    })?;
    let finished: Vec<&RunBrief> = runs.iter().filter(|r| r.outcome != "skipped").collect();
    let dpts: Vec<(&RunBrief, f64)> = finished
        .iter()
        .filter_map(|b| b.duration_ms.map(|d| (*b, d as f64 / 1000.0)))
        .collect();
    let mpts: Vec<(&RunBrief, f64)> = finished
        .iter()
        .filter_map(|b| b.peak_memory_bytes.map(|m| (*b, m as f64)))
        .collect();
    let mut dl = Vec::new();
    if let Some(e) = job.and_then(|j| j.expected_duration) {
        dl.push(Limit {
            label: "expected",
            value: e.as_secs_f64(),
            class: "lim-soft",
        });
    }
    if let Some(t) = job.and_then(|j| j.timeout) {
        dl.push(Limit {
            label: "timeout",
            value: t.as_secs_f64(),
            class: "lim-hard",
        });
    }
    let mut ml = Vec::new();
    if let Some(m) = job
        .and_then(|j| j.memory_max)
        .or(runs.iter().rev().find_map(|r| r.memory_max_bytes))
    {
        ml.push(Limit {
            label: "memory_max",
            value: m as f64,
            class: "lim-hard",
        });
    }
    let secs = |v: f64| human((v * 1000.0) as i64);
    let bytes = |v: f64| format_size(v.max(0.0) as u64);
    let _ = write!(
        body,
        "<div class=\"charts\"><figure><figcaption>Duration ({} runs)</figcaption>{}</figure>\
         <figure><figcaption>Peak memory</figcaption>{}</figure></div>",
        dpts.len(),
        svg::history("duration", &dpts, r.from_ms, r.to_ms, &dl, &secs, tz),
        svg::history("memory", &mpts, r.from_ms, r.to_ms, &ml, &bytes, tz),
    );
    if runs.len() >= CHART_POINTS {
        let _ = write!(
            body,
            "<p class=\"muted small\">The newest {CHART_POINTS} runs of the range are drawn.</p>"
        );
    }
    Ok(())
}

/// How the range's runs ended, counted by outcome.
fn outcomes_section(body: &mut String, app: &App, name: &str, r: &Range) -> Result<(), Fail> {
    let counts = app.store.outcome_counts(name, r.from_ms)?;
    body.push_str("<h2>Outcomes in this range</h2><table><tr>");
    for (o, _) in &counts {
        let _ = write!(body, "<th>{}</th>", outcome_badge(o));
    }
    body.push_str("</tr><tr>");
    for (_, n) in &counts {
        let _ = write!(body, "<td class=\"num\">{n}</td>");
    }
    if counts.is_empty() {
        body.push_str("<td class=\"muted\">no runs</td>");
    }
    body.push_str("</tr></table>");
    Ok(())
}

/// The item ledger per scope, with a few failed keys of the newest scopes.
fn ledger_section(body: &mut String, app: &App, name: &str) -> Result<(), Fail> {
    let scopes = app.store.store().ledger_counts(name, None)?;
    if !scopes.is_empty() {
        body.push_str(
            "<h2>Item ledger</h2><table><tr><th>Scope</th><th>Done</th><th>Failed</th><th>In flight</th><th>Failed keys</th></tr>",
        );
        for (i, c) in scopes.iter().rev().take(100).enumerate() {
            let mut failed = String::new();
            if c.failed > 0 && i < 20 {
                for e in failed_keys(app, name, &c.scope, 5)? {
                    let [key, attempts, error] = failed_cells(&e);
                    let _ = write!(
                        failed,
                        "<code>{key}</code> <span class=\"muted small\">{attempts} attempts: {error}</span><br>"
                    );
                }
            }
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{failed}</td></tr>",
                if c.scope.is_empty() {
                    "<span class=\"muted\">(default)</span>".to_string()
                } else {
                    esc(&c.scope)
                },
                c.done,
                c.failed,
                c.in_flight
            );
        }
        body.push_str("</table>");
    }
    Ok(())
}

/// The job's `check` findings, failures first.
fn findings_section(body: &mut String, report: &crate::check::JobReport) {
    body.push_str("<h2>Check findings</h2><table class=\"findings\"><tr><th>Rule</th><th>Status</th><th>Message</th></tr>");
    let mut rules = report.rules.clone();
    rules.sort_by(|a, b| b.status.cmp(&a.status).then(a.id.cmp(b.id)));
    for f in &rules {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(f.id),
            badge(&format!("s-{}", f.status.as_str()), f.status.as_str()),
            esc(&f.message)
        );
    }
    body.push_str("</table>");
}

/// The job's runs, newest first, a page at a time (`?before=RUN`).
fn runs_section(
    body: &mut String,
    app: &App,
    name: &str,
    before: Option<&str>,
    tz: &TimeZone,
    base: &str,
) -> Result<(), Fail> {
    let page = app
        .store
        .runs_page(name, before, RUNS_PER_PAGE as usize)?
        .ok_or_else(|| {
            Fail::NotFound(format!("no run `{}` of job `{name}`", before.unwrap_or("")))
        })?;
    body.push_str("<h2>Runs</h2>");
    body.push_str(&runs_table(&page, tz));
    body.push_str("<div class=\"pager\">");
    if before.is_some() {
        let _ = write!(body, "<a href=\"{base}\">newest</a>");
    }
    if page.len() as u64 == RUNS_PER_PAGE {
        if let Some(last) = page.last() {
            let _ = write!(
                body,
                "<a href=\"{base}?before={}\">older →</a>",
                encode(&last.id)
            );
        }
    }
    body.push_str("</div>");
    Ok(())
}

fn runs_table(runs: &[RunRecord], tz: &TimeZone) -> String {
    let mut s = String::from(
        "<table class=\"runs\"><tr><th>Run</th><th>Started</th><th>Duration</th><th>Outcome</th><th>Exit</th><th>Peak memory</th><th>Host</th></tr>",
    );
    for r in runs {
        let exit = match (r.exit_code, r.signal) {
            (_, Some(sig)) => format!("signal {sig}"),
            (Some(c), None) => c.to_string(),
            _ => "-".into(),
        };
        let _ = write!(
            s,
            "<tr><td><a href=\"/runs/{id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time_one(r.started_ms, tz),
            r.duration_ms.map(|d| esc(&human(d))).unwrap_or_else(dash),
            outcome_badge(&r.outcome),
            esc(&exit),
            r.peak_memory_bytes
                .map(|m| esc(&format_size(m)))
                .unwrap_or_else(dash),
            esc(&r.host),
            id = esc(&r.id),
        );
    }
    if runs.is_empty() {
        s.push_str("<tr><td colspan=\"7\" class=\"muted\">no runs</td></tr>");
    }
    s.push_str("</table>");
    s
}

/// Shell-style quoting for display (the re-run command, argv).
/// Shell quoting, the same as the re-run command's.
pub(crate) use crate::exec::shell_quote as quote;

fn shell_words(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// The command that re-runs `run` (SPEC §4): the one its runner recorded;
/// for runs recorded before that existed, rebuilt from the configuration
/// (`--config-dir`, `--state` with the password removed, `--file`, every
/// param and the scope). `None` for such an old ad-hoc run.
pub fn rerun(app: &App, cfg: &Configs, run: &RunRecord) -> Option<String> {
    if let Some(r) = &run.rerun {
        return Some(r.clone());
    }
    let job = cfg.job(&run.job)?;
    let mut cmd = String::from("batchguard");
    if app.dir != Path::new("/etc/batchguard") {
        let _ = write!(cmd, " --config-dir {}", quote(&app.dir.to_string_lossy()));
    }
    if app.state_in_rerun {
        let _ = write!(cmd, " --state {}", quote(&app.state_shown));
    }
    let in_dir = job.file.parent() == Some(app.dir.join("jobs").as_path());
    if in_dir {
        let _ = write!(cmd, " run {}", quote(&run.job));
    } else {
        let _ = write!(cmd, " run --file {}", quote(&job.file.to_string_lossy()));
    }
    for (k, v) in &run.params {
        let _ = write!(cmd, " --param {}", quote(&format!("{k}={v}")));
    }
    if let Some(s) = &run.scope {
        let _ = write!(cmd, " --scope {}", quote(s));
    }
    if let Some(shard) = run.lock.rsplit_once("#shard-").map(|(_, s)| s) {
        if let Some((i, n)) = shard.split_once("-of-") {
            let _ = write!(cmd, " --shard {}/{}", quote(i), quote(n));
        }
    }
    Some(cmd)
}

/// The log file of a run, only where batchguard writes logs
/// (`log_dir/JOB/RUN_ID.log`, symlinks resolved): a path read back from
/// the store is never trusted to point anywhere else.
pub fn log_file(cfg: &Configs, run: &RunRecord) -> Result<PathBuf, String> {
    let p = run
        .log_path
        .as_deref()
        .ok_or_else(|| format!("this run has no log ({})", run.outcome))?;
    let canon = std::fs::canonicalize(p).map_err(|e| format!("log {p}: {e}"))?;
    let dir = std::fs::canonicalize(&cfg.global.log_dir)
        .map_err(|e| format!("log_dir {}: {e}", cfg.global.log_dir.display()))?;
    if canon != dir.join(&run.job).join(format!("{}.log", run.id)) {
        return Err(format!(
            "log {p} is not {}/{}/{}.log: not shown",
            cfg.global.log_dir.display(),
            run.job,
            run.id
        ));
    }
    Ok(canon)
}

/// A page of a log: the text from `offset` up to `limit` bytes, ended at a
/// line break when there is one.
pub struct LogChunk {
    pub offset: u64,
    pub next_offset: u64,
    pub size: u64,
    pub text: String,
}

pub fn read_log(path: &Path, offset: Option<u64>, limit: u64) -> Result<LogChunk, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("log {}: {e}", path.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    // No offset: the tail, from the first line break of the last page.
    let (mut start, tail) = match offset {
        Some(o) => (o.min(size), false),
        None => (size.saturating_sub(limit), size > limit),
    };
    f.seek(SeekFrom::Start(start))
        .map_err(|e| format!("log: {e}"))?;
    let mut buf = Vec::new();
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| format!("log: {e}"))?;
    if tail {
        if let Some(nl) = buf
            .iter()
            .position(|&b| b == b'\n')
            .filter(|nl| nl + 1 < buf.len())
        {
            buf.drain(..=nl);
            start += nl as u64 + 1;
        }
    }
    if start + (buf.len() as u64) < size {
        if let Some(nl) = buf.iter().rposition(|&b| b == b'\n') {
            buf.truncate(nl + 1);
        }
    }
    Ok(LogChunk {
        offset: start,
        next_offset: start + buf.len() as u64,
        size,
        text: String::from_utf8_lossy(&buf).into_owned(),
    })
}

fn substitute(text: &str, run: &RunRecord) -> String {
    let mut out = text.replace("{job}", &run.job).replace("{run_id}", &run.id);
    for (k, v) in &run.params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Only http(s) URLs become links.
fn link(url: &str) -> String {
    if url.starts_with("https://") || url.starts_with("http://") {
        format!(
            "<a href=\"{u}\" rel=\"noopener noreferrer\">{u}</a>",
            u = esc(url)
        )
    } else {
        esc(url)
    }
}

/// `/runs/ID`.
pub fn run(app: &App, id: &str, q: &Query) -> RouteResult {
    check_run_id(id)?;
    let offset = match q.get("offset") {
        None => None,
        Some(_) => Some(q.num("offset", 0, 0, u64::MAX >> 2)?),
    };
    let run = find_run(app, id)?;
    let cfg = app.configs();
    let job = cfg.job(&run.job);
    let tz = zone_of(job);
    let mut body = format!(
        "<h1>Run <code>{}</code> {}</h1><p>job <a href=\"/jobs/{}\">{}</a></p>",
        esc(&run.id),
        outcome_badge(&run.outcome),
        encode(&run.job),
        esc(&run.job)
    );
    rerun_section(&mut body, app, &cfg, &run);
    record_section(&mut body, &run, &tz);
    failed_section(&mut body, app, &run)?;
    if let Some(j) = job {
        runbook_section(&mut body, j, &run);
    }
    log_section(&mut body, &cfg, &run, offset);
    Ok(Resp::html(200, layout(&format!("Run {}", run.id), &body)))
}

/// The command that runs the job again as this run ran, ready to copy.
fn rerun_section(body: &mut String, app: &App, cfg: &Configs, run: &RunRecord) {
    match rerun(app, cfg, run) {
        Some(cmd) => {
            let secret = run.params.values().any(|v| v.contains("***"));
            let _ = write!(
                body,
                "<h2>Re-run</h2><div class=\"cmd\"><code id=\"rerun\">{}</code><button type=\"button\" data-copy-from=\"rerun\" hidden>Copy</button></div>",
                esc(&cmd)
            );
            if secret {
                body.push_str("<p class=\"muted small\">*** stands for a secret value: supply it yourself.</p>");
            }
        }
        None => body.push_str(
            "<h2>Re-run</h2><p class=\"muted\">An ad-hoc run (or a job no longer configured): re-run it with its own <code>batchguard exec</code> command line.</p>",
        ),
    }
}

/// Every field of the run's record.
fn record_section(body: &mut String, run: &RunRecord, tz: &TimeZone) {
    body.push_str("<h2>Record</h2><table class=\"kv\">");
    {
        let mut kv = |k: &str, v: String| {
            let _ = write!(body, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
        };
        let opt = |v: Option<String>| v.map(|s| esc(&s)).unwrap_or_else(dash);
        kv("id", format!("<code>{}</code>", esc(&run.id)));
        kv("job", esc(&run.job));
        kv("outcome", outcome_badge(&run.outcome));
        kv("exit_code", opt(run.exit_code.map(|c| c.to_string())));
        kv("signal", opt(run.signal.map(|c| c.to_string())));
        kv("host", esc(&run.host));
        kv("pid", run.pid.to_string());
        kv(
            "lock / fence",
            esc(&format!("{} / {}", run.lock, run.fence)),
        );
        kv("attempt", run.attempt.to_string());
        kv("scope", opt(run.scope.clone()));
        kv("started_at", time_pair(run.started_ms, tz));
        kv("ended_at", opt(run.ended_at.clone()));
        kv("duration", opt(run.duration_ms.map(human)));
        kv(
            "peak memory",
            esc(&format!(
                "{} of {} ({})",
                run.peak_memory_bytes
                    .map(format_size)
                    .unwrap_or_else(|| "-".into()),
                run.memory_max_bytes
                    .map(format_size)
                    .unwrap_or_else(|| "no limit".into()),
                run.memory_enforcement
            )),
        );
        kv(
            "items",
            opt(run.items.map(|i| {
                format!(
                    "{} total, {} done, {} skipped, {} failed",
                    i.total, i.done, i.skipped, i.failed
                )
            })),
        );
        kv(
            "params",
            if run.params.is_empty() {
                dash()
            } else {
                run.params
                    .iter()
                    .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        kv("error", opt(run.error.clone()));
        kv("log_path", opt(run.log_path.clone()));
    }
    body.push_str("</table>");
}

/// The keys this run failed, with their attempts and errors from the ledger.
fn failed_section(body: &mut String, app: &App, run: &RunRecord) -> Result<(), Fail> {
    let mut failed_rows = String::new();
    if run.items.is_some_and(|i| i.failed > 0) || !run.items_failed.is_empty() {
        let scope = run.scope.clone().unwrap_or_default();
        let mut shown = Vec::new();
        for e in failed_keys(app, &run.job, &scope, 100)? {
            if e.run_id.as_deref() == Some(run.id.as_str()) || run.items_failed.contains(&e.key) {
                let [key, attempts, error] = failed_cells(&e);
                let _ = write!(
                    failed_rows,
                    "<tr><td><code>{key}</code></td><td class=\"num\">{attempts}</td><td>{error}</td></tr>"
                );
                shown.push(e.key);
            }
        }
        for k in run.items_failed.iter().filter(|k| !shown.contains(k)) {
            let _ = write!(
                failed_rows,
                "<tr><td><code>{}</code></td><td></td><td class=\"muted\">(no longer failed in the ledger)</td></tr>",
                esc(k)
            );
        }
        let _ = write!(
            body,
            "<h2>Failed keys</h2><table><tr><th>Key</th><th>Attempts</th><th>Error</th></tr>{failed_rows}</table>"
        );
    }
    Ok(())
}

/// The job's runbook, its templates filled in for this run.
fn runbook_section(body: &mut String, j: &Job, run: &RunRecord) {
    let rb = &j.runbook;
    if rb.url.is_some() || rb.verify.is_some() || rb.notes.is_some() {
        body.push_str("<h2>Runbook</h2><table class=\"kv\">");
        if let Some(u) = &rb.url {
            let _ = write!(
                body,
                "<tr><th>url</th><td>{}</td></tr>",
                link(&substitute(u, run))
            );
        }
        if let Some(v) = &rb.verify {
            let _ = write!(
                body,
                "<tr><th>verify</th><td>{}</td></tr>",
                esc(&substitute(v, run))
            );
        }
        if let Some(n) = &rb.notes {
            let _ = write!(
                body,
                "<tr><th>notes</th><td>{}</td></tr>",
                esc(&substitute(n, run))
            );
        }
        body.push_str("</table>");
    }
}

/// The run's log: the tail by default, or a page from `offset`.
fn log_section(body: &mut String, cfg: &Configs, run: &RunRecord, offset: Option<u64>) {
    body.push_str("<h2>Log</h2>");
    match log_file(cfg, run).and_then(|p| read_log(&p, offset, LOG_PAGE)) {
        Err(e) => {
            let _ = write!(body, "<p class=\"muted\">{}</p>", esc(&e));
        }
        Ok(c) => {
            let base = format!("/runs/{}", encode(&run.id));
            let what = if offset.is_none() {
                if c.offset > 0 {
                    format!(
                        "the last {} of {}",
                        format_size(c.size - c.offset),
                        format_size(c.size)
                    )
                } else {
                    format!("the whole log ({})", format_size(c.size))
                }
            } else {
                format!("bytes {}–{} of {}", c.offset, c.next_offset, c.size)
            };
            let _ = write!(body, "<p class=\"muted small\">Showing {}. ", esc(&what));
            let _ = write!(
                body,
                "<a href=\"{base}?offset=0\">from the start</a> · <a href=\"{base}\">tail</a>"
            );
            if offset.is_some() && c.next_offset < c.size {
                let _ = write!(
                    body,
                    " · <a href=\"{base}?offset={}\">next page →</a>",
                    c.next_offset
                );
            }
            if let Some(o) = offset.filter(|o| *o > 0) {
                let _ = write!(
                    body,
                    " · <a href=\"{base}?offset={}\">← previous page</a>",
                    o.saturating_sub(LOG_PAGE)
                );
            }
            let _ = write!(
                body,
                "</p><pre class=\"log\" id=\"log\">{}</pre>",
                esc(&c.text)
            );
        }
    }
}

/// `/timeline`: all jobs' runs on one axis.
pub fn timeline(app: &App, q: &Query) -> RouteResult {
    let r = range(q, "24h")?;
    let now = clock::now_ms();
    // Runs that started a while before the range may still be under way in it.
    let lookback = (r.to_ms - r.from_ms).min(86_400_000);
    let runs = app.store.runs_between(&Window {
        job: None,
        ms: r.from_ms - lookback..r.to_ms,
        limit: TIMELINE_RUNS,
    })?;
    let mut by_job: std::collections::BTreeMap<String, Vec<&RunBrief>> = Default::default();
    for b in &runs {
        if b.ended_ms.unwrap_or(now) >= r.from_ms && b.outcome != "skipped" {
            by_job.entry(b.job.clone()).or_default().push(b);
        }
    }
    let rows: Vec<(String, Vec<&RunBrief>)> = by_job.into_iter().collect();
    let tz = TimeZone::system();
    let shown: usize = rows.iter().map(|(_, v)| v.len()).sum();
    let mut body = String::from("<h1>Timeline</h1>");
    body.push_str(&range_links(
        "/timeline",
        &r.label,
        &["6h", "24h", "3d", "7d"],
    ));
    let _ = write!(
        body,
        "<p class=\"muted\">{shown} runs of {} jobs from {} to {} (host time zone{})</p>",
        rows.len(),
        time_one(r.from_ms, &tz),
        time_one(r.to_ms, &tz),
        if runs.len() >= TIMELINE_RUNS {
            format!("; only the newest {TIMELINE_RUNS} runs are drawn")
        } else {
            String::new()
        }
    );
    let span = r.to_ms - r.from_ms;
    let _ = write!(
        body,
        "<div class=\"pager\"><a href=\"/timeline?from={}&amp;to={}\">← earlier</a>",
        encode(&clock::rfc3339(r.from_ms - span, &TimeZone::UTC)),
        encode(&clock::rfc3339(r.from_ms, &TimeZone::UTC))
    );
    if q.get("to").is_some() && r.to_ms < now {
        let _ = write!(
            body,
            "<a href=\"/timeline?from={}&amp;to={}\">later →</a>",
            encode(&clock::rfc3339(r.to_ms, &TimeZone::UTC)),
            encode(&clock::rfc3339((r.to_ms + span).min(now), &TimeZone::UTC))
        );
    }
    body.push_str("</div><div class=\"wrap\">");
    body.push_str(&svg::gantt(&rows, r.from_ms, r.to_ms, now, &tz));
    body.push_str("</div>");
    Ok(Resp::html(200, layout("Timeline", &body)))
}
