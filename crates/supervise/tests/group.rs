//! Per-item mode: many children joining one run-level group (real processes).

mod common;
use common::*;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batchguard_supervise::{
    self as sv, CgroupPlacement, End, Enforcement, Group, Limits, Outcome, Spec,
};

fn joined(mut s: Spec, g: &Group) -> Spec {
    s.cgroup = CgroupPlacement::Join(g.handle());
    s
}

fn wait(child: sv::Child) -> Outcome {
    child.wait(|_, _| {})
}

/// Run `n` children of `make()` in total, `threads` at a time (one per thread).
fn run_items(
    n: usize,
    threads: usize,
    mode: Enforcement,
    make: &(dyn Fn() -> Spec + Sync),
) -> Duration {
    sv::become_subreaper();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n / threads {
                    let child = sv::spawn_with(make(), Limits::default(), mode).expect("spawn");
                    let out = wait(child);
                    assert_eq!(out.end, End::Exited(0), "{out:?}");
                }
            });
        }
    });
    start.elapsed()
}

// ---------------------------------------------------------------------------

#[test]
fn two_hundred_joined_true_children() {
    let mode = host_mode();
    let g = Group::create(&unique("many"), None, mode).expect("group");
    if host_cgroup().is_some() {
        assert!(
            g.path().is_some_and(Path::is_dir),
            "group dir missing: {g:?}"
        );
    }
    let path = g.path().map(Path::to_path_buf);
    let elapsed = run_items(200, 2, mode, &|| joined(spec(&["/bin/true"]), &g));
    eprintln!(
        "200 x /bin/true joined ({mode}), 2 threads: {elapsed:?} ({:?} per child per thread)",
        elapsed * 2 / 200
    );
    assert!(elapsed < bound(20), "{elapsed:?}");
    assert!(g.is_empty());
    if let Some(p) = &path {
        assert!(p.is_dir(), "group dir vanished during the run");
    }
    drop(g);
    if let Some(p) = &path {
        assert!(!p.exists(), "group dir not removed on drop");
    }
}

/// Not a correctness test: prints the per-child cost of Join vs Create vs no cgroup.
#[test]
fn spawn_cost_join_vs_create() {
    const N: usize = 100;
    let mode = host_mode();
    let g = Group::create(&unique("cost"), None, mode).expect("group");
    let join = run_items(N, 1, mode, &|| joined(spec(&["/bin/true"]), &g));
    let create = run_items(N, 1, mode, &|| {
        let mut s = spec(&["/bin/true"]);
        s.cgroup = CgroupPlacement::Create {
            name: unique("costc"),
        };
        s
    });
    let none = run_items(N, 1, Enforcement::None, &|| spec(&["/bin/true"]));
    let start = Instant::now();
    for _ in 0..N {
        let st = std::process::Command::new("/bin/true")
            .status()
            .expect("std spawn");
        assert!(st.success());
    }
    let raw = start.elapsed();
    let per = |d: Duration| d / N as u32;
    eprintln!(
        "/bin/true spawn+wait, sequential ({mode}): join {:?}, create {:?}, no cgroup {:?}, \
         bare std::process::Command {:?} per child",
        per(join),
        per(create),
        per(none),
        per(raw)
    );
    assert!(join < bound(20) && create < bound(20));
}

fn hog_limits() -> Limits {
    Limits {
        timeout: Some(bound(20)),
        ..Limits::default()
    }
}

#[test]
fn group_memory_limit_cgroup_host_mode() {
    let Some(mode) = host_cgroup_or_skip() else {
        return;
    };
    sv::become_subreaper();
    let g = Group::create(&unique("goom"), Some(64 << 20), mode).expect("group");
    assert_eq!(g.enforcement(), mode);
    assert_eq!(g.oom_kills(), 0);
    let child = sv::spawn_with(joined(python_hog(), &g), hog_limits(), mode).expect("spawn");
    assert_eq!(child.cgroup_path(), g.path());
    assert_eq!(child.enforcement(), mode);
    let out = wait(child);
    assert!(g.oom_kills() > 0, "oom_kill counter did not move: {out:?}");
    // Documented rule: group counter moved during the run + SIGKILL => OutOfMemory.
    assert_eq!(out.end, End::OutOfMemory, "{out:?}");
    assert_eq!(out.enforcement, mode);
    let peak = g.peak_memory().expect("group peak");
    assert!((32 << 20..=80 << 20).contains(&peak), "peak {peak}");
    assert!(out.duration < bound(10), "{out:?}");

    // A later, innocent sibling is not blamed for the earlier OOM kill.
    let ok = sv::spawn_with(joined(sh("exit 0"), &g), Limits::default(), mode).expect("spawn");
    assert_eq!(wait(ok).end, End::Exited(0));
    let killed =
        sv::spawn_with(joined(sh("kill -9 $$"), &g), Limits::default(), mode).expect("spawn");
    assert_eq!(wait(killed).end, End::Signaled(9));
}

#[test]
fn group_memory_limit_poll_mode() {
    sv::become_subreaper();
    let g = Group::create(&unique("gpoll"), Some(64 << 20), Enforcement::Poll).expect("group");
    assert_eq!(g.path(), None);
    assert_eq!(g.enforcement(), Enforcement::Poll);
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if g.sample() {
                    g.kill_all(Duration::from_secs(1));
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        let child = sv::spawn_with(joined(python_hog(), &g), hog_limits(), Enforcement::Poll)
            .expect("spawn");
        let out = wait(child);
        done.store(true, Ordering::SeqCst);
        assert!(
            sampler.join().expect("sampler"),
            "sample() never reported the breach"
        );
        out
    });
    assert_eq!(out.end, End::OutOfMemory, "{out:?}");
    assert_eq!(out.enforcement, Enforcement::Poll);
    assert_eq!(g.oom_kills(), 0);
    assert!(g.limit_breaches() > 0);
    let peak = g.peak_memory().expect("peak");
    assert!(peak > 64 << 20, "peak {peak}");
    assert!(out.duration < bound(10), "{out:?}");
    assert!(g.is_empty());
}

#[test]
fn timeout_of_one_joined_child_spares_its_sibling() {
    for mode in modes() {
        sv::become_subreaper();
        let g = Group::create(&unique("gto"), None, mode).expect("group");
        let (slow, sibling) = std::thread::scope(|s| {
            let slow = s.spawn(|| {
                let limits = Limits {
                    timeout: Some(Duration::from_millis(300)),
                    ..Limits::default()
                };
                let child = sv::spawn_with(joined(spec(&["sleep", "300"]), &g), limits, mode)
                    .expect("spawn");
                let pid = child.pid();
                (wait(child), pid)
            });
            let sibling = s.spawn(|| {
                let child =
                    sv::spawn_with(joined(spec(&["sleep", "1"]), &g), Limits::default(), mode)
                        .expect("spawn");
                wait(child)
            });
            (slow.join().expect("slow"), sibling.join().expect("sibling"))
        });
        let (slow, pid) = slow;
        assert_eq!(slow.end, End::TimedOut, "{mode}: {slow:?}");
        assert!(slow.duration < Duration::from_secs(3), "{mode}: {slow:?}");
        assert!(gone(pid));
        assert_eq!(sibling.end, End::Exited(0), "{mode}: {sibling:?}");
        assert!(
            sibling.duration >= Duration::from_secs(1),
            "{mode}: {sibling:?}"
        );
        assert!(g.is_empty());
    }
}

#[test]
fn kill_all_reaches_every_member_and_setsid_grandchild() {
    for mode in modes() {
        sv::become_subreaper();
        let (_dir, pidfile, script) = pid_script("gkill", SETSID_GRANDCHILD);
        let g = Group::create(&unique("gkill"), None, mode).expect("group");
        let a = sv::spawn_with(joined(sh(&script), &g), Limits::default(), mode).expect("spawn");
        let b = sv::spawn_with(joined(spec(&["sleep", "300"]), &g), Limits::default(), mode)
            .expect("spawn");
        let (pa, pb) = (a.pid(), b.pid());
        let grandchild = read_pid(&pidfile);
        if host_cgroup() == Some(mode) {
            let procs = std::fs::read_to_string(g.path().expect("path").join("cgroup.procs"))
                .expect("procs");
            for p in [pa, pb, grandchild] {
                assert!(
                    procs.split_whitespace().any(|x| x == p.to_string()),
                    "{p} not in group"
                );
            }
        }
        // Let the poll-mode trackers see the tree once.
        std::thread::sleep(Duration::from_millis(150));
        assert!(!g.is_empty());
        let (oa, ob) = std::thread::scope(|s| {
            let ha = s.spawn(|| wait(a));
            let hb = s.spawn(|| wait(b));
            let start = Instant::now();
            g.kill_all(Duration::from_secs(2));
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{mode}: kill_all took {:?}",
                start.elapsed()
            );
            (ha.join().expect("a"), hb.join().expect("b"))
        });
        assert_eq!(oa.end, End::Signaled(15), "{mode}: {oa:?}");
        assert_eq!(ob.end, End::Signaled(15), "{mode}: {ob:?}");
        assert!(g.is_empty());
        assert!(gone(pa) && gone(pb));
        assert!(
            gone(grandchild),
            "{mode}: setsid grandchild survived kill_all"
        );
    }
}

#[test]
fn leftovers_of_a_dead_runner_in_a_group_are_killed() {
    let Some(mode) = host_cgroup_or_skip() else {
        return;
    };
    sv::become_subreaper();
    let (_dir, pidfile, script) = pid_script("gleft", SETSID_GRANDCHILD);
    let g = Group::create(&unique("gleft"), Some(256 << 20), mode).expect("group");
    let path = g.path().expect("path").to_path_buf();
    let mut pids = Vec::new();
    for s in [
        sh(&script),
        spec(&["sleep", "300"]),
        spec(&["sleep", "300"]),
    ] {
        let child = sv::spawn_with(joined(s, &g), Limits::default(), mode).expect("spawn");
        pids.push(child.pid());
        std::mem::forget(child);
    }
    pids.push(read_pid(&pidfile));
    // "The runner died": nobody supervises the group any more.
    std::mem::forget(g);
    assert!(sv::tree_alive(Some(&path), None));
    let start = Instant::now();
    assert!(sv::kill_leftovers(
        Some(&path),
        None,
        Duration::from_secs(2)
    ));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(!sv::tree_alive(Some(&path), None));
    assert!(!path.exists(), "group cgroup not removed");
    for p in pids {
        assert!(gone(p), "{p} survived");
    }
}

#[test]
fn joining_a_dropped_group_fails_and_handles_compare() {
    let g = Group::create(&unique("gdrop"), None, host_mode()).expect("group");
    let h = g.handle();
    assert_eq!(h, g.handle());
    let other = Group::create(&unique("gdrop"), None, Enforcement::Poll).expect("group");
    assert_ne!(h, other.handle());
    drop(g);
    let mut s = spec(&["/bin/true"]);
    s.cgroup = CgroupPlacement::Join(h);
    match sv::spawn_with(s, Limits::default(), host_mode()) {
        Err(sv::SpawnError::Cgroup { .. }) => {}
        other => panic!("expected a cgroup error, got {other:?}"),
    }
    assert!(Group::create("a/b", None, Enforcement::Poll).is_err());
}
