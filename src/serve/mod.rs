//! `batchguard serve` (SPEC §10): a read-only web dashboard and the
//! Prometheus metrics over the state store, in one process.
//!
//! - [`http`]: the server (a small synchronous `tiny_http` server with a
//!   few worker threads), routing, access rules (loopback, token, cookie),
//!   security headers; no endpoint changes anything.
//! - [`view`]: what the pages and the API show, gathered from the store
//!   ([`crate::store::dashboard::DashboardStore`]: index seeks only, so a
//!   page stays fast on 1,000,000 runs) and the configuration (reloaded when
//!   a file changes).
//! - [`pages`] and [`svg`]: server-rendered HTML with inline SVG charts;
//!   everything from a job or the store is escaped (terminal escapes and
//!   control characters made visible). The only script is `/assets/app.js`
//!   (copy button, local times), served from the binary like the CSS.
//! - [`api`]: the JSON API, in the shapes of `--format json`.
//! - [`metrics`]: `/metrics` and the node_exporter textfile written after
//!   every run ([`after_run`], called by the runner).
//!
//! Why no web framework, no JavaScript build and no CDN: the dashboard runs
//! on batch hosts, often air-gapped, next to root-owned state; a synchronous
//! server with no async runtime keeps the binary small and auditable, and
//! pages that need no script work in any browser (see docs/dashboard.md).

mod api;
mod http;
mod metrics;
mod pages;
mod svg;
mod view;

pub use metrics::{render as render_metrics, write_textfile};

use crate::error::{Error, Result};
use crate::store::StoreError;
use crate::store::dashboard::{self, DashboardStore};
use batchguard_config::{self as config, Global, Job};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What can stop `serve` from starting or the textfile from being written.
#[derive(thiserror::Error, Debug)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr}: it is not a loopback address, and without an access token anybody who reaches it reads job output; pass --token-env VAR with the token in VAR"
    )]
    NeedToken { addr: String },
    #[error("--token-env {var}: the variable is not set (or empty)")]
    TokenMissing { var: String },
    #[error("--token-env {var}: the token is too short; use at least 16 characters")]
    TokenShort { var: String },
    #[error("--listen `{addr}`: {detail}")]
    BadListen { addr: String, detail: String },
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
    #[error("the state store {0} does not exist (serve never creates one)")]
    NoStore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the metrics textfile {path}: {source}")]
    Textfile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<ServeError> for Error {
    fn from(e: ServeError) -> Error {
        match e {
            ServeError::Store(s) => Error::Store(s),
            ServeError::NoStore(_) => Error::Store(StoreError::Unsupported(e.to_string())),
            ServeError::Textfile { path, source } => Error::io("write", path, source),
            other => Error::Usage(other.to_string()),
        }
    }
}

/// `batchguard serve` options.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_dir: PathBuf,
    /// `--state` / `BATCHGUARD_STATE`.
    pub state: Option<String>,
    pub listen: String,
    /// The environment variable holding the access token.
    pub token_env: Option<String>,
}

/// `batchguard serve` as the command line gives it.
pub fn command(
    config_dir: &Path,
    state: Option<&str>,
    listen: &str,
    token_env: Option<&str>,
) -> Result<i32> {
    run(&Options {
        config_dir: config_dir.to_path_buf(),
        state: state.map(str::to_string),
        listen: listen.to_string(),
        token_env: token_env.map(str::to_string),
    })
}

/// Run the dashboard until SIGTERM or SIGINT; returns the exit code.
pub fn run(opts: &Options) -> Result<i32> {
    if !opts.config_dir.is_dir() {
        return Err(Error::NoConfigDir(opts.config_dir.clone()));
    }
    let global = config::load_global(&opts.config_dir)?;
    let url = opts
        .state
        .clone()
        .or_else(|| global.state.clone())
        .unwrap_or_else(|| config::DEFAULT_STATE.to_string());
    let token = match &opts.token_env {
        None => None,
        Some(var) => {
            let t = std::env::var(var).unwrap_or_default();
            if t.is_empty() {
                return Err(ServeError::TokenMissing { var: var.clone() }.into());
            }
            if t.len() < 16 {
                return Err(ServeError::TokenShort { var: var.clone() }.into());
            }
            Some(t)
        }
    };
    let addr = http::parse_listen(&opts.listen)?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::NeedToken {
            addr: opts.listen.clone(),
        }
        .into());
    }
    if let Some(path) = sqlite_path(&url) {
        if !path.exists() {
            return Err(ServeError::NoStore(path.display().to_string()).into());
        }
    }
    let store = dashboard::open_dashboard(&url).map_err(ServeError::from)?;
    // The re-run command names --state when the store did not come from
    // batchguard.toml and is not the default.
    let state_in_rerun = url != config::DEFAULT_STATE && global.state.as_deref() != Some(&url);
    let app = Arc::new(App {
        dir: opts.config_dir.clone(),
        state_shown: crate::store::postgres::redact_url(&url),
        state_in_rerun,
        store,
        token,
        fires: view::FireCache::default(),
        configs: Mutex::new(None),
        checked: Mutex::new(None),
    });
    // Load the configuration once now, so a broken job shows at start.
    let _ = app.configs();
    http::serve(app, addr, &opts.listen)
}

fn sqlite_path(url: &str) -> Option<PathBuf> {
    let p = url.strip_prefix("sqlite:")?;
    Some(PathBuf::from(p.strip_prefix("//").unwrap_or(p)))
}

/// The server's shared state.
pub(crate) struct App {
    pub dir: PathBuf,
    /// The state store URL, password removed.
    pub state_shown: String,
    pub state_in_rerun: bool,
    pub store: Box<dyn DashboardStore>,
    pub token: Option<String>,
    pub fires: view::FireCache,
    configs: Mutex<Option<Arc<Configs>>>,
    checked: Mutex<Option<std::time::Instant>>,
}

/// The configuration as last loaded: the global settings and every job
/// file (broken ones with their error, so they still show).
pub(crate) struct Configs {
    signature: Vec<(PathBuf, Option<SystemTime>, u64)>,
    pub global: Global,
    pub jobs: Vec<Job>,
    /// Job files that do not load: (name, error).
    pub broken: Vec<(String, String)>,
    index: std::collections::HashMap<String, usize>,
    modified: std::collections::HashMap<String, jiff::Timestamp>,
}

impl Configs {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.index.get(name).and_then(|&i| self.jobs.get(i))
    }

    /// When the job's file last changed (as of the last load).
    pub fn modified(&self, name: &str) -> Option<jiff::Timestamp> {
        self.modified.get(name).copied()
    }
}

fn signature(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let stat = |p: PathBuf| {
        let m = std::fs::metadata(&p).ok();
        let modified = m.as_ref().and_then(|m| m.modified().ok());
        let len = m.map_or(0, |m| m.len());
        (p, modified, len)
    };
    let mut sig = vec![stat(dir.join("batchguard.toml"))];
    sig.extend(job_files(dir).into_iter().map(stat));
    sig
}

/// The `.toml` files of `dir/jobs`, sorted.
fn job_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Every job file of `dir`, loaded leniently: a broken one is returned with
/// its error instead of hiding the others.
pub(crate) fn load_jobs(dir: &Path, global: &Global) -> (Vec<Job>, Vec<(String, String)>) {
    let names = job_files(dir);
    let (mut jobs, mut broken) = (Vec::new(), Vec::new());
    for path in names {
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        match config::load_job_file(&path, global) {
            Ok(job) => jobs.push(job),
            Err(e) => broken.push((name, e.to_string())),
        }
    }
    (jobs, broken)
}

impl App {
    /// The configuration, reloaded when a file changed since the last load.
    pub fn configs(&self) -> Arc<Configs> {
        let mut cache = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        // Files are looked at (one stat each) at most once a second.
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(c), Some(at)) = (cache.as_ref(), *checked) {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return c.clone();
            }
        }
        *checked = Some(std::time::Instant::now());
        drop(checked);
        let sig = signature(&self.dir);
        if let Some(c) = cache.as_ref().filter(|c| c.signature == sig) {
            return c.clone();
        }
        let global = match config::load_global(&self.dir) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("batchguard.toml does not load, keeping the last good one: {e}");
                cache.as_ref().map(|c| c.global.clone()).unwrap_or_default()
            }
        };
        let (jobs, broken) = load_jobs(&self.dir, &global);
        tracing::debug!(
            jobs = jobs.len(),
            broken = broken.len(),
            "configuration loaded"
        );
        let index = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.clone(), i))
            .collect();
        let by_path: std::collections::HashMap<&Path, SystemTime> = sig
            .iter()
            .filter_map(|(p, m, _)| Some((p.as_path(), (*m)?)))
            .collect();
        let modified = jobs
            .iter()
            .filter_map(|j| {
                let m = by_path.get(j.file.as_path())?;
                Some((j.name.clone(), jiff::Timestamp::try_from(*m).ok()?))
            })
            .collect();
        drop(by_path);
        let c = Arc::new(Configs {
            signature: sig,
            global,
            jobs,
            broken,
            index,
            modified,
        });
        *cache = Some(c.clone());
        c
    }
}

/// After a run (the CLI calls it once `runner::run` returns): when
/// `metrics_textfile` is set, write the metrics there. Failures are logged,
/// never fail the run.
pub fn after_run(ctx: &crate::exec::Context) {
    let Some(path) = &ctx.global.metrics_textfile else {
        return;
    };
    let res = (|| -> std::result::Result<(), ServeError> {
        let store = dashboard::open_dashboard(&ctx.state_url)?;
        // The configuration directory is where batchguard.toml (which set
        // metrics_textfile) lives.
        let jobs = match ctx.global.file.as_deref().and_then(Path::parent) {
            Some(dir) => load_jobs(dir, &ctx.global).0,
            None => Vec::new(),
        };
        write_textfile(store.as_ref(), &ctx.global, &jobs)
    })();
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), "metrics textfile not written: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::http::{Query, decode, encode, parse_listen, session_value};
    use super::pages::{esc, quote, read_log};

    #[test]
    fn escaping_makes_markup_and_controls_inert() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let e = esc("\u{1b}[31mred\u{1b}[0m\u{7}\u{0}\r\n\tok\u{9b}\u{202e}");
        assert_eq!(
            e,
            "\u{241b}[31mred\u{241b}[0m\u{2407}\u{2400}\n\tok\u{fffd}\u{fffd}"
        );
    }

    #[test]
    fn queries_and_paths_decode_or_fail() {
        let q = Query::parse("limit=5&before=01AB&x=a%20b+c&empty=").unwrap();
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(q.get("x"), Some("a b c"));
        assert_eq!(q.get("empty"), None);
        assert_eq!(q.num("limit", 1, 1, 10), Ok(5));
        assert!(q.num("limit", 1, 6, 10).is_err());
        assert!(q.num("x", 1, 1, 10).is_err());
        assert_eq!(q.num("missing", 7, 1, 10), Ok(7));
        assert!(Query::parse("a=%zz").is_none());
        assert!(Query::parse("a=%f").is_none());
        assert!(decode("%ff", false).is_none(), "not UTF-8");
        assert_eq!(decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(decode(&encode("a b/é"), false).as_deref(), Some("a b/é"));
    }

    #[test]
    fn listen_addresses() {
        assert!(parse_listen("127.0.0.1:8470").unwrap().ip().is_loopback());
        assert!(!parse_listen("0.0.0.0:8470").unwrap().ip().is_loopback());
        assert!(parse_listen("[::1]:8470").unwrap().ip().is_loopback());
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn sessions_depend_on_the_token_and_never_contain_it() {
        let a = session_value("token-aaaaaaaaaaaaaaaa");
        assert_eq!(a.len(), 64);
        assert_eq!(a, session_value("token-aaaaaaaaaaaaaaaa"));
        assert_ne!(a, session_value("token-bbbbbbbbbbbbbbbb"));
        assert!(!a.contains("token"));
    }

    #[test]
    fn quoting_for_the_rerun_command() {
        assert_eq!(quote("date=2026-11-30"), "date=2026-11-30");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn log_pages_end_at_line_breaks_and_tails_start_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let first = read_log(&p, Some(0), 25).unwrap();
        assert_eq!(first.text, "line 000\nline 001\n");
        assert_eq!(first.next_offset, 18);
        let mut all = String::new();
        let mut off = 0;
        while off < first.size {
            let c = read_log(&p, Some(off), 64).unwrap();
            all.push_str(&c.text);
            off = c.next_offset;
        }
        assert_eq!(all, text);
        let tail = read_log(&p, None, 25).unwrap();
        assert_eq!(tail.text, "line 098\nline 099\n");
        let beyond = read_log(&p, Some(10_000), 25).unwrap();
        assert_eq!(beyond.text, "");
    }
}
