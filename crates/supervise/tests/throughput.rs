//! Throughput of short joined children (per-item mode). Not a correctness test:
//! `cargo test --release -p batchguard-supervise --test throughput -- --ignored --nocapture`

mod common;
use common::*;

use std::time::{Duration, Instant};

use batchguard_supervise::{self as sv, CgroupPlacement, End, Group, Limits};

fn per_thread(threads: usize, n: usize, f: &(dyn Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n {
                    f();
                }
            });
        }
    });
    start.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[test]
#[ignore]
fn join_true_throughput() {
    const THREADS: usize = 2;
    const N: usize = 500;
    sv::become_subreaper();
    let mode = host_mode();
    let g = Group::create(&format!("bench-{}", std::process::id()), None, mode).expect("group");
    let h = g.handle();
    let run = |argv: &[&str], placement: &(dyn Fn() -> CgroupPlacement + Sync)| {
        let mut s = spec(argv);
        s.cgroup = placement();
        let child = sv::spawn_with(s, Limits::default(), mode).expect("spawn");
        let out = child.wait(|_, _| {});
        assert_eq!(out.end, End::Exited(0));
    };
    let join = || CgroupPlacement::Join(h.clone());
    // Warm up.
    per_thread(THREADS, 20, &|| run(&["/bin/true"], &join));
    let bare = per_thread(THREADS, N, &|| {
        let st = std::process::Command::new("/bin/true")
            .status()
            .expect("std");
        assert!(st.success());
    });
    let joined = per_thread(THREADS, N, &|| run(&["/bin/true"], &join));
    let bare2 = per_thread(THREADS, N, &|| {
        let st = std::process::Command::new("/bin/true")
            .status()
            .expect("std");
        assert!(st.success());
    });
    let total = THREADS * N;
    let xargs = {
        use std::io::Write;
        let start = Instant::now();
        let mut x = std::process::Command::new("xargs")
            .args(["-P2", "-n1", "/bin/true"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("xargs");
        let input: String = (0..total).map(|i| format!("{i}\n")).collect();
        x.stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        assert!(x.wait().expect("xargs").success());
        start.elapsed()
    };
    eprintln!(
        "xargs -P2 -n1 /bin/true: {:.0}/s; Join / xargs = {:.2}",
        rate(total, xargs),
        xargs.as_secs_f64() / joined.as_secs_f64()
    );
    eprintln!(
        "{THREADS} threads x {N} /bin/true ({mode}): Join {:.0}/s, bare std::process::Command {:.0}/s, {:.0}/s",
        rate(total, joined),
        rate(total, bare),
        rate(total, bare2)
    );
    const M: usize = 50;
    let create = per_thread(THREADS, M, &|| {
        static K: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = K.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        run(&["sleep", "0.01"], &|| CgroupPlacement::Create {
            name: format!("bench-c-{}-{n}", std::process::id()),
        })
    });
    let join_sleep = per_thread(THREADS, M, &|| run(&["sleep", "0.01"], &join));
    eprintln!(
        "{THREADS} threads x {M} sleep 0.01: Create {:.0}/s, Join {:.0}/s",
        rate(THREADS * M, create),
        rate(THREADS * M, join_sleep)
    );
}
