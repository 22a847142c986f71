//! The machine's floor for per-item mode: start `argv` once per key from
//! `lanes` threads, each key's child with piped stdout and stderr read to
//! the end, then waited for. No ledger, no supervision, no output handling:
//! what the kernel and the C library's posix_spawn cost here, to set
//! batchguard's per-item figure against (bench/items.py).
//!
//!     cargo run --release --example spawn_floor -- KEYS LANES PROGRAM [ARGS...]
//!
//! Prints the items per second on stdout.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(keys), Some(lanes), Some(program)) = (
        args.first().and_then(|a| a.parse::<usize>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: spawn_floor KEYS LANES PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < keys {
                    let mut child = Command::new(program)
                        .args(&args[3..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn");
                    let mut sink = Vec::new();
                    if let Some(mut out) = child.stdout.take() {
                        let _ = out.read_to_end(&mut sink);
                    }
                    if let Some(mut err) = child.stderr.take() {
                        let _ = err.read_to_end(&mut sink);
                    }
                    child.wait().expect("wait");
                }
            });
        }
    });
    println!("{:.0}", keys as f64 / started.elapsed().as_secs_f64());
}
