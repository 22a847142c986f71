//! End-to-end tests with real processes, signals and (where the host has them) cgroups.

mod common;
use common::*;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batchguard_supervise::{
    self as sv, CgroupPlacement, End, Enforcement, Limits, Outcome, RunAs, SpawnError, Spec,
    StdinMode, StopReason, Stream,
};

/// As a subreaper, a shell with two `sleep 300` (one in the background)
/// in a new cgroup named after `tag`, without limits.
fn spawn_sleepers(tag: &str, mode: Enforcement) -> sv::Child {
    sv::become_subreaper();
    sv::spawn_with(
        with_cgroup(sh("sleep 300 & sleep 300"), tag),
        Limits::default(),
        mode,
    )
    .expect("spawn")
}

fn with_cgroup(mut s: Spec, tag: &str) -> Spec {
    s.cgroup = CgroupPlacement::Create { name: unique(tag) };
    s
}

type Lines = Vec<(Stream, Vec<u8>)>;

fn run_with(s: Spec, limits: Limits, mode: Enforcement) -> (Outcome, Lines) {
    sv::become_subreaper();
    let child = sv::spawn_with(s, limits, mode).expect("spawn");
    let mut lines = Vec::new();
    let out = child.wait(|st, l| lines.push((st, l.to_vec())));
    (out, lines)
}

/// `run_with` of the shell `script` in a new cgroup named after `tag`,
/// without limits.
fn run_in_cgroup(script: &str, tag: &str, mode: Enforcement) -> (Outcome, Lines) {
    run_with(with_cgroup(sh(script), tag), Limits::default(), mode)
}

fn run(s: Spec) -> (Outcome, Lines) {
    run_with(s, Limits::default(), Enforcement::Poll)
}

fn text(lines: &Lines, stream: Stream) -> Vec<String> {
    lines
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn exit_code_passthrough() {
    let (out, _) = run(sh("exit 7"));
    assert_eq!(out.end, End::Exited(7));
    let (out, _) = run(spec(&["true"]));
    assert_eq!(out.end, End::Exited(0));
    assert_eq!(
        out.enforcement,
        Enforcement::None,
        "no memory_max: enforcement none"
    );
}

/// `wait_then`'s hook runs once, on the waiting thread, when the wait
/// lasts its delay, even in cgroup mode (whose ticks are a second apart);
/// never for a child that ends before.
#[test]
fn the_late_hook_runs_once_on_time_and_only_for_a_child_that_lasts() {
    for mode in modes() {
        sv::become_subreaper();
        let calls = std::cell::Cell::new(0u32);
        let waiter = std::thread::current().id();
        let lasting = with_cgroup(sh("sleep 0.5"), "late");
        let long = sv::spawn_with(lasting, Limits::default(), mode).expect("spawn");
        let start = Instant::now();
        let out = long.wait_then(
            |_, _| {},
            Duration::from_millis(100),
            || {
                assert_eq!(std::thread::current().id(), waiter);
                let at = start.elapsed();
                assert!(
                    at >= Duration::from_millis(100) && at < Duration::from_millis(400),
                    "{mode}: called at {at:?}"
                );
                calls.set(calls.get() + 1);
            },
        );
        assert_eq!(out.end, End::Exited(0));
        assert_eq!(calls.get(), 1, "{mode}: a 500 ms child gets the hook once");
        let short = sv::spawn_with(spec(&["true"]), Limits::default(), mode).expect("spawn");
        let out = short.wait_then(
            |_, _| {},
            Duration::from_millis(100),
            || calls.set(calls.get() + 1),
        );
        assert_eq!(out.end, End::Exited(0));
        assert_eq!(
            calls.get(),
            1,
            "{mode}: a child that ended first gets no hook"
        );
    }
}

#[test]
fn signal_death_is_signaled() {
    for mode in modes() {
        let (out, _) = run_in_cgroup("kill -KILL $$", "sig", mode);
        assert_eq!(out.end, End::Signaled(9), "mode {mode}");
    }
}

#[test]
fn output_lines_tagged_in_order_with_tail() {
    // The pause must let the supervisor read a pass in between (longer on the
    // emulated CPU of the test VM).
    let pause = 0.05 * slowdown() as f64;
    let (out, lines) = run(sh(&format!(
        "echo out1; echo err1 >&2; sleep {pause}; echo out2; echo err2 >&2; printf tail"
    )));
    assert_eq!(out.end, End::Exited(0));
    assert_eq!(text(&lines, Stream::Stdout), ["out1", "out2", "tail"]);
    assert_eq!(text(&lines, Stream::Stderr), ["err1", "err2"]);
    // Arrival order: out1/err1 come before the sleep, out2/err2 after.
    let pos = |s: &str| lines.iter().position(|(_, l)| l == s.as_bytes()).expect(s);
    assert!(pos("out1") < pos("out2") && pos("err1") < pos("out2") && pos("err1") < pos("err2"));
}

#[test]
fn long_line_is_split_in_64k_pieces() {
    let (out, lines) = run(sh("head -c 200000 /dev/zero | tr '\\0' a; echo; echo next"));
    assert_eq!(out.end, End::Exited(0));
    let sizes: Vec<usize> = lines.iter().map(|(_, l)| l.len()).collect();
    assert_eq!(sizes, [65536, 65536, 65536, 200000 - 3 * 65536, 4]);
    assert!(
        lines[..4]
            .iter()
            .all(|(s, l)| *s == Stream::Stdout && l.iter().all(|&b| b == b'a'))
    );
    // Exactly 64 KiB followed by a newline stays one line.
    let (_, lines) = run(sh("head -c 65536 /dev/zero | tr '\\0' b; echo"));
    assert_eq!(
        lines.iter().map(|(_, l)| l.len()).collect::<Vec<_>>(),
        [65536]
    );
}

#[test]
fn chatty_child_never_blocks() {
    let start = Instant::now();
    let (out, lines) = run(sh(
        "head -c 5000000 /dev/zero | tr '\\0' x | fold -w 100; head -c 100000 /dev/zero | tr '\\0' y | fold -w 100 >&2",
    ));
    assert_eq!(out.end, End::Exited(0));
    assert_eq!(text(&lines, Stream::Stdout).len(), 50_000);
    assert_eq!(text(&lines, Stream::Stderr).len(), 1_000);
    assert!(start.elapsed() < bound(20));
}

#[test]
fn not_found_and_not_executable() {
    sv::become_subreaper();
    let e =
        sv::spawn(spec(&["batchguard-no-such-program"]), Limits::default()).expect_err("not found");
    assert!(
        matches!(e, SpawnError::NotFound { ref program } if program == "batchguard-no-such-program"),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 127);
    let e = sv::spawn(spec(&["/nonexistent/prog"]), Limits::default()).expect_err("not found");
    assert!(matches!(e, SpawnError::NotFound { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 127);

    let dir = tmpdir("noexec");
    let file = dir.join("script");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").expect("write");
    // By path: the exec error (EACCES) is classified.
    let e =
        sv::spawn(spec(&[file.to_str().expect("utf8")]), Limits::default()).expect_err("not exec");
    assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 126);
    // Through PATH lookup.
    let mut s = spec(&["script"]);
    s.env = vec![("PATH".into(), dir.as_os_str().to_owned())];
    let e = sv::spawn(s, Limits::default()).expect_err("not exec");
    assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e:?}");
}

#[test]
fn missing_cwd_is_workdir_error() {
    let mut s = spec(&["true"]);
    s.cwd = Some(PathBuf::from("/nonexistent/batchguard/dir"));
    let e = sv::spawn(s, Limits::default()).expect_err("workdir");
    assert!(
        matches!(e, SpawnError::Workdir { ref path, .. } if path == Path::new("/nonexistent/batchguard/dir")),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 126);
    // And a good cwd is used.
    let mut s = spec(&["pwd"]);
    s.cwd = Some(PathBuf::from("/tmp"));
    let (_, lines) = run(s);
    assert_eq!(text(&lines, Stream::Stdout), ["/tmp"]);
}

#[test]
fn timeout_reaches_setsid_grandchild() {
    for mode in modes() {
        let (_dir, pidfile, script) = pid_script("setsid", SETSID_GRANDCHILD);
        let limits = deadline(400, 30000);
        sv::become_subreaper();
        let child =
            sv::spawn_with(with_cgroup(sh(&script), "setsid"), limits, mode).expect("spawn");
        let (pid, cg) = (child.pid(), child.cgroup_path().map(Path::to_path_buf));
        assert_eq!(cg.is_some(), mode != Enforcement::Poll, "mode {mode}");
        let start = Instant::now();
        let out = child.wait(|_, _| {});
        assert_eq!(out.end, End::TimedOut, "mode {mode}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sleep obeys TERM: no need for the 30 s grace"
        );
        let grandchild = read_pid(&pidfile);
        assert!(gone(pid), "main survived ({mode})");
        assert!(
            gone(grandchild),
            "setsid grandchild {grandchild} survived ({mode})"
        );
        if let Some(cg) = cg {
            assert!(!cg.exists(), "cgroup not removed");
        }
    }
}

#[test]
fn term_ignoring_child_is_killed_after_grace() {
    for mode in modes() {
        let (_dir, pidfile, script) = pid_script(
            "trap",
            "trap '' TERM; sleep 300 & echo $! > PIDFILE; while :; do sleep 0.05; done",
        );
        let limits = deadline(300, 600);
        let start = Instant::now();
        let (out, _) = run_with(with_cgroup(sh(&script), "trap"), limits, mode);
        let took = start.elapsed();
        assert_eq!(out.end, End::TimedOut, "mode {mode}");
        assert!(
            took >= Duration::from_millis(850),
            "KILL came before the grace: {took:?}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(
            gone(read_pid(&pidfile)),
            "background sleep (TERM ignored) survived ({mode})"
        );
    }
}

#[test]
fn memory_limit_cgroup_host_mode() {
    let Some(mode) = host_cgroup_or_skip() else {
        return;
    };
    let limits = Limits {
        timeout: Some(bound(20)),
        memory_max: Some(64 << 20),
        ..Limits::default()
    };
    sv::become_subreaper();
    let child = sv::spawn_with(with_cgroup(python_hog(), "oom"), limits, mode).expect("spawn");
    assert_eq!(child.enforcement(), mode);
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    let mut lines = Vec::new();
    let out = child.wait(|s, l| lines.push((s, l.to_vec())));
    assert_eq!(out.end, End::OutOfMemory, "{out:?} {lines:?}");
    assert_eq!(out.enforcement, mode);
    let peak = out.peak_memory_bytes.expect("peak");
    assert!((32 << 20..=80 << 20).contains(&peak), "peak {peak}");
    assert!(!text(&lines, Stream::Stdout).contains(&"allocated".to_string()));
    assert!(!cg.exists());
    assert!(out.duration < bound(10));
}

/// A job that makes a sub-cgroup of its own and leaves a process in it:
/// the process is stopped with the rest of the tree and both cgroups are
/// removed (the sub-cgroup found through the leaf's link count).
#[test]
fn a_sub_cgroup_the_job_made_is_stopped_and_removed() {
    let Some(mode) = host_cgroup_or_skip() else {
        return;
    };
    let dir = tmpdir("subcg");
    let path_file = dir.join("cgroup");
    let pid_file = dir.join("pid");
    let script = format!(
        "while [ ! -s {p} ]; do sleep 0.01; done; cg=$(cat {p}); mkdir \"$cg/sub\" || exit 9; \
         sleep 300 & echo $! > \"$cg/sub/cgroup.procs\" || exit 8; \
         echo $! > {pid}.tmp; mv {pid}.tmp {pid}",
        p = path_file.display(),
        pid = pid_file.display()
    );
    sv::become_subreaper();
    let limits = Limits {
        timeout: Some(bound(20)),
        ..Limits::default()
    };
    let child = sv::spawn_with(with_cgroup(sh(&script), "subcg"), limits, mode).expect("spawn");
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    std::fs::write(&path_file, cg.display().to_string()).unwrap();
    let out = child.wait(|_, _| {});
    assert_eq!(
        out.end,
        End::Exited(0),
        "the sleeper went into a sub-cgroup: {out:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the job wrote its sleeper's pid")
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone(pid),
        "the sleeper {pid} in the sub-cgroup outlived the run"
    );
    assert!(!cg.join("sub").exists(), "the sub-cgroup is left");
    assert!(!cg.exists(), "the run's cgroup is left");
}

#[test]
fn memory_limit_poll_mode() {
    let limits = Limits {
        timeout: Some(bound(20)),
        memory_max: Some(64 << 20),
        ..Limits::default()
    };
    let (out, _) = run_with(
        with_cgroup(python_hog(), "oompoll"),
        limits,
        Enforcement::Poll,
    );
    assert_eq!(out.end, End::OutOfMemory, "{out:?}");
    assert_eq!(out.enforcement, Enforcement::Poll);
    let peak = out.peak_memory_bytes.expect("peak");
    assert!(peak > 64 << 20, "peak {peak}");
    assert!(out.duration < bound(10));
}

#[test]
fn peak_memory_without_limit_and_enforcement_none() {
    for mode in modes() {
        let (out, _) = run_in_cgroup("sleep 0.3", "peak", mode);
        assert_eq!(out.end, End::Exited(0));
        assert_eq!(out.enforcement, Enforcement::None);
        assert!(
            out.peak_memory_bytes.is_some_and(|p| p > 0),
            "mode {mode}: {out:?}"
        );
    }
    let (out, _) = run_with(sh("exit 3"), Limits::default(), Enforcement::None);
    assert_eq!(out.end, End::Exited(3));
    assert_eq!(out.peak_memory_bytes, None);
}

#[test]
fn exit_is_detected_promptly() {
    for mode in modes() {
        sv::become_subreaper();
        // The same child without supervision, under the same machine load.
        let bare_start = Instant::now();
        let st = std::process::Command::new("sleep")
            .arg("0.05")
            .status()
            .expect("bare sleep");
        assert!(st.success());
        let bare = bare_start.elapsed();
        let start = Instant::now();
        let child = sv::spawn_with(
            with_cgroup(spec(&["sleep", "0.05"]), "fast"),
            Limits::default(),
            mode,
        )
        .expect("spawn");
        let out = child.wait(|_, _| {});
        let took = start.elapsed();
        assert_eq!(out.end, End::Exited(0));
        assert!(took >= Duration::from_millis(50));
        // sleep itself takes 50 ms; a coarse poll tick or a grace wait would
        // show here. Bounded against the bare run so that a loaded machine
        // (parallel tests on 2 cores) slows both alike.
        assert!(
            took < bare * 2 + Duration::from_millis(300),
            "mode {mode}: took {took:?}, bare {bare:?}"
        );
        eprintln!("mode {mode}: 50 ms child supervised in {took:?} (bare {bare:?})");
    }
}

#[test]
fn stop_from_another_thread() {
    for mode in modes() {
        let child = spawn_sleepers("stop", mode);
        let pgid = child.pgid();
        let handle = child.stop_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            handle.stop(StopReason::Fenced);
            handle.stop(StopReason::Requested); // first reason wins
        });
        let start = Instant::now();
        let out = child.wait(|_, _| {});
        t.join().expect("thread");
        assert_eq!(out.end, End::Stopped(StopReason::Fenced), "mode {mode}");
        // Well within the 10 s default grace: sleep obeys TERM.
        assert!(start.elapsed() < Duration::from_secs(8));
        assert!(!sv::tree_alive(None, Some(pgid)));
    }
    // kill(): immediate KILL, even for a TERM-ignoring child with a long grace.
    sv::become_subreaper();
    let child = sv::spawn_with(
        sh("trap '' TERM; sleep 300"),
        Limits {
            kill_grace: Duration::from_secs(60),
            ..Limits::default()
        },
        Enforcement::Poll,
    )
    .expect("spawn");
    let handle = child.stop_handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.kill(StopReason::Signal(15));
    });
    let start = Instant::now();
    let out = child.wait(|_, _| {});
    t.join().expect("thread");
    assert_eq!(out.end, End::Stopped(StopReason::Signal(15)));
    // KILL at once, not after the 60 s grace (generous bound for loaded CI).
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn daemonised_grandchild_does_not_hang_wait() {
    for mode in modes() {
        // The grandchild escapes the process group, keeps stdout open, and its parent exits at once.
        let daemonising = "setsid sleep 300 & echo $! > PIDFILE; echo started";
        let (_dir, pidfile, script) = pid_script("daemon", daemonising);
        let start = Instant::now();
        let (out, lines) = run_with(with_cgroup(sh(&script), "daemon"), Limits::default(), mode);
        assert_eq!(out.end, End::Exited(0));
        assert_eq!(text(&lines, Stream::Stdout), ["started"]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mode {mode}: {:?}",
            start.elapsed()
        );
        assert!(gone(read_pid(&pidfile)), "mode {mode}: daemon survived");
    }
}

#[test]
fn leftovers_of_a_dead_runner_are_killed() {
    for mode in modes() {
        sv::become_subreaper();
        let (_dir, pidfile, script) = pid_script("left", SETSID_GRANDCHILD);
        let child = sv::spawn_with(with_cgroup(sh(&script), "left"), Limits::default(), mode)
            .expect("spawn");
        let (pid, pgid, cg) = (
            child.pid(),
            child.pgid(),
            child.cgroup_path().map(Path::to_path_buf),
        );
        let grandchild = read_pid(&pidfile);
        // "The runner died": nobody supervises the tree any more.
        std::mem::forget(child);
        assert!(sv::tree_alive(cg.as_deref(), Some(pgid)));
        let start = Instant::now();
        assert!(sv::kill_leftovers(
            cg.as_deref(),
            Some(pgid),
            Duration::from_secs(30)
        ));
        // sleep obeys TERM: far less than the 30 s grace.
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!sv::tree_alive(cg.as_deref(), Some(pgid)));
        assert!(gone(pid));
        if let Some(cg) = &cg {
            assert!(!cg.exists(), "cgroup not removed");
            // With a cgroup even the setsid grandchild is found.
            assert!(gone(grandchild), "setsid grandchild survived");
        } else {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(grandchild),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Nothing left: a second call reports that.
        assert!(!sv::kill_leftovers(
            cg.as_deref(),
            Some(pgid),
            Duration::from_secs(1)
        ));
    }
}

#[test]
fn procfs_identity() {
    sv::become_subreaper();
    let child = sv::spawn_with(
        spec(&["sleep", "0.3"]),
        Limits::default(),
        Enforcement::Poll,
    )
    .expect("spawn");
    let pid = child.pid();
    let st = sv::procfs::start_time(pid).expect("start time");
    assert!(sv::procfs::is_alive(pid, st));
    assert!(
        !sv::procfs::is_alive(pid, st + 1),
        "wrong start time = recycled pid"
    );
    let out = child.wait(|_, _| {});
    assert_eq!(out.end, End::Exited(0));
    assert!(!sv::procfs::is_alive(pid, st), "dead pid");
    assert!(sv::procfs::start_time(pid).is_none());
    let boot = sv::procfs::boot_id().expect("boot id");
    assert_eq!(boot.len(), 36);
}

#[test]
fn runs_as_user_nobody() {
    let nobody = RunAs::lookup("nobody").expect("nobody exists");
    assert!(matches!(
        RunAs::lookup("batchguard-no-such-user"),
        Err(SpawnError::User { .. })
    ));
    let mut s = spec(&["id", "-u"]);
    s.user = Some(nobody.clone());
    let (out, lines) = run(s);
    assert_eq!(out.end, End::Exited(0));
    assert_eq!(text(&lines, Stream::Stdout), [nobody.uid.to_string()]);
    // The child shares the runner's memory until exec (vfork-style), never
    // its credentials: the switch was the child's alone.
    let me = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid_line = me
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let real_uid = nix::unistd::getuid().as_raw().to_string();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == real_uid),
        "the runner's credentials changed: {uid_line}"
    );
    let mut s = spec(&["id", "-G"]);
    s.user = Some(nobody.clone());
    let (_, lines) = run(s);
    let groups: Vec<u32> = text(&lines, Stream::Stdout)[0]
        .split_whitespace()
        .map(|g| g.parse().expect("gid"))
        .collect();
    assert_eq!(groups[0], nobody.gid);
    assert!(
        groups
            .iter()
            .all(|g| nobody.groups.contains(g) || *g == nobody.gid),
        "{groups:?}"
    );
}

#[test]
fn done_fd_and_stdin_pipe() {
    sv::become_subreaper();
    let mut s = sh("while read l; do echo \"done:$l\" >&3; echo \"seen:$l\"; done");
    s.stdin = StdinMode::Pipe;
    s.done_fd = Some(3);
    let mut child = sv::spawn_with(s, Limits::default(), Enforcement::Poll).expect("spawn");
    let mut stdin = child.take_stdin().expect("stdin");
    let mut done = child.take_done_reader().expect("done reader");
    stdin.write_all(b"a\nb\n").expect("write");
    drop(stdin);
    let mut lines = Vec::new();
    let out = child.wait(|s, l| lines.push((s, l.to_vec())));
    assert_eq!(out.end, End::Exited(0));
    assert_eq!(text(&lines, Stream::Stdout), ["seen:a", "seen:b"]);
    let mut got = String::new();
    done.read_to_string(&mut got).expect("read done fd");
    assert_eq!(got, "done:a\ndone:b\n");
}

#[test]
fn parallel_runs_keep_their_own_exit_status() {
    sv::become_subreaper();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                for j in 0..5 {
                    let code = (i * 10 + j) % 250 + 1;
                    // Each run also orphans a short-lived grandchild for the reaper.
                    let (out, _) = run(sh(&format!("(sleep 0.0$(( {j} % 3 )) &) ; exit {code}")));
                    assert_eq!(out.end, End::Exited(code), "run {i}/{j}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn detect_reports_a_mode() {
    let e = sv::detect_host();
    assert!(matches!(
        e,
        Enforcement::Cgroup2 | Enforcement::Cgroup1 | Enforcement::Poll
    ));
    assert_eq!("cgroup1".parse::<Enforcement>(), Ok(Enforcement::Cgroup1));
    assert_eq!(Enforcement::Cgroup2.to_string(), "cgroup2");
    assert!("bogus".parse::<Enforcement>().is_err());
}

#[test]
fn dropping_a_child_kills_its_tree() {
    for mode in modes() {
        let child = spawn_sleepers("drop", mode);
        let (pid, pgid, cg) = (
            child.pid(),
            child.pgid(),
            child.cgroup_path().map(Path::to_path_buf),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(sv::tree_alive(cg.as_deref(), Some(pgid)));
        drop(child);
        assert!(gone(pid));
        assert!(!sv::tree_alive(cg.as_deref(), Some(pgid)), "mode {mode}");
        if let Some(cg) = cg {
            assert!(!cg.exists());
        }
    }
}

#[test]
fn handles_are_thread_safe() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync + Clone>() {}
    send::<sv::Child>();
    send_sync::<sv::StopHandle>();
    send::<SpawnError>();
}

/// Lines of a trap log written by a test script (empty when it does not exist).
fn trap_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// One `stop(Signal(sig))` reaches every process of the tree exactly once, as
/// `sig` itself: the main shell (in the job's process group) and a setsid
/// grandchild (in a process group of its own) each run their trap once.
fn forwarded_once(sig: i32, mode: Enforcement) -> (Vec<String>, Vec<String>) {
    // A non-interactive shell cannot trap a signal that was ignored when it
    // started, and children inherit an ignored disposition: a test process
    // started with INT ignored (`nohup`, `cmd &` in a script) would pass that
    // on. The runner catches INT and TERM, so its jobs always start with the
    // default; do the same here.
    // SAFETY: restores the default disposition of one signal in this process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
    let dir = tmpdir("fwd");
    let (main_log, gc_log, ready) = (dir.join("main"), dir.join("gc"), dir.join("ready"));
    let script = format!(
        "setsid sh -c 'trap \"echo TERM >> {gc}\" TERM; trap \"echo INT >> {gc}\" INT; \
           echo $$ > {gc}.pid; while :; do sleep 0.05; done' &
         trap 'echo TERM >> {main}' TERM; trap 'echo INT >> {main}' INT
         echo ready > {ready}
         while :; do sleep 0.05; done",
        gc = gc_log.display(),
        main = main_log.display(),
        ready = ready.display(),
    );
    let limits = Limits {
        kill_grace: Duration::from_millis(1500),
        ..Limits::default()
    };
    sv::become_subreaper();
    let child = sv::spawn_with(with_cgroup(sh(&script), "fwd"), limits, mode).expect("spawn");
    let gc = read_pid(&dir.join("gc.pid"));
    // The traps are set once `ready` exists; a loaded machine (the whole
    // suite on two cores) can take seconds to get there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready.exists(), "the job never set its traps ({mode})");
    let handle = child.stop_handle();
    handle.stop(StopReason::Signal(sig));
    // A repeated stop (the runner stops every tree again) changes nothing.
    handle.stop(StopReason::Signal(sig));
    let out = child.wait(|_, _| {});
    assert_eq!(
        out.end,
        End::Stopped(StopReason::Signal(sig)),
        "mode {mode}"
    );
    assert!(
        gone(gc),
        "grandchild survived the KILL after the grace ({mode})"
    );
    (trap_log(&main_log), trap_log(&gc_log))
}

#[test]
fn stop_signal_reaches_the_tree_exactly_once() {
    for mode in modes() {
        let (main, gc) = forwarded_once(libc::SIGTERM, mode);
        assert_eq!(main, ["TERM"], "main shell's TERM trap ({mode})");
        assert_eq!(gc, ["TERM"], "setsid grandchild's TERM trap ({mode})");
        // INT stays INT. (The grandchild was started with `&`, so a
        // non-interactive shell ignores INT there; it only must not see TERM.)
        let (main, gc) = forwarded_once(libc::SIGINT, mode);
        assert_eq!(main, ["INT"], "main shell's INT trap ({mode})");
        assert!(
            !gc.contains(&"TERM".to_string()),
            "grandchild got TERM ({mode})"
        );
    }
}

/// A cgroup path read back from the store is verified: a plain directory
/// whose `cgroup.procs` lists some process is not a run cgroup, and nothing
/// it lists is signalled or removed.
#[test]
fn leftover_cleanup_ignores_a_fake_cgroup() {
    let dir = tmpdir("fakecg");
    let fake = dir.join("batchguard").join("run");
    std::fs::create_dir_all(&fake).expect("mkdir");
    let mut victim = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    std::fs::write(fake.join("cgroup.procs"), format!("{}\n", victim.id())).expect("write");
    assert!(!sv::tree_alive(Some(&fake), None));
    assert!(!sv::kill_leftovers(
        Some(&fake),
        None,
        Duration::from_millis(100)
    ));
    assert!(
        !gone(victim.id() as i32),
        "a process listed by a fake cgroup was killed"
    );
    assert!(fake.is_dir(), "a non-cgroup directory was removed");
    let _ = victim.kill();
    let _ = victim.wait();
}

/// Lanes spawn without holding the registry (only the main thread's spawns
/// do, see `tree::SpawnGuard`): children that exit at once, started from
/// two threads side by side while a third keeps the orphan reaper busy
/// (each of its jobs leaves a background child behind), are each reported
/// by their own `wait`, never reaped by someone else first.
#[test]
fn parallel_spawns_keep_their_exit_status_while_the_reaper_runs() {
    sv::become_subreaper();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (out, _) = run(sh("true & exit 0"));
                assert_eq!(out.end, End::Exited(0));
            }
        });
        let lanes: Vec<_> = (0..2)
            .map(|lane| {
                s.spawn(move || {
                    for i in 0..150 {
                        let (out, _) = run(spec(&["sh", "-c", "exit 3"]));
                        assert_eq!(out.end, End::Exited(3), "lane {lane}, child {i}");
                    }
                })
            })
            .collect();
        for l in lanes {
            l.join().expect("lane");
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}

/// A run's child joins its cgroup by itself before exec (on v1 through
/// `tasks`, which moves only the calling thread): the threads it starts
/// after exec and the processes it forks are all inside the leaf too. The
/// child is this test binary itself running `cgroup_probe` (no interpreter
/// needed, so it runs in the VM of tests/vm too).
#[test]
fn a_child_its_threads_and_its_children_are_inside_its_cgroup() {
    let Some(mode) = host_cgroup_or_skip() else {
        return;
    };
    let me = std::env::current_exe().expect("test binary");
    let mut s = spec(&[
        me.to_str().expect("utf-8 path"),
        "--exact",
        "cgroup_probe",
        "--nocapture",
        "--test-threads=1",
    ]);
    s.env.push(("BG_CGROUP_PROBE".into(), "1".into()));
    sv::become_subreaper();
    let child =
        sv::spawn_with(with_cgroup(s, "threads"), deadline(60_000, 1_000), mode).expect("spawn");
    let leaf = child.cgroup_path().expect("cgroup").to_path_buf();
    let name = leaf.file_name().unwrap().to_string_lossy().into_owned();
    let mut lines = Vec::new();
    let out = child.wait(|s, l| lines.push((s, l.to_vec())));
    assert_eq!(out.end, End::Exited(0), "{out:?} {lines:?}");
    let seen: Vec<String> = text(&lines, Stream::Stdout)
        .into_iter()
        .filter(|l| l.starts_with("CG "))
        .collect();
    assert!(
        seen.len() >= 5,
        "3 threads, the main one and a child: {seen:?}"
    );
    for line in &seen {
        assert!(
            line.ends_with(&format!("/{name}")),
            "{line} is outside {name}: {seen:?}"
        );
    }
}

/// Not a test by itself: the child of the test above (does nothing unless
/// `BG_CGROUP_PROBE` is set). Starts three threads and a child process,
/// then prints the cgroup of each thread and of the child, one `CG` line
/// each.
#[test]
fn cgroup_probe() {
    if std::env::var_os("BG_CGROUP_PROBE").is_none() {
        return;
    }
    let cgroup_of = |path: &str| -> String {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| l.contains(":memory:") || l.starts_with("0::"))
            .unwrap_or("none")
            .to_string()
    };
    let stop = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                stop.wait();
            })
        })
        .collect();
    let mut kid = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let mut paths: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|e| e.ok())
        .map(|e| format!("/proc/self/task/{}/cgroup", e.file_name().to_string_lossy()))
        .collect();
    paths.push(format!("/proc/{}/cgroup", kid.id()));
    for p in &paths {
        println!("CG {p} {}", cgroup_of(p));
    }
    stop.wait();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let _ = kid.kill();
    let _ = kid.wait();
}
