//! The Rust side of stream mode, for jobs written in Rust: iterate the
//! pending keys and mark each one done after its work succeeded. batchguard
//! (the runner) does the rest: it hands out only keys that are not done yet,
//! records a key only while the run holds the newest fencing token, and
//! re-does after a crash at most the keys that were in flight.
//!
//! ```no_run
//! use batchguard::items::stream_api::StreamItems;
//!
//! fn main() -> std::io::Result<()> {
//!     let mut items = StreamItems::from_env()?;
//!     while let Some(key) = items.next_key()? {
//!         // ... process `key` ...
//!         items.done(&key)?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Run it with `items.mode = "stream"` and the binary as `command`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;

/// The keys of a stream-mode run and the channel to report them done.
pub struct StreamItems<R: Read = io::Stdin, W: Write = File> {
    keys: BufReader<R>,
    done: W,
    line: String,
}

impl StreamItems {
    /// Keys from stdin, done keys to the descriptor in `BATCHGUARD_DONE_FD`.
    pub fn from_env() -> io::Result<StreamItems> {
        let fd: i32 = std::env::var("BATCHGUARD_DONE_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "BATCHGUARD_DONE_FD is not set: run this job with items.mode = \"stream\"",
                )
            })?;
        // SAFETY: batchguard opened this descriptor for us and nothing else
        // in this process owns it; checked open just below.
        let done = unsafe { File::from_raw_fd(fd) };
        done.metadata()?;
        Ok(StreamItems::new(io::stdin(), done))
    }
}

impl<R: Read, W: Write> StreamItems<R, W> {
    /// Any reader of keys and writer of done keys (tests, adapters).
    pub fn new(keys: R, done: W) -> StreamItems<R, W> {
        StreamItems {
            keys: BufReader::new(keys),
            done,
            line: String::new(),
        }
    }

    /// The next pending key, `None` when all were handed out.
    pub fn next_key(&mut self) -> io::Result<Option<String>> {
        self.line.clear();
        if self.keys.read_line(&mut self.line)? == 0 {
            return Ok(None);
        }
        let key = self.line.strip_suffix('\n').unwrap_or(&self.line);
        Ok(Some(key.to_string()))
    }

    /// Report `key` done. Call it only after the key's work succeeded: the
    /// line is written (and so reaches batchguard) at once.
    pub fn done(&mut self, key: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(key.len() + 1);
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'\n');
        self.done.write_all(&buf)?;
        self.done.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_keys_and_reports_done() {
        let mut out = Vec::new();
        let mut items = StreamItems::new(&b"a\nb\n"[..], &mut out);
        let mut seen = Vec::new();
        while let Some(k) = items.next_key().unwrap() {
            items.done(&k).unwrap();
            seen.push(k);
        }
        assert_eq!(seen, ["a", "b"]);
        assert_eq!(out, b"a\nb\n");
    }
}
