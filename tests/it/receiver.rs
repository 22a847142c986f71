//! Real receivers on loopback for notification tests: a small HTTP/1.1
//! server that records every request, and an SMTP server (Python's aiosmtpd)
//! that stores every mail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// An HTTP receiver on 127.0.0.1 that answers `status` to every request.
pub struct Http {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Http {
    pub fn start() -> Http {
        Http::start_on(0)
    }

    pub fn start_on(port: u16) -> Http {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st, sp) = (requests.clone(), status.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let Some(req) = read_request(&stream) {
                            let code = st.load(Ordering::SeqCst);
                            let mut s = stream;
                            let _ = write!(
                                s,
                                "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                            );
                            r.lock().unwrap().push(req);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Http {
            port,
            requests,
            status,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    /// The `event` of each request received since the last take.
    pub fn take_events(&self) -> Vec<String> {
        self.take()
            .iter()
            .map(|r| r.json()["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Wait up to `secs` seconds for the first request (`what` names it).
    pub fn wait_for_one(&self, what: &str, secs: u64) {
        crate::support::wait_for(what, Duration::from_secs(secs), || self.count() >= 1);
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Start an HTTP receiver and configure it as the webhook channel `hook`
/// (after `extra` global settings, e.g. `notify_digest = "1s"\n`).
pub fn webhook_receiver(env: &crate::harness::Env, extra: &str) -> Http {
    let hook = Http::start();
    env.global(&format!(
        "{extra}[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"",
        hook.url("/")
    ));
    hook
}

/// A fresh test environment whose webhook channel `hook` posts to a new
/// receiver (after `extra` global settings).
pub fn hooked_env(extra: &str) -> (crate::harness::Env, Http) {
    let env = crate::harness::Env::new();
    let hook = webhook_receiver(&env, extra);
    (env, hook)
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An SMTP server on loopback (aiosmtpd) writing each message to a file.
pub struct Smtp {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Smtp {
    /// `None` when aiosmtpd is not installed (CI installs it).
    pub fn start(dir: PathBuf) -> Option<Smtp> {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // In CI a missing server is a broken setup, not a reason to skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "aiosmtpd is not installed (.ci/run installs it with pip)"
            );
            return None;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let script = format!(
            r#"
import asyncio, sys, time, pathlib
from aiosmtpd.controller import Controller
class H:
    async def handle_DATA(self, server, session, envelope):
        p = pathlib.Path({dir:?}) / ("%d.eml" % time.monotonic_ns())
        p.write_bytes(envelope.content)
        return "250 OK"
c = Controller(H(), hostname="127.0.0.1", port={port})
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#,
            dir = dir.display().to_string()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut out = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        out.read_line(&mut line).ok()?;
        assert_eq!(line.trim(), "ready");
        Some(Smtp { port, dir, child })
    }

    pub fn mails(&self) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v.iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
