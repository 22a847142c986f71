//! The HTTP side: a `tiny_http` server with a few worker threads, the
//! routes, the access rules and the security headers.
//!
//! Access (SPEC §10): GET and HEAD only (plus `POST /login`, which sets a
//! cookie and changes nothing else); everything else is 405. With a token
//! (`--token-env`), every route but `/login` and `/assets/` needs either
//! `Authorization: Bearer TOKEN` or the session cookie the login form sets
//! (an HMAC of the token, so the server keeps no session state and the
//! token itself is never stored in the browser). Without a token `serve`
//! only listens on loopback, and then it also refuses requests whose `Host`
//! is not a loopback name, so a web page the viewer opens cannot read the
//! dashboard through DNS rebinding.

use super::{App, ServeError, api, pages};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

const WORKERS: usize = 4;
const COOKIE: &str = "batchguard_session";
const MAX_FORM: usize = 4096;

/// A response before it is sent.
pub struct Resp {
    pub status: u16,
    pub ctype: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Resp {
    pub fn html(status: u16, body: String) -> Resp {
        Resp {
            status,
            ctype: "text/html; charset=utf-8",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn json(status: u16, v: &impl serde::Serialize) -> Resp {
        let body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"null".to_vec());
        Resp {
            status,
            ctype: "application/json",
            body,
            headers: Vec::new(),
        }
    }
    pub fn text(status: u16, ctype: &'static str, body: String) -> Resp {
        Resp {
            status,
            ctype,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn redirect(location: &str) -> Resp {
        let mut r = Resp::text(303, "text/plain; charset=utf-8", String::new());
        r.headers.push(("Location", location.to_string()));
        r
    }
    pub fn header(mut self, name: &'static str, value: String) -> Resp {
        self.headers.push((name, value));
        self
    }
}

/// An error answer: JSON for the API, a page for the rest.
pub fn error(api: bool, status: u16, msg: &str) -> Resp {
    if api {
        Resp::json(status, &serde_json::json!({ "error": msg }))
    } else {
        Resp::html(status, pages::error_page(status, msg))
    }
}

/// The query string, decoded.
#[derive(Default, Debug)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: &str) -> Option<Query> {
        let mut out = Vec::new();
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.push((decode(k, true)?, decode(v, true)?));
        }
        Some(Query(out))
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    /// A number parameter in `lo..=hi`; `Err` names the parameter.
    pub fn num(&self, k: &str, default: u64, lo: u64, hi: u64) -> Result<u64, String> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("`{k}` must be a whole number from {lo} to {hi}")),
        }
    }
}

/// Percent-decoding (and `+` as space in query strings); `None` for bad
/// escapes or bytes that are not UTF-8.
pub fn decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encoding for a query value or path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `--listen HOST:PORT` (one address; names are resolved).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ServeError> {
    let bad = |detail: String| ServeError::BadListen {
        addr: s.to_string(),
        detail,
    };
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| bad(format!("{e} (write HOST:PORT, e.g. 127.0.0.1:8470)")))?;
    addrs
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's value: HMAC-SHA256 of a fixed text under the token.
pub fn session_value(token: &str) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(b"batchguard serve session v1");
    hex::encode(mac.finalize().into_bytes())
}

/// What a request carries that the routes need.
pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub host: Option<&'a str>,
    /// The body of `POST /login` (at most [`MAX_FORM`] bytes).
    pub form: Option<&'a str>,
}

fn authorized(app: &App, req: &Req<'_>) -> bool {
    let Some(token) = &app.token else {
        return true;
    };
    if let Some(b) = req.authorization.and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    }) {
        if ct_eq(b.trim().as_bytes(), token.as_bytes()) {
            return true;
        }
    }
    let want = session_value(token);
    req.cookie.is_some_and(|c| {
        c.split(';').any(|kv| {
            kv.trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
                .is_some_and(|v| ct_eq(v.as_bytes(), want.as_bytes()))
        })
    })
}

/// Without a token, only loopback host names (DNS rebinding guard).
fn host_allowed(app: &App, host: Option<&str>) -> bool {
    if app.token.is_some() {
        return true;
    }
    let Some(host) = host else {
        return true; // HTTP/1.0 clients send none; the socket is loopback
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn login(app: &App, form: &str) -> Resp {
    let Some(token) = &app.token else {
        return Resp::redirect("/");
    };
    let given = Query::parse(form)
        .and_then(|q| q.get("token").map(str::to_string))
        .unwrap_or_default();
    if ct_eq(given.as_bytes(), token.as_bytes()) {
        Resp::redirect("/").header(
            "Set-Cookie",
            format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
                session_value(token)
            ),
        )
    } else {
        tracing::warn!("login with a wrong token");
        Resp::html(401, pages::login_page(true))
    }
}

/// Answer one request. Never panics on any input.
pub fn route(app: &App, req: &Req<'_>) -> Resp {
    let is_api = req.path.starts_with("/api/") || req.path == "/metrics";
    if !host_allowed(app, req.host) {
        return error(
            is_api,
            403,
            "this dashboard answers loopback host names only (it has no access token)",
        );
    }
    if req.method == "POST" && req.path == "/login" {
        return login(app, req.form.unwrap_or(""));
    }
    if req.method != "GET" && req.method != "HEAD" {
        return error(is_api, 405, "the dashboard is read-only: GET only")
            .header("Allow", "GET, HEAD".into());
    }
    match req.path {
        "/assets/app.css" => {
            return Resp::text(200, "text/css; charset=utf-8", pages::CSS.into())
                .header("Cache-Control", "max-age=3600".into());
        }
        "/assets/app.js" => {
            return Resp::text(200, "text/javascript; charset=utf-8", pages::JS.into())
                .header("Cache-Control", "max-age=3600".into());
        }
        "/login" => return Resp::html(200, pages::login_page(false)),
        // Browsers ask for it on every page; there is none.
        "/favicon.ico" => return Resp::text(204, "image/x-icon", String::new()),
        "/logout" => {
            return Resp::redirect("/login").header(
                "Set-Cookie",
                format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            );
        }
        _ => {}
    }
    if !authorized(app, req) {
        let r = if is_api {
            error(true, 401, "access token required (Authorization: Bearer …)")
        } else {
            Resp::html(401, pages::login_page(false))
        };
        return r.header("WWW-Authenticate", "Bearer realm=\"batchguard\"".into());
    }
    let Some(query) = Query::parse(req.query) else {
        return error(is_api, 400, "malformed query string");
    };
    let Some(segs) = req
        .path
        .split('/')
        .skip(1)
        .map(|s| decode(s, false))
        .collect::<Option<Vec<String>>>()
    else {
        return error(is_api, 400, "malformed path");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let res = match segs.as_slice() {
        [""] => pages::jobs(app, &query),
        ["jobs", name] => pages::job(app, name, &query),
        ["runs", id] => pages::run(app, id, &query),
        ["timeline"] => pages::timeline(app, &query),
        ["metrics"] => api::metrics(app),
        ["api", "jobs"] => api::jobs(app, &query),
        ["api", "jobs", name] => api::job(app, name, &query),
        ["api", "jobs", name, "runs"] => api::runs(app, name, &query),
        ["api", "runs", id] => api::run(app, id),
        ["api", "runs", id, "log"] => api::log(app, id, &query),
        _ => Err(Fail::NotFound(format!("no page {}", req.path))),
    };
    match res {
        Ok(r) => r,
        Err(Fail::NotFound(m)) => error(is_api, 404, &m),
        Err(Fail::Bad(m)) => error(is_api, 400, &m),
        Err(Fail::Store(e)) => {
            tracing::error!("{} {}: {e}", req.method, req.path);
            error(is_api, 503, &format!("state store: {e}"))
        }
    }
}

/// Why a route gave no answer of its own.
pub enum Fail {
    NotFound(String),
    Bad(String),
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Fail {
    fn from(e: crate::store::StoreError) -> Fail {
        Fail::Store(e)
    }
}

pub type RouteResult = Result<Resp, Fail>;

const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
];

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn handle(app: &App, mut request: tiny_http::Request) {
    let start = Instant::now();
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let find = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let (authorization, cookie, host) = (find("Authorization"), find("Cookie"), find("Host"));
    let mut form = None;
    if method == "POST" && path == "/login" {
        use std::io::Read;
        let mut buf = Vec::new();
        let _ = request
            .as_reader()
            .take(MAX_FORM as u64)
            .read_to_end(&mut buf);
        form = Some(String::from_utf8_lossy(&buf).into_owned());
    }
    let req = Req {
        method: &method,
        path,
        query,
        authorization: authorization.as_deref(),
        cookie: cookie.as_deref(),
        host: host.as_deref(),
        form: form.as_deref(),
    };
    let resp = route(app, &req);
    tracing::debug!(
        method = %method,
        path = %path,
        status = resp.status,
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    let status = resp.status;
    let mut out = tiny_http::Response::from_data(resp.body).with_status_code(status);
    let mut headers: Vec<(&str, String)> = vec![("Content-Type", resp.ctype.to_string())];
    headers.extend(SECURITY_HEADERS.iter().map(|(k, v)| (*k, v.to_string())));
    if !resp.headers.iter().any(|(k, _)| *k == "Cache-Control") {
        headers.push(("Cache-Control", "no-store".into()));
    }
    headers.extend(resp.headers);
    headers.push((
        "Server-Timing",
        format!("app;dur={:.2}", start.elapsed().as_secs_f64() * 1000.0),
    ));
    for (k, v) in headers {
        if let Some(h) = header(k, &v) {
            out.add_header(h);
        }
    }
    if let Err(e) = request.respond(out) {
        tracing::debug!("response not sent: {e}");
    }
}

/// Serve until SIGTERM or SIGINT.
pub fn serve(app: Arc<App>, addr: SocketAddr, shown: &str) -> crate::error::Result<i32> {
    let server = tiny_http::Server::http(addr).map_err(|e| ServeError::Listen {
        addr: shown.to_string(),
        detail: e.to_string(),
    })?;
    let server = Arc::new(server);
    let local = server
        .server_addr()
        .to_ip()
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    eprintln!(
        "batchguard serve: listening on http://{local}/ ({})",
        if app.token.is_some() {
            "access token required"
        } else {
            "loopback only, no token"
        }
    );
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| crate::error::Error::io("install signal handlers for", "serve", e))?;
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let (server, app) = (server.clone(), app.clone());
            s.spawn(move || {
                while let Ok(req) = server.recv() {
                    handle(&app, req);
                }
            });
        }
        if let Some(sig) = signals.forever().next() {
            tracing::debug!(sig, "stopping");
        }
        for _ in 0..WORKERS {
            server.unblock();
        }
    });
    eprintln!("batchguard serve: stopped");
    Ok(crate::exit::OK)
}
