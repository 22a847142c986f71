//! Per-item mode, one key: `items.run` once per pending key, `{item}` substituted as
//! one argv element and `BATCHGUARD_ITEM` set, at most `parallelism` at once
//! and at most `rate` starts per second (a token bucket: the ceiling on
//! write load that G05 asks for). Every item process joins the run's one
//! cgroup, so `memory_max` bounds the whole run and an OOM kill anywhere is
//! seen; the run-level `timeout` stops everything, `item_timeout` one item.

use crate::exec::Attempt;
use crate::store::ItemState;
use batchguard_config::Items;
use batchguard_supervise::{self as supervise, CgroupPlacement, End, Group, Limits, StopHandle};
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

/// What every item of the run shares.
pub(super) struct ItemRunner<'a> {
    pub a: &'a Attempt<'a>,
    pub items: &'a Items,
    pub group: &'a Group,
    pub run_argv: &'a [String],
    pub mode: supervise::Enforcement,
}

impl ItemRunner<'_> {
    /// Run one item: `Done`, or `Failed` with the (redacted) reason; `None`
    /// when it was stopped (the run is stopping, or `started`'s process id
    /// was stopped alone). `started` gets the item's stop handle and
    /// returns a tag that `ended` gets back when the tree is gone.
    pub(super) fn run_key(
        &self,
        key: &str,
        started: &dyn Fn(&StopHandle) -> u64,
        ended: &dyn Fn(u64),
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
                a.log_line("batchguard", &format!("[{key}] "), msg.as_bytes());
                return Some(failed(msg));
            }
        };
        let tag = started(&child.stop_handle());
        let id = a.control.register(child.stop_handle());
        let prefix = format!("[{key}] ");
        let mut last_err = String::new();
        let done = child.wait(|stream, line| {
            if stream == supervise::Stream::Stderr {
                last_err = String::from_utf8_lossy(line).into_owned();
            }
            a.log_line(stream.as_str(), &prefix, line);
        });
        a.control.unregister(id);
        ended(tag);
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
        a.log_line(
            "batchguard",
            &prefix,
            format!("item failed: {why}").as_bytes(),
        );
        Some(failed(why))
    }
}
