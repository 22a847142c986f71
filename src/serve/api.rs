//! The JSON API (SPEC §10), in the shapes of `--format json`:
//! - `/api/jobs`: `{"jobs": [...]}` with `status --format json`'s entries
//!   (paged: `limit` (default 100, at most 1000), `offset`; `total` says
//!   how many);
//! - `/api/jobs/NAME`: that job's status entry plus `outcome_counts`,
//!   `ledger` (the `ledger --format json` shape), `check` (one `check`
//!   report) and `next_fires`;
//! - `/api/jobs/NAME/runs?limit=&before=`: `runs --format json` (an array of
//!   run records, newest first); the next page's URL is in the `Link`
//!   header (`rel="next"`);
//! - `/api/runs/ID`: `show --format json`;
//! - `/api/runs/ID/log?offset=&limit=`: a page of the log.

use super::App;
use super::http::{Fail, Query, Resp, RouteResult, encode};
use super::pages::{self, check_run_id};
use super::view;
use crate::clock;
use jiff::Timestamp;
use serde_json::json;

pub fn metrics(app: &App) -> RouteResult {
    let cfg = app.configs();
    let since = |j: &batchguard_config::Job| cfg.modified(&j.name);
    let text = super::metrics::render(
        app.store.as_ref(),
        &cfg.global,
        &cfg.jobs,
        &app.fires,
        &since,
    )?;
    Ok(Resp::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

pub fn jobs(app: &App, q: &Query) -> RouteResult {
    let limit = q.num("limit", 100, 1, 1000)? as usize;
    let offset = q.num("offset", 0, 0, u32::MAX as u64)? as usize;
    let cfg = app.configs();
    let mut states = view::job_states(app.store.as_ref(), &cfg, &app.fires, Timestamp::now())?;
    let total = states.len();
    let start = offset.min(total);
    let shown = &mut states[start..(start + limit).min(total)];
    view::fill_page(app.store.as_ref(), shown, false)?;
    let jobs: Vec<_> = shown.iter().map(|s| s.json()).collect();
    Ok(Resp::json(
        200,
        &json!({ "jobs": jobs, "total": total, "offset": offset, "limit": limit }),
    ))
}

pub fn job(app: &App, name: &str, q: &Query) -> RouteResult {
    if !batchguard_config::is_valid_job_name(name) {
        return Err(Fail::NotFound(format!("no job `{name}`")));
    }
    let cfg = app.configs();
    if !pages::known_job(app, &cfg, name)? {
        return Err(Fail::NotFound(format!("no job `{name}`")));
    }
    let r = pages::range(q, "30d")?;
    let now = Timestamp::now();
    let mut states = view::job_states_of(
        app.store.as_ref(),
        &cfg,
        &app.fires,
        vec![name.to_string()],
        now,
    )?;
    view::fill_page(app.store.as_ref(), &mut states, false)?;
    let state = states
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Fail::NotFound(format!("no job `{name}`")))?;
    let mut v = state.json();
    let counts: serde_json::Map<String, serde_json::Value> = app
        .store
        .outcome_counts(name, r.from_ms)?
        .into_iter()
        .map(|(o, n)| (o, json!(n)))
        .collect();
    v["outcome_counts"] = json!({
        "since": clock::rfc3339(r.from_ms, &jiff::tz::TimeZone::UTC),
        "counts": counts,
    });
    let job = cfg.job(name);
    let max_attempts = job.and_then(|j| j.items.as_ref().map(|i| i.max_attempts));
    let mut scopes = Vec::new();
    for c in app.store.store().ledger_counts(name, None)? {
        let failed = match app.store.store().ledger_scope(name, &c.scope, false)? {
            Some(id) if c.failed > 0 => app.store.store().ledger_failed(id, 20)?,
            _ => Vec::new(),
        };
        let dead = max_attempts.map(|m| failed.iter().filter(|e| e.attempts >= m).count());
        scopes.push(json!({
            "scope": c.scope, "done": c.done, "failed": c.failed,
            "in_flight": c.in_flight, "failed_for_good_listed": dead,
            "failed_keys": failed,
        }));
    }
    v["ledger"] = json!({ "job": name, "max_attempts": max_attempts, "scopes": scopes });
    v["check"] = match job {
        Some(j) => serde_json::to_value(pages::findings(app, &cfg, j)).unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    let fires: Vec<String> = job
        .and_then(|j| {
            let s = j.schedule.as_deref()?;
            let tz = clock::zone(j.timezone.as_deref());
            crate::cron::next_fires(s, &tz, now, 5).ok()
        })
        .unwrap_or_default()
        .iter()
        .map(clock::format_zoned)
        .collect();
    v["next_fires"] = json!(fires);
    Ok(Resp::json(200, &v))
}

pub fn runs(app: &App, name: &str, q: &Query) -> RouteResult {
    if !batchguard_config::is_valid_job_name(name) {
        return Err(Fail::NotFound(format!("no job `{name}`")));
    }
    let limit = q.num("limit", pages::RUNS_PER_PAGE, 1, 1000)?;
    let before = q.get("before");
    if let Some(b) = before {
        check_run_id(b)?;
    }
    let cfg = app.configs();
    if !pages::known_job(app, &cfg, name)? {
        return Err(Fail::NotFound(format!("no job `{name}`")));
    }
    let page = app
        .store
        .runs_page(name, before, limit as usize)?
        .ok_or_else(|| {
            Fail::NotFound(format!(
                "no run `{}` of job `{name}`",
                before.unwrap_or_default()
            ))
        })?;
    let mut resp = Resp::json(200, &page);
    if page.len() as u64 == limit {
        if let Some(last) = page.last() {
            resp = resp.header(
                "Link",
                format!(
                    "</api/jobs/{}/runs?limit={limit}&before={}>; rel=\"next\"",
                    encode(name),
                    encode(&last.id)
                ),
            );
        }
    }
    Ok(resp)
}

pub fn run(app: &App, id: &str) -> RouteResult {
    let run = pages::find_run(app, id)?;
    Ok(Resp::json(200, &run))
}

pub fn log(app: &App, id: &str, q: &Query) -> RouteResult {
    check_run_id(id)?;
    let offset = q.num("offset", 0, 0, u64::MAX >> 2)?;
    let limit = q.num("limit", pages::LOG_PAGE, 1, 4 * pages::LOG_PAGE)?;
    let run = app
        .store
        .store()
        .get_run(id)?
        .ok_or_else(|| Fail::NotFound(format!("no run `{id}`")))?;
    let cfg = app.configs();
    let path = pages::log_file(&cfg, &run).map_err(Fail::NotFound)?;
    let c = pages::read_log(&path, Some(offset), limit).map_err(Fail::NotFound)?;
    Ok(Resp::json(
        200,
        &json!({
            "run_id": run.id,
            "offset": c.offset,
            "next_offset": c.next_offset,
            "size": c.size,
            "eof": c.next_offset >= c.size,
            "running": run.outcome == "running",
            "text": c.text,
        }),
    ))
}
