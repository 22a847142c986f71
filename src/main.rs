//! The `batchguard` binary: install the diagnostics subscriber, run the CLI,
//! exit with its code.
//!
//! The entry point is the C `main`, not Rust's runtime start (`#![no_main]`):
//! a `batchguard run` is started hundreds of times a day, and Rust's start-up
//! reads /proc/self/maps to find the main thread's stack, installs
//! stack-overflow handlers and maps a signal stack for every thread, for a
//! message before a crash: about 20 system calls and 50 page faults per run
//! (docs/performance.md). What of it a supervisor needs is done here: the
//! standard descriptors are made safe to use and SIGPIPE is ignored. A stack
//! overflow still ends the process, by SIGSEGV instead of an abort with a
//! message.

#![no_main]

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Colour in diagnostics only where a person reads them: stderr is a
/// terminal and `NO_COLOR` is unset, or `CLICOLOR_FORCE` asks for it. Cron
/// mails and log files get plain text.
fn stderr_wants_colour() -> bool {
    if let Some(force) = std::env::var_os("CLICOLOR_FORCE") {
        if !force.is_empty() && force != "0" {
            return true;
        }
    }
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Descriptors 0-2 that the parent left closed are opened on /dev/null, so
/// that no file or socket this process opens later (the store's connection,
/// a job's log) becomes "standard output" and receives what is printed.
/// SIGPIPE is ignored, so a pipe whose reader went away is a write error to
/// the runner, never its death with a run unrecorded (read commands restore
/// the default: `cli::dispatch`). What Rust's own start-up does, without
/// the rest.
fn sanitize_process_start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the three live pollfd structs; open and
    // dup2 take a NUL-terminated literal and integers; signal takes integers.
    unsafe {
        if libc::poll(fds.as_mut_ptr(), 3, 0) >= 0 {
            for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null < 0 {
                    libc::abort();
                }
                if null != p.fd {
                    libc::dup2(null, p.fd);
                    libc::close(null);
                }
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// What `BATCHGUARD_LOG` lets through: comma-separated `LEVEL` and
/// `TARGET=LEVEL` directives (`debug`, `batchguard=trace,warn`); unset,
/// empty or not understood, warnings and errors. `Targets` reads the same
/// directives as tracing's `EnvFilter` without its span and field filters,
/// which need a regular-expression engine in every invocation's binary
/// (docs/performance.md).
fn diagnostics_filter() -> tracing_subscriber::filter::Targets {
    let warn = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN);
    match std::env::var("BATCHGUARD_LOG") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!(
                "batchguard: BATCHGUARD_LOG={v:?} is not understood ({e}); showing warnings. \
                 Give LEVEL or TARGET=LEVEL, comma-separated (debug, batchguard=trace)"
            );
            warn()
        }),
        _ => warn(),
    }
}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    sanitize_process_start();
    tracing_subscriber::fmt()
        // Everything reaches the filter below, which decides.
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_colour())
        .with_target(false)
        .finish()
        .with(diagnostics_filter())
        .init();
    let code = batchguard::cli::main();
    tracing::debug!(code, "exiting");
    // Flushes standard output (Rust's runtime clean-up) and exits.
    std::process::exit(code);
}
