//! Walking the TOML trees (with spans) into partial values, merging
//! `[defaults]`, and resolving/validating jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{At, Diagnostic, Source};
use crate::model::*;
use crate::template;
use crate::units::{Rate, parse_duration, parse_rate, parse_size};

type Val<'i> = Spanned<DeValue<'i>>;

/// A value with the place it was written.
#[derive(Clone, Debug)]
pub(crate) struct Sp<T> {
    pub v: T,
    pub at: At,
}

type Opt<T> = Option<Sp<T>>;
type Strings = Sp<Vec<Sp<String>>>;

/// A job as written (in a job file or in `[defaults]`): every key optional.
#[derive(Clone, Debug, Default)]
pub(crate) struct PJob {
    any: bool,
    description: Opt<String>,
    command: Option<Strings>,
    workdir: Opt<String>,
    user: Opt<String>,
    env: BTreeMap<String, Sp<String>>,
    env_file: Opt<String>,
    secrets: Option<Strings>,
    schedule: Opt<String>,
    timezone: Opt<String>,
    timeout: Opt<Duration>,
    kill_grace: Opt<Duration>,
    expected_duration: Opt<Duration>,
    memory_max: Opt<u64>,
    concurrency: Opt<Concurrency>,
    lock: Opt<String>,
    retries: Opt<u32>,
    retry_delay: Opt<Duration>,
    params: BTreeMap<String, Sp<String>>,
    items: PItems,
    notify: PNotify,
    runbook: PRunbook,
    guideline: PGuideline,
    distributed: PDistributed,
    /// Keys (relative, e.g. `items.run`) that had an error: no follow-up
    /// "missing" errors for them.
    bad: BTreeSet<String>,
}

impl PJob {
    pub fn is_empty(&self) -> bool {
        !self.any
    }
}

#[derive(Clone, Debug, Default)]
struct PItems {
    table: Option<At>,
    source: Option<Strings>,
    source_file: Opt<String>,
    run: Option<Strings>,
    mode: Opt<ItemsMode>,
    scope: Opt<String>,
    parallelism: Opt<u32>,
    rate: Opt<Rate>,
    max_attempts: Opt<u32>,
    item_timeout: Opt<Duration>,
    max_keys: Opt<u64>,
}

#[derive(Clone, Debug, Default)]
struct PNotify {
    on: Opt<Vec<Event>>,
    channels: Option<Strings>,
}

#[derive(Clone, Debug, Default)]
struct PRunbook {
    url: Opt<String>,
    verify: Opt<String>,
    notes: Opt<String>,
}

#[derive(Clone, Debug, Default)]
struct PGuideline {
    reads: Opt<Reads>,
    replica_dsn_env: Opt<String>,
    max_replica_lag: Opt<Duration>,
    expected_items: Opt<u64>,
    write_impact: Opt<String>,
    schema_change: Opt<SchemaChange>,
    overlap_safe: Opt<String>,
    clean: Option<Strings>,
    role_ok: Opt<String>,
}

#[derive(Clone, Debug, Default)]
struct PDistributed {
    enabled: Opt<bool>,
    batch: Opt<u32>,
    lease: Opt<Duration>,
}

pub const JOB_KEYS: &[&str] = &[
    "description",
    "command",
    "workdir",
    "user",
    "env",
    "env_file",
    "secrets",
    "schedule",
    "timezone",
    "timeout",
    "kill_grace",
    "expected_duration",
    "memory_max",
    "concurrency",
    "lock",
    "retries",
    "retry_delay",
    "params",
    "items",
    "notify",
    "runbook",
    "guideline",
    "distributed",
];
pub const ITEMS_KEYS: &[&str] = &[
    "source",
    "source_file",
    "run",
    "mode",
    "scope",
    "parallelism",
    "rate",
    "max_attempts",
    "item_timeout",
    "max_keys",
];
pub const NOTIFY_KEYS: &[&str] = &["on", "channels"];
pub const RUNBOOK_KEYS: &[&str] = &["url", "verify", "notes"];
pub const GUIDELINE_KEYS: &[&str] = &[
    "reads",
    "replica_dsn_env",
    "max_replica_lag",
    "expected_items",
    "write_impact",
    "schema_change",
    "overlap_safe",
    "clean",
    "role_ok",
];
pub const DISTRIBUTED_KEYS: &[&str] = &["enabled", "batch", "lease"];
pub const GLOBAL_KEYS: &[&str] = &[
    "state",
    "log_dir",
    "host",
    "dashboard_url",
    "defaults",
    "channels",
    "log_max",
    "log_retention",
    "lease",
    "artifact_dir",
    "notify_digest",
    "missed_grace",
    "metrics_textfile",
];
pub const CHANNEL_TYPES: &[&str] = &["slack", "webhook", "email", "command", "ping"];

const G10_HELP: &str = "rule G10: logs and artifacts are never written under a personal home; use /var/log/batchguard or /srv/…";

// ---------------------------------------------------------------------------
// helpers

/// The closest candidate to `key`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Among the close candidates, the fewest edits wins; ties go to the
    // higher Jaro-Winkler similarity.
    let mut best: Option<(&str, usize, f64)> = None;
    for c in candidates {
        let jw = strsim::jaro_winkler(key, c);
        let dl = strsim::damerau_levenshtein(key, c);
        let longest = key.chars().count().max(c.chars().count());
        let close = jw >= 0.82 || (dl <= 2 && dl * 3 <= longest);
        if close && best.is_none_or(|(_, d, s)| dl < d || (dl == d && jw > s)) {
            best = Some((c, dl, jw));
        }
    }
    best.map(|(c, _, _)| c)
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && s.len() <= 255
}

fn is_secret_like(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.ends_with("_env")
        && [
            "secret",
            "password",
            "passwd",
            "token",
            "api_key",
            "apikey",
            "credential",
        ]
        .iter()
        .any(|w| k.contains(w))
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn quote_list(v: &[&str]) -> String {
    v.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn int_of(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok(),
        _ => None,
    }
}

/// Makes `p` absolute against `base` and removes `.` and `..` lexically.
pub(crate) fn normalize(p: &Path, base: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The invoking user's home from `$HOME`, when set, absolute and not `/`.
pub(crate) fn current_home() -> Option<PathBuf> {
    let h = std::env::var_os("HOME")?;
    let h = PathBuf::from(h);
    if !h.is_absolute() {
        return None;
    }
    let h = normalize(&h, Path::new("/"));
    (h != Path::new("/")).then_some(h)
}

/// Whether absolute, normalised `p` lies under `/home/*`, `/root` or
/// `home`, as written or with its symlinks resolved (SPEC §1: a link into a
/// home does not get around G10).
pub(crate) fn under_personal_home(p: &Path, home: Option<&Path>) -> bool {
    lexically_under_home(p, home) || resolved(p).is_some_and(|r| lexically_under_home(&r, home))
}

/// Directories the system owns, where job output must never be written.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/proc", "/sys", "/dev",
];

/// The system directory `p` lies in, as written or with its symlinks
/// resolved (a `log_dir` linked to /etc would write into /etc).
fn system_dir(p: &Path) -> Option<&'static str> {
    let hit = |q: &Path| SYSTEM_DIRS.iter().copied().find(|d| q.starts_with(d));
    hit(p).or_else(|| resolved(p).and_then(|r| hit(&r)))
}

/// `p` with the symlinks of its longest existing prefix resolved.
fn resolved(p: &Path) -> Option<PathBuf> {
    let mut existing = p;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return Some(out);
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?;
    }
}

fn lexically_under_home(p: &Path, home: Option<&Path>) -> bool {
    let mut comps = p.components().filter(|c| matches!(c, Component::Normal(_)));
    let first = comps.next().map(|c| c.as_os_str().to_os_string());
    let second = comps.next();
    match first.as_deref().and_then(|s| s.to_str()) {
        Some("root") => return true,
        Some("home") if second.is_some() => return true,
        _ => {}
    }
    home.is_some_and(|h| p.starts_with(h))
}

// ---------------------------------------------------------------------------
// the walker

/// The entries of table `t` under `prefix`: (key, `prefix.key`, the key as
/// written, the value).
fn entries<'a, 'i>(
    t: &'a DeTable<'i>,
    prefix: &'a str,
) -> impl Iterator<
    Item = (
        &'a str,
        String,
        &'a Spanned<std::borrow::Cow<'i, str>>,
        &'a Val<'i>,
    ),
> {
    t.iter().map(move |(k, v)| {
        let name: &str = k.get_ref();
        (name, format!("{prefix}.{name}"), k, v)
    })
}

pub(crate) struct W {
    src: Arc<Source>,
    prefix: String,
    pub errs: Vec<Diagnostic>,
    bad: BTreeSet<String>,
}

impl W {
    pub fn new(src: &Arc<Source>, prefix: &str) -> W {
        W {
            src: src.clone(),
            prefix: prefix.to_string(),
            errs: Vec::new(),
            bad: BTreeSet::new(),
        }
    }

    fn at(&self, span: Range<usize>) -> At {
        At::new(&self.src, span)
    }

    fn full(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn err(&mut self, span: Range<usize>, rel: &str, msg: String, help: Option<String>) {
        self.bad.insert(rel.to_string());
        let full = self.full(rel);
        let d = self.at(span).diag(Some(&full), msg, help);
        self.errs.push(d);
    }

    /// [`Self::err`], for a value that yields nothing.
    fn reject<T>(
        &mut self,
        span: Range<usize>,
        rel: &str,
        msg: String,
        help: Option<String>,
    ) -> Option<T> {
        self.err(span, rel, msg, help);
        None
    }

    fn wrong_type(&mut self, v: &Val<'_>, rel: &str, expected: &str, help: Option<String>) {
        let msg = format!(
            "wrong type for `{}`: expected {expected}, found {}",
            self.full(rel),
            v.get_ref().type_str()
        );
        self.err(v.span(), rel, msg, help);
    }

    fn unknown(&mut self, kspan: Range<usize>, rel: &str, key: &str, allowed: &[&str]) {
        let full = self.full(rel);
        let help = if is_secret_like(key) {
            let env_key = format!("{key}_env");
            if allowed.contains(&env_key.as_str()) {
                format!(
                    "secrets are never written in the file: put it in an environment variable and write `{env_key} = \"VAR_NAME\"`"
                )
            } else {
                format!(
                    "secrets are never written in the file: pass them through the environment (a `*_env` key naming the variable); valid keys here: {}",
                    quote_list(allowed)
                )
            }
        } else if let Some(c) = closest(key, allowed) {
            format!("did you mean `{c}`?")
        } else {
            format!("valid keys here: {}", quote_list(allowed))
        };
        self.err(kspan, rel, format!("unknown key `{full}`"), Some(help));
    }

    fn table<'a, 'i>(&mut self, v: &'a Val<'i>, rel: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(
                    v,
                    rel,
                    "a table",
                    Some(format!(
                        "write it as a section `[{}]` with keys below it",
                        self.full(rel)
                    )),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        match v.get_ref() {
            DeValue::String(s) => {
                if s.contains('\0') {
                    let msg = format!("`{}` must not contain a NUL character", self.full(rel));
                    return self.reject(v.span(), rel, msg, None);
                }
                Some(Sp {
                    v: s.to_string(),
                    at: self.at(v.span()),
                })
            }
            _ => {
                self.wrong_type(
                    v,
                    rel,
                    "a string",
                    Some(format!("write {} = \"…\"", self.full(rel))),
                );
                None
            }
        }
    }

    fn nonempty(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        let s = self.string(v, rel)?;
        if s.v.trim().is_empty() {
            let msg = format!("`{}` must not be empty", self.full(rel));
            return self.reject(v.span(), rel, msg, None);
        }
        Some(s)
    }

    fn strings(
        &mut self,
        v: &Val<'_>,
        rel: &str,
        nonempty: bool,
        example: &str,
    ) -> Option<Strings> {
        let DeValue::Array(a) = v.get_ref() else {
            let help = format!("write {} = {example}", self.full(rel));
            self.wrong_type(v, rel, "an array of strings", Some(help));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, e) in a.iter().enumerate() {
            match e.get_ref() {
                DeValue::String(s) if !s.contains('\0') => out.push(Sp {
                    v: s.to_string(),
                    at: self.at(e.span()),
                }),
                DeValue::String(_) => {
                    let msg = format!("`{}[{i}]` must not contain a NUL character", self.full(rel));
                    self.err(e.span(), rel, msg, None);
                    ok = false;
                }
                other => {
                    let msg = format!(
                        "wrong type for `{}[{i}]`: expected a string, found {}",
                        self.full(rel),
                        other.type_str()
                    );
                    self.err(e.span(), rel, msg, Some("quote it: \"…\"".into()));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        if nonempty && out.is_empty() {
            let msg = format!("`{}` must not be empty", self.full(rel));
            let help = format!("write {} = {example}", self.full(rel));
            return self.reject(v.span(), rel, msg, Some(help));
        }
        Some(Sp {
            v: out,
            at: self.at(v.span()),
        })
    }

    fn duration(&mut self, v: &Val<'_>, rel: &str, positive: bool) -> Opt<Duration> {
        let DeValue::String(s) = v.get_ref() else {
            let help = match int_of(v.get_ref()) {
                Some(n) => format!("durations are strings with a unit: write {} = \"{n}s\" for {n} seconds", self.full(rel)),
                None => "durations are strings with a unit: \"500ms\", \"30s\", \"45m\", \"2h\", \"1d\", \"1h30m\"".into(),
            };
            self.wrong_type(v, rel, "a duration string such as \"45m\"", Some(help));
            return None;
        };
        match parse_duration(s) {
            Ok(d) if positive && d.is_zero() => {
                let msg = format!("`{}` must be greater than zero", self.full(rel));
                self.err(
                    v.span(),
                    rel,
                    msg,
                    Some("remove the key to use the default, or give a positive duration".into()),
                );
                None
            }
            Ok(d) => Some(Sp {
                v: d,
                at: self.at(v.span()),
            }),
            Err(e) => {
                let msg = format!("bad duration for `{}`: {e}", self.full(rel));
                self.err(
                    v.span(),
                    rel,
                    msg,
                    Some("durations are \"500ms\", \"30s\", \"45m\", \"2h\", \"1d\", or combined like \"1h30m\"".into()),
                );
                None
            }
        }
    }

    fn size(&mut self, v: &Val<'_>, rel: &str) -> Opt<u64> {
        let n = match v.get_ref() {
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => n,
                Err(e) => {
                    let msg = format!("bad size for `{}`: {e}", self.full(rel));
                    return self.reject(
                        v.span(),
                        rel,
                        msg,
                        Some("sizes are \"512MiB\", \"2GiB\", \"1GB\" (SI), or plain bytes".into()),
                    );
                }
            },
            DeValue::Integer(_) => match int_of(v.get_ref()).and_then(|n| u64::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    let msg = format!(
                        "bad size for `{}`: must be a non-negative number of bytes",
                        self.full(rel)
                    );
                    return self.reject(v.span(), rel, msg, Some("write e.g. \"2GiB\"".into()));
                }
            },
            _ => {
                self.wrong_type(
                    v,
                    rel,
                    "a size such as \"2GiB\"",
                    Some("sizes are \"512MiB\", \"2GiB\", \"1GB\" (SI), or plain bytes".into()),
                );
                return None;
            }
        };
        if n == 0 {
            let msg = format!("`{}` must be greater than zero", self.full(rel));
            return self.reject(v.span(), rel, msg, Some("write e.g. \"2GiB\"".into()));
        }
        Some(Sp {
            v: n,
            at: self.at(v.span()),
        })
    }

    fn int(&mut self, v: &Val<'_>, rel: &str, min: i128, max: i128) -> Opt<i128> {
        let Some(n) = int_of(v.get_ref()) else {
            let help = match v.get_ref() {
                DeValue::String(s) if s.trim().parse::<i128>().is_ok() => {
                    format!("remove the quotes: {} = {}", self.full(rel), s.trim())
                }
                _ => format!("write a whole number between {min} and {max}"),
            };
            if matches!(v.get_ref(), DeValue::Integer(_)) {
                let msg = format!("`{}` is out of range", self.full(rel));
                self.err(v.span(), rel, msg, Some(help));
            } else {
                self.wrong_type(v, rel, "an integer", Some(help));
            }
            return None;
        };
        if n < min || n > max {
            let msg = format!(
                "`{}` = {n} is out of range: must be between {min} and {max}",
                self.full(rel)
            );
            return self.reject(v.span(), rel, msg, None);
        }
        Some(Sp {
            v: n,
            at: self.at(v.span()),
        })
    }

    fn u32(&mut self, v: &Val<'_>, rel: &str, min: u32, max: u32) -> Opt<u32> {
        let n = self.int(v, rel, min.into(), max.into())?;
        Some(Sp {
            v: u32::try_from(n.v).ok()?,
            at: n.at,
        })
    }

    fn boolean(&mut self, v: &Val<'_>, rel: &str) -> Opt<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp {
                v: *b,
                at: self.at(v.span()),
            }),
            _ => {
                self.wrong_type(
                    v,
                    rel,
                    "a boolean",
                    Some("write true or false (without quotes)".into()),
                );
                None
            }
        }
    }

    fn choice<E: FromStr + Copy>(&mut self, v: &Val<'_>, rel: &str, names: &[&str]) -> Opt<E> {
        let s = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            _ => {
                self.wrong_type(v, rel, &format!("one of {}", quote_list(names)), None);
                return None;
            }
        };
        match E::from_str(&s) {
            Ok(e) => Some(Sp {
                v: e,
                at: self.at(v.span()),
            }),
            Err(_) => {
                let help = match closest(&s, names) {
                    Some(c) => format!("did you mean \"{c}\"? (valid: {})", quote_list(names)),
                    None => format!("valid values: {}", quote_list(names)),
                };
                let msg = format!("invalid value \"{s}\" for `{}`", self.full(rel));
                self.err(v.span(), rel, msg, Some(help));
                None
            }
        }
    }

    fn env_name(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        let s = self.string(v, rel)?;
        if !is_env_name(&s.v) {
            let msg = format!(
                "`{}` = \"{}\" is not an environment variable name",
                self.full(rel),
                s.v
            );
            return self.reject(v.span(), rel, msg, Some("write the name of the variable that holds the value, e.g. \"SLACK_WEBHOOK_URL\"".into()));
        }
        Some(s)
    }

    fn http_url(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        let s = self.nonempty(v, rel)?;
        let rest =
            s.v.strip_prefix("https://")
                .or_else(|| s.v.strip_prefix("http://"));
        if rest
            .is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace))
        {
            let msg = format!("`{}` = \"{}\" is not an http(s) URL", self.full(rel), s.v);
            return self.reject(
                v.span(),
                rel,
                msg,
                Some("write a URL like \"https://host/path\"".into()),
            );
        }
        Some(s)
    }

    // -----------------------------------------------------------------------
    // job

    pub fn job(&mut self, t: &DeTable<'_>) -> PJob {
        let mut j = PJob {
            any: !t.is_empty(),
            ..PJob::default()
        };
        for (k, v) in t.iter() {
            let key: &str = k.get_ref();
            match key {
                "description" => j.description = self.string(v, key),
                "command" => j.command = self.command(v, key),
                "workdir" => j.workdir = self.nonempty(v, key),
                "user" => j.user = self.user(v, key),
                "env" => j.env = self.named_strings(v, key, check_env_key),
                "env_file" => j.env_file = self.nonempty(v, key),
                "secrets" => j.secrets = self.secrets(v, key),
                "schedule" => j.schedule = self.checked(v, key, check_schedule),
                "timezone" => j.timezone = self.checked(v, key, check_timezone),
                "timeout" => j.timeout = self.duration(v, key, true),
                "kill_grace" => j.kill_grace = self.duration(v, key, false),
                "expected_duration" => j.expected_duration = self.duration(v, key, true),
                "memory_max" => j.memory_max = self.size(v, key),
                "concurrency" => j.concurrency = self.choice(v, key, &Concurrency::names()),
                "lock" => j.lock = self.checked(v, key, check_lock),
                "retries" => j.retries = self.u32(v, key, 0, 100),
                "retry_delay" => j.retry_delay = self.duration(v, key, false),
                "params" => j.params = self.named_strings(v, key, check_param_key),
                "items" => j.items = self.sub_table(v, key, |w, t| w.items(t, k.span())),
                "notify" => j.notify = self.sub_table(v, key, Self::notify),
                "runbook" => j.runbook = self.sub_table(v, key, Self::runbook),
                "guideline" => j.guideline = self.sub_table(v, key, Self::guideline),
                "distributed" => j.distributed = self.sub_table(v, key, Self::distributed),
                _ => self.unknown(k.span(), key, key, JOB_KEYS),
            }
        }
        j.bad = std::mem::take(&mut self.bad);
        j
    }

    /// The table `v` read by `parse`; the default when `v` is not a table
    /// (which is reported).
    fn sub_table<T: Default>(
        &mut self,
        v: &Val<'_>,
        key: &str,
        parse: impl FnOnce(&mut Self, &DeTable<'_>) -> T,
    ) -> T {
        match self.table(v, key) {
            Some(t) => parse(self, t),
            None => T::default(),
        }
    }

    /// `command`: a non-empty argv whose program is not blank.
    fn command(&mut self, v: &Val<'_>, key: &str) -> Option<Strings> {
        let c = self.strings(v, key, true, "[\"/path/to/program\", \"arg\"]")?;
        if c.v[0].v.trim().is_empty() {
            let span = c.v[0].at.span.clone().unwrap_or_default();
            let msg = "the program (`command[0]`) must not be empty".into();
            return self.reject(span, key, msg, None);
        }
        Some(c)
    }

    fn user(&mut self, v: &Val<'_>, key: &str) -> Opt<String> {
        let help = Some("name a service user, e.g. \"batch\"");
        let (ok, what) = (is_user_name, "is not a valid user name");
        self.nonempty_such(v, key, "user", ok, what, help)
    }

    /// A non-empty string that `ok` accepts; otherwise the error
    /// "`name` = "value" {what}", with `help`.
    fn nonempty_such(
        &mut self,
        v: &Val<'_>,
        rel: &str,
        name: &str,
        ok: impl Fn(&str) -> bool,
        what: &str,
        help: Option<&str>,
    ) -> Opt<String> {
        let s = self.nonempty(v, rel)?;
        let refusal = |s: &str| (format!("`{name}` = \"{s}\" {what}"), help.map(Into::into));
        self.accepted(v, rel, s, |s| if ok(s) { Ok(()) } else { Err(refusal(s)) })
    }

    /// `s` (the value of `v`) when `check` accepts it; otherwise `None`,
    /// with the message and help `check` gives reported.
    fn accepted(
        &mut self,
        v: &Val<'_>,
        rel: &str,
        s: Sp<String>,
        check: impl FnOnce(&str) -> Result<(), (String, Option<String>)>,
    ) -> Opt<String> {
        match check(&s.v) {
            Ok(()) => Some(s),
            Err((msg, help)) => {
                self.err(v.span(), rel, msg, help);
                None
            }
        }
    }

    /// A string checked by `check`, which gives the message and help.
    fn checked(
        &mut self,
        v: &Val<'_>,
        key: &str,
        check: fn(&str) -> Result<(), (String, String)>,
    ) -> Opt<String> {
        let s = self.string(v, key)?;
        self.accepted(v, key, s, |s| {
            check(s).map_err(|(msg, help)| (msg, Some(help)))
        })
    }

    /// A table of string values (`env`, `params`) whose keys `check_key`
    /// accepts (it reports the ones it refuses).
    fn named_strings(
        &mut self,
        v: &Val<'_>,
        key: &str,
        check_key: fn(&str) -> Result<(), (String, String)>,
    ) -> BTreeMap<String, Sp<String>> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(v, key) else {
            return out;
        };
        for (name, rel, k, val) in entries(t, key) {
            if let Err((msg, help)) = check_key(name) {
                self.err(k.span(), &rel, msg, Some(help));
                continue;
            }
            if let Some(s) = self.string(val, &rel) {
                out.insert(name.to_string(), s);
            }
        }
        out
    }

    /// `secrets`: a list of environment variable names.
    fn secrets(&mut self, v: &Val<'_>, key: &str) -> Option<Strings> {
        let s = self.strings(v, key, false, "[\"DB_PASSWORD\"]")?;
        for e in s.v.iter().filter(|e| !is_env_name(&e.v)) {
            let msg = format!(
                "`secrets` entry \"{}\" is not an environment variable name",
                e.v
            );
            let help = "list variable names, e.g. [\"DB_PASSWORD\"]".into();
            self.errs
                .push(e.at.diag(Some(&self.full(key)), msg, Some(help)));
            self.bad.insert(key.into());
        }
        Some(s)
    }

    fn runbook(&mut self, t: &DeTable<'_>) -> PRunbook {
        let mut r = PRunbook::default();
        for (name, rel, k, v) in entries(t, "runbook") {
            match name {
                "url" => r.url = self.nonempty(v, &rel),
                "verify" => r.verify = self.nonempty(v, &rel),
                "notes" => r.notes = self.nonempty(v, &rel),
                _ => self.unknown(k.span(), &rel, name, RUNBOOK_KEYS),
            }
        }
        r
    }

    fn distributed(&mut self, t: &DeTable<'_>) -> PDistributed {
        let mut d = PDistributed::default();
        for (name, rel, k, v) in entries(t, "distributed") {
            match name {
                "enabled" => d.enabled = self.boolean(v, &rel),
                "batch" => d.batch = self.u32(v, &rel, 1, 100_000),
                "lease" => d.lease = self.duration(v, &rel, true),
                _ => self.unknown(k.span(), &rel, name, DISTRIBUTED_KEYS),
            }
        }
        d
    }

    fn items(&mut self, t: &DeTable<'_>, key_span: Range<usize>) -> PItems {
        let mut it = PItems {
            table: Some(self.at(key_span)),
            ..PItems::default()
        };
        for (name, rel, k, v) in entries(t, "items") {
            match name {
                "source" => {
                    it.source =
                        self.strings(v, &rel, true, "[\"./list-keys\", \"--date\", \"{date}\"]")
                }
                "source_file" => it.source_file = self.nonempty(v, &rel),
                "run" => it.run = self.strings(v, &rel, true, "[\"./process\", \"{item}\"]"),
                "mode" => it.mode = self.choice(v, &rel, &ItemsMode::names()),
                "scope" => it.scope = self.nonempty(v, &rel),
                "parallelism" => it.parallelism = self.u32(v, &rel, 1, 1024),
                "rate" => {
                    let Some(s) = self.string(v, &rel) else {
                        continue;
                    };
                    match parse_rate(&s.v) {
                        Ok(r) => it.rate = Some(Sp { v: r, at: s.at }),
                        Err(e) => {
                            let msg = format!("bad rate for `{}`: {e}", self.full(&rel));
                            self.err(
                                v.span(),
                                &rel,
                                msg,
                                Some("rates are \"50/s\", \"10/m\" or \"100/h\"".into()),
                            );
                        }
                    }
                }
                "max_attempts" => it.max_attempts = self.u32(v, &rel, 1, 1000),
                "item_timeout" => it.item_timeout = self.duration(v, &rel, true),
                "max_keys" => {
                    it.max_keys = self.int(v, &rel, 1, u64::MAX.into()).map(|n| Sp {
                        v: n.v as u64,
                        at: n.at,
                    })
                }
                _ => self.unknown(k.span(), &rel, name, ITEMS_KEYS),
            }
        }
        it
    }

    fn notify(&mut self, t: &DeTable<'_>) -> PNotify {
        let mut n = PNotify::default();
        for (name, rel, k, v) in entries(t, "notify") {
            match name {
                "on" => {
                    let Some(list) = self.strings(v, &rel, false, "[\"failure\", \"timeout\"]")
                    else {
                        continue;
                    };
                    let names = Event::names();
                    let mut events = Vec::new();
                    let mut ok = true;
                    for e in &list.v {
                        match Event::from_str(&e.v) {
                            Ok(ev) => {
                                if !events.contains(&ev) {
                                    events.push(ev);
                                }
                            }
                            Err(_) => {
                                ok = false;
                                let help = match closest(&e.v, &names) {
                                    Some(c) => format!(
                                        "did you mean \"{c}\"? (events: {})",
                                        quote_list(&names)
                                    ),
                                    None => format!("events: {}", quote_list(&names)),
                                };
                                let msg =
                                    format!("unknown event \"{}\" in `{}`", e.v, self.full(&rel));
                                self.errs
                                    .push(e.at.diag(Some(&self.full(&rel)), msg, Some(help)));
                            }
                        }
                    }
                    if ok {
                        n.on = Some(Sp {
                            v: events,
                            at: list.at,
                        });
                    } else {
                        self.bad.insert(rel);
                    }
                }
                "channels" => n.channels = self.strings(v, &rel, false, "[\"oncall\"]"),
                _ => self.unknown(k.span(), &rel, name, NOTIFY_KEYS),
            }
        }
        n
    }

    fn guideline(&mut self, t: &DeTable<'_>) -> PGuideline {
        let mut g = PGuideline::default();
        for (name, rel, k, v) in entries(t, "guideline") {
            match name {
                "reads" => g.reads = self.choice(v, &rel, &Reads::names()),
                "replica_dsn_env" => g.replica_dsn_env = self.env_name(v, &rel),
                "max_replica_lag" => g.max_replica_lag = self.duration(v, &rel, false),
                "expected_items" => {
                    g.expected_items = self.int(v, &rel, 0, u64::MAX.into()).map(|n| Sp {
                        v: n.v as u64,
                        at: n.at,
                    })
                }
                "write_impact" => g.write_impact = self.nonempty(v, &rel),
                "schema_change" => g.schema_change = self.schema_change(v, &rel),
                "overlap_safe" => g.overlap_safe = self.nonempty(v, &rel),
                "clean" => {
                    g.clean = self.strings(v, &rel, true, "[\"./clean\", \"--date\", \"{date}\"]")
                }
                "role_ok" => g.role_ok = self.nonempty(v, &rel),
                _ => self.unknown(k.span(), &rel, name, GUIDELINE_KEYS),
            }
        }
        g
    }

    fn schema_change(&mut self, v: &Val<'_>, rel: &str) -> Opt<SchemaChange> {
        let at = self.at(v.span());
        match v.get_ref() {
            DeValue::Boolean(false) => Some(Sp {
                v: SchemaChange::No,
                at,
            }),
            DeValue::Boolean(true) => Some(Sp {
                v: SchemaChange::Unreviewed,
                at,
            }),
            DeValue::Table(t) => {
                let mut reviewed_by = None;
                let mut reference = None;
                for (k, v2) in t.iter() {
                    let name: &str = k.get_ref();
                    let r2 = format!("{rel}.{name}");
                    match name {
                        "reviewed_by" => reviewed_by = self.strings(v2, &r2, true, "[\"db-team\"]"),
                        "ref" => reference = self.nonempty(v2, &r2),
                        _ => self.unknown(k.span(), &r2, name, &["reviewed_by", "ref"]),
                    }
                }
                // No `reviewed_by` is an unreviewed change declared with its
                // reference: G12 reports it (`check`), it is no load error.
                if self.bad.contains(&format!("{rel}.reviewed_by")) {
                    return None;
                }
                Some(Sp {
                    v: SchemaChange::Reviewed {
                        reviewed_by: reviewed_by
                            .map(|r| r.v.into_iter().map(|s| s.v).collect())
                            .unwrap_or_default(),
                        reference: reference.map(|s| s.v),
                    },
                    at,
                })
            }
            _ => {
                self.wrong_type(
                    v,
                    rel,
                    "false, true or a table { reviewed_by = [...], ref = \"...\" }",
                    None,
                );
                None
            }
        }
    }

    // -----------------------------------------------------------------------
    // global

    /// Walks `batchguard.toml`. Returns the settings (best effort) and the
    /// names of every declared channel, valid or not.
    pub fn global(
        &mut self,
        t: &DeTable<'_>,
        dir: &Path,
        home: Option<&Path>,
    ) -> (Global, BTreeSet<String>) {
        let mut g = Global {
            file: Some(self.src.path.clone()),
            ..Global::default()
        };
        let mut declared = BTreeSet::new();
        for (k, v) in t.iter() {
            let key: &str = k.get_ref();
            let set = |d: &mut Duration, new: Opt<Duration>| *d = new.map_or(*d, |n| n.v);
            match key {
                "state" => g.state = self.state_url(v, key).or(g.state),
                "log_dir" => g.log_dir = self.own_dir(v, key, dir, home).unwrap_or(g.log_dir),
                "artifact_dir" => g.artifact_dir = self.own_dir(v, key, dir, home),
                "host" => g.host = self.nonempty(v, key).map(|s| s.v),
                "dashboard_url" => g.dashboard_url = self.http_url(v, key).map(|s| s.v),
                "log_max" => g.log_max_bytes = self.size(v, key).map_or(g.log_max_bytes, |n| n.v),
                "log_retention" => set(&mut g.log_retention, self.duration(v, key, true)),
                "lease" => set(&mut g.lease, self.duration(v, key, true)),
                "notify_digest" => set(&mut g.notify_digest, self.duration(v, key, true)),
                "missed_grace" => set(&mut g.missed_grace, self.duration(v, key, true)),
                "metrics_textfile" => {
                    if let Some(s) = self.nonempty(v, key) {
                        if s.v.ends_with('/') {
                            let msg = format!("`metrics_textfile` = \"{}\" names a directory", s.v);
                            let help = "name the file node_exporter reads, for example \"/var/lib/prometheus/node-exporter/batchguard.prom\"";
                            self.err(v.span(), key, msg, Some(help.into()));
                        } else {
                            g.metrics_textfile = Some(normalize(Path::new(&s.v), dir));
                        }
                    }
                }
                "defaults" => {
                    if let Some(t) = self.table(v, key) {
                        let mut sub = W::new(&self.src, "defaults.");
                        let pj = sub.job(t);
                        self.errs.append(&mut sub.errs);
                        g.defaults = Defaults(pj);
                    }
                }
                "channels" => {
                    if let Some(t) = self.table(v, key) {
                        self.channels(t, &mut declared, &mut g.channels);
                    }
                }
                _ => self.unknown(k.span(), key, key, GLOBAL_KEYS),
            }
        }
        // An absolute [defaults] workdir can be checked without a job.
        if let Some(wd) = &g.defaults.0.workdir
            && Path::new(&wd.v).is_absolute()
        {
            g10(wd, "workdir", true, Path::new("/"), home, &mut self.errs);
        }
        // Channels named in [defaults] must exist.
        check_channels(&g.defaults.0, &declared, None, &mut self.errs);
        (g, declared)
    }

    /// `state`: `sqlite:PATH` or `postgres://…`.
    fn state_url(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        let ok = |url: &str| {
            ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .find_map(|p| url.strip_prefix(p))
                .is_some_and(|r| !r.is_empty())
        };
        let help = "write \"sqlite:/var/lib/batchguard/state.db\" or \"postgres://user@host/db\"";
        let what = "is not a state store URL";
        let s = self.nonempty_such(v, key, "state", ok, what, Some(help))?;
        Some(s.v)
    }

    /// `log_dir`, `artifact_dir`: absolute against `dir`, never under a
    /// personal home (G10).
    fn own_dir(
        &mut self,
        v: &Val<'_>,
        key: &str,
        dir: &Path,
        home: Option<&Path>,
    ) -> Option<PathBuf> {
        let s = self.nonempty(v, key)?;
        let p = normalize(Path::new(&s.v), dir);
        if under_personal_home(&p, home) {
            let msg = format!(
                "`{key}` = \"{}\" is under a personal home directory ({})",
                s.v,
                p.display()
            );
            return self.reject(v.span(), key, msg, Some(G10_HELP.into()));
        }
        if let Some(sys) = system_dir(&p) {
            let msg = format!(
                "`{key}` = \"{}\" resolves into the system directory {sys}",
                s.v
            );
            let help = "batchguard writes job output there: use /var/log/batchguard or /srv/…";
            return self.reject(v.span(), key, msg, Some(help.into()));
        }
        Some(p)
    }

    /// `[channels.NAME]`: every name is `declared`, valid ones go to `out`.
    fn channels(
        &mut self,
        t: &DeTable<'_>,
        declared: &mut BTreeSet<String>,
        out: &mut BTreeMap<String, Channel>,
    ) {
        for (ck, cv) in t.iter() {
            let name: &str = ck.get_ref();
            declared.insert(name.to_string());
            let rel = format!("channels.{name}");
            if !template::is_valid_name(name) {
                let msg = format!("invalid channel name `{name}`");
                let help = "channel names are letters, digits, `_` and `-`".into();
                self.err(ck.span(), &rel, msg, Some(help));
                continue;
            }
            let Some(ct) = self.table(cv, &rel) else {
                continue;
            };
            if let Some(c) = self.channel(ct, &rel, ck.span()) {
                out.insert(name.to_string(), c);
            }
        }
    }

    fn channel(&mut self, t: &DeTable<'_>, rel: &str, key_span: Range<usize>) -> Option<Channel> {
        let kind = self.channel_kind(t, rel, key_span.clone())?;
        let errs_before = self.errs.len();
        let f = self.channel_fields(t, rel, channel_keys(kind));
        if self.errs.len() > errs_before {
            return None;
        }
        let cx = ChannelCx {
            kind,
            rel,
            key_span,
        };
        match kind {
            "slack" => Some(Channel::Slack {
                url: self.url_source(&cx, f.url, f.url_env)?,
            }),
            "ping" => Some(Channel::Ping {
                url: self.url_source(&cx, f.url, f.url_env)?,
            }),
            "webhook" => Some(Channel::Webhook {
                url: self.url_source(&cx, f.url, f.url_env)?,
                secret_env: f.secret_env.map(|s| s.v),
            }),
            "email" => self.email_channel(&cx, f),
            _ => match f.command {
                Some(c) => Some(Channel::Command {
                    command: c.v.into_iter().map(|s| s.v).collect(),
                }),
                None => {
                    let help = "add command = [\"/usr/local/bin/page-oncall\"]";
                    self.channel_missing(&cx, "command", help);
                    None
                }
            },
        }
    }

    /// The channel's `type`, one of [`CHANNEL_TYPES`].
    fn channel_kind<'t>(
        &mut self,
        t: &'t DeTable<'_>,
        rel: &str,
        key_span: Range<usize>,
    ) -> Option<&'t str> {
        let full = self.full(rel);
        let rel_type = format!("{rel}.type");
        let Some((_, tv)) = t.iter().find(|(k, _)| k.get_ref() == "type") else {
            let msg = format!("channel `{full}` has no `type`");
            let help = format!(
                "add type = \"slack\" (one of {})",
                quote_list(CHANNEL_TYPES)
            );
            return self.reject(key_span, rel, msg, Some(help));
        };
        match tv.get_ref() {
            DeValue::String(s) if CHANNEL_TYPES.contains(&s.as_ref()) => Some(s),
            DeValue::String(s) => {
                let types = quote_list(CHANNEL_TYPES);
                let help = match closest(s, CHANNEL_TYPES) {
                    Some(c) => format!("did you mean \"{c}\"? (types: {types})"),
                    None => format!("types: {types}"),
                };
                let msg = format!("unknown channel type \"{s}\" for `{full}.type`");
                self.err(tv.span(), &rel_type, msg, Some(help));
                None
            }
            _ => {
                let expected = format!("one of {}", quote_list(CHANNEL_TYPES));
                self.wrong_type(tv, &rel_type, &expected, None);
                None
            }
        }
    }

    /// The channel's keys, each checked; keys not in `allowed` are errors.
    fn channel_fields(&mut self, t: &DeTable<'_>, rel: &str, allowed: &[&str]) -> ChannelFields {
        let mut f = ChannelFields::default();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let r2 = format!("{rel}.{name}");
            if !allowed.contains(&name) {
                self.unknown(k.span(), &r2, name, allowed);
                continue;
            }
            match name {
                "url" => f.url = self.http_url(v, &r2),
                "url_env" => f.url_env = self.env_name(v, &r2),
                "secret_env" => f.secret_env = self.env_name(v, &r2),
                "username_env" => f.username_env = self.env_name(v, &r2),
                "password_env" => f.password_env = self.env_name(v, &r2),
                "smtp" => f.smtp = self.smtp_url(v, &r2),
                "from" => f.from = self.email_address(v, &r2),
                "to" => f.to = self.email_addresses(v, &r2),
                "command" => {
                    f.command = self.strings(v, &r2, true, "[\"/usr/local/bin/page-oncall\"]")
                }
                _ => {} // "type"
            }
        }
        f
    }

    fn smtp_url(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        let ok = |url: &str| {
            let host = url
                .strip_prefix("smtp://")
                .or_else(|| url.strip_prefix("smtps://"));
            host.is_some_and(|h| {
                !h.is_empty() && !h.starts_with('/') && !h.contains(char::is_whitespace)
            })
        };
        let help = Some("write \"smtp://host:25\" or \"smtps://host:465\"");
        let name = self.full(rel);
        self.nonempty_such(v, rel, &name, ok, "is not an SMTP URL", help)
    }

    fn email_address(&mut self, v: &Val<'_>, rel: &str) -> Opt<String> {
        let name = self.full(rel);
        let ok = |a: &str| a.contains('@');
        self.nonempty_such(v, rel, &name, ok, "is not an email address", None)
    }

    fn email_addresses(&mut self, v: &Val<'_>, rel: &str) -> Option<Strings> {
        let list = self.strings(v, rel, true, "[\"oncall@example.com\"]")?;
        let full = self.full(rel);
        let before = self.errs.len();
        for a in list.v.iter().filter(|a| !a.v.contains('@')) {
            let msg = format!("`{full}` entry \"{}\" is not an email address", a.v);
            self.errs.push(a.at.diag(Some(&full), msg, None));
        }
        (self.errs.len() == before).then_some(list)
    }

    fn channel_missing(&mut self, cx: &ChannelCx<'_>, what: &str, help: &str) {
        let msg = format!(
            "channel `{}` (type \"{}\") needs `{what}`",
            self.full(cx.rel),
            cx.kind
        );
        self.err(cx.key_span.clone(), cx.rel, msg, Some(help.into()));
    }

    /// Exactly one of `url` and `url_env`.
    fn url_source(
        &mut self,
        cx: &ChannelCx<'_>,
        url: Opt<String>,
        url_env: Opt<String>,
    ) -> Option<UrlSource> {
        match (url, url_env) {
            (Some(u), None) => Some(UrlSource::Literal(u.v)),
            (None, Some(e)) => Some(UrlSource::Env(e.v)),
            (Some(_), Some(e)) => {
                let full = self.full(cx.rel);
                let msg = format!("channel `{full}` sets both `url` and `url_env`");
                let help = "keep exactly one of them".into();
                self.errs
                    .push(e.at.diag(Some(&format!("{full}.url_env")), msg, Some(help)));
                None
            }
            (None, None) => {
                let help = "add url_env = \"VAR_NAME\" (the variable holds the URL)";
                self.channel_missing(cx, "url` or `url_env", help);
                None
            }
        }
    }

    fn email_channel(&mut self, cx: &ChannelCx<'_>, f: ChannelFields) -> Option<Channel> {
        if f.smtp.is_none() {
            self.channel_missing(cx, "smtp", "add smtp = \"smtp://host:25\"");
        }
        if f.from.is_none() {
            self.channel_missing(cx, "from", "add from = \"batch@example.com\"");
        }
        if f.to.is_none() {
            self.channel_missing(cx, "to", "add to = [\"oncall@example.com\"]");
        }
        Some(Channel::Email {
            smtp: f.smtp?.v,
            from: f.from?.v,
            to: f.to?.v.into_iter().map(|s| s.v).collect(),
            username_env: f.username_env.map(|s| s.v),
            password_env: f.password_env.map(|s| s.v),
        })
    }
}

/// The keys a channel of type `kind` takes.
pub(crate) fn channel_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "slack" | "ping" => &["type", "url", "url_env"],
        "webhook" => &["type", "url", "url_env", "secret_env"],
        "email" => &["type", "smtp", "from", "to", "username_env", "password_env"],
        _ => &["type", "command"],
    }
}

/// A channel's keys as written (each checked, all optional).
#[derive(Default)]
struct ChannelFields {
    url: Opt<String>,
    url_env: Opt<String>,
    secret_env: Opt<String>,
    smtp: Opt<String>,
    from: Opt<String>,
    to: Option<Strings>,
    username_env: Opt<String>,
    password_env: Opt<String>,
    command: Option<Strings>,
}

/// Which channel is being built, for "needs `KEY`" errors.
struct ChannelCx<'a> {
    kind: &'a str,
    rel: &'a str,
    key_span: Range<usize>,
}

fn check_schedule(s: &str) -> Result<(), (String, String)> {
    crate::schedule::Schedule::parse(s)
        .map(drop)
        .map_err(|e| (e.message().to_string(), e.fix().to_string()))
}

/// An `env` key: a variable name not of batchguard's own.
fn check_env_key(name: &str) -> Result<(), (String, String)> {
    let invalid = format!("`{name}` is not a valid environment variable name");
    let reserved =
        format!("`{name}` is reserved: batchguard sets the BATCHGUARD_* variables itself");
    first_refusal([
        (
            !is_env_name(name),
            invalid,
            "use letters, digits and `_`, not starting with a digit",
        ),
        (
            name.starts_with("BATCHGUARD_"),
            reserved,
            "rename the variable",
        ),
    ])
}

/// A `params` key: a template name that shadows no built-in one.
fn check_param_key(name: &str) -> Result<(), (String, String)> {
    let builtin = template::BUILTINS.contains(&name) || name == template::ITEM;
    let shadows = format!("param `{name}` would shadow the built-in template `{{{name}}}`");
    first_refusal([
        (
            !template::is_valid_name(name),
            format!("invalid param name `{name}`"),
            "param names are letters, digits, `_` and `-`",
        ),
        (builtin, shadows, "rename the param"),
    ])
}

/// The message and help of the first rule whose condition holds.
fn first_refusal<const N: usize>(rules: [(bool, String, &str); N]) -> Result<(), (String, String)> {
    match rules.into_iter().find(|r| r.0) {
        Some((_, msg, help)) => Err((msg, help.into())),
        None => Ok(()),
    }
}

fn check_lock(s: &str) -> Result<(), (String, String)> {
    if crate::is_valid_job_name(s) {
        return Ok(());
    }
    Err((
        format!("invalid lock name \"{s}\""),
        "lock names follow the job name rule: ^[a-z0-9][a-z0-9_-]{0,62}$".into(),
    ))
}

fn check_timezone(s: &str) -> Result<(), (String, String)> {
    let help = "use an IANA time zone name such as \"Asia/Tokyo\", \"Europe/Berlin\" or \"UTC\""
        .to_string();
    if s.is_empty() || s.starts_with('/') || s.contains("..") || s.contains(char::is_whitespace) {
        return Err((format!("unknown time zone \"{s}\""), help));
    }
    if crate::zone::zone(s).is_some_and(|tz| tz.iana_name() == Some(s)) {
        return Ok(());
    }
    match jiff::tz::TimeZone::get(s) {
        Ok(tz) => match tz.iana_name() {
            Some(n) if n != s && n.eq_ignore_ascii_case(s) => Err((
                format!("time zone \"{s}\" is not spelled as in the IANA database"),
                format!("write \"{n}\""),
            )),
            _ => Ok(()),
        },
        Err(_) => Err((format!("unknown time zone \"{s}\""), help)),
    }
}

fn check_channels(
    j: &PJob,
    declared: &BTreeSet<String>,
    job_src: Option<&Arc<Source>>,
    errs: &mut Vec<Diagnostic>,
) {
    let Some(chs) = &j.notify.channels else {
        return;
    };
    let names: Vec<&str> = declared.iter().map(String::as_str).collect();
    for c in &chs.v {
        if declared.contains(&c.v) {
            continue;
        }
        let help = match closest(&c.v, &names) {
            Some(n) => format!("did you mean \"{n}\"?"),
            None if names.is_empty() => {
                "no channels are declared: add a [channels.NAME] section to batchguard.toml".into()
            }
            None => format!("declared channels: {}", quote_list(&names)),
        };
        let key = match job_src {
            Some(js) if Arc::ptr_eq(js, &c.at.src) => "notify.channels",
            _ => "defaults.notify.channels",
        };
        errs.push(c.at.diag(
            Some(key),
            format!("unknown channel \"{}\" in `{key}`", c.v),
            Some(help),
        ));
    }
}

// ---------------------------------------------------------------------------
// merging and resolving

/// `$ty { field: job's value or else the default's, ... }` for the listed
/// fields, then any `rest` written out.
macro_rules! job_over_defaults {
    ($ty:ident, $j:expr, $d:expr; $($f:ident),* $(; $($rest:tt)*)?) => {
        $ty {
            $($f: $j.$f.or_else(|| $d.$f.clone()),)*
            $($($rest)*)?
        }
    };
}

/// `job` over `defaults`: the job's value wins; tables merge key by key.
pub(crate) fn merge(d: &PJob, j: PJob) -> PJob {
    let mut env = d.env.clone();
    env.extend(j.env);
    let mut params = d.params.clone();
    params.extend(j.params);
    let mut bad = d.bad.clone();
    bad.extend(j.bad);
    job_over_defaults!(PJob, j, d;
        description, command, workdir, user, env_file, secrets, schedule, timezone, timeout,
        kill_grace, expected_duration, memory_max, concurrency, lock, retries, retry_delay;
        any: d.any || j.any,
        env,
        params,
        items: job_over_defaults!(PItems, j.items, d.items;
            table, source, source_file, run, mode, scope, parallelism, rate, max_attempts,
            item_timeout, max_keys),
        notify: job_over_defaults!(PNotify, j.notify, d.notify; on, channels),
        runbook: job_over_defaults!(PRunbook, j.runbook, d.runbook; url, verify, notes),
        guideline: job_over_defaults!(PGuideline, j.guideline, d.guideline;
            reads, replica_dsn_env, max_replica_lag, expected_items, write_impact,
            schema_change, overlap_safe, clean, role_ok),
        distributed: job_over_defaults!(PDistributed, j.distributed, d.distributed;
            enabled, batch, lease),
        bad,
    )
}

/// What a job is resolved against.
pub(crate) struct Ctx<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    /// The job file, for "missing key" errors (line 1).
    pub src: &'a Arc<Source>,
    /// Absolute directory of the job file (relative paths resolve here).
    pub base: PathBuf,
    pub channels: &'a BTreeSet<String>,
    pub home: Option<PathBuf>,
}

/// `key`, or `defaults.key` when the value came from `[defaults]` rather
/// than from the job file `job_src`.
fn key_in(at: &At, job_src: &Arc<Source>, key: &str) -> String {
    if Arc::ptr_eq(&at.src, job_src) {
        key.to_string()
    } else {
        format!("defaults.{key}")
    }
}

fn check_template(
    s: &Sp<String>,
    key: &str,
    job_src: &Arc<Source>,
    allowed: &[&str],
    item_ok: bool,
    errs: &mut Vec<Diagnostic>,
) {
    let key = &key_in(&s.at, job_src, key);
    match template::names(&s.v) {
        Err(e) => errs.push(s.at.diag(
            Some(key),
            format!("bad template in `{key}`: {e}"),
            Some("templates are `{name}`; write `{{` and `}}` for literal braces".into()),
        )),
        Ok(names) => {
            for n in names {
                if allowed.contains(&n.as_str()) {
                    continue;
                }
                let avail = allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let (msg, help) = if n == template::ITEM && !item_ok {
                    (
                        format!("`{{item}}` is only available in `items.run`, not in `{key}`"),
                        format!("available here: {avail}"),
                    )
                } else {
                    let near = closest(&n, allowed)
                        .map(|c| format!("did you mean `{{{c}}}`? "))
                        .unwrap_or_default();
                    (
                        format!("unknown template name `{{{n}}}` in `{key}`"),
                        format!(
                            "{near}available here: {avail}; declare other names under [params]"
                        ),
                    )
                };
                errs.push(s.at.diag(Some(key), msg, Some(help)));
            }
        }
    }
}

fn g10(
    p: &Sp<String>,
    key: &str,
    from_defaults: bool,
    base: &Path,
    home: Option<&Path>,
    errs: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let key = if from_defaults {
        format!("defaults.{key}")
    } else {
        key.to_string()
    };
    let key = key.as_str();
    let abs = normalize(Path::new(&p.v), base);
    if under_personal_home(&abs, home) {
        errs.push(p.at.diag(
            Some(key),
            format!(
                "`{key}` = \"{}\" is under a personal home directory ({})",
                p.v,
                abs.display()
            ),
            Some(G10_HELP.into()),
        ));
        return None;
    }
    Some(abs)
}

/// Validates a merged job (templates, paths, items, channels) and builds
/// it; `None` when that added errors.
pub(crate) fn resolve(pj: PJob, cx: &Ctx<'_>, errs: &mut Vec<Diagnostic>) -> Option<Job> {
    let before = errs.len();
    let (allowed, with_item) = template_names(&pj, cx, errs);
    let command = resolve_command(&pj, cx, &allowed, errs);
    for (s, key) in [
        (&pj.runbook.url, "runbook.url"),
        (&pj.runbook.verify, "runbook.verify"),
        (&pj.runbook.notes, "runbook.notes"),
    ] {
        if let Some(s) = s {
            check_template(s, key, cx.src, &allowed, false, errs);
        }
    }
    let workdir = match &pj.workdir {
        Some(w) => {
            let from_defaults = !Arc::ptr_eq(&w.at.src, cx.src);
            g10(
                w,
                "workdir",
                from_defaults,
                &cx.base,
                cx.home.as_deref(),
                errs,
            )
        }
        None => Some(PathBuf::from("/")),
    };
    let items = pj.items.table.is_some().then(|| {
        check_items(&pj, cx, &allowed, &with_item, errs);
        build_items(&pj.items, workdir.as_deref().unwrap_or(Path::new("/")))
    });
    check_channels(&pj, cx.channels, Some(cx.src), errs);
    if errs.len() > before {
        return None;
    }
    Some(build_job(pj, cx, command?, workdir?, items))
}

/// Checks the params' templates; returns the template names allowed
/// elsewhere, without and with `{item}`.
fn template_names<'p>(
    pj: &'p PJob,
    cx: &Ctx<'_>,
    errs: &mut Vec<Diagnostic>,
) -> (Vec<&'p str>, Vec<&'p str>) {
    for (k, v) in &pj.params {
        let key = format!("params.{k}");
        check_template(v, &key, cx.src, template::BUILTINS, false, errs);
    }
    let mut allowed: Vec<&str> = template::BUILTINS.to_vec();
    allowed.extend(pj.params.keys().map(String::as_str));
    let mut with_item = allowed.clone();
    with_item.push(template::ITEM);
    (allowed, with_item)
}

/// `command` (its templates checked); optional in per-item mode, where
/// `items.run` runs once per key.
fn resolve_command(
    pj: &PJob,
    cx: &Ctx<'_>,
    allowed: &[&str],
    errs: &mut Vec<Diagnostic>,
) -> Option<Vec<String>> {
    match &pj.command {
        Some(c) => {
            for a in &c.v {
                check_template(a, "command", cx.src, allowed, false, errs);
            }
            Some(values(c))
        }
        None if pj.items.run.is_some() => Some(Vec::new()),
        None => {
            if !pj.bad.contains("command") {
                errs.push(At::file(cx.src).diag(
                    Some("command"),
                    format!("missing required key `command` in job `{}`", cx.name),
                    Some(
                        "add command = [\"/path/to/program\", \"arg\"] (an argv; no shell)".into(),
                    ),
                ));
            }
            None
        }
    }
}

/// `[items]`: a key source, the mode's requirements, templates.
fn check_items(
    pj: &PJob,
    cx: &Ctx<'_>,
    allowed: &[&str],
    with_item: &[&str],
    errs: &mut Vec<Diagnostic>,
) {
    let it = &pj.items;
    let table_at = it.table.clone().unwrap_or_else(|| At::file(cx.src));
    match (&it.source, &it.source_file) {
        (Some(_), Some(f)) => errs.push(f.at.diag(
            Some("items.source_file"),
            "`items.source` and `items.source_file` are mutually exclusive",
            Some("keep exactly one: a command that prints the keys, or a file that lists them".into()),
        )),
        (None, None) if !pj.bad.contains("items.source") && !pj.bad.contains("items.source_file") => errs.push(table_at.diag(
            Some("items"),
            "`[items]` needs `source` or `source_file`",
            Some("add source = [\"./list-keys\"] (prints one key per line) or source_file = \"keys.txt\"".into()),
        )),
        _ => {}
    }
    for a in it.source.iter().flat_map(|s| &s.v) {
        check_template(a, "items.source", cx.src, allowed, false, errs);
    }
    if let Some(s) = &it.scope {
        check_template(s, "items.scope", cx.src, allowed, false, errs);
    }
    match (items_mode(it), &it.run) {
        (ItemsMode::Stream, Some(r)) => errs.push(r.at.diag(
            Some("items.run"),
            "`items.run` is not allowed with `items.mode = \"stream\"`",
            Some("in stream mode the job's `command` receives the keys on stdin; remove `items.run` or the mode".into()),
        )),
        (ItemsMode::PerItem, None) if !pj.bad.contains("items.run") && !pj.bad.contains("items.mode") => {
            let at = it.mode.as_ref().map_or(table_at, |m| m.at.clone());
            errs.push(at.diag(
                Some("items.run"),
                "per-item mode needs `items.run`",
                Some("add run = [\"./process\", \"{item}\"], or set mode = \"stream\"".into()),
            ))
        }
        (_, Some(r)) => {
            for a in &r.v {
                check_template(a, "items.run", cx.src, with_item, true, errs);
            }
        }
        _ => {}
    }
}

fn items_mode(it: &PItems) -> ItemsMode {
    it.mode.as_ref().map_or(ItemsMode::PerItem, |m| m.v)
}

/// The values of a list as written.
fn values(l: &Strings) -> Vec<String> {
    l.v.iter().map(|x| x.v.clone()).collect()
}

fn value<T: Clone>(o: &Opt<T>) -> Option<T> {
    o.as_ref().map(|s| s.v.clone())
}

/// `[items]` with its defaults; `source_file` resolves against `workdir`.
fn build_items(it: &PItems, workdir: &Path) -> Items {
    Items {
        source: it.source.as_ref().map(values),
        source_file: it
            .source_file
            .as_ref()
            .map(|f| normalize(Path::new(&f.v), workdir)),
        run: it.run.as_ref().map(values),
        mode: items_mode(it),
        scope: value(&it.scope),
        parallelism: value(&it.parallelism).unwrap_or(1),
        rate: value(&it.rate),
        max_attempts: value(&it.max_attempts).unwrap_or(3),
        item_timeout: value(&it.item_timeout),
        max_keys: value(&it.max_keys).unwrap_or(crate::DEFAULT_MAX_KEYS),
    }
}

/// The job with its defaults, from a merged job that validated.
fn build_job(
    pj: PJob,
    cx: &Ctx<'_>,
    command: Vec<String>,
    workdir: PathBuf,
    items: Option<Items>,
) -> Job {
    let vars = |m: &BTreeMap<String, Sp<String>>| {
        m.iter().map(|(k, v)| (k.clone(), v.v.clone())).collect()
    };
    Job {
        name: cx.name.to_string(),
        file: cx.file.to_path_buf(),
        description: value(&pj.description),
        command,
        workdir,
        user: value(&pj.user),
        env: vars(&pj.env),
        env_file: pj
            .env_file
            .as_ref()
            .map(|p| normalize(Path::new(&p.v), &cx.base)),
        secrets: pj.secrets.as_ref().map(values).unwrap_or_default(),
        schedule: value(&pj.schedule),
        timezone: value(&pj.timezone),
        timeout: value(&pj.timeout),
        kill_grace: value(&pj.kill_grace).unwrap_or(Duration::from_secs(10)),
        expected_duration: value(&pj.expected_duration),
        memory_max: value(&pj.memory_max),
        concurrency: value(&pj.concurrency).unwrap_or(Concurrency::Forbid),
        lock: value(&pj.lock).unwrap_or_else(|| cx.name.to_string()),
        retries: value(&pj.retries).unwrap_or(0),
        retry_delay: value(&pj.retry_delay).unwrap_or(Duration::from_secs(30)),
        params: vars(&pj.params),
        items,
        notify: Notify {
            on: value(&pj.notify.on).unwrap_or_else(|| DEFAULT_EVENTS.to_vec()),
            channels: pj.notify.channels.as_ref().map(values).unwrap_or_default(),
        },
        runbook: Runbook {
            url: value(&pj.runbook.url),
            verify: value(&pj.runbook.verify),
            notes: value(&pj.runbook.notes),
        },
        guideline: build_guideline(&pj.guideline),
        distributed: Distributed {
            enabled: value(&pj.distributed.enabled).unwrap_or(false),
            batch: value(&pj.distributed.batch).unwrap_or(100),
            lease: value(&pj.distributed.lease).unwrap_or(Duration::from_secs(60)),
        },
    }
}

fn build_guideline(g: &PGuideline) -> Guideline {
    Guideline {
        reads: value(&g.reads),
        replica_dsn_env: value(&g.replica_dsn_env),
        max_replica_lag: value(&g.max_replica_lag),
        expected_items: value(&g.expected_items),
        write_impact: value(&g.write_impact),
        schema_change: value(&g.schema_change),
        overlap_safe: value(&g.overlap_safe),
        clean: g.clean.as_ref().map(values),
        role_ok: value(&g.role_ok),
    }
}

/// Builds a job from command-line values (for `exec`).
pub(crate) fn adhoc_pjob(
    command: Vec<String>,
    timeout: Option<Duration>,
    memory_max: Option<u64>,
    concurrency: Option<Concurrency>,
    src: &Arc<Source>,
) -> PJob {
    let at = At::file(src);
    let sp = |v| Sp { v, at: at.clone() };
    PJob {
        any: true,
        command: Some(Sp {
            v: command.iter().map(|a| sp(template::escape(a))).collect(),
            at: at.clone(),
        }),
        timeout: timeout.map(|d| Sp {
            v: d,
            at: at.clone(),
        }),
        memory_max: memory_max.map(|d| Sp {
            v: d,
            at: at.clone(),
        }),
        concurrency: concurrency.map(|d| Sp {
            v: d,
            at: at.clone(),
        }),
        ..PJob::default()
    }
}

/// Parses TOML text, turning syntax errors into diagnostics.
pub(crate) fn parse_toml<'i>(
    src: &Arc<Source>,
    text: &'i str,
) -> Result<DeTable<'i>, Vec<Diagnostic>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Ok(table.into_inner());
    }
    // Only the first syntax error: the parser's recovery makes the later
    // ones mostly consequences of the first.
    Err(errors
        .iter()
        .take(1)
        .map(|e| {
            let at = match e.span() {
                // An empty span ("expected `,` here") after line breaks reads
                // better at the end of the previous token.
                Some(s)
                    if s.is_empty() && s.start <= text.len() && text.is_char_boundary(s.start) =>
                {
                    let back = text[..s.start].trim_end().len();
                    At::new(src, back..back)
                }
                Some(s) => At::new(src, s),
                None => At::file(src),
            };
            let mut msg = e.message().trim_end().replace('\n', "; ");
            let mut key = None;
            if msg == "duplicate key"
                && let Some(k) = e.span().and_then(|s| text.get(s))
            {
                msg = format!("duplicate key `{k}`");
                key = Some(k.trim_matches(['"', '\'']).to_string());
            }
            at.diag(
                key.as_deref(),
                format!("invalid TOML: {msg}"),
                Some(if key.is_some() {
                    "each key may be set only once; remove one of them".into()
                } else {
                    "see https://toml.io for the syntax".into()
                }),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_homes() {
        let h = |p: &str, home: Option<&str>| {
            under_personal_home(
                &normalize(Path::new(p), Path::new("/srv")),
                home.map(Path::new),
            )
        };
        assert!(h("/home/alice", None));
        assert!(h("/home/alice/logs", None));
        assert!(h("/root", None));
        assert!(h("/root/x", None));
        assert!(h("/srv/../home/bob", None));
        assert!(h("../root", None));
        assert!(h("/./home//x/", None));
        assert!(!h("/home", None));
        assert!(!h("/homework/x", None));
        assert!(!h("/rooted", None));
        assert!(!h("/srv/home/x", None));
        assert!(!h("/var/log/batchguard", None));
        // the invoking user's $HOME
        assert!(h("/data/users/carol/logs", Some("/data/users/carol")));
        assert!(h("/data/users/carol", Some("/data/users/carol")));
        assert!(!h("/data/users/carol2", Some("/data/users/carol")));
        assert!(!h("/data/users", Some("/data/users/carol")));
    }

    #[test]
    fn normalizing() {
        assert_eq!(
            normalize(Path::new("a/../../b"), Path::new("/x/y")),
            Path::new("/x/b")
        );
        assert_eq!(
            normalize(Path::new("../../../../.."), Path::new("/x")),
            Path::new("/")
        );
        assert_eq!(
            normalize(Path::new("/a/./b/"), Path::new("/x")),
            Path::new("/a/b")
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("timout", JOB_KEYS), Some("timeout"));
        assert_eq!(closest("retry", JOB_KEYS), Some("retries"));
        assert_eq!(closest("comand", JOB_KEYS), Some("command"));
        assert_eq!(closest("memory", JOB_KEYS), Some("memory_max"));
        assert_eq!(closest("zzzz", JOB_KEYS), None);
        assert_eq!(closest("paralelism", ITEMS_KEYS), Some("parallelism"));
    }
}
