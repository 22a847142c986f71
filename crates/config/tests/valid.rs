//! The SPEC §2/§3 examples load with the expected values; defaults merge.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use batchguard_config::*;
use common::TempDir;

const GLOBAL: &str = r#"
state = "sqlite:/var/lib/batchguard/state.db"
log_dir = "/var/log/batchguard"
host = "batch-01"                        # label in notifications; default: hostname
dashboard_url = "https://batch.example.com"

[defaults]                               # default for any job key below
timeout = "1h"
notify = { channels = ["oncall"] }

[channels.oncall]
type = "slack"                           # Slack-compatible incoming webhook
url_env = "SLACK_WEBHOOK_URL"            # secrets come from the environment, never the file
[channels.hook]
type = "webhook"                         # JSON POST, see §7
url = "http://127.0.0.1:9000/batch"
secret_env = "HOOK_SECRET"               # adds X-Batchguard-Signature: sha256=HMAC(body)
[channels.mail]
type = "email"
smtp = "smtp://127.0.0.1:25"
from = "batch@example.com"
to = ["oncall@example.com"]
[channels.script]
type = "command"
command = ["/usr/local/bin/page-oncall"] # gets the JSON payload on stdin
[channels.deadman]
type = "ping"                            # healthchecks.io-compatible: URL/start, URL, URL/fail
url_env = "HC_PING_URL"                  # pings carry the run id and the log tail
"#;

const JOB: &str = r#"
description = "Nightly sales report"
command = ["/srv/report/.venv/bin/python", "report.py", "--date", "{date}"]  # argv; no shell
workdir = "/srv/report"
user = "batch"                 # run as this service user (runner drops privileges)
env = { REPORT_BUCKET = "s3://reports" }
env_file = "/etc/batchguard/env/nightly-report.env"   # dotenv; its values are secrets
secrets = ["DB_PASSWORD"]      # more variable names whose values are redacted everywhere

schedule = "30 3 * * *"        # 5-field cron; also @hourly, @daily, @weekly, @monthly
timezone = "Asia/Tokyo"        # IANA name; default: host's

timeout = "45m"                # hard limit: TERM the whole process tree, then KILL
kill_grace = "30s"
expected_duration = "20m"      # soft: exceeding it raises an `overrun` event
memory_max = "2GiB"            # hard memory limit for the whole tree
concurrency = "forbid"         # forbid (default) | replace | allow
lock = "sales-db"              # lock name; default: the job name; jobs may share one
retries = 2                    # extra attempts after failure/timeout/oom
retry_delay = "1m"             # doubles per attempt, with jitter

[params]
date = "{today}"               # default; `--param date=2026-11-01` overrides

[items]                        # optional, see §5
source = ["./list-orders", "--date", "{date}"]   # prints one key per line
run = ["./process-order", "{item}"]              # per-item command
scope = "{date}"
parallelism = 4
rate = "50/s"
max_attempts = 3

[notify]
on = ["failure", "timeout", "oom", "lost", "overrun", "missed", "recovered"]
channels = ["oncall", "mail"]

[runbook]
url = "https://wiki.example.com/runbooks/nightly-report"
verify = "Open https://bi.example.com/sales?date={date}; today's row must exist"
notes = "Safe to re-run at any time: finished orders are skipped."

[guideline]                    # declarations that `check` audits
reads = "replica"              # replica | primary | none
replica_dsn_env = "REPLICA_DSN"
max_replica_lag = "30s"        # run refuses to start while the replica lags more
expected_items = 5000000       # volume this job must survive; check extrapolates memory and time to it
write_impact = "~40k row updates per night on orders, at most 50/s"
schema_change = false          # or { reviewed_by = ["db-team"], ref = "PR-1234" }

[distributed]                  # see §6
enabled = false
batch = 100
lease = "60s"
"#;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn spec_examples_load() {
    let dir = TempDir::new("valid");
    dir.write("batchguard.toml", GLOBAL);
    dir.write("jobs/nightly-report.toml", JOB);
    dir.write(
        "jobs/tiny.toml",
        "command = [\"./tiny.sh\"]\nworkdir = \"scripts\"\nenv_file = \"tiny.env\"\n",
    );
    let cfg = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.dir, dir.path());

    let g = &cfg.global;
    assert_eq!(
        g.state.as_deref(),
        Some("sqlite:/var/lib/batchguard/state.db")
    );
    assert_eq!(g.log_dir, Path::new("/var/log/batchguard"));
    assert_eq!(g.host.as_deref(), Some("batch-01"));
    assert_eq!(
        g.dashboard_url.as_deref(),
        Some("https://batch.example.com")
    );
    assert_eq!(g.log_max_bytes, 64 << 20);
    assert_eq!(g.log_retention, Duration::from_secs(30 * 86400));
    assert_eq!(g.lease, Duration::from_secs(30));
    assert_eq!(g.artifact_dir, None);
    assert!(!g.defaults.is_empty());
    assert_eq!(g.channels.len(), 5);
    assert_eq!(
        g.channels["oncall"],
        Channel::Slack {
            url: UrlSource::Env("SLACK_WEBHOOK_URL".into())
        }
    );
    assert_eq!(
        g.channels["hook"],
        Channel::Webhook {
            url: UrlSource::Literal("http://127.0.0.1:9000/batch".into()),
            secret_env: Some("HOOK_SECRET".into())
        }
    );
    assert_eq!(
        g.channels["mail"],
        Channel::Email {
            smtp: "smtp://127.0.0.1:25".into(),
            from: "batch@example.com".into(),
            to: strs(&["oncall@example.com"]),
            username_env: None,
            password_env: None
        }
    );
    assert_eq!(
        g.channels["script"],
        Channel::Command {
            command: strs(&["/usr/local/bin/page-oncall"])
        }
    );
    assert_eq!(
        g.channels["deadman"],
        Channel::Ping {
            url: UrlSource::Env("HC_PING_URL".into())
        }
    );
    assert_eq!(g.channels["deadman"].kind(), "ping");

    let j = &cfg.jobs["nightly-report"];
    assert_eq!(j.name, "nightly-report");
    assert_eq!(j.file, dir.path().join("jobs/nightly-report.toml"));
    assert_eq!(j.description.as_deref(), Some("Nightly sales report"));
    assert_eq!(
        j.command,
        strs(&[
            "/srv/report/.venv/bin/python",
            "report.py",
            "--date",
            "{date}"
        ])
    );
    assert_eq!(j.workdir, Path::new("/srv/report"));
    assert_eq!(j.user.as_deref(), Some("batch"));
    assert_eq!(
        j.env.get("REPORT_BUCKET").map(String::as_str),
        Some("s3://reports")
    );
    assert_eq!(
        j.env_file.as_deref(),
        Some(Path::new("/etc/batchguard/env/nightly-report.env"))
    );
    assert_eq!(j.secrets, strs(&["DB_PASSWORD"]));
    assert_eq!(j.schedule.as_deref(), Some("30 3 * * *"));
    assert_eq!(j.timezone.as_deref(), Some("Asia/Tokyo"));
    assert_eq!(
        j.timeout,
        Some(Duration::from_secs(45 * 60)),
        "the job's value wins over [defaults]"
    );
    assert_eq!(j.kill_grace, Duration::from_secs(30));
    assert_eq!(j.expected_duration, Some(Duration::from_secs(20 * 60)));
    assert_eq!(j.memory_max, Some(2 << 30));
    assert_eq!(j.concurrency, Concurrency::Forbid);
    assert_eq!(j.lock, "sales-db");
    assert_eq!(j.retries, 2);
    assert_eq!(j.retry_delay, Duration::from_secs(60));
    assert_eq!(j.params.get("date").map(String::as_str), Some("{today}"));
    let items = j.items.as_ref().unwrap();
    assert_eq!(
        items.source,
        Some(strs(&["./list-orders", "--date", "{date}"]))
    );
    assert_eq!(items.source_file, None);
    assert_eq!(items.run, Some(strs(&["./process-order", "{item}"])));
    assert_eq!(items.mode, ItemsMode::PerItem);
    assert_eq!(items.scope.as_deref(), Some("{date}"));
    assert_eq!(items.parallelism, 4);
    assert_eq!(items.rate.unwrap().per_second, 50.0);
    assert_eq!(items.max_attempts, 3);
    assert_eq!(items.item_timeout, None);
    assert_eq!(j.notify.on, DEFAULT_EVENTS.to_vec());
    assert_eq!(j.notify.channels, strs(&["oncall", "mail"]));
    assert_eq!(
        j.runbook.url.as_deref(),
        Some("https://wiki.example.com/runbooks/nightly-report")
    );
    assert!(j.runbook.verify.as_deref().unwrap().contains("{date}"));
    assert!(j.runbook.notes.is_some());
    assert_eq!(j.guideline.reads, Some(Reads::Replica));
    assert_eq!(j.guideline.replica_dsn_env.as_deref(), Some("REPLICA_DSN"));
    assert_eq!(j.guideline.max_replica_lag, Some(Duration::from_secs(30)));
    assert_eq!(j.guideline.expected_items, Some(5_000_000));
    assert!(j.guideline.write_impact.is_some());
    assert_eq!(j.guideline.schema_change, Some(SchemaChange::No));
    assert_eq!(
        j.distributed,
        Distributed {
            enabled: false,
            batch: 100,
            lease: Duration::from_secs(60)
        }
    );

    // defaults applied to a job that sets almost nothing
    let t = &cfg.jobs["tiny"];
    assert_eq!(t.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(t.notify.channels, strs(&["oncall"]));
    assert_eq!(t.notify.on, DEFAULT_EVENTS.to_vec());
    assert_eq!(t.lock, "tiny");
    assert_eq!(t.kill_grace, Duration::from_secs(10));
    assert_eq!(t.retry_delay, Duration::from_secs(30));
    assert_eq!(t.retries, 0);
    assert_eq!(t.concurrency, Concurrency::Forbid);
    assert_eq!(
        t.workdir,
        dir.path().join("jobs/scripts"),
        "relative workdir resolves against the job file's dir"
    );
    assert_eq!(t.env_file, Some(dir.path().join("jobs/tiny.env")));
    assert_eq!(t.items, None);
    assert_eq!(t.guideline, Guideline::default());
}

#[test]
fn tables_merge_field_by_field() {
    let dir = TempDir::new("merge");
    dir.write(
        "batchguard.toml",
        r#"
[defaults]
timeout = "1h"
memory_max = "1GiB"
env = { TZ = "UTC", LANG = "C" }
[defaults.notify]
on = ["failure"]
channels = ["oncall"]
[defaults.items]
parallelism = 8
rate = "10/m"
[defaults.runbook]
url = "https://wiki/{job}"
[defaults.guideline]
reads = "primary"
[defaults.distributed]
batch = 500
[channels.oncall]
type = "slack"
url_env = "X"
[channels.mail]
type = "ping"
url = "https://hc.example.com/x"
"#,
    );
    dir.write(
        "jobs/a.toml",
        r#"
command = ["/bin/echo", "{who}"]
env = { LANG = "en_US.UTF-8" }
params = { who = "{job}" }
[notify]
channels = ["mail"]
[items]
source_file = "/srv/keys.txt"
mode = "stream"
parallelism = 2
[runbook]
notes = "see {who}"
[guideline]
expected_items = 10
[distributed]
enabled = true
"#,
    );
    let cfg = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let a = &cfg.jobs["a"];
    assert_eq!(a.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(a.memory_max, Some(1 << 30));
    assert_eq!(a.env.get("TZ").map(String::as_str), Some("UTC"));
    assert_eq!(a.env.get("LANG").map(String::as_str), Some("en_US.UTF-8"));
    assert_eq!(a.notify.on, vec![Event::Failure]);
    assert_eq!(a.notify.channels, vec!["mail".to_string()]);
    let it = a.items.as_ref().unwrap();
    assert_eq!(it.parallelism, 2);
    assert_eq!(it.rate.unwrap().per_second, 10.0 / 60.0);
    assert_eq!(it.mode, ItemsMode::Stream);
    assert_eq!(it.source_file.as_deref(), Some(Path::new("/srv/keys.txt")));
    assert_eq!(a.runbook.url.as_deref(), Some("https://wiki/{job}"));
    assert_eq!(a.runbook.notes.as_deref(), Some("see {who}"));
    assert_eq!(a.guideline.reads, Some(Reads::Primary));
    assert_eq!(a.guideline.expected_items, Some(10));
    assert_eq!(
        a.distributed,
        Distributed {
            enabled: true,
            batch: 500,
            lease: Duration::from_secs(60)
        }
    );
}

#[test]
fn global_defaults_and_missing_files() {
    let dir = TempDir::new("empty");
    let g = load_global(dir.path()).unwrap();
    assert_eq!(g.log_dir, PathBuf::from("/var/log/batchguard"));
    assert_eq!(g.log_max_bytes, 64 << 20);
    assert!(g.defaults.is_empty());
    let cfg = load(dir.path()).unwrap();
    assert!(cfg.jobs.is_empty());
    assert!(load(&dir.path().join("nope")).is_err());

    let g = parse_global_str(
        Path::new("/srv/batchguard"),
        Path::new("/srv/batchguard/batchguard.toml"),
        "log_dir = \"logs\"\nlog_max = \"1MiB\"\nlog_retention = \"7d\"\nlease = \"45s\"\nartifact_dir = \"/srv/artifacts/../out\"\nstate = \"postgres://batch@db/batch\"\n",
    )
    .unwrap();
    assert_eq!(g.log_dir, Path::new("/srv/batchguard/logs"));
    // Under /etc (or linked there) job output is refused: logs are not
    // configuration.
    let e = parse_global_str(
        Path::new("/etc/batchguard"),
        Path::new("/etc/batchguard/batchguard.toml"),
        "log_dir = \"logs\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("system directory /etc"), "{e}");
    assert_eq!(g.log_max_bytes, 1 << 20);
    assert_eq!(g.log_retention, Duration::from_secs(7 * 86400));
    assert_eq!(g.lease, Duration::from_secs(45));
    assert_eq!(g.artifact_dir.as_deref(), Some(Path::new("/srv/out")));
    assert_eq!(g.state.as_deref(), Some("postgres://batch@db/batch"));
}

#[test]
fn job_file_from_anywhere() {
    let dir = TempDir::new("file");
    let p = dir.write(
        "elsewhere/my_job-1.toml",
        "command = [\"./x\"]\nschedule = \"@daily\"\ntimezone = \"UTC\"\n",
    );
    let j = load_job_file(&p, &Global::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(j.name, "my_job-1");
    assert_eq!(j.workdir, Path::new("/"));
    assert_eq!(j.schedule.as_deref(), Some("@daily"));
    let bad = dir.write("elsewhere/My.Job.toml", "command = [\"./x\"]\n");
    let e = load_job_file(&bad, &Global::default()).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (1, 1));
    assert!(load_job_file(&dir.path().join("missing.toml"), &Global::default()).is_err());
    // a channel the global config does not declare
    let ch = dir.write(
        "elsewhere/ch.toml",
        "command = [\"./x\"]\nnotify = { channels = [\"x\"] }\n",
    );
    let e = load_job_file(&ch, &Global::default()).unwrap_err();
    assert!(e.to_string().contains("no channels are declared"), "{e}");
}

#[test]
fn valid_schedules() {
    // The grammar itself is tabled in tests/schedule.rs; this checks that a
    // job file's `schedule` goes through it.
    let load = |s: &str| {
        let text = format!("command = [\"/bin/true\"]\nschedule = \"{s}\"\n");
        let path = Path::new("/etc/batchguard/jobs/s.toml");
        parse_job_str("s", path, &text, &Global::default())
    };
    for s in [
        "* * * * *",
        "*/5 * * * *",
        "0 0 1 1 *",
        "30 3 * * mon-fri",
        "0 9-17/2 * JAN,JUL SUN",
        "@hourly",
        "@annually",
        "0 0 29 2 *",
        "0 0 30 2 *",
        "59 23 31 12 6",
    ] {
        assert!(load(s).is_ok(), "{s}: {}", load(s).unwrap_err());
    }
    for s in [
        "",
        "* * * * * *",
        "60 * * * *",
        "0 0 * 13 *",
        "@HOURLY",
        "0 0 * * 1#2",
        "0 0 * MON *",
        "1,,2 * * * *",
        "0 0 * * FRI-SUN",
        "a b c d e",
    ] {
        assert!(load(s).is_err(), "{s:?} should be rejected");
    }
}

#[test]
fn adhoc_jobs() {
    let dir = TempDir::new("adhoc");
    dir.write(
        "batchguard.toml",
        "[defaults]\ntimeout = \"1h\"\nkill_grace = \"5s\"\n",
    );
    let g = load_global(dir.path()).unwrap();
    let j = adhoc_job(
        "backup",
        vec!["awk".into(), "{print $1}".into()],
        None,
        Some(1 << 30),
        Some(Concurrency::Replace),
        &g,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(j.name, "backup");
    assert_eq!(j.lock, "backup");
    assert_eq!(j.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(j.kill_grace, Duration::from_secs(5));
    assert_eq!(j.memory_max, Some(1 << 30));
    assert_eq!(j.concurrency, Concurrency::Replace);
    // literal: rendering the command gives it back
    let rendered: Vec<String> = j
        .command
        .iter()
        .map(|a| template::render(a, &|_| None).unwrap())
        .collect();
    assert_eq!(rendered, vec!["awk".to_string(), "{print $1}".to_string()]);
    let j = adhoc_job(
        "backup",
        vec!["x".into()],
        Some(Duration::from_secs(5)),
        None,
        None,
        &g,
    )
    .unwrap();
    assert_eq!(j.timeout, Some(Duration::from_secs(5)));

    let e = adhoc_job("Bad Name", vec!["x".into()], None, None, None, &g).unwrap_err();
    assert_eq!(e.0[0].key.as_deref(), Some("--name"));
    assert!(e.to_string().contains("invalid job name"));
    assert!(adhoc_job("ok", vec![], None, None, None, &g).is_err());
    assert!(adhoc_job("ok", vec!["x".into()], Some(Duration::ZERO), None, None, &g).is_err());
}

#[test]
fn g10_helper() {
    assert!(personal_home_violation(Path::new("/home/alice/logs"), Path::new("/")).is_some());
    assert!(personal_home_violation(Path::new("/root"), Path::new("/")).is_some());
    assert!(personal_home_violation(Path::new("../root/x"), Path::new("/srv")).is_some());
    assert!(personal_home_violation(Path::new("/homework/x"), Path::new("/")).is_none());
    assert!(personal_home_violation(Path::new("/rootfs/x"), Path::new("/")).is_none());
    assert!(personal_home_violation(Path::new("/var/log/batchguard"), Path::new("/")).is_none());
    assert!(personal_home_violation(Path::new("/home"), Path::new("/")).is_none());
}

#[test]
fn names() {
    for ok in ["a", "0", "nightly-report", "a_b-c", &"a".repeat(63)] {
        assert!(is_valid_job_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "_a",
        "A",
        "a.b",
        "a b",
        "é",
        &"a".repeat(64),
        "a/b",
        "a\n",
    ] {
        assert!(!is_valid_job_name(bad), "{bad:?}");
    }
}
