//! Progress of an items run: a live bar with rate and ETA when stderr is a
//! terminal (indicatif), a progress line in the run log every
//! [`LOG_EVERY`] otherwise, so `logs --follow` shows how far a long run is.

use super::commit::Stats;
use crate::clock;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The interval between progress lines: [`LOG_EVERY`], or
/// `BATCHGUARD_PROGRESS_EVERY` (a duration such as `2s`) when set.
fn log_every() -> Duration {
    std::env::var("BATCHGUARD_PROGRESS_EVERY")
        .ok()
        .and_then(|v| batchguard_config::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(LOG_EVERY)
}

/// Report progress until `finished` is set. `note` writes a log line.
pub fn run(total: u64, stats: &Stats, finished: &AtomicBool, note: &dyn Fn(&str)) {
    let start = Instant::now();
    let done = || stats.done.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} items  {per_sec}  eta {eta}  {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let every = log_every();
    let mut next_log = start + every;
    while !finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let n = done();
        if let Some(bar) = &bar {
            bar.set_position(n);
            let failed = stats.failed.load(Ordering::Relaxed);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
        if Instant::now() >= next_log {
            next_log += every;
            note(&line(total, n, stats, start.elapsed()));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn line(total: u64, n: u64, stats: &Stats, elapsed: Duration) -> String {
    let rate = n as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        clock::human_ms(((total.saturating_sub(n)) as f64 / rate * 1000.0) as i64)
    } else {
        "?".into()
    };
    format!(
        "progress: {n}/{total} items ({} failed), {rate:.0}/s, eta {eta}",
        stats.failed.load(Ordering::Relaxed)
    )
}
