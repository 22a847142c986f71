//! Noise control: a job failing every five minutes must not page 288 times
//! a day. Per job, the store keeps the current failure streak:
//!
//! - the first bad run of a streak is notified at once;
//! - later bad runs are counted, and at most one digest is sent per
//!   `notify_digest` interval (default 1h), saying how many runs failed since
//!   the last message;
//! - the first good run after a streak sends `recovered` with the count.
//!
//! So a streak of N bad runs over a time T produces at most
//! `1 + floor(T / notify_digest)` messages, plus one `recovered`.

use super::Digest;
use crate::clock;
use crate::store::{NotifyState, Store};
use std::time::Duration;

/// What to send for a finished run.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send this event now (with a digest when it summarises a streak).
    Send { digest: Option<Digest> },
    /// Counted in the streak; the next digest will mention it.
    Suppress,
    /// A good run after a streak of `failures` bad ones.
    Recovered { failures: u32 },
    /// A good run, nothing to say.
    Quiet,
}

/// Update the job's streak for a run that ended bad (`bad`) or good, and
/// say what to send. The state is read and written in two short
/// transactions; runs of one job are serialised by its lock.
pub fn decide(
    store: &dyn Store,
    job: &str,
    bad: bool,
    now_ms: i64,
    digest_every: Duration,
) -> crate::store::Result<Decision> {
    let mut st: NotifyState = store.notify_state(job)?;
    let decision = match (bad, st.failing_since_ms) {
        (true, None) => {
            st.failing_since_ms = Some(now_ms);
            st.failures = 1;
            st.suppressed = 0;
            st.last_sent_ms = Some(now_ms);
            Decision::Send { digest: None }
        }
        (true, Some(since)) => {
            st.failures += 1;
            let last = st.last_sent_ms.unwrap_or(since);
            if now_ms - last >= digest_every.as_millis() as i64 {
                let d = Digest {
                    failures: st.failures,
                    since_last_message: st.suppressed + 1,
                    failing_since: clock::rfc3339(since, &clock::zone(None)),
                };
                st.suppressed = 0;
                st.last_sent_ms = Some(now_ms);
                Decision::Send { digest: Some(d) }
            } else {
                st.suppressed += 1;
                Decision::Suppress
            }
        }
        (false, Some(_)) => {
            let failures = st.failures;
            st = NotifyState {
                overrun_run: st.overrun_run,
                ..NotifyState::default()
            };
            Decision::Recovered { failures }
        }
        (false, None) => return Ok(Decision::Quiet),
    };
    store.set_notify_state(job, &st)?;
    Ok(decision)
}
