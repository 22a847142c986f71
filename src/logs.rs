//! Run logs: `LOG_DIR/JOB/RUN_ID.log`, one line per output line, each
//! prefixed with an RFC 3339 timestamp and the stream (`stdout`, `stderr`,
//! or `batchguard` for the runner's own notes). Secrets are redacted before
//! anything is written, the file is capped in size per run (the tail stays
//! available in memory for the failure report), a log stops growing before
//! it fills its filesystem (a free-space floor: the run goes on, the cut is
//! noted in the log and the run's record), and old runs' logs are removed
//! after `log_retention`.

use crate::clock;
use crate::error::{Error, Result};
use crate::redact::Redactor;
use crate::store::Store;
use jiff::tz::TimeZone;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How many of the last lines are kept for the failure report.
pub const TAIL_LINES: usize = 20;

/// How often (in bytes written) the free space of the log's filesystem is
/// looked at.
const FREE_CHECK_EVERY: u64 = 64 * 1024;

/// The free space a log never eats into: 5 % of its filesystem, at least
/// 64 KiB and at most 256 MiB, so the state store, the spool and other
/// jobs' logs on the same disk still have room.
pub fn free_floor(fs_bytes: u64) -> u64 {
    (fs_bytes / 20).clamp(64 * 1024, 256 * 1024 * 1024)
}

/// (available, total) bytes of the filesystem holding `path`.
fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

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
    /// Written bytes at which the free space is checked next.
    next_free_check: u64,
    /// Why the log stopped growing before its cap (the floor was reached).
    cut: Option<String>,
    /// The end of a line cut at the line limit, held back (per stream) so a
    /// secret split by the cut is redacted whole with what follows.
    carry: Option<(String, Vec<u8>)>,
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
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|e| Error::io("create log directory", &dir, e))?;
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
            next_free_check: 0,
            cut: None,
            carry: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One line of the job's output (or a piece of a longer one, cut at
    /// the line limit).
    pub fn line(&mut self, stream: &str, bytes: &[u8]) {
        let joined;
        let bytes = match self.carry.take() {
            Some((s, mut held)) if s == stream => {
                held.extend_from_slice(bytes);
                joined = held;
                &joined[..]
            }
            Some((s, held)) => {
                self.write_line(&s, &held);
                bytes
            }
            None => bytes,
        };
        let hold = self.redactor.max_len().saturating_sub(1);
        if bytes.len() >= batchguard_supervise::MAX_LINE && hold > 0 {
            let (now, later) = bytes.split_at(bytes.len() - hold.min(bytes.len()));
            self.write_line(stream, now);
            self.carry = Some((stream.to_string(), later.to_vec()));
        } else {
            self.write_line(stream, bytes);
        }
    }

    fn write_line(&mut self, stream: &str, bytes: &[u8]) {
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
        if self.written + len > self.cap || self.out_of_room(len) {
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

    /// Has the log's filesystem reached the free-space floor? Checked
    /// every [`FREE_CHECK_EVERY`] bytes; once cut, the log stays cut (one
    /// note says so).
    fn out_of_room(&mut self, len: u64) -> bool {
        if self.cut.is_some() {
            return true;
        }
        if self.written < self.next_free_check {
            return false;
        }
        self.next_free_check = self.written + FREE_CHECK_EVERY;
        let Some((avail, total)) = fs_space(&self.path) else {
            return false;
        };
        let floor = free_floor(total);
        if avail >= floor + FREE_CHECK_EVERY + len {
            return false;
        }
        let why = format!(
            "log cut at {} bytes: only {} free on its filesystem (floor {}); the run goes on",
            self.written,
            batchguard_config::format_size(avail),
            batchguard_config::format_size(floor)
        );
        tracing::warn!(log = %self.path.display(), "{why}");
        self.buf.clear();
        let ts = clock::rfc3339(clock::now_ms(), &self.tz);
        let _ = writeln!(self.buf, "{ts} batchguard {why}");
        let _ = self.file.write_all(&self.buf);
        self.cut = Some(why);
        true
    }

    /// Why the log stopped growing early, if it did.
    pub fn cut(&self) -> Option<&str> {
        self.cut.as_deref()
    }

    /// Close the log (noting anything dropped by the cap) and return the
    /// last lines of output.
    pub fn finish(mut self) -> Vec<String> {
        if let Some((stream, held)) = self.carry.take() {
            self.write_line(&stream, &held);
        }
        if self.dropped_lines > 0 {
            let ts = clock::rfc3339(clock::now_ms(), &self.tz);
            let why = if self.cut.is_some() {
                "free-space floor".to_string()
            } else {
                format!("log cap of {} bytes", self.cap)
            };
            let _ = writeln!(
                self.file,
                "{ts} batchguard {why} reached: {} lines ({} bytes) not written",
                self.dropped_lines, self.dropped_bytes
            );
        }
        let _ = self.file.flush();
        self.tail.into_iter().collect()
    }
}

/// Remove the logs of `job`'s runs that started more than `retention` ago.
/// Driven by the run records, so it costs one indexed query, not a scan of
/// the log directory. A record's `log_path` is never trusted (a job may
/// have written it): only the run's own log, `LOG_DIR/JOB/RUN_ID.log`, a
/// regular file reached without links, is removed.
pub fn prune(store: &dyn Store, log_dir: &Path, job: &str, retention_ms: i64) -> Result<usize> {
    let cutoff = clock::now_ms() - retention_ms;
    let mut removed = 0;
    for run in store.expired_logs(job, cutoff, 200)? {
        let own = log_path(log_dir, job, &run.run_id);
        if run.log_path.as_deref().is_some_and(|p| Path::new(p) != own) {
            tracing::warn!(run = %run.run_id, "the recorded log path is not the run's own log: left alone");
        } else if is_own_log(log_dir, job, &own) {
            match std::fs::remove_file(&own) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %own.display(), error = %e, "cannot remove an expired log");
                    continue;
                }
            }
        }
        store.mark_log_pruned(&run.run_id)?;
    }
    Ok(removed)
}

/// `path` is a regular file (not a link) whose directory, links resolved,
/// is `LOG_DIR/JOB` resolved.
fn is_own_log(log_dir: &Path, job: &str, path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let dir = std::fs::canonicalize(log_dir.join(job)).ok();
    let parent = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
    let within = dir.is_some() && dir == parent;
    let real_dir = std::fs::symlink_metadata(log_dir.join(job)).is_ok_and(|m| m.is_dir());
    meta.is_file() && within && real_dir
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret that straddles the 64 KiB line cut is still redacted whole.
    #[test]
    fn a_secret_split_by_the_line_cut_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3cr3t-straddling-value";
        let redactor = Redactor::new([secret.to_string()]);
        let mut log =
            RunLog::create(dir.path(), "job", "RUN", 1 << 30, redactor, TimeZone::UTC).unwrap();
        let mut line = vec![b'x'; batchguard_supervise::MAX_LINE - 5];
        line.extend_from_slice(secret.as_bytes());
        // As the reader delivers it: the first MAX_LINE bytes, then the rest.
        let (first, rest) = line.split_at(batchguard_supervise::MAX_LINE);
        log.line("stdout", first);
        log.line("stdout", rest);
        log.finish();
        let text = std::fs::read_to_string(dir.path().join("job/RUN.log")).unwrap();
        assert!(!text.contains("s3cr3"), "a half of the secret was logged");
        assert!(text.contains("***"));
    }
}
