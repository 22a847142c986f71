//! Failure notifications that carry the runbook (G08, G09), and are never
//! lost.
//!
//! Every notification is built from the run record and the job's runbook
//! (host, run, outcome, exit code or signal, duration, peak memory against
//! `memory_max`, failed keys, the last log lines, the exact re-run command,
//! verify step, notes, dashboard link), redacted, and written to the outbox
//! in the state store, one row per channel, before any delivery is tried.
//! Delivery ([`flush`]) retries with backoff; rows not delivered stay for the
//! next invocation or `batchguard notify flush`. A channel that fails never
//! changes the job's own outcome or exit code.
//!
//! Noise control ([`noise`]): the first bad run of a streak is sent at once,
//! later bad runs are summarised in at most one digest per `notify_digest`
//! (default 1h), and the first good run after a streak sends `recovered`.

pub mod channel;
pub mod noise;

use crate::clock;
use crate::store::{OutboxClaim, OutboxFailure, OutboxRow, Store};
use batchguard_config::{Channel, Global, Job};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long an invocation spends delivering before it leaves the rest to
/// the next one (the job's result is already recorded by then).
pub const FLUSH_BUDGET: Duration = Duration::from_secs(10);
/// How long a claimed outbox row is reserved for the flusher that claimed it.
const CLAIM_LEASE_MS: i64 = 60_000;

/// One failed key in a notification.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FailedItem {
    pub key: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Runbook {
    pub url: Option<String>,
    pub verify: Option<String>,
    pub notes: Option<String>,
}

/// A digest of a failure streak.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Digest {
    /// Bad runs in the streak so far.
    pub failures: u32,
    /// Bad runs since the previous message.
    pub since_last_message: u32,
    pub failing_since: String,
}

/// The SPEC §7 payload (plus `message`, `items_failed_details`, `digest`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Payload {
    pub id: String,
    pub event: String,
    pub job: String,
    pub host: String,
    pub run_id: Option<String>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub started_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    pub items_failed: Vec<String>,
    pub items_failed_details: Vec<FailedItem>,
    pub log_tail: Vec<String>,
    pub log_path: Option<String>,
    pub rerun: Option<String>,
    pub runbook: Runbook,
    pub dashboard_url: Option<String>,
    /// One line for people: what happened, where.
    pub message: String,
    pub digest: Option<Digest>,
}

/// A new notification id (a ULID).
pub fn new_id() -> String {
    crate::id::new_ulid()
}

/// Is `event` one the job asked for (`[notify] on`)?
pub fn wanted(job: &Job, event: &str) -> bool {
    job.notify.on.iter().any(|e| e.as_str() == event)
}

/// Is `channel` a ping (dead-man's switch) channel?
pub(crate) fn is_ping(global: &Global, channel: &str) -> bool {
    matches!(global.channels.get(channel), Some(Channel::Ping { .. }))
}

/// Events a ping channel (a dead-man's switch) gets: the end of every run,
/// good or bad, whatever the noise control says.
const PING_EVENTS: &[&str] = &["success", "failure", "timeout", "oom", "lost"];

/// Write a notification to the outbox for each of the job's channels that
/// takes it: the ordinary channels when `wanted` (the job asked for the
/// event and the noise control let it through); ping channels for every
/// run's end.
/// Returns how many rows were stored.
pub fn enqueue(
    store: &dyn Store,
    global: &Global,
    job: &Job,
    payload: &Payload,
    wanted: bool,
) -> usize {
    let now = clock::now_ms();
    let json = serde_json::to_string(payload).unwrap_or_default();
    let rows: Vec<OutboxRow> = job
        .notify
        .channels
        .iter()
        .filter(|c| {
            if is_ping(global, c) {
                PING_EVENTS.contains(&payload.event.as_str())
            } else {
                wanted
            }
        })
        .map(|c| OutboxRow {
            id: payload.id.clone(),
            channel: c.clone(),
            job: job.name.clone(),
            event: payload.event.clone(),
            payload: json.clone(),
            created_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
        })
        .collect();
    if rows.is_empty() {
        return 0;
    }
    match store.outbox_add(&rows) {
        Ok(()) => rows.len(),
        Err(e) => {
            tracing::error!(error = %e, job = %job.name, "cannot store notification {}", payload.id);
            0
        }
    }
}

/// What a flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub delivered: u64,
    pub failed: u64,
    /// Of `failed`, the notifications that failed for the first time: the
    /// news worth a line (a retry that fails again is not).
    pub first_failures: u64,
    pub pending: u64,
}

/// Retry delay after `attempts` failed deliveries: 30 s doubling, at most 1 h.
fn retry_after(attempts: u32) -> Duration {
    Duration::from_secs(30u64.saturating_mul(1 << attempts.min(7)).min(3600))
}

/// Deliver due outbox rows until none is left or `budget` is spent. With
/// `everything`, rows waiting for their next retry are tried now too
/// (`batchguard notify flush`).
pub fn flush(
    store: &dyn Store,
    global: &Global,
    budget: Duration,
    everything: bool,
) -> FlushReport {
    let start = Instant::now();
    let mut report = FlushReport::default();
    let mut seen = std::collections::HashSet::new();
    while start.elapsed() < budget {
        let now = clock::now_ms();
        let due = if everything { i64::MAX } else { now };
        let rows = match store.outbox_claim(&OutboxClaim {
            due_ms: due,
            now_ms: now,
            lease_ms: CLAIM_LEASE_MS,
            limit: 50,
        }) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the notification outbox");
                break;
            }
        };
        // With `everything`, a row that just failed is due again at once:
        // try each row once per flush.
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| seen.insert((r.id.clone(), r.channel.clone())))
            .collect();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let result = if start.elapsed() >= budget {
                Err("flush budget spent; retried later".to_string())
            } else {
                channel::deliver(global, &row.channel, &row.id, &row.event, &row.payload)
            };
            let now = clock::now_ms();
            match result {
                Ok(()) => {
                    report.delivered += 1;
                    if let Err(e) = store.outbox_delivered(&row.id, &row.channel, now) {
                        tracing::warn!(error = %e, "delivered {} but cannot record it", row.id);
                    }
                }
                Err(err) => {
                    report.failed += 1;
                    let next = now + retry_after(row.attempts).as_millis() as i64;
                    // Said once per notification: a channel that stays down
                    // must not fill cron's mail every minute.
                    if row.attempts == 0 {
                        report.first_failures += 1;
                        tracing::warn!(
                            channel = %row.channel, id = %row.id,
                            "notification not delivered ({err}); retried later"
                        );
                    } else {
                        tracing::debug!(
                            channel = %row.channel, id = %row.id, attempts = row.attempts,
                            "notification still not delivered ({err})"
                        );
                    }
                    if let Err(e) = store.outbox_failed(&OutboxFailure {
                        id: &row.id,
                        channel: &row.channel,
                        error: &err,
                        next_attempt_ms: next,
                    }) {
                        tracing::warn!(error = %e, "cannot record a failed delivery");
                    }
                }
            }
        }
    }
    report.pending = store.outbox_pending().unwrap_or(0);
    report
}
