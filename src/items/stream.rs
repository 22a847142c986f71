//! Stream mode: the job's own command runs once, reads the pending keys on
//! stdin (one per line) and writes each finished key, one per line, to the
//! file descriptor named by `BATCHGUARD_DONE_FD`. A reported key goes to the
//! ledger through the group committer; a key reported twice, or one that was
//! never handed out, is ignored (and counted in the log). When the command
//! exits 0, keys it never reported are failed; when it fails, they stay
//! pending for the next run.

use super::commit::{Msg, Sender};
use super::{FailedList, Keys};
use crate::error::Result;
use crate::outcome::Outcome;
use crate::runner::{Attempt, AttemptResult, spawn_failed, wait_child};
use crate::store::ItemState;
use batchguard_supervise::{self as supervise, CgroupPlacement, Limits, StdinMode};
use std::io::{BufRead, BufReader, BufWriter, Write};

/// The descriptor number the job writes finished keys to.
pub const DONE_FD: i32 = 3;

pub(super) fn run(
    a: &Attempt<'_>,
    keys: &Keys,
    pending: &[u32],
    tx: Sender,
    failed: &FailedList,
) -> Result<AttemptResult> {
    let argv = a.render("command", &a.job.command, None)?;
    a.note(&format!("command (stream mode): {argv:?}"));
    let mut spec = a.spec(
        &argv,
        CgroupPlacement::Create {
            name: a.record.id.clone(),
        },
    );
    spec.stdin = StdinMode::Pipe;
    spec.done_fd = Some(DONE_FD);
    spec.env
        .push(("BATCHGUARD_DONE_FD".into(), DONE_FD.to_string().into()));
    let limits = Limits {
        timeout: a.job.timeout,
        kill_grace: a.job.kill_grace,
        memory_max: a.job.memory_max,
    };
    let mut child = match supervise::spawn(spec, limits) {
        Ok(c) => c,
        Err(e) => return Ok(spawn_failed(a, &argv, &e)),
    };
    let stdin = child.take_stdin();
    let done_reader = child.take_done_reader();
    // 0 = not handed out this run, 1 = pending, 2 = reported
    let mut state = vec![0u8; keys.len()];
    for &i in pending {
        state[i as usize] = 1;
    }
    let reader_tx = tx.clone();
    let (result, state) = std::thread::scope(|s| {
        s.spawn(move || {
            let Some(stdin) = stdin else { return };
            let mut w = BufWriter::with_capacity(1 << 16, stdin);
            for &i in pending {
                let key = keys.get(i as usize);
                if w.write_all(key.as_bytes())
                    .and_then(|_| w.write_all(b"\n"))
                    .is_err()
                {
                    return; // the job stopped reading
                }
            }
            let _ = w.flush();
        });
        let reader = s.spawn(move || {
            let mut ignored = 0u64;
            if let Some(r) = done_reader {
                read_done_keys(r, |key| {
                    match key.and_then(|k| keys.find(k)) {
                        Some(i) if state[i as usize] == 1 => {
                            state[i as usize] = 2;
                            return reader_tx.send(Msg::new(i, ItemState::Done)).is_ok();
                        }
                        _ => ignored += 1,
                    }
                    true
                });
            }
            (state, ignored)
        });
        let result = wait_child(a, child, "");
        let (state, ignored) = reader.join().unwrap_or_default();
        if ignored > 0 {
            a.note(&format!(
                "{ignored} lines on the done fd were not pending keys of this run (unknown or repeated): ignored"
            ));
        }
        (result, state)
    });
    let result = result?;
    if result.outcome == Outcome::Success {
        let mut unreported = 0u64;
        for &i in pending {
            if state.get(i as usize) == Some(&1) {
                unreported += 1;
                let key = keys.get(i as usize);
                failed.push(key);
                let _ = tx.send(Msg {
                    idx: i,
                    state: ItemState::Failed,
                    error: Some("the job exited 0 without reporting this key done".into()),
                });
            }
        }
        if unreported > 0 {
            a.note(&format!(
                "{unreported} keys were handed to the job but never reported done: recorded as failed"
            ));
        }
    }
    drop(tx);
    Ok(result)
}

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
