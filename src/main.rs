//! The `batchguard` binary: install the diagnostics subscriber, run the CLI,
//! exit with its code.

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATCHGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = batchguard::cli::main();
    tracing::debug!(code, "exiting");
    std::process::exit(code);
}
