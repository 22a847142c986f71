//! Link GCC's unwinder into the binary instead of loading libgcc_s.so.
//!
//! Rust's standard library on `*-linux-gnu` needs the `_Unwind_*` functions
//! (panics, backtraces) and takes them from the shared libgcc_s. Loading one
//! more library on every invocation costs the dynamic loader an open, four
//! maps, its relocations, every later symbol lookup one more table (libgcc_s
//! comes first in the search order), and its constructor, which probes the
//! CPU with `cpuid` (a trap to the hypervisor in a VM): 0.15 ms of each
//! run's start (docs/performance.md). The same unwinder, GCC's static
//! `libgcc_eh.a`, is linked whole ahead of the standard library instead, so
//! the linker (`--as-needed`) no longer records libgcc_s. Where the C
//! compiler has no libgcc_eh.a the build keeps libgcc_s.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let found = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|path| std::path::Path::new(path.trim()).is_absolute())
        .unwrap_or(false);
    if found {
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
    } else {
        println!("cargo:warning=libgcc_eh.a not found: the binary loads libgcc_s.so");
    }
}
