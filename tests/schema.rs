//! The JSON Schemas of the two config files (schema/*.schema.json) name
//! exactly the keys the parser takes, table by table, and real files
//! validate against them with a real validator (Python's jsonschema), while
//! a typo does not.

use batchguard_config::keys;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

#[path = "support/mod.rs"]
mod support;

fn schema(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn props(v: &Value) -> BTreeSet<String> {
    v["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[test]
fn the_schemas_name_exactly_the_parsers_keys() {
    let job = schema("job.schema.json");
    assert_eq!(props(&job), set(keys::JOB_KEYS), "job keys");
    let p = &job["properties"];
    assert_eq!(props(&p["items"]), set(keys::ITEMS_KEYS), "[items]");
    assert_eq!(props(&p["notify"]), set(keys::NOTIFY_KEYS), "[notify]");
    assert_eq!(props(&p["runbook"]), set(keys::RUNBOOK_KEYS), "[runbook]");
    assert_eq!(
        props(&p["guideline"]),
        set(keys::GUIDELINE_KEYS),
        "[guideline]"
    );
    assert_eq!(
        props(&p["distributed"]),
        set(keys::DISTRIBUTED_KEYS),
        "[distributed]"
    );
    let global = schema("batchguard.schema.json");
    assert_eq!(props(&global), set(keys::GLOBAL_KEYS), "global keys");
    let g = &global["properties"];
    assert_eq!(props(&g["defaults"]), set(keys::JOB_KEYS), "[defaults]");
    let channel = &g["channels"]["additionalProperties"];
    let kinds: BTreeSet<String> = channel["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, set(keys::CHANNEL_TYPES), "channel types");
    for rule in channel["allOf"].as_array().unwrap() {
        let kind = rule["if"]["properties"]["type"]["const"].as_str().unwrap();
        assert_eq!(
            props(&rule["then"]),
            set(keys::channel(kind)),
            "channel type {kind}"
        );
    }
}

fn validate(schema: &str, files: &[&Path]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(root.join("schema/check.py"))
        .arg(root.join("schema").join(schema))
        .args(files)
        .output()
        .expect("python3")
}

#[test]
fn real_files_validate_and_a_typo_does_not() {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema, tomllib"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return support::cannot_run(
            "real_files_validate_and_a_typo_does_not",
            "needs python3 (3.11+) with jsonschema (`pip install jsonschema`; .ci/run installs it)",
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples: Vec<_> = std::fs::read_dir(root.join("examples/jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let refs: Vec<&Path> = examples.iter().map(|p| p.as_path()).collect();
    let out = validate("job.schema.json", &refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, "command = [\"true\"]\ntimout = \"5m\"\n").unwrap();
    let out = validate("job.schema.json", &[&typo]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("timout"));
    let global = tmp.path().join("batchguard.toml");
    std::fs::write(
        &global,
        "log_dir = \"/var/log/batchguard\"\nlease = \"30s\"\n[defaults]\ntimeout = \"1h\"\n[channels.oncall]\ntype = \"slack\"\nurl_env = \"SLACK_URL\"\n[channels.mail]\ntype = \"email\"\nsmtp = \"smtp://127.0.0.1:25\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
    )
    .unwrap();
    let out = validate("batchguard.schema.json", &[&global]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(
        &global,
        "[channels.mail]\ntype = \"email\"\nsmtp = \"smtp://127.0.0.1:25\"\nurl_env = \"X\"\n",
    )
    .unwrap();
    assert!(
        !validate("batchguard.schema.json", &[&global])
            .status
            .success(),
        "url_env is no key of an email channel"
    );
}
