//! Run logs: `LOG_DIR/JOB/RUN_ID.log`, one line per output line, each
//! prefixed with an RFC 3339 timestamp and the stream (`stdout`, `stderr`,
//! or `batchguard` for the runner's own notes). Secrets are redacted before
//! anything is written, the file is capped in size per run (the tail stays
//! available in memory for the failure report), and old runs' logs are
//! removed after `log_retention`.

use crate::clock;
use crate::error::{Error, Result};
use crate::redact::Redactor;
use crate::store::Store;
use jiff::tz::TimeZone;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How many of the last lines are kept for the failure report.
pub const TAIL_LINES: usize = 20;

pub struct RunLog {
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    tail: VecDeque<String>,
    redactor: Redactor,
    tz: TimeZone,
    echo: bool,
    buf: Vec<u8>,
}

pub fn log_path(log_dir: &Path, job: &str, run_id: &str) -> PathBuf {
    log_dir.join(job).join(format!("{run_id}.log"))
}

impl RunLog {
    /// Create the run's log file (mode 0640). With `echo`, lines also go to
    /// this process's stderr as they come (an operator at a terminal).
    pub fn create(
        log_dir: &Path,
        job: &str,
        run_id: &str,
        cap: u64,
        redactor: Redactor,
        tz: TimeZone,
    ) -> Result<RunLog> {
        let dir = log_dir.join(job);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create log directory", &dir, e))?;
        let path = log_path(log_dir, job, run_id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| Error::io("create log file", &path, e))?;
        Ok(RunLog {
            path,
            file,
            written: 0,
            cap,
            dropped_lines: 0,
            dropped_bytes: 0,
            tail: VecDeque::with_capacity(TAIL_LINES),
            redactor,
            tz,
            echo: std::io::stderr().is_terminal(),
            buf: Vec::with_capacity(256),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One line of the job's output.
    pub fn line(&mut self, stream: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = self.redactor.redact(&text).into_owned();
        self.write(stream, &text);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    /// A note from batchguard itself (start, outcome, kills).
    pub fn note(&mut self, text: &str) {
        let text = self.redactor.redact(text).into_owned();
        self.write("batchguard", &text);
    }

    fn write(&mut self, stream: &str, text: &str) {
        if self.echo {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
        let len = (text.len() + 40) as u64;
        if self.written + len > self.cap {
            self.dropped_lines += 1;
            self.dropped_bytes += text.len() as u64;
            return;
        }
        self.buf.clear();
        let ts = clock::rfc3339(clock::now_ms(), &self.tz);
        let _ = writeln!(self.buf, "{ts} {stream} {text}");
        if self.file.write_all(&self.buf).is_ok() {
            self.written += self.buf.len() as u64;
        }
    }

    /// Close the log (noting anything dropped by the cap) and return the
    /// last lines of output.
    pub fn finish(mut self) -> Vec<String> {
        if self.dropped_lines > 0 {
            let ts = clock::rfc3339(clock::now_ms(), &self.tz);
            let _ = writeln!(
                self.file,
                "{ts} batchguard log cap of {} bytes reached: {} lines ({} bytes) not written",
                self.cap, self.dropped_lines, self.dropped_bytes
            );
        }
        let _ = self.file.flush();
        self.tail.into_iter().collect()
    }
}

/// Remove the logs of `job`'s runs that started more than `retention` ago.
/// Driven by the run records, so it costs one indexed query, not a scan of
/// the log directory.
pub fn prune(store: &dyn Store, job: &str, retention_ms: i64) -> Result<usize> {
    let cutoff = clock::now_ms() - retention_ms;
    let mut removed = 0;
    for run in store.runs_with_logs_before(job, cutoff, 200)? {
        if let Some(path) = &run.log_path {
            match std::fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "cannot remove an expired log");
                    continue;
                }
            }
        }
        store.mark_log_pruned(&run.id)?;
    }
    Ok(removed)
}

/// The last `n` lines of a log file (for `show` and failure reports).
pub fn tail_file(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
