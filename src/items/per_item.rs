//! Per-item mode: `items.run` once per pending key, `{item}` substituted as
//! one argv element and `BATCHGUARD_ITEM` set, at most `parallelism` at once
//! and at most `rate` starts per second (a token bucket: the ceiling on
//! write load that G05 asks for). Every item process joins the run's one
//! cgroup, so `memory_max` bounds the whole run and an OOM kill anywhere is
//! seen; the run-level `timeout` stops everything, `item_timeout` one item.

use super::commit::{Msg, Sender};
use super::{FailedList, Keys};
use crate::error::Result;
use crate::outcome::Outcome;
use crate::runner::{Attempt, AttemptResult, Stop, log_line};
use crate::store::{ItemState, RunEnd};
use batchguard_config::Items;
use batchguard_supervise::{self as supervise, CgroupPlacement, End, Group, Limits};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts spaced evenly at `per_second`: never more than that many starts in
/// any second, and no burst after an idle spell.
pub(super) struct Bucket {
    interval: Duration,
    next: Instant,
}

impl Bucket {
    pub(super) fn new(per_second: f64) -> Bucket {
        Bucket {
            interval: Duration::from_secs_f64(1.0 / per_second.max(1e-6)),
            next: Instant::now(),
        }
    }

    /// Wait for the next start slot.
    pub(super) fn take(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = self.next.max(now) + self.interval;
    }
}

pub(super) fn run(
    a: &Attempt<'_>,
    items: &Items,
    keys: &Keys,
    pending: &[u32],
    tx: Sender,
    failed: &FailedList,
) -> Result<AttemptResult> {
    let mode = supervise::detect();
    let group = Group::create(&a.record.id, a.job.memory_max, mode)
        .map_err(|e| crate::error::Error::Usage(format!("cannot create the run's cgroup: {e}")))?;
    if let Some(path) = group.path() {
        a.ctx
            .store
            .set_run_process(&a.record.id, None, Some(&path.display().to_string()))?;
    }
    let run_argv = items.run.clone().unwrap_or_default();
    let runner = ItemRunner {
        a,
        items,
        group: &group,
        run_argv: &run_argv,
        mode,
    };
    let next = AtomicUsize::new(0);
    let bucket = items.rate.map(|r| Mutex::new(Bucket::new(r.per_second)));
    let deadline = a.job.timeout.map(|t| Instant::now() + t);
    let workers = (items.parallelism.max(1) as usize).min(pending.len().max(1));
    let (done_tx, done_rx) = mpsc::channel::<()>();

    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let done_tx = done_tx.clone();
            let (runner, next, bucket) = (&runner, &next, &bucket);
            s.spawn(move || {
                while a.control.stopping().is_none() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&k) = pending.get(i) else { break };
                    if let Some(b) = bucket {
                        b.lock().unwrap_or_else(|p| p.into_inner()).take();
                    }
                    if a.control.stopping().is_some() {
                        break;
                    }
                    let key = keys.get(k as usize);
                    if let Some(update) = runner.one(k, key, &tx) {
                        if update.state == ItemState::Failed {
                            failed.push(key);
                        }
                        if tx.send(update).is_err() {
                            break;
                        }
                    }
                }
                let _ = done_tx.send(());
            });
        }
        drop(done_tx);
        drop(tx);
        // Watch the whole run: its deadline and its memory.
        loop {
            match done_rx.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) && a.control.stopping().is_none() {
                a.note("run timeout reached: stopping every item");
                a.control.request_stop(Stop::Timeout);
            }
            if group.sample() || group.oom_kills() > 0 {
                if a.control.stopping().is_none() {
                    a.note("run memory limit reached: stopping every item");
                }
                a.control.request_stop(Stop::Oom);
                group.kill_all(Duration::ZERO);
            }
        }
    });
    if group.oom_kills() > 0 {
        a.control.request_stop(Stop::Oom);
    }
    let (outcome, code, signal) = a.stopped_outcome().unwrap_or((Outcome::Success, 0, None));
    Ok(AttemptResult {
        outcome,
        code,
        end: RunEnd {
            exit_code: (outcome == Outcome::Success).then_some(0),
            signal,
            peak_memory_bytes: group.peak_memory(),
            memory_enforcement: Some(group.enforcement().as_str().to_string()),
            ..RunEnd::default()
        },
        items_failed: Vec::new(),
    })
}

/// What every item of the run shares.
pub(super) struct ItemRunner<'a> {
    pub a: &'a Attempt<'a>,
    pub items: &'a Items,
    pub group: &'a Group,
    pub run_argv: &'a [String],
    pub mode: supervise::Enforcement,
}

impl ItemRunner<'_> {
    /// Run one item; `None` when the run is stopping (the key stays in flight
    /// and is redone by the next run).
    fn one(&self, idx: u32, key: &str, tx: &Sender) -> Option<Msg> {
        let _ = tx.send(Msg::new(idx, ItemState::InFlight));
        let (state, error) = self.run_key(key, &|_| {})?;
        Some(Msg { idx, state, error })
    }

    /// Run one item: `Done`, or `Failed` with the (redacted) reason; `None`
    /// when it was stopped (the run is stopping, or `started`'s process id
    /// was stopped alone). `started` gets the id under which the item's
    /// process tree is registered with the run's control.
    pub(super) fn run_key(
        &self,
        key: &str,
        started: &dyn Fn(u64),
    ) -> Option<(ItemState, Option<String>)> {
        let ItemRunner {
            a,
            items,
            group,
            run_argv,
            mode: group_mode,
        } = *self;
        let failed = |error: String| {
            (
                ItemState::Failed,
                Some(a.p.redactor.redact(&error).into_owned()),
            )
        };
        let argv = match a.render("items.run", run_argv, Some(key)) {
            Ok(argv) => argv,
            Err(e) => return Some(failed(e.to_string())),
        };
        let mut spec = a.spec(&argv, CgroupPlacement::Join(group.handle()));
        spec.env.push(("BATCHGUARD_ITEM".into(), key.into()));
        let limits = Limits {
            timeout: items.item_timeout,
            kill_grace: a.job.kill_grace,
            memory_max: None,
        };
        let child = match supervise::spawn_with(spec, limits, group_mode) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start `{}`: {e}", argv[0]);
                log_line(a.log, "batchguard", &format!("[{key}] "), msg.as_bytes());
                return Some(failed(msg));
            }
        };
        let id = a.control.register(child.stop_handle());
        started(id);
        let prefix = format!("[{key}] ");
        let mut last_err = String::new();
        let done = child.wait(|stream, line| {
            if stream == supervise::Stream::Stderr {
                last_err = String::from_utf8_lossy(line).into_owned();
            }
            log_line(a.log, stream.as_str(), &prefix, line);
        });
        a.control.unregister(id);
        if a.control.stopping().is_some() && done.end != End::Exited(0) {
            // Stopped with the run (timeout, memory, fence, signal): not the
            // item's failure. It stays in flight and the next run redoes it.
            return None;
        }
        let why = match done.end {
            End::Exited(0) => return Some((ItemState::Done, None)),
            End::Stopped(_) => return None,
            End::Exited(code) => format!("exit code {code}"),
            End::Signaled(sig) => format!("killed by signal {sig}"),
            End::TimedOut => format!(
                "timed out after {}",
                items
                    .item_timeout
                    .map(batchguard_config::format_duration)
                    .unwrap_or_default()
            ),
            End::OutOfMemory => "out of memory".to_string(),
        };
        let why = if last_err.is_empty() {
            why
        } else {
            format!("{why}: {last_err}")
        };
        log_line(
            a.log,
            "batchguard",
            &prefix,
            format!("item failed: {why}").as_bytes(),
        );
        Some(failed(why))
    }
}
