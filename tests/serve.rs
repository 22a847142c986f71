//! `batchguard serve` (SPEC §10) against the real binary: a temp config
//! dir, a store filled by real `batchguard run` invocations, the server on
//! a free loopback port, and a plain HTTP/1.1 client over a TCP socket (so
//! any method, header or malformed path can be sent).
//!
//! - every page and API route, 404s and 400s, read-only, the Host guard;
//! - the token rules (refusal beyond loopback, Bearer, the login cookie);
//! - escaping of hostile job output;
//! - the metrics, parsed by the real Prometheus parser (`prometheus_client`),
//!   against the store's counts, and the textfile written after a run;
//! - the same over PostgreSQL (`BATCHGUARD_TEST_PG`);
//! - the browser checks in headless Chromium (tests/browser), which skip
//!   loudly without node, Chromium or `npm ci` there, and fail in CI.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod pg_common;
#[path = "support/mod.rs"]
mod support;

const BIN: &str = env!("CARGO_BIN_EXE_batchguard");

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    state: String,
}

impl Env {
    fn new(state: Option<String>) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("bg-serve-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        let config = root.join("etc");
        std::fs::create_dir_all(config.join("jobs")).unwrap();
        std::fs::write(
            config.join("batchguard.toml"),
            format!(
                "log_dir = \"{}\"\nmetrics_textfile = \"{}\"\n",
                root.join("log").display(),
                root.join("prom/batchguard.prom").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("prom")).unwrap();
        let state = state.unwrap_or_else(|| format!("sqlite:{}", root.join("state.db").display()));
        Env {
            _tmp: tmp,
            root,
            config,
            state,
        }
    }

    fn job(&self, name: &str, toml: &str) {
        std::fs::write(self.config.join(format!("jobs/{name}.toml")), toml).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        support::batchguard(BIN, &self.config, &self.state, &self.root, args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The standard jobs: `hello` (hostile output), `boom` (fails), `items`
    /// (one failed key), each run a few times.
    fn fill(&self) {
        self.job(
            "hello",
            r#"description = "Says hello <b>bold</b>"
command = ["sh", "-c", "echo hello; echo '<script>window.__pwned=1</script><img src=x onerror=alert(1)>'; printf '\u001b[31mred\u001b[0m \u001b]0;title\u0007\n'; sleep 0.2"]
workdir = "/tmp"
schedule = "*/5 * * * *"
timezone = "Asia/Tokyo"
timeout = "1m"
expected_duration = "2s"
memory_max = "256MiB"
[params]
day = "2026-11-30"
[runbook]
url = "https://wiki.example.com/hello"
notes = "Safe to re-run <any time>"
"#,
        );
        self.job(
            "boom",
            "command = [\"sh\", \"-c\", \"echo failing >&2; exit 3\"]\nworkdir = \"/tmp\"\nschedule = \"0 3 * * *\"\ntimeout = \"10s\"\n",
        );
        self.job(
            "items",
            r#"command = ["true"]
workdir = "/tmp"
[items]
source = ["printf", "a\nb\nbad\n"]
run = ["sh", "-c", "test $0 != bad || (echo 'no <good>' >&2; exit 1)", "{item}"]
max_attempts = 1
"#,
        );
        for _ in 0..3 {
            for job in ["hello", "boom", "items"] {
                let out = self.run(&["run", job]);
                let want = match job {
                    "hello" => 0,
                    "boom" => 3,
                    _ => 1,
                };
                assert_eq!(out.status.code(), Some(want), "{job}: {out:?}");
            }
        }
    }
}

/// A running `batchguard serve`, stopped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = env.cmd(&args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stderr);
    reader.read_line(&mut line).unwrap();
    // Keep draining (and showing) what the server says.
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            eprintln!("serve: {l}");
        }
    });
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("serve did not start: {line:?}"));
    Server { child, port }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad reply to {method} {path}: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path, &[], "")
}

fn ok(port: u16, path: &str) -> Reply {
    let r = get(port, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r
}

fn run_ids(env: &Env, job: &str) -> Vec<String> {
    env.json(&["runs", job, "--limit", "100", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every route, over whichever store `env` has.
fn check_routes(env: &Env) {
    let srv = serve(env, &[], &[]);
    let p = srv.port;
    let hello = run_ids(env, "hello");
    let boom = run_ids(env, "boom");
    assert_eq!(hello.len(), 3);

    // Pages.
    let jobs = ok(p, "/");
    assert!(
        jobs.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    for name in ["hello", "boom", "items"] {
        assert!(
            jobs.body.contains(&format!("href=\"/jobs/{name}\"")),
            "{name}"
        );
    }
    // Failing first: boom and items (failed key) come before hello.
    let pos = |n: &str| jobs.body.find(&format!("href=\"/jobs/{n}\"")).unwrap();
    assert!(pos("boom") < pos("hello") && pos("items") < pos("hello"));
    assert!(jobs.body.contains("<svg class=\"strip\""));
    assert!(jobs.body.contains("Says hello &lt;b&gt;bold&lt;/b&gt;"));
    let job = ok(p, "/jobs/hello");
    assert!(job.body.contains("<svg class=\"chart duration\""));
    assert!(job.body.contains("timeout 1m"), "timeout limit drawn");
    assert!(job.body.contains("memory_max 256MiB"), "memory limit drawn");
    assert!(job.body.contains("Check findings"));
    assert!(job.body.contains("Next fires"));
    let _ = ok(p, "/jobs/hello?range=7d");
    let _ = ok(p, "/jobs/hello?from=2020-01-01&to=2030-01-01");
    let items = ok(p, "/jobs/items");
    assert!(items.body.contains("Item ledger") && items.body.contains("<code>bad</code>"));
    let run = ok(p, &format!("/runs/{}", hello[0]));
    assert!(run.body.contains("data-copy-from=\"rerun\""));
    assert!(run.body.contains("--param day=2026-11-30"), "{}", run.body);
    assert!(run.body.contains("https://wiki.example.com/hello"));
    assert!(run.body.contains("Safe to re-run &lt;any time&gt;"));
    let _ = ok(p, &format!("/runs/{}?offset=0", boom[0]));
    let items_run = run_ids(env, "items");
    let r = ok(p, &format!("/runs/{}", items_run[0]));
    assert!(r.body.contains("Failed keys") && r.body.contains("no &lt;good&gt;"));
    let tl = ok(p, "/timeline");
    assert!(tl.body.contains("<svg class=\"gantt\""));
    assert!(tl.body.contains(&format!("href=\"/runs/{}\"", hello[0])));
    let _ = ok(p, "/timeline?range=7d");
    let _ = ok(p, "/assets/app.css");
    let _ = ok(p, "/assets/app.js");

    // Escaping: nothing from the job runs or reaches a terminal.
    let page = ok(p, &format!("/runs/{}", hello[0])).body;
    assert!(page.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;"));
    assert!(!page.contains("<script>window"));
    assert!(!page.contains("<img src=x"));
    assert!(!page.contains('\u{1b}') && !page.contains('\u{7}'));
    assert!(page.contains("\u{241b}[31mred"), "ESC shown as ␛");
    assert_eq!(page.matches("<script").count(), 1, "only app.js");
    let csp = run.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));

    // JSON: the shapes of --format json.
    let api = ok(p, "/api/jobs").json();
    let status = env.json(&["status", "--format", "json"]);
    let mut got: Vec<&str> = api["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec!["boom", "hello", "items"]);
    for entry in status["jobs"].as_array().unwrap() {
        let name = entry["job"].as_str().unwrap();
        let mine = api["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == name)
            .unwrap();
        for key in entry.as_object().unwrap().keys() {
            if key != "next_run" {
                assert_eq!(mine[key], entry[key], "{name}.{key}");
            }
        }
    }
    let one = ok(p, "/api/jobs/hello").json();
    assert_eq!(one["job"], "hello");
    assert_eq!(one["outcome_counts"]["counts"]["success"], 3);
    assert_eq!(one["next_fires"].as_array().unwrap().len(), 5);
    assert!(one["check"]["rules"].as_array().unwrap().len() >= 16);
    let ledger = ok(p, "/api/jobs/items").json();
    assert_eq!(ledger["ledger"]["scopes"][0]["failed"], 1);
    assert_eq!(ledger["ledger"]["scopes"][0]["done"], 2);
    let cli_runs = env.json(&["runs", "hello", "--format", "json"]);
    let api_runs = ok(p, "/api/jobs/hello/runs").json();
    assert_eq!(api_runs, cli_runs, "runs --format json");
    // Pagination with a cursor.
    let first = ok(p, "/api/jobs/hello/runs?limit=2");
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    let link = first.header("link").expect("Link header");
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let rest = ok(p, &next).json();
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], cli_runs[2]["id"]);
    let show = env.json(&["show", &hello[1], "--format", "json"]);
    assert_eq!(ok(p, &format!("/api/runs/{}", hello[1])).json(), show);
    let log = ok(p, &format!("/api/runs/{}/log", hello[0])).json();
    assert!(
        log["text"]
            .as_str()
            .unwrap()
            .contains("<script>window.__pwned")
    );
    assert_eq!(log["eof"], true);
    let part = ok(p, &format!("/api/runs/{}/log?offset=0&limit=100", hello[0])).json();
    assert!(part["next_offset"].as_u64().unwrap() <= 100);
    assert_eq!(part["eof"], false);
    let again = ok(
        p,
        &format!(
            "/api/runs/{}/log?offset={}",
            hello[0],
            part["next_offset"].as_u64().unwrap()
        ),
    )
    .json();
    assert_eq!(
        format!(
            "{}{}",
            part["text"].as_str().unwrap(),
            again["text"].as_str().unwrap()
        ),
        log["text"].as_str().unwrap()
    );
    let metrics = ok(p, "/metrics");
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );

    // 404 and 400.
    let not_found = [
        "/nope",
        "/jobs/nope",
        "/jobs/Bad.Name",
        "/runs/NOPE",
        "/runs/..%2F..%2Fetc",
        "/api/runs/NOPE",
        "/api/runs/NOPE/log",
        "/api/jobs/nope",
        "/api/jobs/nope/runs",
        "/api/jobs/hello/runs?before=01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "/api/nope",
        "/?page=99",
    ];
    let bad_requests = [
        "/api/jobs/hello/runs?limit=0",
        "/api/jobs/hello/runs?limit=abc",
        "/api/jobs/hello/runs?limit=100000",
        "/api/jobs?offset=-1",
        "/jobs/hello?range=bogus",
        "/jobs/hello?from=yesterday",
        "/jobs/hello?from=2030-01-01&to=2020-01-01",
        "/timeline?range=0s",
        "/?page=0",
        "/api/jobs?limit=%zz",
        "/jobs/%ff",
    ];
    for (want, paths) in [(404, &not_found[..]), (400, &bad_requests[..])] {
        for path in paths {
            let r = get(p, path);
            assert_eq!(r.status, want, "{path}: {}", r.body);
        }
    }
    assert!(get(p, "/api/jobs?limit=abc").json()["error"].is_string());
    // Odd requests get an answer, never a crash.
    let long = format!("/jobs/{}", "a".repeat(5000));
    for path in [
        "/%",
        "/%2",
        "//",
        "/jobs/",
        "/runs/",
        "/runs/%00",
        "/api/runs/x/log?offset=99999999999999999999",
        "/api/runs/x/log?offset=1&offset=2",
        "/timeline?from=0000-01-01&to=9999-12-31",
        "/timeline?to=1970-01-01",
        "/jobs/hello?from=-009999-01-01T00:00:00Z",
        "/?page=18446744073709551616",
        "/api/jobs?offset=4294967295&limit=1000",
        long.as_str(),
    ] {
        let r = get(p, path);
        assert!([200, 400, 404].contains(&r.status), "{path}: {}", r.status);
    }

    // Read-only.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/", "/api/jobs", "/api/runs/x", "/metrics", "/jobs/hello"] {
            let r = request(p, method, path, &[], "x=1");
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"));
        }
    }
    let head = request(p, "HEAD", "/", &[], "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // Without a token, only loopback host names (DNS rebinding).
    let r = request(p, "GET", "/api/jobs", &[("Host", "evil.example:8470")], "");
    assert_eq!(r.status, 403);
    let r = request(p, "GET", "/api/jobs", &[("Host", "localhost:8470")], "");
    assert_eq!(r.status, 200);
    // Still serving after all that.
    let _ = ok(p, "/");
}

#[test]
fn pages_and_api_over_sqlite() {
    let env = Env::new(None);
    env.fill();
    check_routes(&env);
}

/// The families and samples of a Prometheus text, parsed by the reference
/// Python parser: `{name: {labels-json: value}}`.
fn parse_prometheus(text: &str) -> Option<Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        assert s.timestamp is None, s
        out.setdefault(s.name, {})[json.dumps(s.labels, sort_keys=True, separators=(',', ':'))] = s.value
print(json.dumps(out))
"#;
    let have = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!(
            "SKIPPED: python3 with prometheus_client is missing (python3 -m pip install prometheus_client)"
        );
        assert!(
            std::env::var("CI").is_err(),
            "CI must have prometheus_client"
        );
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected:\n{text}"
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn sample(m: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let map: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let key = serde_json::to_string(&Value::Object(map)).unwrap();
    m[name][key].as_f64()
}

fn check_metrics(env: &Env, port: u16) {
    let text = ok(port, "/metrics").body;
    let Some(m) = parse_prometheus(&text) else {
        return;
    };
    for name in [
        "batchguard_job_last_run_timestamp_seconds",
        "batchguard_job_last_success_timestamp_seconds",
        "batchguard_job_last_duration_seconds",
        "batchguard_job_last_peak_memory_bytes",
        "batchguard_job_memory_max_bytes",
        "batchguard_job_next_run_timestamp_seconds",
        "batchguard_job_runs_total",
        "batchguard_job_items_total",
        "batchguard_job_running",
        "batchguard_job_missed",
        "batchguard_outbox_pending",
    ] {
        assert!(m.get(name).is_some(), "{name} missing:\n{text}");
    }
    // Counts match the store, outcome by outcome.
    for job in ["hello", "boom", "items"] {
        let runs = env.json(&["runs", job, "--limit", "1000", "--format", "json"]);
        for outcome in ["success", "failure", "timeout", "oom", "skipped", "lost"] {
            let n = runs
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["outcome"] == outcome)
                .count();
            assert_eq!(
                sample(
                    &m,
                    "batchguard_job_runs_total",
                    &[("job", job), ("outcome", outcome)]
                ),
                Some(n as f64),
                "{job} {outcome}"
            );
        }
        let last = &runs[0];
        let started = jiff::Timestamp::from_str_rfc3339(last["started_at"].as_str().unwrap());
        let got = sample(
            &m,
            "batchguard_job_last_run_timestamp_seconds",
            &[("job", job)],
        )
        .unwrap();
        assert!((got - started.as_millisecond() as f64 / 1000.0).abs() < 0.002);
        assert_eq!(
            sample(&m, "batchguard_job_running", &[("job", job)]),
            Some(0.0)
        );
    }
    assert_eq!(
        sample(&m, "batchguard_job_memory_max_bytes", &[("job", "hello")]),
        Some(268435456.0)
    );
    assert!(
        sample(
            &m,
            "batchguard_job_last_success_timestamp_seconds",
            &[("job", "boom")]
        )
        .is_none()
    );
    let ledger = env.json(&["ledger", "items", "--format", "json"]);
    let scope = &ledger["scopes"][0];
    for (state, key) in [
        ("done", "done"),
        ("failed", "failed"),
        ("pending", "in_flight"),
    ] {
        assert_eq!(
            sample(
                &m,
                "batchguard_job_items_total",
                &[("job", "items"), ("state", state)]
            ),
            scope[key].as_f64(),
            "{state}"
        );
    }
    assert_eq!(sample(&m, "batchguard_outbox_pending", &[]), Some(0.0));
    // No unbounded labels: only job, outcome and state.
    for (name, samples) in m.as_object().unwrap() {
        for labels in samples.as_object().unwrap().keys() {
            let l: Value = serde_json::from_str(labels).unwrap();
            for k in l.as_object().unwrap().keys() {
                assert!(
                    ["job", "outcome", "state"].contains(&k.as_str()),
                    "{name} {k}"
                );
            }
        }
    }
}

/// Small helper so the test reads like the spec.
trait FromRfc3339 {
    fn from_str_rfc3339(s: &str) -> jiff::Timestamp;
}
impl FromRfc3339 for jiff::Timestamp {
    fn from_str_rfc3339(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }
}

#[test]
fn metrics_parse_and_match_the_store_and_the_textfile_follows_every_run() {
    let env = Env::new(None);
    env.fill();
    let prom = env.root.join("prom/batchguard.prom");
    let srv = serve(&env, &[], &[]);
    check_metrics(&env, srv.port);
    // The textfile was written by the last run: same families, same counts.
    let text = std::fs::read_to_string(&prom).expect("textfile written after a run");
    assert!(text.contains("batchguard_job_runs_total{job=\"hello\",outcome=\"success\"} 3"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&prom).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
    if let Some(m) = parse_prometheus(&text) {
        assert_eq!(
            sample(
                &m,
                "batchguard_job_runs_total",
                &[("job", "boom"), ("outcome", "failure")]
            ),
            Some(3.0)
        );
    }
    // One more run: the file follows, and no temp file is left behind.
    let before = std::fs::metadata(&prom).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let _ = env.run(&["run", "boom"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("batchguard_job_runs_total{job=\"boom\",outcome=\"failure\"} 4"));
    assert!(std::fs::metadata(&prom).unwrap().modified().unwrap() > before);
    let leftovers: Vec<_> = std::fs::read_dir(env.root.join("prom"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "batchguard.prom")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Served metrics agree with the file's counters.
    let served = ok(srv.port, "/metrics").body;
    assert!(served.contains("batchguard_job_runs_total{job=\"boom\",outcome=\"failure\"} 4"));
}

#[test]
fn token_rules() {
    let env = Env::new(None);
    env.fill();
    // Beyond loopback without a token: refuses to start.
    let out = env.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-env"));
    // A named variable that is unset or short is an error too.
    for value in [None, Some("short")] {
        let mut cmd = env.cmd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-env",
            "BG_TOKEN",
        ]);
        match value {
            None => cmd.env_remove("BG_TOKEN"),
            Some(v) => cmd.env("BG_TOKEN", v),
        };
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{value:?}: {out:?}");
    }

    let token = "s3cret-token-0123456789";
    let srv = serve(&env, &["--token-env", "BG_TOKEN"], &[("BG_TOKEN", token)]);
    let p = srv.port;
    for path in ["/", "/api/jobs", "/metrics", "/timeline", "/jobs/hello"] {
        let r = get(p, path);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    let bearer = format!("Bearer {token}");
    let wrong = "Bearer wrong-token-0123456789";
    // With a token, any Host is fine (the token is the guard).
    let host = ("Host", "batch.example.com");
    for (path, headers, want) in [
        ("/api/jobs", vec![("Authorization", bearer.as_str())], 200),
        ("/api/jobs", vec![("Authorization", wrong)], 401),
        (
            "/metrics",
            vec![("Authorization", bearer.as_str()), host],
            200,
        ),
    ] {
        let r = request(p, "GET", path, &headers, "");
        assert_eq!(r.status, want, "{path} {headers:?}");
    }
    // The login form and its cookie.
    assert_eq!(get(p, "/login").status, 200);
    assert_eq!(get(p, "/assets/app.css").status, 200);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(p, "POST", "/login", &form, "token=nope");
    assert_eq!(r.status, 401, "{:?} {}", r.headers, r.body);
    assert!(r.header("set-cookie").is_none());
    let r = request(p, "POST", "/login", &form, &format!("token={token}"));
    assert_eq!(r.status, 303);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(token), "the cookie never holds the token");
    let pair = cookie.split(';').next().unwrap().to_string();
    let forged = ("Cookie", "batchguard_session=forged");
    for (method, path, headers, want) in [
        ("GET", "/", ("Cookie", pair.as_str()), 200),
        ("GET", "/api/jobs", forged, 401),
        // Still read-only with a valid token.
        (
            "DELETE",
            "/api/jobs",
            ("Authorization", bearer.as_str()),
            405,
        ),
    ] {
        let r = request(p, method, path, &[headers], "");
        assert_eq!(r.status, want, "{method} {path} {headers:?}");
    }
}

#[test]
fn pages_api_and_metrics_over_postgres() {
    let Some(_guard) = pg_common::begin() else {
        return;
    };
    let schema = format!("bg_serve_{}_{}", std::process::id(), pg_common::next_id());
    let url = format!("{}?schema={schema}", pg_common::base());
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = pg_common::admin()
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0));
        }
    }
    let _drop = Drop_(schema);
    let env = Env::new(Some(url));
    env.fill();
    check_routes(&env);
    let srv = serve(&env, &[], &[]);
    check_metrics(&env, srv.port);
}

#[test]
fn refuses_a_missing_store_and_a_bad_listen_address() {
    let env = Env::new(None);
    let out = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = env.run(&["serve", "--listen", "not an address"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The browser checks (tests/browser/check.mjs) in headless Chromium.
#[test]
fn browser_pages_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    let missing: Vec<&str> = [
        (
            Command::new("node")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "node",
        ),
        (
            Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium (apt-get install chromium)",
        ),
        (
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core (npm ci in tests/browser)",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        return support::cannot_run(
            "browser_pages_in_headless_chromium",
            &format!("needs {}", missing.join(", ")),
        );
    }
    let env = Env::new(None);
    env.fill();
    for _ in 0..4 {
        let _ = env.run(&["run", "hello"]);
    }
    let srv = serve(&env, &[], &[]);
    let hello = run_ids(&env, "hello");
    let artifacts = root.join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let start = Instant::now();
    let out = Command::new("node")
        .arg(dir.join("check.mjs"))
        .env("BG_URL", format!("http://127.0.0.1:{}", srv.port))
        .env("BG_RUN", &hello[0])
        .env("BG_JOB", "hello")
        .env("BG_ARTIFACTS", &artifacts)
        .current_dir(&dir)
        .output()
        .unwrap();
    eprintln!(
        "browser checks ({:.1}s):\n{}{}",
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser checks failed");
    for page in ["jobs", "job", "run", "timeline"] {
        let png = artifacts.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 1000),
            "{png:?}"
        );
        // The docs' screenshots come from here (BATCHGUARD_UPDATE_DOCS_IMG=1).
        if std::env::var("BATCHGUARD_UPDATE_DOCS_IMG").is_ok() {
            std::fs::copy(&png, root.join(format!("docs/img/dashboard-{page}.png"))).unwrap();
        }
    }
}

#[test]
fn adhoc_runs_show_but_stay_out_of_metrics_and_new_job_files_are_picked_up() {
    let env = Env::new(None);
    env.job("first", "command = [\"true\"]\nworkdir = \"/tmp\"\n");
    assert_eq!(env.run(&["run", "first"]).status.code(), Some(0));
    let out = env.run(&["exec", "--name", "adhoc-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let srv = serve(&env, &[], &[]);
    let p = srv.port;
    let jobs = ok(p, "/api/jobs").json();
    let adhoc = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "adhoc-1")
        .expect("ad-hoc runs are listed");
    assert_eq!(adhoc["configured"], false);
    let _ = ok(p, "/jobs/adhoc-1");
    let run = ok(
        p,
        &format!("/runs/{}", adhoc["last_run"]["id"].as_str().unwrap()),
    );
    assert!(
        run.body.contains("batchguard exec --name adhoc-1"),
        "an exec run's page shows its own exec command to re-run it"
    );
    let metrics = ok(p, "/metrics").body;
    assert!(metrics.contains("job=\"first\""));
    assert!(
        !metrics.contains("adhoc-1"),
        "ad-hoc names are unbounded: not labels"
    );
    // A job file added while serving shows up (files are checked once a second).
    env.job("second", "command = [\"true\"]\nworkdir = \"/tmp\"\n");
    std::thread::sleep(Duration::from_millis(1100));
    let jobs = ok(p, "/api/jobs").json();
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job"] == "second")
    );
    assert_eq!(ok(p, "/jobs/second").status, 200);
    // A broken job file still shows, with its error.
    env.job("broken", "command = 3\n");
    std::thread::sleep(Duration::from_millis(1100));
    let b = ok(p, "/api/jobs/broken").json();
    assert!(
        b["config_error"].as_str().unwrap().contains("broken.toml"),
        "{b}"
    );
    let page = ok(p, "/").body;
    assert!(page.contains("config error"));
}

#[test]
fn a_running_job_shows_its_lock_holder_and_counts_as_running() {
    let env = Env::new(None);
    env.job(
        "slow",
        "command = [\"sleep\", \"4\"]\nworkdir = \"/tmp\"\ntimeout = \"1m\"\n",
    );
    let mut child = env
        .cmd(&["run", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.root.join("state.db").exists() {
        assert!(Instant::now() < deadline, "no store");
        std::thread::sleep(Duration::from_millis(20));
    }
    let srv = serve(&env, &[], &[]);
    let state = loop {
        let jobs = ok(srv.port, "/api/jobs").json();
        let slow = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == "slow")
            .cloned()
            .unwrap();
        if slow["running"] == true && !slow["lock_holder"].is_null() {
            break slow;
        }
        assert!(Instant::now() < deadline, "never saw the run: {slow}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let run_id = state["lock_holder"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(state["lock_holder"]["lock"], "slow");
    let page = ok(srv.port, "/").body;
    assert!(
        page.contains(&format!("href=\"/runs/{run_id}\"")),
        "holder linked"
    );
    assert!(page.contains("badge o-running"));
    if let Some(m) = parse_prometheus(&ok(srv.port, "/metrics").body) {
        assert_eq!(
            sample(&m, "batchguard_job_running", &[("job", "slow")]),
            Some(1.0)
        );
    }
    // The run page of a running run: its log so far.
    let r = ok(srv.port, &format!("/runs/{run_id}"));
    assert!(r.body.contains("badge o-running"));
    let log = ok(srv.port, &format!("/api/runs/{run_id}/log")).json();
    assert_eq!(log["running"], true);
    let timeline = ok(srv.port, "/timeline").body;
    assert!(timeline.contains(&format!("href=\"/runs/{run_id}\"")));
    // A second run while the lock is held is skipped, and the textfile
    // follows that run too.
    assert_eq!(env.run(&["run", "slow"]).status.code(), Some(75));
    let text = std::fs::read_to_string(env.root.join("prom/batchguard.prom")).unwrap();
    assert!(text.contains("batchguard_job_runs_total{job=\"slow\",outcome=\"skipped\"} 1"));
    assert!(text.contains("batchguard_job_running{job=\"slow\"} 1"));
    assert!(child.wait().unwrap().success());
    let jobs = ok(srv.port, "/api/jobs").json();
    assert_eq!(jobs["jobs"][0]["running"], false);
    assert!(jobs["jobs"][0]["lock_holder"].is_null());
}
