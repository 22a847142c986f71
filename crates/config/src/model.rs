//! The resolved configuration types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::parse::PJob;
use crate::units::Rate;

/// The whole configuration directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration directory (`--config-dir`).
    pub dir: PathBuf,
    /// `DIR/batchguard.toml` (defaults when the file is absent).
    pub global: Global,
    /// `DIR/jobs/*.toml`, by job name.
    pub jobs: BTreeMap<String, Job>,
}

/// Global settings (`batchguard.toml`).
#[derive(Debug, Clone)]
pub struct Global {
    /// The file these settings came from, if it existed.
    pub file: Option<PathBuf>,
    /// State store URL (`sqlite:PATH` or `postgres://…`), if set in the file.
    pub state: Option<String>,
    /// Directory of run logs (absolute). Default `/var/log/batchguard`.
    pub log_dir: PathBuf,
    /// Host label for notifications (default: the hostname, decided by the caller).
    pub host: Option<String>,
    pub dashboard_url: Option<String>,
    /// `[defaults]`: defaults for any job key.
    pub defaults: Defaults,
    pub channels: BTreeMap<String, Channel>,
    /// `log_max`: size cap of one run log. Default 64MiB.
    pub log_max_bytes: u64,
    /// `log_retention`: how long run logs are kept. Default 30d.
    pub log_retention: Duration,
    /// `notify_digest`: while a job keeps failing, at most one digest per
    /// this interval after the first failure's notification. Default 1h.
    pub notify_digest: Duration,
    /// `missed_grace`: how long after a scheduled fire time a run may start
    /// before the watchdog raises `missed`. Default 5m.
    pub missed_grace: Duration,
    /// `lease`: lock lease duration. Default 30s.
    pub lease: Duration,
    /// `artifact_dir` (absolute), if set.
    pub artifact_dir: Option<PathBuf>,
    /// `metrics_textfile` (absolute): where the Prometheus metrics are
    /// written after every run, for node_exporter (SPEC §10).
    pub metrics_textfile: Option<PathBuf>,
}

/// Default state store when neither `--state`, `BATCHGUARD_STATE` nor `state` is set.
/// `items.max_keys` when not set.
pub const DEFAULT_MAX_KEYS: u64 = 10_000_000;

pub const DEFAULT_STATE: &str = "sqlite:/var/lib/batchguard/state.db";
/// Default `log_dir`.
pub const DEFAULT_LOG_DIR: &str = "/var/log/batchguard";

impl Default for Global {
    fn default() -> Self {
        Global {
            file: None,
            state: None,
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            host: None,
            dashboard_url: None,
            defaults: Defaults::default(),
            channels: BTreeMap::new(),
            log_max_bytes: 64 << 20,
            log_retention: Duration::from_secs(30 * 86_400),
            notify_digest: Duration::from_secs(3600),
            missed_grace: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            artifact_dir: None,
            metrics_textfile: None,
        }
    }
}

/// The validated `[defaults]` table of `batchguard.toml`. It keeps the
/// source positions so that errors found when it is merged into a job still
/// point into `batchguard.toml`.
#[derive(Debug, Clone, Default)]
pub struct Defaults(pub(crate) PJob);

impl Defaults {
    /// Whether `[defaults]` sets nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// Written in the file.
    Literal(String),
    /// Read from this environment variable at send time.
    Env(String),
}

/// A notification channel (`[channels.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Slack {
        url: UrlSource,
    },
    Webhook {
        url: UrlSource,
        secret_env: Option<String>,
    },
    Email {
        /// `smtp://host[:port]` or `smtps://host[:port]`.
        smtp: String,
        from: String,
        to: Vec<String>,
        username_env: Option<String>,
        password_env: Option<String>,
    },
    Command {
        command: Vec<String>,
    },
    Ping {
        url: UrlSource,
    },
}

impl Channel {
    /// The `type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Slack { .. } => "slack",
            Channel::Webhook { .. } => "webhook",
            Channel::Email { .. } => "email",
            Channel::Command { .. } => "command",
            Channel::Ping { .. } => "ping",
        }
    }

    /// The environment variables the channel reads when it sends, each with
    /// the key that names it (`url_env`, `secret_env`, `username_env`,
    /// `password_env`).
    pub fn env_vars(&self) -> Vec<(&'static str, &str)> {
        fn url(u: &UrlSource) -> Option<(&'static str, &str)> {
            match u {
                UrlSource::Env(name) => Some(("url_env", name.as_str())),
                UrlSource::Literal(_) => None,
            }
        }
        fn named<'a>(key: &'static str, v: &'a Option<String>) -> Option<(&'static str, &'a str)> {
            v.as_deref().map(|v| (key, v))
        }
        match self {
            Channel::Slack { url: u } | Channel::Ping { url: u } => url(u).into_iter().collect(),
            Channel::Webhook { url: u, secret_env } => url(u)
                .into_iter()
                .chain(named("secret_env", secret_env))
                .collect(),
            Channel::Email {
                username_env,
                password_env,
                ..
            } => named("username_env", username_env)
                .into_iter()
                .chain(named("password_env", password_env))
                .collect(),
            Channel::Command { .. } => Vec::new(),
        }
    }
}

impl Job {
    /// The argv that starts the job's processes: `command`, or for a
    /// per-item job without one, `items.run` (empty when neither is set).
    pub fn program_argv(&self) -> &[String] {
        if !self.command.is_empty() {
            return &self.command;
        }
        self.items
            .as_ref()
            .and_then(|i| i.run.as_deref())
            .unwrap_or(&[])
    }
}

/// A job, resolved: `[defaults]` applied, paths absolute, everything validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    /// The job file (empty for `exec`).
    pub file: PathBuf,
    pub description: Option<String>,
    /// argv; each element is a template (see [`crate::template`]). Empty
    /// for a per-item job without one (it runs `items.run` per key).
    pub command: Vec<String>,
    /// Absolute. Default `/`.
    pub workdir: PathBuf,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Absolute.
    pub env_file: Option<PathBuf>,
    pub secrets: Vec<String>,
    /// 5-field cron expression or `@hourly`-style nickname, as written.
    pub schedule: Option<String>,
    /// IANA time zone name.
    pub timezone: Option<String>,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub expected_duration: Option<Duration>,
    pub memory_max: Option<u64>,
    pub concurrency: Concurrency,
    pub lock: String,
    pub retries: u32,
    pub retry_delay: Duration,
    /// Param defaults (values may use built-in templates).
    pub params: BTreeMap<String, String>,
    pub items: Option<Items>,
    pub notify: Notify,
    pub runbook: Runbook,
    pub guideline: Guideline,
    pub distributed: Distributed,
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The spelling used in configuration files.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),+ } }
            /// Every spelling.
            pub fn names() -> Vec<&'static str> { Self::ALL.iter().map(|v| v.as_str()).collect() }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$v),)+ _ => Err(format!(
                    "`{}` is not one of {}", s, Self::names().join(", "))) }
            }
        }
    };
}

str_enum!(
    /// What to do when the job's lock is held.
    #[derive(Default)]
    Concurrency { #[default] Forbid = "forbid", Replace = "replace", Allow = "allow" }
);
str_enum!(
    /// How items are processed.
    #[derive(Default)]
    ItemsMode { #[default] PerItem = "per-item", Stream = "stream" }
);
str_enum!(
    /// Notification events.
    Event {
        Failure = "failure", Timeout = "timeout", Oom = "oom", Lost = "lost", Fenced = "fenced",
        Skipped = "skipped", Overrun = "overrun", Missed = "missed", Recovered = "recovered",
    }
);
str_enum!(
    /// Where the job reads from (G04).
    Reads { Replica = "replica", Primary = "primary", None = "none" }
);

/// Events notified when `notify.on` is not set.
pub const DEFAULT_EVENTS: &[Event] = &[
    Event::Failure,
    Event::Timeout,
    Event::Oom,
    Event::Lost,
    Event::Overrun,
    Event::Missed,
    Event::Recovered,
];

/// `[items]` (SPEC §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Items {
    /// Command printing one key per line (templates). Exactly one of
    /// `source` and `source_file` is set.
    pub source: Option<Vec<String>>,
    /// File with one key per line (absolute; relative paths resolve against `workdir`).
    pub source_file: Option<PathBuf>,
    /// Per-item command (templates, `{item}` allowed). Set iff `mode` is per-item.
    pub run: Option<Vec<String>>,
    pub mode: ItemsMode,
    /// Ledger scope (template).
    pub scope: Option<String>,
    pub parallelism: u32,
    pub rate: Option<Rate>,
    pub max_attempts: u32,
    pub item_timeout: Option<Duration>,
    /// The most keys a source may produce (SPEC §11): more fails the run
    /// before any work.
    pub max_keys: u64,
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub on: Vec<Event>,
    /// Names of global channels (all exist).
    pub channels: Vec<String>,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            on: DEFAULT_EVENTS.to_vec(),
            channels: Vec::new(),
        }
    }
}

/// `[runbook]`; each field is a template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runbook {
    pub url: Option<String>,
    pub verify: Option<String>,
    pub notes: Option<String>,
}

/// `guideline.schema_change`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    /// `false`: the job changes no schema.
    No,
    /// `true`: it does, and no review is declared (fails `check`, G12).
    Unreviewed,
    /// `{ reviewed_by = [...], ref = "..." }`.
    Reviewed {
        reviewed_by: Vec<String>,
        reference: Option<String>,
    },
}

/// `[guideline]`: declarations that `check` audits. `None` = not declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guideline {
    pub reads: Option<Reads>,
    pub replica_dsn_env: Option<String>,
    pub max_replica_lag: Option<Duration>,
    pub expected_items: Option<u64>,
    pub write_impact: Option<String>,
    pub schema_change: Option<SchemaChange>,
    /// Why `concurrency = "allow"` is safe (G07).
    pub overlap_safe: Option<String>,
    /// Declared clean step, an argv (G06).
    pub clean: Option<Vec<String>>,
    /// Why this host's role is acceptable for batches (G01).
    pub role_ok: Option<String>,
}

/// `[distributed]` (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distributed {
    pub enabled: bool,
    pub batch: u32,
    pub lease: Duration,
}

impl Default for Distributed {
    fn default() -> Self {
        Distributed {
            enabled: false,
            batch: 100,
            lease: Duration::from_secs(60),
        }
    }
}
