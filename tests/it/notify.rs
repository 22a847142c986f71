//! Notifications (G08, G09) against real receivers on loopback: an HTTP
//! server, an SMTP server (aiosmtpd), a command; the outbox when a receiver
//! is down; noise control over a failure streak.

use crate::harness::*;
use crate::receiver::{Http, Request, Smtp, free_port, hooked_env};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;

const SECRET_VALUE: &str = "hunter2-in-env-file";

fn failing_job(env: &Env, channels: &str, extra: &str) {
    let envfile = env.write("job.env", &format!("DB_PASSWORD={SECRET_VALUE}\n"));
    env.job(
        "nightly",
        &format!(
            r#"command = ["sh", "-c", "echo connecting with $DB_PASSWORD; echo 'ERROR: upstream refused' >&2; exit 3"]
env_file = "{}"
memory_max = "128MiB"
[params]
date = "2026-11-30"
[notify]
channels = [{channels}]
[runbook]
url = "https://wiki.example.com/runbooks/nightly"
verify = "open https://bi.example.com/sales?date={{date}}"
notes = "Safe to re-run."
{extra}"#,
            envfile.display()
        ),
    );
}

/// Every one of `needles` is in `text`.
#[track_caller]
fn assert_has_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} is not in:\n{text}");
    }
}

/// The `message` of a notification received.
fn message(r: &Request) -> String {
    r.json()["message"].as_str().unwrap().to_string()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhook_carries_the_runbook_signed_and_idempotent() {
    let env = Env::new();
    let hook = Http::start();
    env.global(&format!(
        "host = \"batch-01\"\ndashboard_url = \"https://batch.example.com\"\n[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\nsecret_env = \"HOOK_SECRET\"",
        hook.url("/batch")
    ));
    failing_job(&env, "\"hook\"", "");
    env.run_with(&["run", "nightly"], &[("HOOK_SECRET", "s3cr3t")])
        .code(3);
    let reqs = hook.take();
    assert_eq!(reqs.len(), 1, "one notification");
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/batch");
    let p = r.json();
    assert_eq!(r.header("Idempotency-Key"), p["id"].as_str());
    assert_eq!(
        r.header("X-Batchguard-Signature").unwrap(),
        hmac_hex("s3cr3t", &r.body)
    );
    let run = env.last_run("nightly");
    assert_eq!(p["event"], "failure");
    assert_eq!(p["job"], "nightly");
    assert_eq!(p["host"], "batch-01");
    assert_eq!(p["run_id"], run["id"]);
    assert_eq!(p["outcome"], "failure");
    assert_eq!(p["exit_code"], 3);
    assert_eq!(p["signal"], serde_json::Value::Null);
    assert_eq!(p["memory_max_bytes"], 128 << 20);
    assert!(p["peak_memory_bytes"].as_u64().is_some());
    assert!(p["duration_ms"].as_i64().is_some());
    assert_eq!(p["log_path"], run["log_path"]);
    // Every option that differs from the defaults, so it re-runs exactly
    // this run (SPEC §4).
    assert_eq!(
        p["rerun"].as_str().unwrap(),
        format!(
            "batchguard run nightly --param date=2026-11-30 --config-dir {} --state {}",
            env.config.display(),
            env.state
        )
    );
    assert_eq!(
        p["runbook"]["url"],
        "https://wiki.example.com/runbooks/nightly"
    );
    assert_eq!(
        p["runbook"]["verify"],
        "open https://bi.example.com/sales?date=2026-11-30"
    );
    assert_eq!(p["runbook"]["notes"], "Safe to re-run.");
    assert_eq!(p["dashboard_url"], "https://batch.example.com");
    let tail: Vec<&str> = p["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(tail.contains(&"ERROR: upstream refused"), "{tail:?}");
    assert!(tail.contains(&"connecting with ***"), "{tail:?}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains(SECRET_VALUE),
        "secret leaked into the payload"
    );
    // A successful run after it: `recovered`, signed the same way.
    env.hooked_job("nightly", "command = [\"true\"]");
    env.run_with(&["run", "nightly"], &[("HOOK_SECRET", "s3cr3t")])
        .code(0);
    assert_eq!(hook.take_events(), ["recovered"]);
}

#[test]
fn receiver_down_then_flush_delivers_exactly_once() {
    let env = Env::new();
    let port = free_port();
    env.global(&format!(
        "[channels.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/x\""
    ));
    failing_job(&env, "\"hook\"", "");
    // The channel is down: the job's own result is untouched.
    env.run(&["run", "nightly"]).code(3);
    let hook = Http::start_on(port);
    env.run(&["notify", "flush"])
        .code(0)
        .stdout_has("delivered 1, failed 0, still pending 0");
    assert_eq!(hook.count(), 1);
    env.run(&["notify", "flush"]).code(0);
    assert_eq!(hook.count(), 1, "never delivered twice");
    // A receiver error (500) keeps it in the outbox too.
    hook.status.store(500, std::sync::atomic::Ordering::SeqCst);
    env.hooked_job("nightly", "command = [\"false\"]");
    env.run(&["run", "nightly"]).code(1);
}

#[test]
fn mail_says_job_host_and_outcome_without_secrets() {
    let env = Env::new();
    let Some(smtp) = Smtp::start(env.path("mail")) else {
        return crate::support::cannot_run(
            "mail_says_job_host_and_outcome_without_secrets",
            "Python's aiosmtpd is not installed (.ci/run installs it)",
        );
    };
    env.global(&format!(
        "host = \"batch-01\"\n[channels.mail]\ntype = \"email\"\nsmtp = \"smtp://127.0.0.1:{}\"\nfrom = \"batch@example.com\"\nto = [\"oncall@example.com\"]",
        smtp.port
    ));
    failing_job(&env, "\"mail\"", "");
    env.run(&["run", "nightly"]).code(3);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(
        m.contains("Subject: [batchguard] nightly failure (exit 3) on batch-01"),
        "{m}"
    );
    assert!(!m.contains(SECRET_VALUE), "secret leaked into the mail");
    // A MIME parser (Python's) sees one multipart/alternative message with
    // a text and an HTML part: a single top-level Content-Type.
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import email,sys\n\
m = email.message_from_string(sys.stdin.read())\n\
print(len(m.get_all('Content-Type')), m.get_content_type(), \
      ','.join(p.get_content_type() for p in m.walk() if not p.is_multipart()))\n\
print(m['To'])\n\
parts = [p for p in m.walk() if not p.is_multipart()]\n\
print('\\n'.join(p.get_payload(decode=True).decode() for p in parts))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(m.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3");
    let decoded = String::from_utf8_lossy(&parsed.stdout).into_owned();
    assert_eq!(
        decoded.lines().next().unwrap_or_default(),
        "1 multipart/alternative text/plain,text/html",
        "{m}"
    );
    assert_has_all(
        &decoded,
        &[
            "oncall@example.com",
            "batchguard run nightly --param date=2026-11-30",
            "ERROR: upstream refused",
            "https://wiki.example.com/runbooks/nightly",
        ],
    );
    assert!(
        !decoded.contains(SECRET_VALUE),
        "secret leaked into the mail"
    );
}

/// A `command` channel that never reads its (large) payload and never
/// exits is killed at the channel timeout: the run is not held up longer.
#[test]
fn a_hanging_command_channel_is_killed_at_its_timeout() {
    let env = Env::new();
    let pidfile = env.path("channel.pid");
    env.global(&format!(
        "[channels.stuck]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 600\"]",
        pidfile.display()
    ));
    // Long log lines make a payload far over a pipe's 64 KiB.
    env.job(
        "chatty",
        "command = [\"sh\", \"-c\", \"for i in $(seq 20); do head -c 8000 /dev/zero | tr '\\\\0' x; echo; done; exit 1\"]\n\
         [notify]\nchannels = [\"stuck\"]\n",
    );
    let t = std::time::Instant::now();
    env.run(&["run", "chatty"]).code(1);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(45), "run held up for {took:?}");
    assert!(
        took >= Duration::from_secs(9),
        "the channel timeout is 10 s: {took:?}"
    );
    let pid = crate::harness::read_pid(&pidfile).expect("the channel started");
    assert!(
        !crate::harness::pid_alive(pid),
        "the hanging channel was killed"
    );
}

/// Job `flappy`, notifying `hook` (after `extra` global settings), fails
/// `n` times in a row; only the first failure has been sent so far.
fn failure_streak(extra: &str, n: usize) -> (Env, Http) {
    let (env, hook) = hooked_env(extra);
    env.hooked_job("flappy", "command = [\"false\"]");
    for _ in 0..n {
        env.run(&["run", "flappy"]).code(1);
    }
    assert_eq!(hook.count(), 1);
    (env, hook)
}

#[test]
fn fifty_failures_in_a_row_page_once_then_recover() {
    // Policy: the first failure at once, then at most one digest per
    // notify_digest (1h): within seconds, exactly one message.
    let (env, hook) = failure_streak("", 50);
    env.hooked_job("flappy", "command = [\"true\"]");
    env.run(&["run", "flappy"]).code(0);
    let reqs = hook.take();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].json()["event"], "recovered");
    assert!(message(&reqs[1]).contains("after 50 bad runs"));
}

#[test]
fn a_digest_summarises_a_streak_once_per_interval() {
    let (env, hook) = failure_streak("notify_digest = \"1s\"\n", 3);
    std::thread::sleep(Duration::from_millis(1100));
    env.run(&["run", "flappy"]).code(1);
    let reqs = hook.take();
    assert_eq!(reqs.len(), 2);
    let d = &reqs[1].json()["digest"];
    assert_eq!(d["failures"], 4);
    assert_eq!(d["since_last_message"], 3);
}

#[test]
fn command_and_ping_channels() {
    let env = Env::new();
    let hc = Http::start();
    let out = env.path("command-payload.json");
    env.global(&format!(
        "[channels.script]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat > {}\"]\n[channels.deadman]\ntype = \"ping\"\nurl_env = \"HC_PING_URL\"",
        out.display()
    ));
    failing_job(&env, "\"script\", \"deadman\"", "");
    env.run_with(
        &["run", "nightly"],
        &[("HC_PING_URL", &hc.url("/ping/abc"))],
    )
    .code(3);
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(p["event"], "failure");
    let mut paths: Vec<String> = hc.take().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/ping/abc/fail", "/ping/abc/start"]);
    // A success pings the plain URL (and the start).
    env.job(
        "nightly",
        "command = [\"true\"]\n[notify]\nchannels = [\"deadman\"]\n",
    );
    env.run_with(
        &["run", "nightly"],
        &[("HC_PING_URL", &hc.url("/ping/abc"))],
    )
    .code(0);
    let reqs = hc.take();
    let mut paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/ping/abc", "/ping/abc/start"]);
    let body = String::from_utf8_lossy(&reqs.iter().find(|r| r.path == "/ping/abc").unwrap().body)
        .into_owned();
    assert!(
        body.contains(env.last_run("nightly")["id"].as_str().unwrap()),
        "{body}"
    );
}

#[test]
fn notify_test_reports_each_channel() {
    let (env, hook) = hooked_env(&format!(
        "[channels.broken]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/\"\n",
        free_port()
    ));
    env.job(
        "j",
        "command = [\"true\"]\n[notify]\nchannels = [\"hook\", \"broken\"]\n",
    );
    let d = env.run(&["notify", "test", "j"]);
    d.code(1);
    let out = d.stdout();
    assert!(out.contains("hook (webhook): ok"), "{out}");
    assert!(out.contains("broken (webhook): FAILED"), "{out}");
    assert_eq!(hook.take()[0].json()["event"], "test");
}

#[test]
fn overrun_is_sent_while_the_run_is_still_going() {
    let (env, hook) = hooked_env("");
    env.hooked_job(
        "slowpoke",
        "command = [\"sleep\", \"3\"]\nexpected_duration = \"300ms\"",
    );
    let mut runner = env.spawn(&["run", "slowpoke"]);
    hook.wait_for_one("the overrun notification", 5);
    assert!(runner.try_wait().unwrap().is_none(), "sent while running");
    let p = hook.take()[0].json();
    assert_eq!(p["event"], "overrun");
    assert_eq!(p["outcome"], "running");
    assert_eq!(
        wait_child(&mut runner, Duration::from_secs(10)).code(),
        Some(0)
    );
    assert_eq!(hook.count(), 0, "one overrun per run, nothing on success");
}

#[test]
fn lost_and_skipped_runs_are_notified() {
    let (env, hook) = hooked_env("");
    let pidfile = env.pid_job(
        "fragile",
        "sleep 300",
        "[notify]\non = [\"lost\", \"skipped\", \"failure\"]\nchannels = [\"hook\"]\n",
    );
    let (mut runner, _) = env.spawn_job(&["run", "fragile"], &pidfile);
    // A second run while the first holds the lock is skipped (and notified).
    env.run(&["run", "fragile"]).code(75);
    wait_for("skipped", Duration::from_secs(5), || hook.count() == 1);
    assert_eq!(hook.take()[0].json()["event"], "skipped");
    sigkill_runner(&mut runner);
    env.job(
        "fragile",
        "command = [\"true\"]\n[notify]\non = [\"lost\"]\nchannels = [\"hook\"]\n",
    );
    env.run(&["run", "fragile"]).code(0);
    let reqs = hook.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json()["event"], "lost");
    assert_eq!(reqs[0].json()["outcome"], "lost");
}

#[test]
fn slack_blocks_read_well_on_a_phone() {
    let env = Env::new();
    let slack = Http::start();
    env.global("[channels.oncall]\ntype = \"slack\"\nurl_env = \"SLACK_WEBHOOK_URL\"");
    failing_job(&env, "\"oncall\"", "");
    env.run_with(
        &["run", "nightly"],
        &[("SLACK_WEBHOOK_URL", &slack.url("/services/T/B/x"))],
    )
    .code(3);
    let body = slack.take()[0].json();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("nightly failure (exit 3)")
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let all = serde_json::to_string(blocks).unwrap();
    assert_has_all(
        &all,
        &[
            "batchguard run nightly --param date=2026-11-30",
            "ERROR: upstream refused",
            "<https://wiki.example.com/runbooks/nightly|Runbook>",
        ],
    );
    assert!(!all.contains(SECRET_VALUE));
}

/// Job `reader`: touches `marker`, reading from the replica at `dsn` (a lag
/// over 30 s, or one that cannot be checked, keeps it from starting); then
/// the TOML `rest`.
fn replica_reader(env: &Env, marker: &std::path::Path, dsn: &str, rest: &str) {
    env.job(
        "reader",
        &format!(
            "command = [\"touch\", \"{}\"]\nenv = {{ REPLICA_DSN = \"{dsn}\" }}\n\
             [guideline]\nreads = \"replica\"\nreplica_dsn_env = \"REPLICA_DSN\"\nmax_replica_lag = \"30s\"\n{rest}",
            marker.display()
        ),
    );
}

#[test]
fn a_replica_that_cannot_be_checked_keeps_the_run_from_starting() {
    let (env, hook) = hooked_env("");
    let marker = env.path("ran");
    let unreachable = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test connect_timeout=2",
        free_port()
    );
    replica_reader(
        &env,
        &marker,
        &unreachable,
        "[notify]\nchannels = [\"hook\"]\n",
    );
    let d = env.run(&["run", "reader"]);
    d.code(75).stderr_has("cannot check the replica lag");
    assert!(!marker.exists(), "the job did not start");
    let run = env.last_run("reader");
    assert_eq!(run["outcome"], "skipped");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("max_replica_lag is 30s")
    );
    // Notified although `skipped` is not in the job's `on` list.
    let reqs = hook.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json()["event"], "skipped");
    assert!(message(&reqs[0]).contains("cannot check the replica lag"));
    // Against the real server (a primary, so no lag to wait for) it runs.
    replica_reader(
        &env,
        &marker,
        "host=127.0.0.1 user=postgres dbname=test",
        "",
    );
    env.run(&["run", "reader"]).code(0);
    assert!(marker.exists());
}
