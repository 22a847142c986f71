//! Helpers shared by the supervise test binaries: specs for real commands,
//! unique names and temp dirs, the host's cgroup mode, and process checks.
//! Each test binary uses its own subset.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use batchguard_supervise::{self as sv, Enforcement, Spec};

/// `argv` with the full test environment (python3 may be a pyenv shim that needs it).
pub fn spec(argv: &[&str]) -> Spec {
    Spec {
        argv: argv.iter().map(OsString::from).collect(),
        env: std::env::vars_os().collect(),
        ..Spec::default()
    }
}

pub fn sh(script: &str) -> Spec {
    spec(&["sh", "-c", script])
}

/// A name unique within this test run (cgroups, temp dirs).
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A temporary directory, removed with what it holds when dropped (also
/// when the test fails).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tmpdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).expect("tmpdir");
    TempDir(d)
}

/// The cgroup mode of this host, or None when it has none (then cgroup tests only run in poll mode).
pub fn host_cgroup() -> Option<Enforcement> {
    match sv::detect_host() {
        e @ (Enforcement::Cgroup1 | Enforcement::Cgroup2) => Some(e),
        _ => None,
    }
}

/// The host's cgroup mode; None (and a note that the test is skipped) without one.
pub fn host_cgroup_or_skip() -> Option<Enforcement> {
    let mode = host_cgroup();
    if mode.is_none() {
        eprintln!("host has no usable cgroup memory controller; skipped");
    }
    mode
}

/// Limits with a `timeout` and a `kill_grace` (in milliseconds), no memory limit.
pub fn deadline(timeout_ms: u64, grace_ms: u64) -> sv::Limits {
    sv::Limits {
        timeout: Some(Duration::from_millis(timeout_ms)),
        kill_grace: Duration::from_millis(grace_ms),
        memory_max: None,
    }
}

pub fn host_mode() -> Enforcement {
    host_cgroup().unwrap_or(Enforcement::Poll)
}

/// Poll mode, and the host's cgroup mode when it has one.
pub fn modes() -> Vec<Enforcement> {
    let mut m = vec![Enforcement::Poll];
    m.extend(host_cgroup());
    m
}

/// `secs` as an upper bound for how long something may take, multiplied by
/// `BATCHGUARD_TEST_SLOWDOWN` (an integer, default 1; the cgroup v2 test VM
/// emulates its CPU and sets it).
pub fn bound(secs: u64) -> Duration {
    Duration::from_secs(secs * slowdown())
}

/// `BATCHGUARD_TEST_SLOWDOWN`, at least 1.
pub fn slowdown() -> u64 {
    std::env::var("BATCHGUARD_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1)
}

/// A process is gone when /proc has no live (non-zombie) entry for it.
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
            rest.starts_with('Z') || rest.starts_with('X')
        }
    }
}

/// A `pid_script` that starts a setsid grandchild (its pid in PIDFILE) and
/// sleeps itself.
pub const SETSID_GRANDCHILD: &str = "setsid sleep 300 & echo $! > PIDFILE; sleep 300";

/// A temp dir, its `pid` file, and `script` with `PIDFILE` replaced by that path.
pub fn pid_script(tag: &str, script: &str) -> (TempDir, PathBuf, String) {
    let dir = tmpdir(tag);
    let pidfile = dir.join("pid");
    let script = script.replace("PIDFILE", &pidfile.display().to_string());
    (dir, pidfile, script)
}

/// Wait (up to 5 s) for a pid file written by a test script.
pub fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "pid file {} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// python3 allocating 300 MiB, then sleeping; where there is no python3 (the
/// cgroup v2 test VM: busybox only) dd holding a 300 MiB buffer.
pub fn python_hog() -> Spec {
    let has_python = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("python3").is_file()));
    if !has_python {
        // dd (the main process, as python3 is) fills a 300 MiB buffer, then
        // blocks writing it to a fifo nobody reads.
        return sh("f=/tmp/hog.$$; mkfifo $f; (sleep 30 < $f; rm -f $f) & \
                   exec dd if=/dev/zero bs=314572800 count=1 of=$f 2>/dev/null");
    }
    spec(&[
        "python3",
        "-c",
        "import time\na = b'x' * (300 << 20)\nprint('allocated', flush=True)\ntime.sleep(30)",
    ])
}
