//! batchguard's configuration: reads `batchguard.toml` (global settings) and
//! `jobs/*.toml` (one job per file), validates them strictly and resolves
//! each job (defaults merged, paths absolute).
//!
//! Every problem becomes a [`Diagnostic`] naming the file, line, column and
//! key, saying what is wrong and how to fix it; [`load`] collects the
//! problems of all files before returning. Nothing here panics on any input,
//! touches a database or starts a process.
//!
//! Decisions beyond SPEC §1-3 (documented here for the lead):
//! - `[defaults]` merges into each job key by key: scalar keys and arrays are
//!   replaced by the job's value; the tables `items`, `notify`, `runbook`,
//!   `guideline`, `distributed` merge field by field, and `env` and `params`
//!   merge variable by variable (the job's value wins).
//! - Relative `workdir` and `env_file` resolve against the job file's
//!   directory; relative `items.source_file` against `workdir`; relative
//!   `log_dir`/`artifact_dir` against the config directory.
//! - Sizes: `KB` is rejected as ambiguous (write `kB` or `KiB`).
//! - Schedules accept only what cron does ([`schedule`]: 5 fields of digits,
//!   `* , - /`, month names in the month field and weekday names in the
//!   day-of-week field, or the nicknames; no seconds field, no `L W # ?`).
//!   One that can never fire is valid but warned about ([`warnings`]).
//! - `exec` commands are literal: [`adhoc_job`] escapes braces so that
//!   rendering the command as a template gives it back unchanged.

mod diag;
pub mod dotenv;
mod model;
mod parse;
pub mod schedule;
pub mod template;
mod units;
pub mod zone;

/// Every key the files take, table by table: what `schema/*.schema.json`
/// must describe (tests/schema.rs holds them to it).
pub mod keys {
    pub use crate::parse::{
        CHANNEL_TYPES, DISTRIBUTED_KEYS, GLOBAL_KEYS, GUIDELINE_KEYS, ITEMS_KEYS, JOB_KEYS,
        NOTIFY_KEYS, RUNBOOK_KEYS,
    };

    /// The keys a channel of type `kind` takes (`type` included).
    pub fn channel(kind: &str) -> &'static [&'static str] {
        crate::parse::channel_keys(kind)
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diag::{Diagnostic, Errors};
pub use model::*;
pub use units::{Rate, format_duration, format_size, parse_duration, parse_rate, parse_size};

use diag::Source;
use parse::{Ctx, W};

/// Name of the global settings file inside the config directory.
pub const GLOBAL_FILE: &str = "batchguard.toml";
/// Name of the jobs directory inside the config directory.
pub const JOBS_DIR: &str = "jobs";

/// Whether `name` is a valid job (and lock) name: `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn is_valid_job_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Rule G10: if `path` (made absolute against `base` and normalised) lies
/// under `/home/*`, `/root` or the invoking user's `$HOME`, the message to
/// show; `None` when it is allowed.
pub fn personal_home_violation(path: &Path, base: &Path) -> Option<String> {
    let abs = parse::normalize(path, base);
    let home = parse::current_home();
    parse::under_personal_home(&abs, home.as_deref()).then(|| {
        format!(
            "{} is under a personal home directory; rule G10: logs and artifacts are never written under a personal home; use /var/log/batchguard or /srv/…",
            abs.display()
        )
    })
}

/// Read a configuration file. It must be a regular file: it is opened
/// without blocking and checked before reading, so a FIFO or a device put
/// in its place is an error, never a hang.
fn read(path: &Path) -> Result<Option<String>, Box<Diagnostic>> {
    match read_regular(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
            Box::new(Diagnostic::general(
                path,
                None,
                "the file is not valid UTF-8",
                Some("save it as UTF-8".into()),
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Err(Box::new(Diagnostic::general(
                path,
                None,
                "not a regular file",
                Some(
                    "a configuration file must be a regular file (not a FIFO, socket or device)"
                        .into(),
                ),
            )))
        }
        Err(e) => Err(Box::new(Diagnostic::general(
            path,
            None,
            format!("cannot read the file: {e}"),
            None,
        ))),
    }
}

fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Parses global settings from text. `dir` is the config directory (relative
/// `log_dir`/`artifact_dir` resolve against it); `path` names the file in
/// diagnostics.
pub fn parse_global_str(dir: &Path, path: &Path, text: &str) -> Result<Global, Errors> {
    let (g, _, errs) = global_inner(dir, path, text);
    if errs.is_empty() {
        Ok(g)
    } else {
        Err(Errors::sorted(errs))
    }
}

fn global_inner(
    dir: &Path,
    path: &Path,
    text: &str,
) -> (Global, BTreeSet<String>, Vec<Diagnostic>) {
    let src = Source::new(path, text);
    let table = match parse::parse_toml(&src, text) {
        Ok(t) => t,
        Err(errs) => {
            let g = Global {
                file: Some(path.to_path_buf()),
                ..Global::default()
            };
            return (g, BTreeSet::new(), errs);
        }
    };
    let mut w = W::new(&src, "");
    let home = parse::current_home();
    let (g, declared) = w.global(&table, &absolute(dir), home.as_deref());
    (g, declared, w.errs)
}

/// Loads `DIR/batchguard.toml`; a missing file means all defaults.
pub fn load_global(dir: &Path) -> Result<Global, Errors> {
    let path = dir.join(GLOBAL_FILE);
    match read(&path) {
        Ok(Some(text)) => parse_global_str(dir, &path, &text),
        Ok(None) => Ok(Global::default()),
        Err(d) => Err(Errors(vec![*d])),
    }
}

/// Parses one job file's text. `name` is the job name (the file stem; it is
/// validated), `path` names the file in diagnostics and anchors relative paths.
pub fn parse_job_str(name: &str, path: &Path, text: &str, global: &Global) -> Result<Job, Errors> {
    let declared: BTreeSet<String> = global.channels.keys().cloned().collect();
    let mut errs = Vec::new();
    let job = job_inner(name, path, text, global, &declared, &mut errs);
    match job {
        Some(j) if errs.is_empty() => Ok(j),
        _ => Err(Errors::sorted(errs)),
    }
}

fn job_inner(
    name: &str,
    path: &Path,
    text: &str,
    global: &Global,
    declared: &BTreeSet<String>,
    errs: &mut Vec<Diagnostic>,
) -> Option<Job> {
    let src = Source::new(path, text);
    if !is_valid_job_name(name) {
        errs.push(diag::At::file(&src).diag(
            None,
            format!("invalid job name \"{name}\" (the file name without .toml)"),
            Some("rename the file: job names match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase, digits, `_`, `-`; no dots, since cron ignores such file names)".into()),
        ));
    }
    let table = match parse::parse_toml(&src, text) {
        Ok(t) => t,
        Err(mut e) => {
            errs.append(&mut e);
            return None;
        }
    };
    let mut w = W::new(&src, "");
    let pj = w.job(&table);
    errs.append(&mut w.errs);
    let merged = parse::merge(&global.defaults.0, pj);
    let abs = absolute(path);
    let base = abs
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let cx = Ctx {
        name,
        file: path,
        src: &src,
        base,
        channels: declared,
        home: parse::current_home(),
    };
    parse::resolve(merged, &cx, errs)
}

/// Warnings about a configuration that loads: today, schedules that can
/// never fire (`0 0 30 2 *`). Each names the job file.
pub fn warnings(cfg: &Config) -> Vec<String> {
    cfg.jobs
        .values()
        .filter_map(|j| {
            let s = schedule::Schedule::parse(j.schedule.as_deref()?).ok()?;
            Some(format!("{}: {}", j.file.display(), s.never_fires()?))
        })
        .collect()
}

/// Loads one job file from anywhere (`run --file PATH`); the name is the file stem.
pub fn load_job_file(path: &Path, global: &Global) -> Result<Job, Errors> {
    let text = match read(path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(Errors(vec![Diagnostic::general(
                path,
                None,
                "job file not found",
                None,
            )]));
        }
        Err(d) => return Err(Errors(vec![*d])),
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_job_str(&name, path, &text, global)
}

/// Loads the whole config directory: `DIR/batchguard.toml` (optional) and
/// `DIR/jobs/*.toml`. Errors of all files are collected.
pub fn load(dir: &Path) -> Result<Config, Errors> {
    if !dir.is_dir() {
        return Err(Errors(vec![Diagnostic::general(
            dir,
            None,
            format!("config directory {} does not exist", dir.display()),
            Some("pass --config-dir DIR or set BATCHGUARD_CONFIG_DIR".into()),
        )]));
    }
    let mut errs = Vec::new();
    let gpath = dir.join(GLOBAL_FILE);
    let (global, declared) = match read(&gpath) {
        Ok(Some(text)) => {
            let (g, d, mut e) = global_inner(dir, &gpath, &text);
            errs.append(&mut e);
            (g, d)
        }
        Ok(None) => (Global::default(), BTreeSet::new()),
        Err(d) => {
            errs.push(*d);
            (Global::default(), BTreeSet::new())
        }
    };
    let mut jobs = BTreeMap::new();
    let jdir = dir.join(JOBS_DIR);
    let mut files = Vec::new();
    match std::fs::read_dir(&jdir) {
        Ok(rd) => {
            for entry in rd {
                match entry {
                    Ok(e) => {
                        let p = e.path();
                        if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                            files.push(p);
                        }
                    }
                    Err(e) => errs.push(Diagnostic::general(
                        &jdir,
                        None,
                        format!("cannot list the directory: {e}"),
                        None,
                    )),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errs.push(Diagnostic::general(
            &jdir,
            None,
            format!("cannot list the directory: {e}"),
            None,
        )),
    }
    files.sort();
    for p in files {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match read(&p) {
            Ok(Some(text)) => {
                if let Some(j) = job_inner(&name, &p, &text, &global, &declared, &mut errs) {
                    jobs.insert(name, j);
                }
            }
            Ok(None) => {} // vanished while listing
            Err(d) => errs.push(*d),
        }
    }
    if errs.is_empty() {
        Ok(Config {
            dir: dir.to_path_buf(),
            global,
            jobs,
        })
    } else {
        Err(Errors::sorted(errs))
    }
}

/// A job for `exec --name NAME -- CMD…`: the global `[defaults]` apply, the
/// name is validated, and the command is taken literally (no templates).
pub fn adhoc_job(
    name: &str,
    command: Vec<String>,
    timeout: Option<Duration>,
    memory_max: Option<u64>,
    concurrency: Option<Concurrency>,
    global: &Global,
) -> Result<Job, Errors> {
    let src: Arc<Source> = Source::new(Path::new(""), "");
    let mut errs = Vec::new();
    if !is_valid_job_name(name) {
        errs.push(Diagnostic::general(
            "",
            Some("--name"),
            format!("invalid job name \"{name}\""),
            Some("job names match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase, digits, `_`, `-`)".into()),
        ));
    }
    if command.is_empty() || command[0].is_empty() {
        errs.push(Diagnostic::general(
            "",
            Some("command"),
            "no command given",
            Some("write the command after `--`".into()),
        ));
    }
    if command.iter().any(|a| a.contains('\0')) {
        errs.push(Diagnostic::general(
            "",
            Some("command"),
            "the command contains a NUL character",
            None,
        ));
    }
    if timeout.is_some_and(|t| t.is_zero()) {
        errs.push(Diagnostic::general(
            "",
            Some("--timeout"),
            "the timeout must be greater than zero",
            None,
        ));
    }
    if memory_max == Some(0) {
        errs.push(Diagnostic::general(
            "",
            Some("--memory-max"),
            "the memory limit must be greater than zero",
            None,
        ));
    }
    if !errs.is_empty() {
        return Err(Errors(errs));
    }
    let pj = parse::adhoc_pjob(command, timeout, memory_max, concurrency, &src);
    let merged = parse::merge(&global.defaults.0, pj);
    let declared: BTreeSet<String> = global.channels.keys().cloned().collect();
    let cx = Ctx {
        name,
        file: Path::new(""),
        src: &src,
        base: PathBuf::from("/"),
        channels: &declared,
        home: parse::current_home(),
    };
    match parse::resolve(merged, &cx, &mut errs) {
        Some(j) if errs.is_empty() => Ok(j),
        _ => Err(Errors::sorted(errs)),
    }
}
