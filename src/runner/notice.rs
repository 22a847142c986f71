//! Turning what happened to a run into notifications: the payload (with the
//! runbook rendered for this run's params and the exact re-run command), the
//! noise decision, the outbox, and a bounded flush. Called once the run's
//! own result is recorded, so nothing here can change it.

use super::base_record;
use crate::clock;
use crate::exec::{Context, Prepared, Request, builtin, prepare, rerun_command};
use crate::notify::{self, FailedItem, Payload, Runbook, noise::Decision};
use crate::outcome::Outcome;
use crate::store::{RunEnd, RunRecord};
use batchguard_config::{Job, template};

/// The event a finished run raises, and whether it counts as bad for the
/// noise control.
fn event_of(outcome: Outcome) -> (&'static str, bool) {
    match outcome {
        Outcome::Success => ("success", false),
        Outcome::Failure { .. } | Outcome::Killed { .. } => ("failure", true),
        Outcome::Timeout => ("timeout", true),
        Outcome::Oom => ("oom", true),
        Outcome::Lost => ("lost", true),
        Outcome::Fenced => ("fenced", false),
        Outcome::Skipped => ("skipped", false),
    }
}

fn render(job: &Job, p: &Prepared, run_id: &str, t: &Option<String>) -> Option<String> {
    let t = t.as_ref()?;
    let text = template::render(t, &|n| builtin(job, run_id, p, n)).unwrap_or_else(|_| t.clone());
    Some(p.redactor.redact(&text).into_owned())
}

fn message(
    job: &Job,
    host: &str,
    outcome: Outcome,
    end: &RunEnd,
    duration_ms: Option<i64>,
) -> String {
    let after = duration_ms
        .map(|d| format!(" after {}", clock::human_ms(d)))
        .unwrap_or_default();
    let what = match outcome {
        Outcome::Failure { .. } => match (end.exit_code, &end.items) {
            (_, Some(i)) if i.failed > 0 => format!("failed: {} items failed", i.failed),
            (Some(c), _) => format!("failed with exit code {c}"),
            _ => "failed".to_string(),
        },
        Outcome::Timeout => "was stopped at its timeout".to_string(),
        Outcome::Oom => "was killed at its memory limit".to_string(),
        Outcome::Killed { signal } => format!("was killed by signal {signal}"),
        Outcome::Lost => "was lost: its runner died".to_string(),
        Outcome::Fenced => "was fenced: a newer run took its lock".to_string(),
        Outcome::Skipped => match &end.error {
            Some(e) => format!("was skipped: {e}"),
            None => "was skipped: its lock is held by another run".to_string(),
        },
        Outcome::Success => "succeeded".to_string(),
    };
    format!("Job {} {what} on {host}{after}.", job.name)
}

/// The payload for a run of `job` (the runbook rendered with its params).
#[expect(clippy::too_many_arguments, reason = "a plain constructor")]
pub(crate) fn payload(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    event: &str,
    outcome: Outcome,
    end: &RunEnd,
    tail: &[String],
    items_failed: &[String],
) -> Payload {
    let duration_ms = (end.ended_ms > 0).then(|| end.ended_ms - record.started_ms);
    let mut details = Vec::new();
    if !items_failed.is_empty() {
        let scope = p.scope.as_deref().unwrap_or("");
        if let Ok(Some(id)) = ctx.store.ledger_scope(&job.name, scope, false) {
            if let Ok(entries) = ctx.store.ledger_failed(id, 100) {
                details = entries
                    .into_iter()
                    .filter(|e| items_failed.contains(&e.key))
                    .map(|e| FailedItem {
                        key: e.key,
                        attempts: e.attempts,
                        last_error: e.last_error,
                    })
                    .collect();
            }
        }
    }
    Payload {
        id: notify::new_id(),
        event: event.to_string(),
        job: job.name.clone(),
        host: ctx.me.host.clone(),
        run_id: Some(record.id.clone()),
        outcome: Some(outcome.as_str().to_string()),
        exit_code: end.exit_code,
        signal: end.signal,
        started_at: Some(record.started_at.clone()),
        duration_ms,
        peak_memory_bytes: end.peak_memory_bytes,
        memory_max_bytes: job.memory_max,
        items_failed: items_failed.to_vec(),
        items_failed_details: details,
        log_tail: tail
            .iter()
            .map(|l| p.redactor.redact(l).into_owned())
            .collect(),
        log_path: record.log_path.clone(),
        // As the run's own runner was invoked: a lost run is noticed by
        // another command, whose command line says nothing of it.
        rerun: record
            .rerun
            .clone()
            .or_else(|| Some(rerun_command(ctx, job, p))),
        runbook: Runbook {
            url: render(job, p, &record.id, &job.runbook.url),
            verify: render(job, p, &record.id, &job.runbook.verify),
            notes: render(job, p, &record.id, &job.runbook.notes),
        },
        dashboard_url: ctx.global.dashboard_url.clone(),
        message: p
            .redactor
            .redact(&message(job, &ctx.me.host, outcome, end, duration_ms))
            .into_owned(),
        digest: None,
    }
}

/// After a run's end is recorded: decide, store and deliver its
/// notifications. Errors are logged, never returned: the job's result
/// stands whatever the channels do. Says whether the noise policy told
/// this run (so cron mail follows the same policy, SPEC §7).
#[expect(clippy::too_many_arguments, reason = "a plain entry point")]
pub(crate) fn run_ended(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    outcome: Outcome,
    end: &RunEnd,
    tail: &[String],
    items_failed: &[String],
) -> Told {
    let (event, bad) = event_of(outcome);
    let mut payload = payload(ctx, job, p, record, event, outcome, end, tail, items_failed);
    let now = clock::now_ms();
    let noise_counted = bad || outcome == Outcome::Success;
    let decision = if noise_counted {
        match notify::noise::decide(
            ctx.store.as_ref(),
            &job.name,
            bad,
            now,
            ctx.global.notify_digest,
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "noise control unavailable; notifying anyway");
                Decision::Send { digest: None }
            }
        }
    } else {
        Decision::Send { digest: None }
    };
    let mut stored = 0;
    let wanted = match &decision {
        Decision::Send { digest } => {
            payload.digest = digest.clone();
            if let Some(d) = digest {
                payload.message = format!(
                    "{} Still failing: {} bad runs since {}.",
                    payload.message, d.failures, d.failing_since
                );
            }
            notify::wanted(job, event)
        }
        Decision::Suppress => false,
        Decision::Recovered { failures } => {
            // Ping channels get the plain success; the others `recovered`.
            stored += notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, false);
            payload.id = notify::new_id();
            payload.event = "recovered".into();
            payload.message = format!(
                "Job {} recovered on {} after {failures} bad run{}.",
                job.name,
                ctx.me.host,
                if *failures == 1 { "" } else { "s" }
            );
            notify::wanted(job, "recovered")
        }
        Decision::Quiet => false,
    };
    stored += notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, wanted);
    let told = match decision {
        // Without a channel that carries messages, stderr is the report.
        _ if !has_message_channel(ctx, job) => Told::Sent,
        Decision::Suppress => Told::Suppressed,
        _ if wanted && stored == 0 && has_message_channel(ctx, job) => Told::NotStored,
        _ => Told::Sent,
    };
    // Nothing new and nothing waiting (one cheap read): no flush at all, so
    // a quiet success costs no write transaction here.
    if ctx.invocation.read_only || stored == 0 && ctx.store.outbox_pending().unwrap_or(1) == 0 {
        return told;
    }
    if let Some(report) = deliver(ctx).filter(|r| r.failed > 0) {
        tracing::warn!(
            "{} notification deliveries failed; {} left in the outbox for `batchguard notify flush`",
            report.failed,
            report.pending
        );
    }
    told
}

/// Deliver what the outbox holds, within the flush budget, unless this is
/// a read command: its notifications wait for the watchdog or the next run.
fn deliver(ctx: &Context) -> Option<notify::FlushReport> {
    (!ctx.invocation.read_only)
        .then(|| notify::flush(ctx.store.as_ref(), &ctx.global, notify::FLUSH_BUDGET, false))
}

/// What the noise policy did with a run's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Told {
    /// Sent (or nothing to send): the report on stderr says the same.
    Sent,
    /// Summarised into a later digest: stderr stays quiet too.
    Suppressed,
    /// The notification could not even be stored: stderr is all there is.
    NotStored,
}

/// Does the job have a channel that carries messages (not only pings)?
fn has_message_channel(ctx: &Context, job: &Job) -> bool {
    job.notify
        .channels
        .iter()
        .any(|name| !notify::is_ping(&ctx.global, name))
}

/// A run found lost (its runner died): counted as a bad run and notified
/// like one, with the last lines of its log.
pub(crate) fn lost(ctx: &Context, job: &Job, p: &Prepared, run: &RunRecord) {
    let tail = run
        .log_path
        .as_deref()
        .map(|l| crate::logs::tail_file(std::path::Path::new(l), crate::logs::TAIL_LINES))
        .unwrap_or_default();
    let end = RunEnd {
        ended_ms: run.heartbeat_ms.max(run.started_ms),
        ..RunEnd::default()
    };
    run_ended(ctx, job, p, run, Outcome::Lost, &end, &tail, &[]);
}

/// The run is still going but has passed `expected_duration` (sent once
/// per run, while it runs).
pub(crate) fn overrun(ctx: &Context, job: &Job, p: &Prepared, run: &RunRecord, elapsed_ms: i64) {
    if !notify::wanted(job, "overrun") || !overrun_news(ctx, job, run) {
        return;
    }
    let end = RunEnd::default();
    let mut payload = payload(
        ctx,
        job,
        p,
        run,
        "overrun",
        Outcome::Success,
        &end,
        &[],
        &[],
    );
    payload.outcome = Some("running".into());
    payload.duration_ms = Some(elapsed_ms);
    payload.message = format!(
        "Job {} has been running for {} on {}, longer than its expected_duration {}.",
        job.name,
        clock::human_ms(elapsed_ms),
        ctx.me.host,
        job.expected_duration
            .map(batchguard_config::format_duration)
            .unwrap_or_default()
    );
    let _ = notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, true);
    deliver(ctx);
}

/// Repeated overruns are summarised like repeated failures (SPEC §7): an
/// overrun is news when the job's previous run did not overrun, or when the
/// last overrun told is older than `notify_digest`. The run told is kept in
/// the job's noise state.
fn overrun_news(ctx: &Context, job: &Job, run: &RunRecord) -> bool {
    let store = ctx.store.as_ref();
    let Ok(mut st) = store.notify_state(&job.name) else {
        return true;
    };
    let expected = job
        .expected_duration
        .map_or(i64::MAX, |d| d.as_millis() as i64);
    let previous_overran = store
        .last_finished_run(&job.name)
        .ok()
        .flatten()
        .is_some_and(|r| r.duration_ms.is_some_and(|d| d > expected));
    let last_told_ms = st
        .overrun_run
        .as_deref()
        .and_then(|id| store.get_run(id).ok().flatten())
        .map(|r| r.started_ms);
    let digest_ms = ctx.global.notify_digest.as_millis() as i64;
    let news = !previous_overran || last_told_ms.is_none_or(|t| run.started_ms - t >= digest_ms);
    if news {
        st.overrun_run = Some(run.id.clone());
        if let Err(e) = store.set_notify_state(&job.name, &st) {
            tracing::warn!(error = %e, "cannot record the overrun in the noise state");
        }
    } else {
        tracing::info!(job = %job.name, "overrun summarised: the previous run overran too");
    }
    news
}

/// Healthchecks-style `start` pings for the job's ping channels, sent
/// directly (a late start ping is worthless, so it is not kept in the
/// outbox). Runs beside the job, never in its way.
pub(crate) fn has_ping_channel(ctx: &Context, job: &Job) -> bool {
    job.notify
        .channels
        .iter()
        .any(|name| notify::is_ping(&ctx.global, name))
}

pub(crate) fn ping_start(ctx: &Context, job: &Job, run_id: &str) {
    for name in &job.notify.channels {
        if !notify::is_ping(&ctx.global, name) {
            continue;
        }
        let payload = Payload {
            id: notify::new_id(),
            event: "start".into(),
            job: job.name.clone(),
            host: ctx.me.host.clone(),
            run_id: Some(run_id.to_string()),
            outcome: Some("running".into()),
            message: format!("Job {} started on {}.", job.name, ctx.me.host),
            ..Payload::default()
        };
        let json = serde_json::to_string(&payload).unwrap_or_default();
        if let Err(e) = notify::channel::deliver(&ctx.global, name, &payload.id, "start", &json) {
            tracing::warn!(channel = %name, "start ping failed: {e}");
        }
    }
}

/// A run that did not start: notified like any run end when the job asked
/// for `skipped`, and always when `always` (a refusal the operator must see,
/// such as a lagging replica).
pub(crate) fn skipped(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    run: &RunRecord,
    end: &RunEnd,
    always: bool,
) {
    if always && !notify::wanted(job, "skipped") {
        let mut payload = payload(ctx, job, p, run, "skipped", Outcome::Skipped, end, &[], &[]);
        if let Some(e) = &end.error {
            payload.message = format!("{} {e}.", payload.message);
        }
        let _ = notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, true);
        deliver(ctx);
        return;
    }
    run_ended(ctx, job, p, run, Outcome::Skipped, end, &[], &[]);
}

/// A payload about a job rather than one of its runs (a test, a missed
/// fire): shaped like a failure report, without a run id.
fn runless_payload(
    ctx: &Context,
    job: &Job,
    p: &Prepared,
    record: &RunRecord,
    event: &str,
) -> Payload {
    let failure = Outcome::failure(crate::exit::FAILURE);
    let end = RunEnd::default();
    let mut payload = payload(ctx, job, p, record, event, failure, &end, &[], &[]);
    payload.run_id = None;
    payload
}

/// `batchguard notify test JOB`: one test notification through each of the
/// job's channels, delivered directly (not through the outbox), each result
/// printed. Exit 1 if any channel failed or the job has none.
pub fn notify_test(ctx: &Context, job: &Job) -> i32 {
    if job.notify.channels.is_empty() {
        println!(
            "job `{}` has no notification channels: add [notify] channels = [\"...\"] (G08)",
            job.name
        );
        return crate::exit::FAILURE;
    }
    let p = match prepare(job, &Request::default(), &ctx.global) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("batchguard: {e}");
            return e.exit_code();
        }
    };
    let record = base_record(ctx, job, &p, "test", 1);
    let mut payload = runless_payload(ctx, job, &p, &record, "test");
    payload.message = format!(
        "Test notification for job {} from {} (batchguard notify test): this is what a failure report will carry.",
        job.name, ctx.me.host
    );
    let json = serde_json::to_string(&payload).unwrap_or_default();
    let mut code = crate::exit::OK;
    for name in &job.notify.channels {
        let kind = ctx
            .global
            .channels
            .get(name)
            .map(|c| c.kind())
            .unwrap_or("?");
        match crate::notify::channel::deliver(&ctx.global, name, &payload.id, "test", &json) {
            Ok(()) => println!("{name} ({kind}): ok"),
            Err(e) => {
                println!("{name} ({kind}): FAILED: {e}");
                code = crate::exit::FAILURE;
            }
        }
    }
    code
}

/// The watchdog found that the scheduled `fires` (ascending, at least one)
/// started no run: one `missed` notification listing them (the first ten,
/// then a count), through the job's channels if it asked for the event.
pub fn notify_missed(ctx: &Context, job: &Job, fires: &[jiff::Zoned]) {
    /// Fires listed in one notification; the rest are counted.
    const LISTED: usize = 10;
    let Some(first) = fires.first() else {
        return;
    };
    if !crate::notify::wanted(job, "missed") {
        return;
    }
    let p = match prepare(job, &Request::default(), &ctx.global) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the missed notification of {}", job.name);
            return;
        }
    };
    let mut record = base_record(ctx, job, &p, "-", 1);
    record.started_at = clock::format_zoned(first);
    record.log_path = None;
    let mut payload = runless_payload(ctx, job, &p, &record, "missed");
    payload.outcome = None;
    let mut when: Vec<String> = fires.iter().take(LISTED).map(clock::format_zoned).collect();
    if fires.len() > LISTED {
        when.push(format!("and {} more", fires.len() - LISTED));
    }
    payload.message = format!(
        "Job {} was scheduled at {} ({}) on {} but no run started within {}.",
        job.name,
        when.join(", "),
        job.schedule.as_deref().unwrap_or("?"),
        ctx.me.host,
        batchguard_config::format_duration(ctx.global.missed_grace)
    );
    let _ = crate::notify::enqueue(ctx.store.as_ref(), &ctx.global, job, &payload, true);
}
