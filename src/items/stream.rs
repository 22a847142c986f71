//! Stream mode's protocol (the engine runs it): the job's own command runs once, reads the pending keys on
//! stdin (one per line) and writes each finished key, one per line, to the
//! file descriptor named by `BATCHGUARD_DONE_FD`. A reported key goes to the
//! ledger through the group committer; a key reported twice, or one that was
//! never handed out, is ignored (and counted in the log). When the command
//! exits 0, keys it never reported are failed; when it fails, they stay
//! pending for the next run.

use std::io::{BufRead, BufReader};

/// The descriptor number the job writes finished keys to.
pub const DONE_FD: i32 = 3;

/// Read finished keys, one per line (`\n`, or `\r\n`), from a job's done
/// descriptor until EOF or until `on_key` returns false. A line that is not
/// UTF-8 is passed as `None`.
pub(crate) fn read_done_keys(reader: std::fs::File, mut on_key: impl FnMut(Option<&str>) -> bool) {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !on_key(std::str::from_utf8(raw).ok()) {
            return;
        }
    }
}
