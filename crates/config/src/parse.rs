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

pub(crate) const JOB_KEYS: &[&str] = &[
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
const ITEMS_KEYS: &[&str] = &[
    "source",
    "source_file",
    "run",
    "mode",
    "scope",
    "parallelism",
    "rate",
    "max_attempts",
    "item_timeout",
];
const NOTIFY_KEYS: &[&str] = &["on", "channels"];
const RUNBOOK_KEYS: &[&str] = &["url", "verify", "notes"];
const GUIDELINE_KEYS: &[&str] = &[
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
const DISTRIBUTED_KEYS: &[&str] = &["enabled", "batch", "lease"];
const GLOBAL_KEYS: &[&str] = &[
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
const CHANNEL_TYPES: &[&str] = &["slack", "webhook", "email", "command", "ping"];

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

/// Whether absolute, normalised `p` lies under `/home/*`, `/root` or `home`.
pub(crate) fn under_personal_home(p: &Path, home: Option<&Path>) -> bool {
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
                    self.err(v.span(), rel, msg, None);
                    return None;
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
            self.err(v.span(), rel, msg, None);
            return None;
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
            self.err(v.span(), rel, msg, Some(help));
            return None;
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
                    self.err(
                        v.span(),
                        rel,
                        msg,
                        Some("sizes are \"512MiB\", \"2GiB\", \"1GB\" (SI), or plain bytes".into()),
                    );
                    return None;
                }
            },
            DeValue::Integer(_) => match int_of(v.get_ref()).and_then(|n| u64::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    let msg = format!(
                        "bad size for `{}`: must be a non-negative number of bytes",
                        self.full(rel)
                    );
                    self.err(v.span(), rel, msg, Some("write e.g. \"2GiB\"".into()));
                    return None;
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
            self.err(v.span(), rel, msg, Some("write e.g. \"2GiB\"".into()));
            return None;
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
            self.err(v.span(), rel, msg, None);
            return None;
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
            self.err(v.span(), rel, msg, Some("write the name of the variable that holds the value, e.g. \"SLACK_WEBHOOK_URL\"".into()));
            return None;
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
            self.err(
                v.span(),
                rel,
                msg,
                Some("write a URL like \"https://host/path\"".into()),
            );
            return None;
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
                "command" => {
                    j.command = self.strings(v, key, true, "[\"/path/to/program\", \"arg\"]");
                    if let Some(c) = &j.command
                        && c.v[0].v.trim().is_empty()
                    {
                        self.err(
                            c.v[0].at.span.clone().unwrap_or_default(),
                            key,
                            "the program (`command[0]`) must not be empty".into(),
                            None,
                        );
                        j.command = None;
                    }
                }
                "workdir" => j.workdir = self.nonempty(v, key),
                "user" => {
                    j.user = self.nonempty(v, key);
                    if let Some(u) = &j.user
                        && !is_user_name(&u.v)
                    {
                        let msg = format!("`user` = \"{}\" is not a valid user name", u.v);
                        self.err(
                            v.span(),
                            key,
                            msg,
                            Some("name a service user, e.g. \"batch\"".into()),
                        );
                        j.user = None;
                    }
                }
                "env" => {
                    if let Some(t) = self.table(v, key) {
                        for (ek, ev) in t.iter() {
                            let name: &str = ek.get_ref();
                            let rel = format!("env.{name}");
                            if !is_env_name(name) {
                                let msg =
                                    format!("`{name}` is not a valid environment variable name");
                                self.err(
                                    ek.span(),
                                    &rel,
                                    msg,
                                    Some(
                                        "use letters, digits and `_`, not starting with a digit"
                                            .into(),
                                    ),
                                );
                                continue;
                            }
                            if name.starts_with("BATCHGUARD_") {
                                let msg = format!(
                                    "`{name}` is reserved: batchguard sets the BATCHGUARD_* variables itself"
                                );
                                self.err(ek.span(), &rel, msg, Some("rename the variable".into()));
                                continue;
                            }
                            if let Some(s) = self.string(ev, &rel) {
                                j.env.insert(name.to_string(), s);
                            }
                        }
                    }
                }
                "env_file" => j.env_file = self.nonempty(v, key),
                "secrets" => {
                    j.secrets = self.strings(v, key, false, "[\"DB_PASSWORD\"]");
                    if let Some(s) = &j.secrets {
                        let bad: Vec<_> =
                            s.v.iter().filter(|e| !is_env_name(&e.v)).cloned().collect();
                        for e in bad {
                            let msg = format!(
                                "`secrets` entry \"{}\" is not an environment variable name",
                                e.v
                            );
                            self.errs.push(e.at.diag(
                                Some(&self.full(key)),
                                msg,
                                Some("list variable names, e.g. [\"DB_PASSWORD\"]".into()),
                            ));
                            self.bad.insert(key.into());
                        }
                    }
                }
                "schedule" => {
                    if let Some(s) = self.string(v, key) {
                        match check_schedule(&s.v) {
                            Ok(()) => j.schedule = Some(s),
                            Err((msg, help)) => self.err(v.span(), key, msg, Some(help)),
                        }
                    }
                }
                "timezone" => {
                    if let Some(s) = self.string(v, key) {
                        match check_timezone(&s.v) {
                            Ok(()) => j.timezone = Some(s),
                            Err((msg, help)) => self.err(v.span(), key, msg, Some(help)),
                        }
                    }
                }
                "timeout" => j.timeout = self.duration(v, key, true),
                "kill_grace" => j.kill_grace = self.duration(v, key, false),
                "expected_duration" => j.expected_duration = self.duration(v, key, true),
                "memory_max" => j.memory_max = self.size(v, key),
                "concurrency" => j.concurrency = self.choice(v, key, &Concurrency::names()),
                "lock" => {
                    if let Some(s) = self.string(v, key) {
                        if crate::is_valid_job_name(&s.v) {
                            j.lock = Some(s);
                        } else {
                            let msg = format!("invalid lock name \"{}\"", s.v);
                            self.err(v.span(), key, msg, Some("lock names follow the job name rule: ^[a-z0-9][a-z0-9_-]{0,62}$".into()));
                        }
                    }
                }
                "retries" => j.retries = self.u32(v, key, 0, 100),
                "retry_delay" => j.retry_delay = self.duration(v, key, false),
                "params" => {
                    if let Some(t) = self.table(v, key) {
                        for (pk, pv) in t.iter() {
                            let name: &str = pk.get_ref();
                            let rel = format!("params.{name}");
                            if !template::is_valid_name(name) {
                                let msg = format!("invalid param name `{name}`");
                                self.err(
                                    pk.span(),
                                    &rel,
                                    msg,
                                    Some("param names are letters, digits, `_` and `-`".into()),
                                );
                                continue;
                            }
                            if template::BUILTINS.contains(&name) || name == template::ITEM {
                                let msg = format!(
                                    "param `{name}` would shadow the built-in template `{{{name}}}`"
                                );
                                self.err(pk.span(), &rel, msg, Some("rename the param".into()));
                                continue;
                            }
                            if let Some(s) = self.string(pv, &rel) {
                                j.params.insert(name.to_string(), s);
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(t) = self.table(v, key) {
                        j.items = self.items(t, k.span());
                    }
                }
                "notify" => {
                    if let Some(t) = self.table(v, key) {
                        j.notify = self.notify(t);
                    }
                }
                "runbook" => {
                    if let Some(t) = self.table(v, key) {
                        for (k2, v2) in t.iter() {
                            let name: &str = k2.get_ref();
                            let rel = format!("runbook.{name}");
                            match name {
                                "url" => j.runbook.url = self.nonempty(v2, &rel),
                                "verify" => j.runbook.verify = self.nonempty(v2, &rel),
                                "notes" => j.runbook.notes = self.nonempty(v2, &rel),
                                _ => self.unknown(k2.span(), &rel, name, RUNBOOK_KEYS),
                            }
                        }
                    }
                }
                "guideline" => {
                    if let Some(t) = self.table(v, key) {
                        j.guideline = self.guideline(t);
                    }
                }
                "distributed" => {
                    if let Some(t) = self.table(v, key) {
                        for (k2, v2) in t.iter() {
                            let name: &str = k2.get_ref();
                            let rel = format!("distributed.{name}");
                            match name {
                                "enabled" => j.distributed.enabled = self.boolean(v2, &rel),
                                "batch" => j.distributed.batch = self.u32(v2, &rel, 1, 100_000),
                                "lease" => j.distributed.lease = self.duration(v2, &rel, true),
                                _ => self.unknown(k2.span(), &rel, name, DISTRIBUTED_KEYS),
                            }
                        }
                    }
                }
                _ => self.unknown(k.span(), key, key, JOB_KEYS),
            }
        }
        j.bad = std::mem::take(&mut self.bad);
        j
    }

    fn items(&mut self, t: &DeTable<'_>, key_span: Range<usize>) -> PItems {
        let mut it = PItems {
            table: Some(self.at(key_span)),
            ..PItems::default()
        };
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let rel = format!("items.{name}");
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
                _ => self.unknown(k.span(), &rel, name, ITEMS_KEYS),
            }
        }
        it
    }

    fn notify(&mut self, t: &DeTable<'_>) -> PNotify {
        let mut n = PNotify::default();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let rel = format!("notify.{name}");
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
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let rel = format!("guideline.{name}");
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
                match reviewed_by {
                    Some(r) => Some(Sp {
                        v: SchemaChange::Reviewed {
                            reviewed_by: r.v.into_iter().map(|s| s.v).collect(),
                            reference: reference.map(|s| s.v),
                        },
                        at,
                    }),
                    None => {
                        if !self.bad.contains(&format!("{rel}.reviewed_by")) {
                            let msg = format!("`{}` needs `reviewed_by`", self.full(rel));
                            self.err(
                                v.span(),
                                rel,
                                msg,
                                Some(
                                    "write { reviewed_by = [\"db-team\"], ref = \"PR-1234\" }"
                                        .into(),
                                ),
                            );
                        }
                        None
                    }
                }
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
            match key {
                "state" => {
                    if let Some(s) = self.nonempty(v, key) {
                        let ok =
                            s.v.strip_prefix("sqlite:")
                                .map(|p| !p.is_empty())
                                .or_else(|| {
                                    ["postgres://", "postgresql://"]
                                        .iter()
                                        .find_map(|p| s.v.strip_prefix(p))
                                        .map(|r| !r.is_empty())
                                })
                                .unwrap_or(false);
                        if ok {
                            g.state = Some(s.v);
                        } else {
                            let msg = format!("`state` = \"{}\" is not a state store URL", s.v);
                            self.err(v.span(), key, msg, Some("write \"sqlite:/var/lib/batchguard/state.db\" or \"postgres://user@host/db\"".into()));
                        }
                    }
                }
                "log_dir" | "artifact_dir" => {
                    if let Some(s) = self.nonempty(v, key) {
                        let p = normalize(Path::new(&s.v), dir);
                        if under_personal_home(&p, home) {
                            let msg = format!(
                                "`{key}` = \"{}\" is under a personal home directory ({})",
                                s.v,
                                p.display()
                            );
                            self.err(v.span(), key, msg, Some(G10_HELP.into()));
                        } else if key == "log_dir" {
                            g.log_dir = p;
                        } else {
                            g.artifact_dir = Some(p);
                        }
                    }
                }
                "host" => g.host = self.nonempty(v, key).map(|s| s.v),
                "dashboard_url" => g.dashboard_url = self.http_url(v, key).map(|s| s.v),
                "log_max" => {
                    if let Some(n) = self.size(v, key) {
                        g.log_max_bytes = n.v;
                    }
                }
                "log_retention" => {
                    if let Some(d) = self.duration(v, key, true) {
                        g.log_retention = d.v;
                    }
                }
                "lease" => {
                    if let Some(d) = self.duration(v, key, true) {
                        g.lease = d.v;
                    }
                }
                "notify_digest" => {
                    if let Some(d) = self.duration(v, key, true) {
                        g.notify_digest = d.v;
                    }
                }
                "missed_grace" => {
                    if let Some(d) = self.duration(v, key, true) {
                        g.missed_grace = d.v;
                    }
                }
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
                        for (ck, cv) in t.iter() {
                            let name: &str = ck.get_ref();
                            declared.insert(name.to_string());
                            let rel = format!("channels.{name}");
                            if !template::is_valid_name(name) {
                                let msg = format!("invalid channel name `{name}`");
                                self.err(
                                    ck.span(),
                                    &rel,
                                    msg,
                                    Some("channel names are letters, digits, `_` and `-`".into()),
                                );
                                continue;
                            }
                            let Some(ct) = self.table(cv, &rel) else {
                                continue;
                            };
                            if let Some(c) = self.channel(ct, &rel, ck.span()) {
                                g.channels.insert(name.to_string(), c);
                            }
                        }
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

    fn channel(&mut self, t: &DeTable<'_>, rel: &str, key_span: Range<usize>) -> Option<Channel> {
        let full = self.full(rel);
        let Some((_, tv)) = t.iter().find(|(k, _)| k.get_ref() == "type") else {
            let msg = format!("channel `{full}` has no `type`");
            self.err(
                key_span,
                rel,
                msg,
                Some(format!(
                    "add type = \"slack\" (one of {})",
                    quote_list(CHANNEL_TYPES)
                )),
            );
            return None;
        };
        let kind: &str = match tv.get_ref() {
            DeValue::String(s) if CHANNEL_TYPES.contains(&s.as_ref()) => s,
            DeValue::String(s) => {
                let help = match closest(s, CHANNEL_TYPES) {
                    Some(c) => format!(
                        "did you mean \"{c}\"? (types: {})",
                        quote_list(CHANNEL_TYPES)
                    ),
                    None => format!("types: {}", quote_list(CHANNEL_TYPES)),
                };
                let msg = format!("unknown channel type \"{s}\" for `{full}.type`");
                self.err(tv.span(), &format!("{rel}.type"), msg, Some(help));
                return None;
            }
            _ => {
                self.wrong_type(
                    tv,
                    &format!("{rel}.type"),
                    &format!("one of {}", quote_list(CHANNEL_TYPES)),
                    None,
                );
                return None;
            }
        };
        let allowed: &[&str] = match kind {
            "slack" | "ping" => &["type", "url", "url_env"],
            "webhook" => &["type", "url", "url_env", "secret_env"],
            "email" => &["type", "smtp", "from", "to", "username_env", "password_env"],
            _ => &["type", "command"],
        };
        let errs_before = self.errs.len();
        let mut url = None;
        let mut url_env = None;
        let mut secret_env = None;
        let mut smtp = None;
        let mut from = None;
        let mut to = None;
        let mut username_env = None;
        let mut password_env = None;
        let mut command = None;
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let r2 = format!("{rel}.{name}");
            if !allowed.contains(&name) {
                self.unknown(k.span(), &r2, name, allowed);
                continue;
            }
            match name {
                "url" => url = self.http_url(v, &r2),
                "url_env" => url_env = self.env_name(v, &r2),
                "secret_env" => secret_env = self.env_name(v, &r2),
                "username_env" => username_env = self.env_name(v, &r2),
                "password_env" => password_env = self.env_name(v, &r2),
                "smtp" => {
                    if let Some(s) = self.nonempty(v, &r2) {
                        let host =
                            s.v.strip_prefix("smtp://")
                                .or_else(|| s.v.strip_prefix("smtps://"));
                        if host.is_some_and(|h| {
                            !h.is_empty() && !h.starts_with('/') && !h.contains(char::is_whitespace)
                        }) {
                            smtp = Some(s);
                        } else {
                            let msg =
                                format!("`{}` = \"{}\" is not an SMTP URL", self.full(&r2), s.v);
                            self.err(
                                v.span(),
                                &r2,
                                msg,
                                Some("write \"smtp://host:25\" or \"smtps://host:465\"".into()),
                            );
                        }
                    }
                }
                "from" => {
                    if let Some(s) = self.nonempty(v, &r2) {
                        if s.v.contains('@') {
                            from = Some(s);
                        } else {
                            let msg = format!(
                                "`{}` = \"{}\" is not an email address",
                                self.full(&r2),
                                s.v
                            );
                            self.err(v.span(), &r2, msg, None);
                        }
                    }
                }
                "to" => {
                    if let Some(list) = self.strings(v, &r2, true, "[\"oncall@example.com\"]") {
                        let bad: Vec<_> = list
                            .v
                            .iter()
                            .filter(|a| !a.v.contains('@'))
                            .cloned()
                            .collect();
                        if bad.is_empty() {
                            to = Some(list);
                        }
                        for a in bad {
                            let msg = format!(
                                "`{}` entry \"{}\" is not an email address",
                                self.full(&r2),
                                a.v
                            );
                            self.errs.push(a.at.diag(Some(&self.full(&r2)), msg, None));
                        }
                    }
                }
                "command" => {
                    command = self.strings(v, &r2, true, "[\"/usr/local/bin/page-oncall\"]")
                }
                _ => {} // "type"
            }
        }
        if self.errs.len() > errs_before {
            return None;
        }
        let mut missing = |w: &mut W, what: &str, help: String| {
            let msg = format!("channel `{full}` (type \"{kind}\") needs `{what}`");
            w.err(key_span.clone(), rel, msg, Some(help));
        };
        let url_source = |w: &mut W,
                          url: Opt<String>,
                          url_env: Opt<String>,
                          missing: &mut dyn FnMut(&mut W, &str, String)|
         -> Option<UrlSource> {
            match (url, url_env) {
                (Some(u), None) => Some(UrlSource::Literal(u.v)),
                (None, Some(e)) => Some(UrlSource::Env(e.v)),
                (Some(_), Some(e)) => {
                    let msg = format!("channel `{full}` sets both `url` and `url_env`");
                    w.errs.push(e.at.diag(
                        Some(&format!("{full}.url_env")),
                        msg,
                        Some("keep exactly one of them".into()),
                    ));
                    None
                }
                (None, None) => {
                    missing(
                        w,
                        "url` or `url_env",
                        "add url_env = \"VAR_NAME\" (the variable holds the URL)".into(),
                    );
                    None
                }
            }
        };
        match kind {
            "slack" => Some(Channel::Slack {
                url: url_source(self, url, url_env, &mut missing)?,
            }),
            "ping" => Some(Channel::Ping {
                url: url_source(self, url, url_env, &mut missing)?,
            }),
            "webhook" => Some(Channel::Webhook {
                url: url_source(self, url, url_env, &mut missing)?,
                secret_env: secret_env.map(|s| s.v),
            }),
            "email" => {
                if smtp.is_none() {
                    missing(self, "smtp", "add smtp = \"smtp://host:25\"".into());
                }
                if from.is_none() {
                    missing(self, "from", "add from = \"batch@example.com\"".into());
                }
                if to.is_none() {
                    missing(self, "to", "add to = [\"oncall@example.com\"]".into());
                }
                Some(Channel::Email {
                    smtp: smtp?.v,
                    from: from?.v,
                    to: to?.v.into_iter().map(|s| s.v).collect(),
                    username_env: username_env.map(|s| s.v),
                    password_env: password_env.map(|s| s.v),
                })
            }
            _ => match command {
                Some(c) => Some(Channel::Command {
                    command: c.v.into_iter().map(|s| s.v).collect(),
                }),
                None => {
                    missing(
                        self,
                        "command",
                        "add command = [\"/usr/local/bin/page-oncall\"]".into(),
                    );
                    None
                }
            },
        }
    }
}

fn check_schedule(s: &str) -> Result<(), (String, String)> {
    const NICK: &[&str] = &[
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@midnight",
    ];
    let help = "use 5 fields \"minute hour day-of-month month day-of-week\" (e.g. \"30 3 * * *\") or @hourly, @daily, @weekly, @monthly, @yearly".to_string();
    let t = s.trim();
    if t.starts_with('@') {
        if NICK.contains(&t) {
            return Ok(());
        }
        let nick_help = match closest(t, NICK) {
            Some(c) => format!("did you mean \"{c}\"?"),
            None => help,
        };
        return Err((
            format!("invalid schedule \"{s}\": unknown nickname"),
            nick_help,
        ));
    }
    let fields: Vec<&str> = t.split_whitespace().collect();
    if fields.len() != 5 {
        let extra = if fields.len() == 6 {
            " (a seconds field is not supported: cron fires at minute granularity)"
        } else {
            ""
        };
        return Err((
            format!(
                "invalid schedule \"{s}\": expected 5 fields, found {}{extra}",
                fields.len()
            ),
            help,
        ));
    }
    // Only what cron itself understands: no `L`, `W`, `#`, `?`.
    let names_ok = |f: &str| {
        f.split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .all(|w| {
                let w = w.to_ascii_uppercase();
                w.len() == 3
                    && [
                        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                        "NOV", "DEC", "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
                    ]
                    .contains(&w.as_str())
            })
    };
    for f in &fields {
        if !f
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/'))
            || !names_ok(f)
        {
            return Err((
                format!("invalid schedule \"{s}\": unsupported field `{f}`"),
                help,
            ));
        }
    }
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build();
    parser
        .parse(t)
        .map(|_| ())
        .map_err(|e| (format!("invalid schedule \"{s}\": {e}"), help))
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

fn or<T: Clone>(a: Option<T>, b: &Option<T>) -> Option<T> {
    a.or_else(|| b.clone())
}

/// `job` over `defaults`: the job's value wins; tables merge key by key.
pub(crate) fn merge(d: &PJob, j: PJob) -> PJob {
    let mut env = d.env.clone();
    env.extend(j.env);
    let mut params = d.params.clone();
    params.extend(j.params);
    let mut bad = d.bad.clone();
    bad.extend(j.bad);
    PJob {
        any: d.any || j.any,
        description: or(j.description, &d.description),
        command: or(j.command, &d.command),
        workdir: or(j.workdir, &d.workdir),
        user: or(j.user, &d.user),
        env,
        env_file: or(j.env_file, &d.env_file),
        secrets: or(j.secrets, &d.secrets),
        schedule: or(j.schedule, &d.schedule),
        timezone: or(j.timezone, &d.timezone),
        timeout: or(j.timeout, &d.timeout),
        kill_grace: or(j.kill_grace, &d.kill_grace),
        expected_duration: or(j.expected_duration, &d.expected_duration),
        memory_max: or(j.memory_max, &d.memory_max),
        concurrency: or(j.concurrency, &d.concurrency),
        lock: or(j.lock, &d.lock),
        retries: or(j.retries, &d.retries),
        retry_delay: or(j.retry_delay, &d.retry_delay),
        params,
        items: PItems {
            table: or(j.items.table, &d.items.table),
            source: or(j.items.source, &d.items.source),
            source_file: or(j.items.source_file, &d.items.source_file),
            run: or(j.items.run, &d.items.run),
            mode: or(j.items.mode, &d.items.mode),
            scope: or(j.items.scope, &d.items.scope),
            parallelism: or(j.items.parallelism, &d.items.parallelism),
            rate: or(j.items.rate, &d.items.rate),
            max_attempts: or(j.items.max_attempts, &d.items.max_attempts),
            item_timeout: or(j.items.item_timeout, &d.items.item_timeout),
        },
        notify: PNotify {
            on: or(j.notify.on, &d.notify.on),
            channels: or(j.notify.channels, &d.notify.channels),
        },
        runbook: PRunbook {
            url: or(j.runbook.url, &d.runbook.url),
            verify: or(j.runbook.verify, &d.runbook.verify),
            notes: or(j.runbook.notes, &d.runbook.notes),
        },
        guideline: PGuideline {
            reads: or(j.guideline.reads, &d.guideline.reads),
            replica_dsn_env: or(j.guideline.replica_dsn_env, &d.guideline.replica_dsn_env),
            max_replica_lag: or(j.guideline.max_replica_lag, &d.guideline.max_replica_lag),
            expected_items: or(j.guideline.expected_items, &d.guideline.expected_items),
            write_impact: or(j.guideline.write_impact, &d.guideline.write_impact),
            schema_change: or(j.guideline.schema_change, &d.guideline.schema_change),
            overlap_safe: or(j.guideline.overlap_safe, &d.guideline.overlap_safe),
            clean: or(j.guideline.clean, &d.guideline.clean),
            role_ok: or(j.guideline.role_ok, &d.guideline.role_ok),
        },
        distributed: PDistributed {
            enabled: or(j.distributed.enabled, &d.distributed.enabled),
            batch: or(j.distributed.batch, &d.distributed.batch),
            lease: or(j.distributed.lease, &d.distributed.lease),
        },
        bad,
    }
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

pub(crate) fn resolve(pj: PJob, cx: &Ctx<'_>, errs: &mut Vec<Diagnostic>) -> Option<Job> {
    let before = errs.len();
    let missing = |key: &str, help: &str| {
        At::file(cx.src).diag(
            Some(key),
            format!("missing required key `{key}` in job `{}`", cx.name),
            Some(help.to_string()),
        )
    };
    let home = cx.home.as_deref();

    // Templates
    let params_allowed: Vec<&str> = template::BUILTINS.to_vec();
    for (k, v) in &pj.params {
        check_template(
            v,
            &format!("params.{k}"),
            cx.src,
            &params_allowed,
            false,
            errs,
        );
    }
    let mut allowed: Vec<&str> = template::BUILTINS.to_vec();
    allowed.extend(pj.params.keys().map(String::as_str));
    let mut with_item = allowed.clone();
    with_item.push(template::ITEM);

    let command = match &pj.command {
        Some(c) => {
            for a in &c.v {
                check_template(a, "command", cx.src, &allowed, false, errs);
            }
            Some(c.v.iter().map(|s| s.v.clone()).collect::<Vec<_>>())
        }
        // Per-item mode runs `items.run` once per key: `command` is optional.
        None if pj.items.run.is_some() => Some(Vec::new()),
        None => {
            if !pj.bad.contains("command") {
                errs.push(missing(
                    "command",
                    "add command = [\"/path/to/program\", \"arg\"] (an argv; no shell)",
                ));
            }
            None
        }
    };
    for (s, key) in [
        (&pj.runbook.url, "runbook.url"),
        (&pj.runbook.verify, "runbook.verify"),
        (&pj.runbook.notes, "runbook.notes"),
    ] {
        if let Some(s) = s {
            check_template(s, key, cx.src, &allowed, false, errs);
        }
    }

    // Paths
    let workdir = match &pj.workdir {
        Some(w) => g10(
            w,
            "workdir",
            !Arc::ptr_eq(&w.at.src, cx.src),
            &cx.base,
            home,
            errs,
        ),
        None => Some(PathBuf::from("/")),
    };
    let env_file = pj
        .env_file
        .as_ref()
        .map(|p| normalize(Path::new(&p.v), &cx.base));

    // Items
    let items = if pj.items.table.is_some() {
        let it = &pj.items;
        let mode = it.mode.as_ref().map_or(ItemsMode::PerItem, |m| m.v);
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
        if let Some(src) = &it.source {
            for a in &src.v {
                check_template(a, "items.source", cx.src, &allowed, false, errs);
            }
        }
        if let Some(s) = &it.scope {
            check_template(s, "items.scope", cx.src, &allowed, false, errs);
        }
        match (mode, &it.run) {
            (ItemsMode::Stream, Some(r)) => errs.push(r.at.diag(
                Some("items.run"),
                "`items.run` is not allowed with `items.mode = \"stream\"`",
                Some("in stream mode the job's `command` receives the keys on stdin; remove `items.run` or the mode".into()),
            )),
            (ItemsMode::PerItem, None) if !pj.bad.contains("items.run") && !pj.bad.contains("items.mode") => {
                let at = it.mode.as_ref().map_or(table_at.clone(), |m| m.at.clone());
                errs.push(at.diag(
                    Some("items.run"),
                    "per-item mode needs `items.run`",
                    Some("add run = [\"./process\", \"{item}\"], or set mode = \"stream\"".into()),
                ))
            }
            (_, Some(r)) => {
                for a in &r.v {
                    check_template(a, "items.run", cx.src, &with_item, true, errs);
                }
            }
            _ => {}
        }
        let source_file = it.source_file.as_ref().map(|f| {
            normalize(
                Path::new(&f.v),
                workdir.as_deref().unwrap_or(Path::new("/")),
            )
        });
        Some(Items {
            source: it
                .source
                .as_ref()
                .map(|s| s.v.iter().map(|x| x.v.clone()).collect()),
            source_file,
            run: it
                .run
                .as_ref()
                .map(|s| s.v.iter().map(|x| x.v.clone()).collect()),
            mode,
            scope: it.scope.as_ref().map(|s| s.v.clone()),
            parallelism: it.parallelism.as_ref().map_or(1, |p| p.v),
            rate: it.rate.as_ref().map(|r| r.v),
            max_attempts: it.max_attempts.as_ref().map_or(3, |p| p.v),
            item_timeout: it.item_timeout.as_ref().map(|d| d.v),
        })
    } else {
        None
    };

    check_channels(&pj, cx.channels, Some(cx.src), errs);

    if errs.len() > before {
        return None;
    }
    let s = |o: &Opt<String>| o.as_ref().map(|s| s.v.clone());
    Some(Job {
        name: cx.name.to_string(),
        file: cx.file.to_path_buf(),
        description: s(&pj.description),
        command: command?,
        workdir: workdir?,
        user: s(&pj.user),
        env: pj
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.v.clone()))
            .collect(),
        env_file,
        secrets: pj
            .secrets
            .as_ref()
            .map(|l| l.v.iter().map(|x| x.v.clone()).collect())
            .unwrap_or_default(),
        schedule: s(&pj.schedule),
        timezone: s(&pj.timezone),
        timeout: pj.timeout.as_ref().map(|d| d.v),
        kill_grace: pj
            .kill_grace
            .as_ref()
            .map_or(Duration::from_secs(10), |d| d.v),
        expected_duration: pj.expected_duration.as_ref().map(|d| d.v),
        memory_max: pj.memory_max.as_ref().map(|d| d.v),
        concurrency: pj.concurrency.as_ref().map_or(Concurrency::Forbid, |c| c.v),
        lock: s(&pj.lock).unwrap_or_else(|| cx.name.to_string()),
        retries: pj.retries.as_ref().map_or(0, |r| r.v),
        retry_delay: pj
            .retry_delay
            .as_ref()
            .map_or(Duration::from_secs(30), |d| d.v),
        params: pj
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.v.clone()))
            .collect(),
        items,
        notify: Notify {
            on: pj
                .notify
                .on
                .as_ref()
                .map_or_else(|| DEFAULT_EVENTS.to_vec(), |o| o.v.clone()),
            channels: pj
                .notify
                .channels
                .as_ref()
                .map(|l| l.v.iter().map(|x| x.v.clone()).collect())
                .unwrap_or_default(),
        },
        runbook: Runbook {
            url: s(&pj.runbook.url),
            verify: s(&pj.runbook.verify),
            notes: s(&pj.runbook.notes),
        },
        guideline: Guideline {
            reads: pj.guideline.reads.as_ref().map(|r| r.v),
            replica_dsn_env: s(&pj.guideline.replica_dsn_env),
            max_replica_lag: pj.guideline.max_replica_lag.as_ref().map(|d| d.v),
            expected_items: pj.guideline.expected_items.as_ref().map(|d| d.v),
            write_impact: s(&pj.guideline.write_impact),
            schema_change: pj.guideline.schema_change.as_ref().map(|d| d.v.clone()),
            overlap_safe: s(&pj.guideline.overlap_safe),
            clean: pj
                .guideline
                .clean
                .as_ref()
                .map(|l| l.v.iter().map(|x| x.v.clone()).collect()),
            role_ok: s(&pj.guideline.role_ok),
        },
        distributed: Distributed {
            enabled: pj.distributed.enabled.as_ref().is_some_and(|b| b.v),
            batch: pj.distributed.batch.as_ref().map_or(100, |b| b.v),
            lease: pj
                .distributed
                .lease
                .as_ref()
                .map_or(Duration::from_secs(60), |d| d.v),
        },
    })
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
