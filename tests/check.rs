//! The guideline audit against the real world: G04 probes the PostgreSQL on
//! 127.0.0.1:5432 (a primary, so the rule must fail), an unreachable DSN is
//! `unknown`, and `audit` runs end to end over a real state store.

use std::path::Path;
use std::sync::Mutex;

use batchguard::check::{self, ReplicaProbe, Status};
use batchguard_config::{Global, Job, parse_job_str};

/// Tests that touch the process environment run one at a time.
static ENV: Mutex<()> = Mutex::new(());

const PRIMARY_DSN: &str = "host=127.0.0.1 user=postgres dbname=test";
const UNREACHABLE_DSN: &str = "host=127.0.0.1 port=1 user=postgres dbname=test";

fn job(name: &str, guideline: &str) -> Job {
    let text = format!(
        "command = [\"/bin/true\"]\ntimeout = \"1m\"\nmemory_max = \"256MiB\"\n[guideline]\n{guideline}\n"
    );
    parse_job_str(
        name,
        Path::new(&format!("/etc/batchguard/jobs/{name}.toml")),
        &text,
        &Global::default(),
    )
    .unwrap_or_else(|e| panic!("job parses: {e:?}"))
}

fn g04(job: &Job) -> check::RuleResult {
    let facts = check::gather_job(job, Vec::new());
    let report = check::check_job(
        job,
        &Global::default(),
        &check::HostFacts::default(),
        &facts,
    );
    assert_eq!(report.rules.len(), 16);
    report.rule("G04").cloned().unwrap()
}

#[test]
fn g04_fails_on_a_primary_and_is_unknown_when_unreachable() {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let replica = job(
        "reporting",
        "reads = \"replica\"\nreplica_dsn_env = \"REPLICA_DSN\"\nmax_replica_lag = \"30s\"",
    );

    // SAFETY: the only test touching the environment holds ENV; no other
    // thread of this binary reads or writes REPLICA_DSN.
    unsafe { std::env::set_var("REPLICA_DSN", PRIMARY_DSN) };
    let r = g04(&replica);
    assert_eq!(r.status, Status::Fail, "{}", r.message);
    assert!(r.message.contains("primary"), "{}", r.message);
    assert!(r.message.contains("REPLICA_DSN"), "{}", r.message);
    assert!(
        !r.message.contains("user=postgres"),
        "DSN leaked: {}",
        r.message
    );

    unsafe { std::env::set_var("REPLICA_DSN", UNREACHABLE_DSN) };
    let started = std::time::Instant::now();
    let r = g04(&replica);
    assert_eq!(r.status, Status::Unknown, "{}", r.message);
    assert!(r.message.contains("cannot connect"), "{}", r.message);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    unsafe { std::env::remove_var("REPLICA_DSN") };
    let r = g04(&replica);
    assert_eq!(r.status, Status::Unknown, "{}", r.message);
    assert!(
        r.message.contains("REPLICA_DSN is not set"),
        "{}",
        r.message
    );
}

#[test]
fn g04_reads_the_dsn_from_the_jobs_env() {
    let text = format!(
        "command = [\"/bin/true\"]\nenv = {{ BG_CHECK_DSN = \"{PRIMARY_DSN}\" }}\n[guideline]\nreads = \"replica\"\nreplica_dsn_env = \"BG_CHECK_DSN\"\n"
    );
    let job = parse_job_str(
        "from-env",
        Path::new("/etc/batchguard/jobs/from-env.toml"),
        &text,
        &Global::default(),
    )
    .unwrap();
    assert_eq!(check::probe_replica(PRIMARY_DSN), ReplicaProbe::Primary);
    let r = g04(&job);
    assert_eq!(r.status, Status::Fail, "{}", r.message);
    assert!(r.message.contains("is a primary"), "{}", r.message);
}

#[test]
fn audit_runs_end_to_end_over_a_state_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("state.db").display());
    let store = batchguard::store::open(&url).unwrap();
    let jobs = vec![job("plain", "reads = \"none\""), job("other", "")];
    let cron = |_: &Job| (None, None);
    let reports = check::audit(&jobs, &Global::default(), store.as_ref(), &cron);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].job, "plain");
    let json: serde_json::Value = serde_json::from_str(&check::render_json(&reports)).unwrap();
    let rules = json["jobs"][1]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: Vec<String> = (1..=16).map(|i| format!("G{i:02}")).collect();
    assert_eq!(ids, want);
    for r in rules {
        assert!(
            ["pass", "warn", "fail", "unknown"].contains(&r["status"].as_str().unwrap()),
            "{r}"
        );
        assert!(!r["message"].as_str().unwrap().is_empty(), "{r}");
    }
    // No notification channel: G08 fails, so the exit code is 1.
    assert_eq!(reports[0].rule("G08").unwrap().status, Status::Fail);
    assert_eq!(check::exit_code(&reports, false), 1);
    let text = check::render_text(&reports);
    assert!(text.starts_with("JOB"), "{text}");
    assert!(text.lines().nth(1).unwrap().contains("fail"), "{text}");
}
