//! Helpers shared by every test binary of the main crate: waiting on a
//! condition, process checks, and the one way a test that cannot run on
//! this machine says so (and fails under CI instead of passing).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `bin --config-dir config ARGS` with `state` as the state store, run in
/// `root` with no stdin and no config dir inherited from the environment.
pub fn batchguard(bin: &str, config: &Path, state: &str, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--config-dir")
        .arg(config)
        .args(args)
        .env("BATCHGUARD_STATE", state)
        .env_remove("BATCHGUARD_CONFIG_DIR")
        .current_dir(root)
        .stdin(Stdio::null());
    c
}

/// Wait until `f` holds, polling; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Is `pid` a live process (a zombie is dead for our purposes)?
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A test that cannot run here: it says so visibly on stderr and returns,
/// or, when `BATCHGUARD_TEST_STRICT=1` (set by `.ci/run`), fails, so CI
/// never counts a test that did not run as passed.
pub fn cannot_run(test: &str, why: &str) {
    if std::env::var("BATCHGUARD_TEST_STRICT").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}) and BATCHGUARD_TEST_STRICT=1");
    }
    // Straight to the process's stderr, past the test harness's capture, so
    // `cargo test` shows it even for a test that returns here.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
