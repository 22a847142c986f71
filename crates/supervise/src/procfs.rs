//! Small readers for `/proc`: process identity (pid + start time + boot id) and
//! the process table scans used to track a tree without a cgroup.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// All of a small file: a /proc, sysfs or cgroup file (or a pipe). Such a
/// file reports a size of 0, so `fs::read_to_string` asks for the size
/// (`statx`) and then reads 32 bytes, 32, 64, 128, …: one `read` per
/// doubling. Here a page-sized buffer takes the whole file in one `read`,
/// and one more sees its end. A run reads a dozen of these, a per-item run
/// two per item.
pub(crate) fn read_small(path: impl AsRef<Path>) -> io::Result<String> {
    let bytes = read_all(fs::File::open(path)?)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Everything `reader` yields until its end, a page at a time.
pub(crate) fn read_all(mut reader: impl Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a pid recorded under
/// another boot id refers to a process of a previous boot and is certainly gone.
pub fn boot_id() -> Option<String> {
    let s = read_small("/proc/sys/kernel/random/boot_id").ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// True if `pid` exists, is not a zombie, and started at `start_time`: a recycled
/// pid (same number, other start time) is not alive.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    match stat(pid) {
        Some(s) => s.start_time == start_time && s.is_live(),
        None => false,
    }
}

/// The parts of `/proc/PID/stat` we use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub pid: i32,
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    pub start_time: u64,
}

impl Stat {
    /// Running, sleeping, stopped…: anything but zombie/dead.
    pub(crate) fn is_live(&self) -> bool {
        !matches!(self.state, b'Z' | b'X' | b'x')
    }
}

pub(crate) fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = read_small(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    // comm (field 2) may contain spaces and parentheses: split after the LAST ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(Stat {
        pid,
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every pid currently listed in /proc.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Stat of every process.
pub(crate) fn all_stats() -> Vec<Stat> {
    all_pids().into_iter().filter_map(stat).collect()
}

/// Resident set size of `pid` in bytes (`/proc/PID/statm` field 2 × page size).
pub(crate) fn rss_bytes(pid: i32, page_size: u64) -> Option<u64> {
    let text = read_small(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size)
}

/// Children of process `pid`, across all its threads (`/proc/PID/task/*/children`).
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = read_small(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// Children of this process that matter to the orphan bookkeeping: those of
/// its main thread (`/proc/self/task/PID/children`), falling back to a /proc
/// scan for `ppid == getpid()` when that file is unavailable.
///
/// The main thread's list is enough: the kernel hands an orphan to the first
/// live thread of the subreaper, which is its main thread for as long as the
/// process runs (`find_new_reaper`), so every re-parented descendant is there.
/// Children started by other threads are supervised main children (or other
/// code's `Command`s) and are not orphans. One file instead of one per thread
/// plus the listing: this runs after every item of a per-item run.
pub(crate) fn own_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let mut any_file = false;
    if let Ok(text) = read_small(format!("/proc/self/task/{me}/children")) {
        any_file = true;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if !any_file {
        out = all_stats()
            .into_iter()
            .filter(|s| s.ppid == me)
            .map(|s| s.pid)
            .collect();
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Pids of processes (other than us) that have a descriptor open on one of the
/// given pipe inodes. Used to find writers of our output pipes that escaped
/// every other kind of tracking.
pub(crate) fn pipe_holders(inodes: &[u64]) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let wanted: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let mut out = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    out.push(pid);
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {

    /// A /proc file (size 0) and a regular file longer than one chunk come
    /// back whole.
    #[test]
    fn read_small_reads_whole_files() {
        let stat = read_small("/proc/self/stat").unwrap();
        assert!(
            stat.starts_with(&format!("{} (", std::process::id())),
            "{stat}"
        );
        assert!(stat.ends_with('\n'));
        let path = std::env::temp_dir().join(format!("read-small-{}", std::process::id()));
        let text: String = (0..3000).map(|i| format!("{i}\n")).collect();
        assert!(text.len() > 3 * 4096);
        fs::write(&path, &text).unwrap();
        assert_eq!(read_small(&path).unwrap(), text);
        fs::remove_file(&path).unwrap();
        assert!(read_small(&path).is_err());
    }

    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let s = parse_stat(42, line).expect("parse");
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 42);
        assert_eq!(s.start_time, 777);
    }

    #[test]
    fn self_is_alive() {
        let me = std::process::id() as i32;
        let st = start_time(me).expect("own start time");
        assert!(is_alive(me, st));
        assert!(!is_alive(me, st + 1));
        assert!(boot_id().is_some());
    }
}
