//! Reading a run's keys before any work starts: from `items.source` (a
//! command printing one key per line, supervised like the job) or from
//! `items.source_file`, every key validated ([`keys`](super::keys)). A bad
//! key or a failing source ends the attempt with nothing processed.

use super::keys::{self, KeyCollector, Keys};
use crate::error::Result;
use crate::exec::{Attempt, AttemptResult};
use crate::outcome::Outcome;
use crate::store::RunEnd;
use batchguard_config::Items;
use batchguard_supervise::{self as supervise, CgroupPlacement};

/// Read every key of the source. `Ok(Err(result))` is a finished (failed)
/// attempt.
pub(crate) fn read_keys(
    a: &Attempt<'_>,
    items: &Items,
) -> Result<std::result::Result<Keys, AttemptResult>> {
    let (collected, what) = if let Some(path) = &items.source_file {
        match std::fs::read(path) {
            Ok(bytes) => (
                keys::parse(&bytes, limit(items)),
                format!("items.source_file {}", path.display()),
            ),
            Err(e) => {
                let msg = format!("cannot read items.source_file {}: {e}", path.display());
                return Ok(Err(failed(a, Outcome::failure(1), msg, RunEnd::default())));
            }
        }
    } else {
        let source = items.source.as_deref().unwrap_or_default();
        let argv = a.render("items.source", source, None)?;
        match run_source(a, &argv, limit(items)) {
            Ok(collected) => (collected, format!("items source {argv:?}")),
            Err(result) => return Ok(Err(*result)),
        }
    };
    Ok(collected.map_err(|e| {
        let msg = format!("bad key in the {what}, {e}: no item was processed");
        failed(a, Outcome::failure(1), msg, RunEnd::default())
    }))
}

fn limit(items: &Items) -> usize {
    usize::try_from(items.max_keys).unwrap_or(usize::MAX)
}

/// Run the source command, collecting its stdout as keys (its stderr goes
/// to the log).
fn run_source(
    a: &Attempt<'_>,
    argv: &[String],
    limit: usize,
) -> std::result::Result<std::result::Result<Keys, keys::KeyError>, Box<AttemptResult>> {
    a.note(&format!("reading keys from {argv:?}"));
    let spec = a.spec(argv, CgroupPlacement::None);
    let child =
        supervise::spawn_with(spec, a.run_limits(), supervise::Enforcement::Poll).map_err(|e| {
            let msg = format!("cannot start the items source `{}`: {e}", argv[0]);
            let end = RunEnd {
                exit_code: Some(e.exit_code()),
                ..RunEnd::default()
            };
            Box::new(failed(a, Outcome::failure(e.exit_code()), msg, end))
        })?;
    let id = a.control.register(child.stop_handle());
    let stop = child.stop_handle();
    let mut collector = KeyCollector::with_limit(limit);
    let done = child.wait(|stream, line| match stream {
        supervise::Stream::Stdout if !collector.stopped() => {
            collector.push(line);
            if collector.stopped() {
                // A bad key or too many: nothing more is needed from it.
                stop.kill(supervise::StopReason::Requested);
            }
        }
        supervise::Stream::Stdout => {}
        supervise::Stream::Stderr => a.log_line("stderr", "[source] ", line),
    });
    a.control.unregister(id);
    if collector.stopped() {
        return Ok(collector.finish());
    }
    let (outcome, exit_code) = Outcome::from_end(&done.end);
    if !outcome.is_success() {
        let msg = format!(
            "the items source {argv:?} ended {} (exit code {}): no item was processed",
            outcome.as_str(),
            outcome.exit_code()
        );
        let end = RunEnd {
            exit_code,
            signal: outcome.signal(),
            ..RunEnd::default()
        };
        return Err(Box::new(failed(a, outcome, msg, end)));
    }
    Ok(collector.finish())
}

fn failed(a: &Attempt<'_>, outcome: Outcome, msg: String, end: RunEnd) -> AttemptResult {
    a.note(&msg);
    AttemptResult::failed(outcome, a.p.redactor.redact(&msg).into_owned(), end)
}
