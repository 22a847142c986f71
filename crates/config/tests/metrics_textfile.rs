//! The `metrics_textfile` global key (SPEC §10): a path, relative ones
//! resolved against the config dir, errors with file, line and column.

use batchguard_config::parse_global_str;
use std::path::Path;

fn parse(text: &str) -> Result<batchguard_config::Global, String> {
    parse_global_str(
        Path::new("/etc/batchguard"),
        Path::new("/etc/batchguard/batchguard.toml"),
        text,
    )
    .map_err(|e| e.to_string())
}

#[test]
fn metrics_textfile_is_a_path() {
    let g = parse("metrics_textfile = \"/var/lib/prometheus/node-exporter/batchguard.prom\"\n")
        .unwrap();
    assert_eq!(
        g.metrics_textfile.as_deref(),
        Some(Path::new(
            "/var/lib/prometheus/node-exporter/batchguard.prom"
        ))
    );
    let g = parse("metrics_textfile = \"prom/../batchguard.prom\"\n").unwrap();
    assert_eq!(
        g.metrics_textfile.as_deref(),
        Some(Path::new("/etc/batchguard/batchguard.prom"))
    );
    assert_eq!(parse("").unwrap().metrics_textfile, None);
}

#[test]
fn metrics_textfile_errors_name_the_place() {
    for (text, want) in [
        (
            "log_dir = \"/tmp\"\nmetrics_textfile = \"/var/lib/prom/\"\n",
            "names a directory",
        ),
        ("metrics_textfile = \"\"\n", "metrics_textfile"),
        ("metrics_textfile = 3\n", "metrics_textfile"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.contains("batchguard.toml:"), "{text}: {e}");
    }
    let e = parse("metrics_textfil = \"/x.prom\"\n").unwrap_err();
    assert!(e.contains("metrics_textfile"), "closest key suggested: {e}");
}
