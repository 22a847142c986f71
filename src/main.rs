//! The `batchguard` binary: install the diagnostics subscriber, run the CLI,
//! exit with its code.

use std::io::IsTerminal;

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

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATCHGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_colour())
        .with_target(false)
        .init();
    let code = batchguard::cli::main();
    tracing::debug!(code, "exiting");
    std::process::exit(code);
}
