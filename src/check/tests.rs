//! Unit tests of the audit: every rule passes on a well-configured job and
//! fails (or warns) on a fixture that breaks it; plus the fits, masking and
//! /proc parsing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use batchguard_config::{Global, Job, parse_global_str, parse_job_str};

use super::*;
use crate::store::{ItemCounts, RunRecord, RunnerIdentity};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn global() -> Global {
    parse_global_str(
        Path::new("/etc/batchguard"),
        Path::new("/etc/batchguard/batchguard.toml"),
        "[channels.oncall]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
    )
    .expect("global parses")
}

/// A job that follows every rule.
const GOOD: &str = r#"
command = ["/srv/good/bin/good"]
workdir = "/srv/good"
user = "batch"
schedule = "*/10 * * * *"
timeout = "8m"
expected_duration = "5m"
memory_max = "1GiB"
[notify]
channels = ["oncall"]
[runbook]
url = "https://wiki.example.com/good"
verify = "row exists"
[guideline]
reads = "none"
write_impact = "~1k rows per run"
schema_change = false
clean = ["/srv/good/bin/clean"]
"#;

/// An `[items]` table, to append to a job after its last table.
const ITEMS: &str = "\n[items]\nsource = [\"./list\"]\nrun = [\"./one\", \"{item}\"]\n";

fn job_from(text: &str) -> Job {
    parse_job_str(
        "good",
        Path::new("/etc/batchguard/jobs/good.toml"),
        text,
        &global(),
    )
    .unwrap_or_else(|e| panic!("job parses: {e:?}"))
}

fn good_job() -> Job {
    job_from(GOOD)
}

/// The key a TOML line sets: what stands before its `=` (the whole line
/// when it has none, empty when it is blank).
fn key_of(line: &str) -> &str {
    line.split('=').next().unwrap_or("").trim()
}

/// GOOD with `top` TOML lines replacing/adding top-level keys (before the
/// tables), and `tables` appended after its last table.
fn job_with(top: &str, tables: &str) -> Job {
    let (head, rest) = GOOD.split_once("[notify]").unwrap();
    let head: String = head
        .lines()
        .filter(|l| {
            let k = key_of(l);
            k.is_empty() || !top.lines().any(|t| key_of(t) == k)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    job_from(&format!("{head}{top}\n[notify]{rest}\n{tables}"))
}

/// The text of GOOD with `lines` in place of its line that sets `key`
/// (top-level or in a table; GOOD must set it).
fn good_text_with(key: &str, lines: &str) -> String {
    assert!(
        GOOD.lines().any(|l| key_of(l) == key),
        "GOOD does not set `{key}`"
    );
    GOOD.lines()
        .map(|l| if key_of(l) == key { lines } else { l })
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// GOOD without its line that sets `key`.
fn good_without(key: &str) -> Job {
    job_from(&good_text_with(key, ""))
}

/// GOOD with `lines` in place of its line that sets the key the first of
/// them sets.
fn good_but(lines: &str) -> Job {
    let key = key_of(lines.lines().next().unwrap_or(""));
    job_from(&good_text_with(key, lines))
}

fn user_info(name: &str, uid: u32, shell: &str, home: &str) -> UserInfo {
    UserInfo {
        name: name.into(),
        uid,
        shell: shell.into(),
        home: home.into(),
    }
}

fn service_user() -> UserInfo {
    user_info("batch", 998, "/usr/sbin/nologin", "/var/lib/batch")
}

/// An interpreter found at `path`, neither isolated nor reached through a wrapper.
fn interpreter_info(program: &str, path: &str, kind: ProgramKind) -> InterpreterInfo {
    InterpreterInfo {
        program: program.into(),
        path: Some(path.into()),
        kind,
        isolation: None,
        via: None,
    }
}

fn good_host() -> HostFacts {
    HostFacts {
        host_memory_bytes: Some(16 * GIB),
        ..HostFacts::default()
    }
}

fn good_facts() -> JobFacts {
    JobFacts {
        schedule_interval: Some(Duration::from_secs(600)),
        cron_file_current: Some(true),
        run_user: Some(Ok(service_user())),
        interpreter: interpreter_info(
            "/srv/good/bin/good",
            "/srv/good/bin/good",
            ProgramKind::Binary,
        ),
        ..JobFacts::default()
    }
}

fn run(outcome: &str, peak: Option<u64>, duration_ms: i64, items: Option<u64>) -> RunRecord {
    RunRecord {
        id: "r".into(),
        job: "good".into(),
        host: "h".into(),
        pid: 1,
        fence: 1,
        attempt: 1,
        scope: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: Some("2026-01-01T00:01:00Z".into()),
        duration_ms: Some(duration_ms),
        outcome: outcome.into(),
        exit_code: Some(0),
        signal: None,
        peak_memory_bytes: peak,
        memory_enforcement: "cgroup2".into(),
        adhoc: false,
        rerun: None,
        items: items.map(|n| ItemCounts {
            total: n,
            done: n,
            skipped: 0,
            failed: 0,
        }),
        log_path: None,
        lock: "good".into(),
        memory_max_bytes: None,
        params: BTreeMap::new(),
        error: None,
        items_failed: Vec::new(),
        started_ms: 0,
        runner: RunnerIdentity {
            host: "h".into(),
            boot_id: "b".into(),
            pid: 1,
            pid_start: 1,
        },
        cgroup: None,
        pgid: None,
        heartbeat_ms: 0,
    }
}

fn rule(job: &Job, host: &HostFacts, facts: &JobFacts, id: &str) -> RuleResult {
    let report = check_job(job, &global(), host, facts);
    report.rule(id).cloned().expect("rule present")
}

#[track_caller]
fn assert_rule(r: &RuleResult, status: Status, fragment: &str) {
    assert_eq!(r.status, status, "{}: {}", r.id, r.message);
    assert_mentions(r, fragment);
}

/// `r`'s message contains `fragment`.
#[track_caller]
fn assert_mentions(r: &RuleResult, fragment: &str) {
    assert!(
        r.message.contains(fragment),
        "{}: {:?} does not contain {fragment:?}",
        r.id,
        r.message
    );
}

/// Check a table of cases: `result` computes the rule for each input, which
/// must give the case's status with its fragment in the message.
#[track_caller]
fn expect_each<T>(cases: &[(T, Status, &str)], result: impl Fn(&T) -> RuleResult) {
    for (input, status, fragment) in cases {
        assert_rule(&result(input), *status, fragment);
    }
}

/// Rule `id` on each job of `cases`, on the good host with the good facts.
#[track_caller]
fn expect_jobs(id: &str, cases: &[(Job, Status, &str)]) {
    let (host, facts) = (good_host(), good_facts());
    expect_each(cases, |job| rule(job, &host, &facts, id));
}

/// Rule `id` on `job` with each of the facts of `cases`, on the good host.
#[track_caller]
fn expect_facts(id: &str, job: &Job, cases: &[(JobFacts, Status, &str)]) {
    let host = good_host();
    expect_each(cases, |facts| rule(job, &host, facts, id));
}

/// The good facts with `history` (newest first) as the job's past runs.
fn with_history(history: Vec<RunRecord>) -> JobFacts {
    JobFacts {
        history,
        ..good_facts()
    }
}

// ------------------------------------------------------------ whole report

#[test]
fn good_job_passes_everything_but_g11() {
    let report = check_job(&good_job(), &global(), &good_host(), &good_facts());
    assert_eq!(report.job, "good");
    let ids: Vec<&str> = report.rules.iter().map(|r| r.id).collect();
    let want: Vec<String> = (1..=16).map(|i| format!("G{i:02}")).collect();
    assert_eq!(ids, want);
    for r in &report.rules {
        let want = if r.id == "G11" {
            Status::Unknown
        } else {
            Status::Pass
        };
        assert_eq!(r.status, want, "{}: {}", r.id, r.message);
        assert!(!r.message.is_empty());
    }
    assert_eq!(exit_code(std::slice::from_ref(&report), true), 0);
}

#[test]
fn json_shape_and_exit_codes() {
    let mut report = check_job(&good_job(), &global(), &good_host(), &good_facts());
    let json: serde_json::Value = serde_json::from_str(&render_json(&[report.clone()])).unwrap();
    let rules = json["jobs"][0]["rules"].as_array().unwrap();
    assert_eq!(json["jobs"][0]["job"], "good");
    assert_eq!(rules.len(), 16);
    assert_eq!(rules[1]["id"], "G02");
    assert_eq!(rules[1]["status"], "pass");
    assert_eq!(rules[10]["status"], "unknown");
    let mut keys: Vec<&String> = rules[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["id", "message", "status"]);
    report.rules[4].status = Status::Warn;
    assert_eq!(exit_code(&[report.clone()], false), 0);
    assert_eq!(exit_code(&[report.clone()], true), 1);
    report.rules[6].status = Status::Fail;
    assert_eq!(exit_code(&[report], false), 1);
    assert_eq!(exit_code(&[], true), 0);
}

#[test]
fn text_table_puts_fails_first() {
    let mut a = check_job(&good_job(), &global(), &good_host(), &good_facts());
    a.rules[13].status = Status::Fail;
    a.rules[13].message = "boom".into();
    a.rules[2].status = Status::Warn;
    let text = render_text(&[a]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("JOB"), "{text}");
    assert!(
        lines[0].contains("RULE") && lines[0].contains("STATUS") && lines[0].contains("MESSAGE")
    );
    assert!(lines[1].contains("G14") && lines[1].contains("fail") && lines[1].ends_with("boom"));
    assert!(lines[2].contains("G03") && lines[2].contains("warn"));
    assert!(lines[3].contains("G11") && lines[3].contains("unknown"));
    assert_eq!(
        lines.last().unwrap(),
        &"1 job: 1 fail, 1 warn, 1 unknown, 13 pass"
    );
}

// ------------------------------------------------------------ G03-G09 G12 declarations

/// The rules on what the job declares, on the good job and on the good job
/// with one declaration changed: the rule, the job, and the status and
/// message fragment the rule must give.
#[test]
fn rules_on_what_the_job_declares() {
    use Status::{Fail, Pass, Warn};
    let good = good_job();
    let no_timeout = good_without("timeout");
    let no_expected = good_without("expected_duration");
    let undeclared = good_without("reads");
    let primary = good_but("reads = \"primary\"");
    let unrated = good_text_with("write_impact", "");
    let rated = job_from(&format!("{unrated}{ITEMS}rate = \"50/s\"\n"));
    let bare = good_text_with("clean", "");
    let items = job_from(&format!("{bare}{ITEMS}"));
    let replace = job_with("concurrency = \"replace\"", "");
    let allow = job_with("concurrency = \"allow\"", "");
    let safe = job_with(
        "concurrency = \"allow\"",
        "overlap_safe = \"each run writes its own dated file\"",
    );
    let silent = good_but("channels = []");
    let no_failure = good_but("channels = [\"oncall\"]\non = [\"timeout\"]");
    let runbook = "url = \"https://wiki.example.com/good\"\nverify = \"row exists\"";
    let notes = job_from(&GOOD.replace(runbook, "notes = \"just re-run\""));
    let none = job_from(&GOOD.replace(runbook, ""));
    let unreviewed = good_but("schema_change = true");
    let reviewed =
        good_but("schema_change = { reviewed_by = [\"db-team\", \"bob\"], ref = \"PR-1234\" }");
    let cases = [
        ("G03", &no_timeout, Fail, "timeout is not set"),
        ("G03", &no_expected, Warn, "expected_duration is not set"),
        ("G04", &undeclared, Warn, "not declared"),
        ("G04", &good, Pass, "reads no database"),
        ("G04", &primary, Warn, "read replica"),
        ("G05", &good, Pass, "~1k rows per run"),
        ("G05", &job_from(&unrated), Warn, "write_impact"),
        ("G05", &rated, Pass, "at most 50/s"),
        (
            "G06",
            &good,
            Pass,
            "clean step declared: `/srv/good/bin/clean`",
        ),
        ("G06", &job_from(&bare), Warn, "[items]"),
        ("G06", &items, Pass, "ledger"),
        ("G07", &good, Pass, "forbid"),
        ("G07", &replace, Pass, "fences"),
        ("G07", &allow, Fail, "overlap_safe"),
        ("G07", &safe, Pass, "\"each run writes its own dated file\""),
        ("G08", &good, Pass, "oncall (webhook)"),
        ("G08", &silent, Fail, "no notification channel"),
        ("G08", &no_failure, Fail, "lacks \"failure\""),
        ("G09", &good, Pass, "https://wiki.example.com/good"),
        ("G09", &notes, Warn, "notes only"),
        ("G09", &none, Fail, "no runbook"),
        ("G12", &good, Pass, "changes no schema"),
        ("G12", &unreviewed, Fail, "without a review"),
        ("G12", &reviewed, Pass, "reviewed by db-team, bob (PR-1234)"),
    ];
    let (host, facts) = (good_host(), good_facts());
    for (id, job, status, fragment) in cases {
        assert_rule(&rule(job, &host, &facts, id), status, fragment);
    }
}

// ------------------------------------------------------------ G01

fn listener(addr: &str, port: u16) -> Listener {
    Listener {
        port,
        address: addr.parse::<IpAddr>().unwrap(),
        inode: 1,
        process: Some("nginx, pid 7".into()),
    }
}

#[test]
fn g01_listeners() {
    let job = good_job();
    let facts = good_facts();
    let mut host = good_host();
    host.listening = vec![
        listener("0.0.0.0", 80),
        listener("127.0.0.1", 5432),
        listener("0.0.0.0", 22),
    ];
    let r = rule(&job, &host, &facts, "G01");
    assert_rule(&r, Status::Warn, "0.0.0.0:80 (nginx, pid 7)");
    assert_mentions(&r, "role_ok");
    assert_mentions(&r, "2 loopback or management");
    assert!(!r.message.contains("0.0.0.0:22"), "{}", r.message);
    // Many listeners stay one short line.
    host.listening = (8000..8040).map(|p| listener("0.0.0.0", p)).collect();
    let many = rule(&job, &host, &facts, "G01");
    assert_mentions(&many, "and 37 more");
    assert!(
        many.message.len() < 300,
        "{} chars: {}",
        many.message.len(),
        many.message
    );
    host.listening = vec![
        listener("0.0.0.0", 80),
        listener("127.0.0.1", 5432),
        listener("0.0.0.0", 22),
    ];

    let declared = job_with("", "role_ok = \"shared cron box, web traffic is tiny\"");
    let declared_r = rule(&declared, &host, &facts, "G01");
    assert_rule(&declared_r, Status::Pass, "shared cron box");

    host.listening = vec![listener("::1", 8080), listener("0.0.0.0", 22)];
    let r = rule(&job, &host, &facts, "G01");
    assert_rule(&r, Status::Pass, "no network service");
    assert_mentions(&r, "2 loopback or management");

    host.listening_error = Some("/proc/net/tcp: denied".into());
    assert_rule(&rule(&job, &host, &facts, "G01"), Status::Unknown, "denied");
}

#[test]
fn proc_net_tcp_parsing() {
    let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1076 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 4612 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:1538 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000   101        0 9999 1 0000000000000000 100 0 0 10 0\n\
   3: garbage\n";
    let l = parse_proc_net_tcp(v4, false);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0].port, 80);
    assert_eq!(l[0].address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(l[0].inode, 1076);
    assert!(!l[0].is_loopback());
    assert_eq!(l[1].port, 5432);
    assert_eq!(l[1].address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(l[1].is_loopback());

    let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:1111 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 6809 1 0000000000000000 100 0 0 10 0\n\
   1: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5631 1 0000000000000000 100 0 0 10 0\n\
   2: 0000000000000000FFFF00000100007F:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n";
    let l = parse_proc_net_tcp(v6, true);
    assert_eq!(l.len(), 3, "{l:?}");
    if cfg!(target_endian = "little") {
        assert_eq!(l[0].address, "::1".parse::<IpAddr>().unwrap());
        assert!(l[0].is_loopback());
        assert_eq!(l[2].address, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(l[2].is_loopback());
    }
    assert_eq!(l[0].port, 0x1111);
    assert_eq!(l[1].port, 443);
    assert!(!l[1].is_loopback());
    assert_eq!(l[1].describe(), "[::]:443");
    assert_eq!(
        parse_meminfo_total("MemTotal:       16318412 kB\nMemFree: 1 kB\n"),
        Some(16318412 * 1024)
    );
}

// ------------------------------------------------------------ G02

#[test]
fn g02_memory_max_and_peaks() {
    let host = good_host();
    let no_max = good_without("memory_max");
    let peaks = |runs: &[(&str, u64)]| {
        with_history(
            runs.iter()
                .map(|(outcome, peak)| run(outcome, Some(*peak), 1000, None))
                .collect(),
        )
    };
    let r = rule(&no_max, &host, &peaks(&[("success", 300 * MIB)]), "G02");
    assert_rule(&r, Status::Fail, "memory_max is not set");
    assert_mentions(&r, "memory_max = \"512MiB\"");

    let cases = [
        (
            peaks(&[("success", 900 * MIB), ("success", 400 * MIB)]),
            Status::Warn,
            "peak memory 900MiB over the last 2 runs is 87% of memory_max 1GiB",
        ),
        (
            peaks(&[("success", 400 * MIB)]),
            Status::Pass,
            "400MiB over the last 1 runs is 39%",
        ),
        (
            peaks(&[("success", 400 * MIB), ("oom", GIB)]),
            Status::Fail,
            "1 of the last 2 runs were killed at memory_max 1GiB",
        ),
    ];
    expect_facts("G02", &good_job(), &cases);
    let small = HostFacts {
        host_memory_bytes: Some(512 * MIB),
        ..HostFacts::default()
    };
    assert_rule(
        &rule(&good_job(), &small, &good_facts(), "G02"),
        Status::Warn,
        "more than this host's RAM 512MiB",
    );
}

fn item_runs(points: &[(u64, u64, i64)]) -> Vec<RunRecord> {
    points
        .iter()
        .map(|(items, peak, ms)| run("success", Some(*peak), *ms, Some(*items)))
        .collect()
}

#[test]
fn g02_extrapolates_memory_to_expected_items() {
    let host = good_host();
    // 1 MiB per item, no base.
    let mut facts = with_history(item_runs(&[
        (300, 300 * MIB, 1),
        (200, 200 * MIB, 1),
        (100, 100 * MIB, 1),
    ]));
    let fine = job_with("", "expected_items = 500");
    let cases = [
        (
            job_with("", "expected_items = 2048"),
            Status::Fail,
            "at expected_items 2,048 the predicted peak memory is 2GiB",
        ),
        (
            job_with("", "expected_items = 900"),
            Status::Warn,
            "predicted peak memory is 900MiB",
        ),
        (
            fine.clone(),
            Status::Pass,
            "predicted peak memory is 500MiB",
        ),
    ];
    expect_each(&cases, |job| rule(job, &host, &facts, "G02"));
    facts.history.truncate(2);
    assert_rule(
        &rule(&fine, &host, &facts, "G02"),
        Status::Pass,
        "not enough history",
    );
}

#[test]
fn linear_fit_and_extrapolation() {
    let fit = LinearFit::fit(&[(1.0, 12.0), (2.0, 14.0), (3.0, 16.0), (4.0, 18.0)]).unwrap();
    assert!((fit.slope - 2.0).abs() < 1e-9);
    assert!((fit.intercept - 10.0).abs() < 1e-9);
    assert!((fit.predict(100.0) - 210.0).abs() < 1e-9);
    assert_eq!(fit.n, 4);
    // Noisy data: the least-squares line.
    let fit = LinearFit::fit(&[(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, 4.0)]).unwrap();
    assert!((fit.slope - 0.9).abs() < 1e-9, "{fit:?}");
    assert!((fit.intercept - 0.9).abs() < 1e-9, "{fit:?}");
    assert!(LinearFit::fit(&[(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]).is_none());
    assert!(LinearFit::fit(&[(1.0, 1.0)]).is_none());
    assert!(LinearFit::fit(&[(1.0, f64::NAN), (2.0, 1.0)]).is_none());
    assert_eq!(percentile(&[], 95.0), None);
    let v: Vec<u64> = (1..=20).collect();
    assert_eq!(percentile(&v, 95.0), Some(19));
    assert_eq!(percentile(&[7], 95.0), Some(7));
    assert_eq!(percentile(&[3, 1, 2], 95.0), Some(3));
}

// ------------------------------------------------------------ G03

#[test]
fn g03_durations_vs_expected_and_interval() {
    let ten_successes =
        |ms| with_history((0..10).map(|_| run("success", None, ms, None)).collect());
    let cases = [
        (
            ten_successes(60_000),
            Status::Pass,
            "p95 duration 1m of the last 10 successful runs is within expected_duration 5m",
        ),
        (
            ten_successes(360_000),
            Status::Warn,
            "exceeds expected_duration 5m",
        ),
        (
            ten_successes(500_000),
            Status::Warn,
            "83% of the schedule interval 10m",
        ),
        (ten_successes(700_000), Status::Fail, "runs will overlap"),
        (
            with_history(vec![run("timeout", None, 480_000, None)]),
            Status::Fail,
            "1 of the last 1 runs hit the timeout",
        ),
    ];
    expect_facts("G03", &good_job(), &cases);
}

#[test]
fn g03_extrapolates_duration_to_expected_items() {
    let host = good_host();
    // 100 ms per item.
    let facts = JobFacts {
        schedule_interval: Some(Duration::from_secs(86_400)),
        ..with_history(item_runs(&[
            (3000, MIB, 300_000),
            (2000, MIB, 200_000),
            (1000, MIB, 100_000),
        ]))
    };
    let over = job_with("expected_duration = \"1h\"", "expected_items = 6000");
    let fine = job_with("expected_duration = \"1h\"", "expected_items = 3600");
    let cases = [
        (
            over,
            Status::Fail,
            "at expected_items 6,000 the predicted duration is 10m (least-squares over 3 runs), over timeout 8m",
        ),
        (fine, Status::Pass, "predicted duration is 6m"),
    ];
    expect_each(&cases, |job| rule(job, &host, &facts, "G03"));
}

// ------------------------------------------------------------ G04

#[test]
fn g04_replica_probe() {
    let replica = good_but(
        "reads = \"replica\"\nreplica_dsn_env = \"REPLICA_DSN\"\nmax_replica_lag = \"30s\"",
    );
    let probed = |probe| JobFacts {
        replica: Some(probe),
        ..good_facts()
    };
    let lag = |secs| {
        probed(ReplicaProbe::Replica {
            lag: Duration::from_secs(secs),
        })
    };
    let failed = ReplicaProbe::Failed("cannot connect: refused".into());
    let unset = ReplicaProbe::DsnUnset {
        var: "REPLICA_DSN".into(),
    };
    let cases = [
        (
            probed(ReplicaProbe::Primary),
            Status::Fail,
            "REPLICA_DSN is a primary",
        ),
        (lag(2), Status::Pass, "REPLICA_DSN is a replica (lag 2s"),
        (lag(25), Status::Warn, "close to max_replica_lag 30s"),
        (
            lag(95),
            Status::Fail,
            "lagging 1m35s, over max_replica_lag 30s",
        ),
        (probed(failed), Status::Unknown, "cannot connect: refused"),
        (probed(unset), Status::Unknown, "REPLICA_DSN is not set"),
    ];
    expect_facts("G04", &replica, &cases);
}

// ------------------------------------------------------------ G10 G11

#[test]
fn g10_run_user() {
    let job = good_job();
    assert_mentions(
        &rule(&job, &good_host(), &good_facts(), "G10"),
        "refused at config load",
    );
    let runs_as = |user| JobFacts {
        run_user: Some(Ok(user)),
        ..good_facts()
    };
    let alice = user_info("alice", 1001, "/bin/bash", "/home/alice");
    let svc = user_info("svc", 1500, "/usr/sbin/nologin", "/srv/svc");
    let no_user = JobFacts {
        run_user: Some(Err("no user `batch` on this host".into())),
        ..good_facts()
    };
    let cases = [
        (
            good_facts(),
            Status::Pass,
            "service account `batch` (uid 998",
        ),
        (runs_as(alice), Status::Fail, "login user `alice`"),
        (runs_as(svc), Status::Pass, "service account `svc`"),
        (no_user, Status::Fail, "no user `batch`"),
    ];
    expect_facts("G10", &job, &cases);
    let unset = good_without("user");
    expect_jobs("G10", &[(unset, Status::Warn, "user is not set")]);
}

#[test]
fn g11_is_not_verifiable() {
    assert_rule(
        &rule(&good_job(), &good_host(), &good_facts(), "G11"),
        Status::Unknown,
        "not verifiable",
    );
}

// ------------------------------------------------------------ G13

#[test]
fn g13_cron_files_and_user_crontabs() {
    let job = good_job();
    let mut host = good_host();
    let facts = good_facts();
    let cron_file = |current| JobFacts {
        cron_file_current: current,
        ..good_facts()
    };
    let cases = [
        (
            cron_file(Some(true)),
            Status::Pass,
            "/etc/cron.d/batchguard-good and current",
        ),
        (
            cron_file(Some(false)),
            Status::Fail,
            "run `batchguard cron install`",
        ),
        (cron_file(None), Status::Unknown, "cannot tell"),
    ];
    expect_facts("G13", &job, &cases);

    let tab = "SHELL=/bin/sh\n# m h dom mon dow command\n*/5 * * * * /usr/local/bin/batchguard run other\n0 3 * * * /usr/local/bin/batchguard run good\n30 1 * * * /srv/good/bin/good --all\n";
    host.crontab_lines = crontab_command_lines(Path::new("/var/spool/cron/crontabs/alice"), tab);
    assert_eq!(host.crontab_lines.len(), 3);
    let r = rule(&job, &host, &facts, "G13");
    assert_rule(&r, Status::Fail, "/var/spool/cron/crontabs/alice:4");
    assert_mentions(&r, "/var/spool/cron/crontabs/alice:5");
    assert!(!r.message.contains("alice:3"), "{}", r.message);

    let unscheduled = good_without("schedule");
    assert_rule(
        &rule(&unscheduled, &host, &facts, "G13"),
        Status::Fail,
        "alice:4",
    );
    assert_rule(
        &rule(&unscheduled, &good_host(), &facts, "G13"),
        Status::Pass,
        "not scheduled",
    );
}

// ------------------------------------------------------------ G14

#[test]
fn access_key_finding_and_masking() {
    assert_eq!(mask_key("AKIAIOSFODNN7EXAMPLE"), "****************MPLE");
    let found =
        find_access_keys("id=AKIAIOSFODNN7EXAMPLE,tmp ASIAIOSFODNN7EXAMPL2 xAKIAIOSFODNN7EXAMPLE");
    assert_eq!(
        found,
        vec![
            ("AKIAIOSFODNN7EXAMPLE".to_string(), true),
            ("ASIAIOSFODNN7EXAMPL2".to_string(), false)
        ]
    );
    assert!(find_access_keys("AKIAIOSFODNN7EXAMPLEX").is_empty());
    assert!(find_access_keys("AKIAshort").is_empty());
    let creds = "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = x\n[tmp]\naws_access_key_id=ASIAIOSFODNN7EXAMPL2\n";
    let f = scan_aws_file(Path::new("/home/u/.aws/credentials"), creds);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].place, "/home/u/.aws/credentials:2 [default]");
    assert_eq!(f[0].masked, "****************MPLE");
    assert!(f[0].long_term && !f[1].long_term);
}

#[test]
fn g14_access_keys() {
    let (job, host) = (good_job(), good_host());
    let mut facts = good_facts();
    assert_rule(
        &rule(&job, &host, &facts, "G14"),
        Status::Pass,
        "no AWS access key",
    );
    facts.aws_keys = vec![KeyFinding {
        place: "env_file /etc/batchguard/env/good.env:3 (AWS_ACCESS_KEY_ID)".into(),
        masked: mask_key("AKIAIOSFODNN7EXAMPLE"),
        long_term: true,
    }];
    let r = rule(&job, &host, &facts, "G14");
    assert_rule(
        &r,
        Status::Fail,
        "****************MPLE in env_file /etc/batchguard/env/good.env:3",
    );
    assert!(!r.message.contains("AKIAIOSFODNN7EXAMPLE"));
    facts.aws_keys[0].long_term = false;
    assert_rule(&rule(&job, &host, &facts, "G14"), Status::Pass, "temporary");
}

#[test]
fn g14_gather_scans_env_and_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("good.env");
    std::fs::write(
        &env_file,
        "DB=x\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SESSION=ASIAIOSFODNN7EXAMPL2\n",
    )
    .unwrap();
    let job = job_from(&GOOD.replace(
        "user = \"batch\"\n",
        &format!(
            "env = {{ K = \"AKIAABCDEFGHIJKLMNOP\" }}\nenv_file = \"{}\"\n",
            env_file.display()
        ),
    ));
    let facts = gather_job(&job, Vec::new());
    let long: Vec<&KeyFinding> = facts.aws_keys.iter().filter(|k| k.long_term).collect();
    assert_eq!(long.len(), 2, "{:?}", facts.aws_keys);
    assert_eq!(long[0].place, "env K");
    assert_eq!(long[0].masked, "****************MNOP");
    assert_eq!(
        long[1].place,
        format!("env_file {}:2 (AWS_ACCESS_KEY_ID)", env_file.display())
    );
    let r = rule(&job, &good_host(), &facts, "G14");
    assert_eq!(r.status, Status::Fail);
    assert!(!r.message.contains("AKIAABCDEFGHIJKLMNOP"), "{}", r.message);
}

// ------------------------------------------------------------ G15

#[test]
fn g15_interpreter_rule() {
    let job = good_job();
    let runs = |interpreter| JobFacts {
        interpreter,
        ..good_facts()
    };
    let python = ProgramKind::Interpreter("python".into());
    let global = interpreter_info("python3", "/usr/bin/python3", python.clone());
    let venv_python = "/srv/good/.venv/bin/python3";
    let venv = InterpreterInfo {
        isolation: isolation_by_path(Path::new(venv_python)),
        ..interpreter_info("python3", venv_python, python)
    };
    let with_kind = |kind| InterpreterInfo {
        kind,
        ..venv.clone()
    };
    let unresolved = ProgramKind::Unresolved("`x` is not found in PATH".into());
    let cases = [
        (good_facts(), Status::Pass, "self-contained"),
        (
            runs(global.clone()),
            Status::Warn,
            "/usr/bin/python3 is the global python interpreter",
        ),
        (runs(venv.clone()), Status::Pass, "virtualenv"),
        (
            runs(with_kind(ProgramKind::Shell("bash".into()))),
            Status::Pass,
            "bash script",
        ),
        (runs(with_kind(unresolved)), Status::Unknown, "not found"),
    ];
    expect_facts("G15", &job, &cases);
    assert_mentions(
        &rule(&job, &good_host(), &runs(global), "G15"),
        "python3 -m venv /srv/good/.venv",
    );
}

#[test]
fn g15_inspects_programs_on_disk() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = |p: &Path, text: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // A virtualenv: env/bin/python3 with env/pyvenv.cfg.
    exe(&d.join("env/bin/python3"), "\x7fELF");
    std::fs::write(d.join("env/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    // A global interpreter on PATH.
    exe(&d.join("usr/bin/python3"), "\x7fELF");
    // A script whose #! goes through env to the PATH's python3.
    exe(&d.join("app/run.py"), "#!/usr/bin/env python3\nprint(1)\n");
    exe(&d.join("app/run.sh"), "#!/bin/sh\necho\n");
    exe(&d.join("app/tool"), "\x7fELF\x02\x01");
    let path_var = format!("{}", d.join("usr/bin").display());
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let venv = inspect_program(
        &argv(&["../env/bin/python3", "x.py"]),
        &d.join("app"),
        &path_var,
    );
    assert_eq!(venv.kind, ProgramKind::Interpreter("python".into()));
    assert!(
        venv.isolation
            .as_deref()
            .unwrap_or("")
            .contains("pyvenv.cfg"),
        "{venv:?}"
    );

    let global = inspect_program(&argv(&["python3", "x.py"]), &d.join("app"), &path_var);
    assert_eq!(global.kind, ProgramKind::Interpreter("python".into()));
    assert_eq!(global.path, Some(d.join("usr/bin/python3")));
    assert_eq!(global.isolation, None);

    if Path::new("/usr/bin/env").exists() {
        let script = inspect_program(&argv(&["./run.py"]), &d.join("app"), &path_var);
        assert_eq!(
            script.kind,
            ProgramKind::Interpreter("python".into()),
            "{script:?}"
        );
        assert_eq!(script.path, Some(d.join("usr/bin/python3")));
        assert!(
            script
                .via
                .as_deref()
                .unwrap()
                .contains("#!/usr/bin/env python3"),
            "{script:?}"
        );
    }
    if Path::new("/bin/sh").exists() {
        let sh = inspect_program(&argv(&["./run.sh"]), &d.join("app"), &path_var);
        assert!(matches!(sh.kind, ProgramKind::Shell(_)), "{sh:?}");
    }
    let tool = inspect_program(&argv(&["./tool"]), &d.join("app"), &path_var);
    assert_eq!(tool.kind, ProgramKind::Binary);
    let missing = inspect_program(&argv(&["nope-not-here"]), &d.join("app"), &path_var);
    assert!(
        matches!(missing.kind, ProgramKind::Unresolved(_)),
        "{missing:?}"
    );
    let bundle = inspect_program(
        &argv(&["bundle", "exec", "ruby", "x.rb"]),
        d,
        "/usr/bin:/bin",
    );
    if Path::new("/usr/bin/bundle").exists() {
        assert!(matches!(bundle.kind, ProgramKind::Wrapper(_)));
    }

    assert!(isolation_by_path(Path::new("/srv/app/vendor/bundle/ruby/3.2/bin/rake")).is_some());
    assert!(isolation_by_path(Path::new("/srv/app/node_modules/.bin/tsx")).is_some());
    assert!(isolation_by_path(Path::new("/nix/store/abc-python3/bin/python3")).is_some());
    assert!(isolation_by_path(Path::new("/opt/python-3.12/bin/python3")).is_some());
    assert!(isolation_by_path(Path::new("/usr/bin/python3")).is_none());
    assert_eq!(interpreter_family("python3.11"), Some("python"));
    assert_eq!(interpreter_family("nodejs"), Some("node"));
    assert_eq!(interpreter_family("report"), None);
}

// ------------------------------------------------------------ G16

fn items_job(distributed: bool) -> Job {
    job_from(&format!(
        "{GOOD}{ITEMS}[distributed]\nenabled = {distributed}\n"
    ))
}

#[test]
fn g16_large_or_growing() {
    expect_jobs("G16", &[(good_job(), Status::Pass, "not an [items] job")]);
    // Keys of the runs, newest first.
    let keys = |counts: &[u64]| {
        with_history(item_runs(
            &counts.iter().map(|n| (*n, MIB, 1)).collect::<Vec<_>>(),
        ))
    };
    let cases = [
        (
            keys(&[150_000, 140_000]),
            Status::Warn,
            "up to 150,000 keys",
        ),
        // 30k, 20k, 12k: growing.
        (keys(&[30_000, 20_000, 12_000]), Status::Warn, "growing"),
        (
            keys(&[12_000, 20_000, 30_000]),
            Status::Pass,
            "12,000 keys in the latest run",
        ),
        (keys(&[3_000, 2_000, 1_000]), Status::Pass, "one host"),
    ];
    expect_facts("G16", &items_job(false), &cases);
    let distributed = [(keys(&[150_000]), Status::Pass, "[distributed] enabled")];
    expect_facts("G16", &items_job(true), &distributed);
}

#[test]
fn crontab_lines_and_matching() {
    let lines = crontab_command_lines(
        Path::new("/etc/crontab"),
        "MAILTO=root\n  # comment\n\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n",
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, 4);
    let job = good_job();
    let cases = [
        ("* * * * * batchguard run good --param x=1", true),
        (
            "* * * * * batchguard run --file /etc/batchguard/jobs/good.toml",
            true,
        ),
        ("* * * * * batchguard run goodness", false),
        ("* * * * * /usr/bin/good-other", false),
        ("* * * * * /srv/good/bin/good", true),
    ];
    for (line, runs) in cases {
        assert_eq!(rules::crontab_line_runs(&job, line), runs, "{line}");
    }
}

#[test]
fn g14_warns_about_secrets_too_short_to_redact() {
    let facts = JobFacts {
        short_secrets: vec!["WORKERS (env_file line 2)".into()],
        ..good_facts()
    };
    expect_facts(
        "G14",
        &good_job(),
        &[(facts, Status::Warn, "cannot be redacted safely")],
    );
}
