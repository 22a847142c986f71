//! Feeds arbitrary bytes to the job-file and global parsers: they must
//! return diagnostics, never panic. Run: `cargo +nightly fuzz run config_parse`
//! (seed corpus: crates/config/tests/seeds/).
#![no_main]

use std::path::Path;

use batchguard_config::{Global, parse_global_str, parse_job_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let global = match parse_global_str(
        Path::new("/etc/batchguard"),
        Path::new("/etc/batchguard/batchguard.toml"),
        &text,
    ) {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            Global::default()
        }
    };
    if let Err(e) = parse_job_str(
        "fuzz",
        Path::new("/etc/batchguard/jobs/fuzz.toml"),
        &text,
        &global,
    ) {
        let _ = e.to_string();
    }
});
