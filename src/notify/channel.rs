//! Delivery through one channel: Slack-compatible webhook, generic JSON
//! webhook (with `Idempotency-Key` and an HMAC-SHA256 signature), email over
//! SMTP (plain text and HTML), a command that reads the JSON on stdin, and a
//! healthchecks.io-compatible ping. Channel secrets come only from the
//! environment. Every call is bounded in time.

use super::Payload;
use crate::redact::redact_url;
use batchguard_config::{Channel, Global, UrlSource};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::io::Write;
use std::time::{Duration, Instant};

/// The bound on one delivery through any channel (SPEC §7: 10 s by
/// default): HTTP and SMTP requests time out, a `command` channel is killed
/// (its whole process group) when it has not finished by then.
pub const TIMEOUT: Duration = Duration::from_secs(10);

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
}

fn url_of(u: &UrlSource) -> Result<String, String> {
    match u {
        UrlSource::Literal(s) => Ok(s.clone()),
        UrlSource::Env(name) => env(name),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into()
}

/// HMAC-SHA256 of `body` with `secret`, as `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Deliver one stored notification (`payload` is its JSON) to `channel`.
pub fn deliver(
    global: &Global,
    channel: &str,
    id: &str,
    event: &str,
    payload: &str,
) -> Result<(), String> {
    let ch = global
        .channels
        .get(channel)
        .ok_or_else(|| format!("channel `{channel}` is no longer configured"))?;
    let p: Payload =
        serde_json::from_str(payload).map_err(|e| format!("bad stored payload: {e}"))?;
    match ch {
        Channel::Webhook { url, secret_env } => {
            let url = url_of(url)?;
            let mut req = agent()
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", id)
                .header("X-Batchguard-Event", event);
            if let Some(name) = secret_env {
                req = req.header(
                    "X-Batchguard-Signature",
                    signature(&env(name)?, payload.as_bytes()),
                );
            }
            req.send(payload)
                .map(drop)
                .map_err(|e| post_error(&url, &e))
        }
        Channel::Slack { url } => {
            let url = url_of(url)?;
            let body = serde_json::to_string(&slack(&p)).unwrap_or_default();
            agent()
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.as_str())
                .map(drop)
                .map_err(|e| post_error(&url, &e))
        }
        Channel::Ping { url } => {
            let base = url_of(url)?;
            let url = match event {
                "start" => format!("{}/start", base.trim_end_matches('/')),
                "success" | "recovered" => base.clone(),
                _ => format!("{}/fail", base.trim_end_matches('/')),
            };
            let body = ping_body(&p);
            agent()
                .post(&url)
                .send(body.as_str())
                .map(drop)
                .map_err(|e| post_error(&url, &e))
        }
        Channel::Command { command } => run_command(command, id, event, payload),
        Channel::Email {
            smtp,
            from,
            to,
            username_env,
            password_env,
        } => send_mail(
            smtp,
            from,
            to,
            username_env.as_deref(),
            password_env.as_deref(),
            id,
            &p,
        ),
    }
}

/// A failed POST, its URL redacted wherever it appears (the HTTP client's
/// message may quote the URL with its credentials).
fn post_error(url: &str, e: &impl std::fmt::Display) -> String {
    let shown = redact_url(url);
    format!("POST {shown}: {}", e.to_string().replace(url, &shown))
}

fn ping_body(p: &Payload) -> String {
    let mut body = format!(
        "batchguard run {} of job {} on {}: {}\n",
        p.run_id.as_deref().unwrap_or("-"),
        p.job,
        p.host,
        p.outcome.as_deref().unwrap_or(&p.event)
    );
    for line in &p.log_tail {
        body.push_str(line);
        body.push('\n');
    }
    body
}

/// The subject line: job, host and outcome.
pub fn subject(p: &Payload) -> String {
    let what = match (&p.outcome, p.exit_code, p.signal) {
        (Some(o), Some(c), _) if c != 0 => format!("{o} (exit {c})"),
        (Some(o), _, Some(s)) => format!("{o} (signal {s})"),
        (Some(o), _, _) => o.clone(),
        (None, _, _) => p.event.clone(),
    };
    let event = if p.event == "recovered" || p.event == "overrun" || p.event == "missed" {
        p.event.clone()
    } else {
        what
    };
    format!("[batchguard] {} {} on {}", p.job, event, p.host)
}

/// The plain-text rendering every text channel shares.
pub fn text(p: &Payload) -> String {
    let mut t = format!("{}\n\n", p.message);
    let mut kv = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            t.push_str(&format!("{k:<10} {v}\n"));
        }
    };
    kv("job", Some(p.job.clone()));
    kv("host", Some(p.host.clone()));
    kv("run", p.run_id.clone());
    kv("outcome", p.outcome.clone());
    kv("exit code", p.exit_code.map(|c| c.to_string()));
    kv("signal", p.signal.map(|s| s.to_string()));
    kv("started", p.started_at.clone());
    kv("duration", p.duration_ms.map(crate::clock::human_ms));
    kv(
        "memory",
        p.peak_memory_bytes.map(|b| match p.memory_max_bytes {
            Some(m) => format!(
                "peak {} of memory_max {}",
                batchguard_config::format_size(b),
                batchguard_config::format_size(m)
            ),
            None => format!("peak {}", batchguard_config::format_size(b)),
        }),
    );
    kv("log", p.log_path.clone());
    if let Some(d) = &p.digest {
        t.push_str(&format!(
            "\nstill failing: {} bad runs since {} ({} since the last message)\n",
            d.failures, d.failing_since, d.since_last_message
        ));
    }
    if !p.items_failed_details.is_empty() {
        t.push_str("\nfailed items:\n");
        for f in &p.items_failed_details {
            t.push_str(&format!(
                "  {} ({} attempts): {}\n",
                f.key,
                f.attempts,
                f.last_error.as_deref().unwrap_or("")
            ));
        }
    } else if !p.items_failed.is_empty() {
        t.push_str(&format!("\nfailed items: {}\n", p.items_failed.join(", ")));
    }
    if !p.log_tail.is_empty() {
        t.push_str("\nlast lines of the log:\n");
        for l in &p.log_tail {
            t.push_str(&format!("  {}\n", crate::sanitize::printable(l)));
        }
    }
    if let Some(r) = &p.rerun {
        t.push_str(&format!("\nre-run:\n  {r}\n"));
    }
    if let Some(v) = &p.runbook.verify {
        t.push_str(&format!("\nverify:\n  {v}\n"));
    }
    if let Some(n) = &p.runbook.notes {
        t.push_str(&format!("\nnotes:\n  {n}\n"));
    }
    if let Some(u) = &p.runbook.url {
        t.push_str(&format!("\nrunbook: {u}\n"));
    }
    if let Some(u) = &p.dashboard_url {
        t.push_str(&format!("dashboard: {u}\n"));
    }
    t
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(p: &Payload) -> String {
    let mut h = format!("<p><b>{}</b></p>\n<table>\n", html_escape(&p.message));
    for (k, v) in [
        ("job", Some(p.job.clone())),
        ("host", Some(p.host.clone())),
        ("run", p.run_id.clone()),
        ("outcome", p.outcome.clone()),
        ("exit code", p.exit_code.map(|c| c.to_string())),
        ("duration", p.duration_ms.map(crate::clock::human_ms)),
        ("log", p.log_path.clone()),
    ] {
        if let Some(v) = v {
            h.push_str(&format!(
                "<tr><th align=left>{k}</th><td>{}</td></tr>\n",
                html_escape(&v)
            ));
        }
    }
    h.push_str("</table>\n");
    if !p.log_tail.is_empty() {
        h.push_str(&format!(
            "<p>Last lines of the log:</p><pre>{}</pre>\n",
            html_escape(&p.log_tail.join("\n"))
        ));
    }
    if let Some(r) = &p.rerun {
        h.push_str(&format!("<p>Re-run:</p><pre>{}</pre>\n", html_escape(r)));
    }
    if let Some(v) = &p.runbook.verify {
        h.push_str(&format!("<p>Verify: {}</p>\n", html_escape(v)));
    }
    if let Some(u) = &p.runbook.url {
        h.push_str(&format!(
            "<p><a href=\"{0}\">Runbook</a></p>\n",
            html_escape(u)
        ));
    }
    h
}

/// Slack blocks that read well on a phone: header, key facts, the log tail
/// and the re-run command as code, the runbook as a link.
fn slack(p: &Payload) -> serde_json::Value {
    use serde_json::json;
    let mut fields = vec![json!({"type": "mrkdwn", "text": format!("*Host*\n{}", p.host)})];
    if let Some(r) = &p.run_id {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Run*\n{r}")}));
    }
    if let Some(c) = p.exit_code {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Exit code*\n{c}")}));
    }
    if let Some(d) = p.duration_ms {
        fields.push(
            json!({"type": "mrkdwn", "text": format!("*Duration*\n{}", crate::clock::human_ms(d))}),
        );
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": subject(p).trim_start_matches("[batchguard] ")}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": crate::sanitize::slack(&p.message)}, "fields": fields}),
    ];
    if !p.log_tail.is_empty() {
        let tail: Vec<String> = p
            .log_tail
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(|l| crate::sanitize::slack(l))
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", tail.join("\n"))}}));
    }
    if let Some(r) = &p.rerun {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("Re-run:\n```{r}```")}}));
    }
    let mut ctx = Vec::new();
    if let Some(v) = &p.runbook.verify {
        ctx.push(json!({"type": "mrkdwn", "text": format!("Verify: {v}")}));
    }
    if let Some(u) = &p.runbook.url {
        ctx.push(json!({"type": "mrkdwn", "text": format!("<{u}|Runbook>")}));
    }
    if !ctx.is_empty() {
        blocks.push(json!({"type": "context", "elements": ctx}));
    }
    json!({"text": format!("{}: {}", subject(p), p.message), "blocks": blocks})
}

fn run_command(argv: &[String], id: &str, event: &str, payload: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = std::process::Command::new(prog)
        .args(args)
        .env("BATCHGUARD_NOTIFICATION_ID", id)
        .env("BATCHGUARD_EVENT", event)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {prog}: {e}"))?;
    // The payload is written from another thread: a command that never
    // reads it (with a payload larger than the pipe) must not block us
    // past the deadline. Killing the command closes the pipe.
    let writer = child.stdin.take().map(|mut stdin| {
        let payload = payload.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(payload.as_bytes());
        })
    });
    let deadline = Instant::now() + TIMEOUT;
    let result = loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break Ok(()),
            Ok(Some(st)) => break Err(format!("{prog} exited with {st}")),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                break Err(format!("{prog} did not finish within {TIMEOUT:?}: killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for {prog}: {e}")),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    result
}

/// KILL the process group led by `pid` (a command channel and whatever it
/// started).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals that process group; the
    // group was created for this child (process_group(0)), so it is ours.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

fn send_mail(
    smtp: &str,
    from: &str,
    to: &[String],
    username_env: Option<&str>,
    password_env: Option<&str>,
    id: &str,
    p: &Payload,
) -> Result<(), String> {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};
    let (tls, rest) = if let Some(r) = smtp.strip_prefix("smtps://") {
        (true, r)
    } else if let Some(r) = smtp.strip_prefix("smtp://") {
        (false, r)
    } else {
        return Err(format!("bad smtp URL {smtp}"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {smtp}"))?,
        ),
        None => (rest, if tls { 465 } else { 25 }),
    };
    let mut msg = Message::builder()
        .from(
            from.parse::<Mailbox>()
                .map_err(|e| format!("from {from}: {e}"))?,
        )
        .subject(subject(p))
        .message_id(Some(format!("<{id}@batchguard>")));
    for t in to {
        msg = msg.to(t.parse::<Mailbox>().map_err(|e| format!("to {t}: {e}"))?);
    }
    let email = msg
        .multipart(MultiPart::alternative_plain_html(text(p), html(p)))
        .map_err(|e| format!("building the mail: {e}"))?;
    let mut builder = if tls {
        SmtpTransport::relay(host).map_err(|e| format!("smtps {host}: {e}"))?
    } else {
        SmtpTransport::builder_dangerous(host)
    }
    .port(port)
    .timeout(Some(TIMEOUT));
    if let (Some(u), Some(pw)) = (username_env, password_env) {
        builder = builder.credentials(Credentials::new(env(u)?, env(pw)?));
    }
    builder
        .build()
        .send(&email)
        .map(drop)
        .map_err(|e| format!("SMTP {host}:{port}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_not_leaked_in_errors() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T/B/x"),
            "https://hooks.slack.com/…"
        );
    }
}
