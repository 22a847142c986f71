//! The local spool: outcomes that could not be recorded (the store locked
//! past its bounded wait, unreachable, or its disk full) are kept in a small
//! file on this host, and the next invocation (`run`, `watchdog`, `status`,
//! `runs`, `show`) records them (the real outcome and exit code, never
//! `lost`), releases the lock and sends the notification (SPEC §11).
//!
//! Where: `STATE_DIR/spool` for an SQLite store (`/var/lib/batchguard/spool`
//! otherwise), then `/run/batchguard/spool` (RAM: it survives a full disk),
//! then the temp dir. Directories are 0700 and files 0600, owned by the
//! runner; a file or directory owned by anyone else, or reached through a
//! link, is never read: a job cannot forge an outcome. Each entry names the
//! store it belongs to (a hash of its URL), so one host with several stores
//! never replays into the wrong one.

use crate::clock;
use crate::exec::{Context, Request, prepare};
use crate::outcome::Outcome;
use crate::store::RunEnd;
use batchguard_config::Job;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One spooled end of a run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub store: String,
    pub job: String,
    pub run_id: String,
    /// The lock to release with the record (`None` for `allow` jobs).
    pub release: Option<(String, i64)>,
    pub end: RunEnd,
    pub items_failed: Vec<String>,
    pub tail: Vec<String>,
    pub spooled_ms: i64,
}

impl Entry {
    pub fn from_end(
        state_url: &str,
        job: &str,
        run_id: &str,
        release: Option<(&str, i64)>,
        end: &RunEnd,
        items_failed: &[String],
        tail: &[String],
    ) -> Entry {
        Entry {
            store: store_key(state_url),
            job: job.to_string(),
            run_id: run_id.to_string(),
            release: release.map(|(l, f)| (l.to_string(), f)),
            end: end.clone(),
            items_failed: items_failed.to_vec(),
            tail: tail.to_vec(),
            spooled_ms: clock::now_ms(),
        }
    }
}

/// A stable name for a store (FNV-1a of its URL): never the URL itself,
/// which may hold a password.
fn store_key(url: &str) -> String {
    format!(
        "{:016x}",
        crate::items::distributed::fnv1a64(url.as_bytes())
    )
}

/// The spool directories, most preferred first.
fn dirs(state_url: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match state_url
        .strip_prefix("sqlite:")
        .map(|p| Path::new(p.strip_prefix("//").unwrap_or(p)))
    {
        Some(db) => out.push(db.parent().unwrap_or(Path::new("/")).join("spool")),
        None => out.push(PathBuf::from("/var/lib/batchguard/spool")),
    }
    out.push(PathBuf::from("/run/batchguard/spool"));
    out.push(std::env::temp_dir().join(format!("batchguard-spool-{}", euid())));
    out
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Ours to read and write: a real directory or file (not a link), owned by
/// this user, not writable by others.
fn trusted(path: &Path, dir: bool) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let kind = if dir { m.is_dir() } else { m.is_file() };
            kind && m.uid() == euid() && m.permissions().mode() & 0o022 == 0
        }
        Err(_) => false,
    }
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if trusted(dir, true) {
        Ok(())
    } else {
        Err(std::io::Error::other("not a private directory of ours"))
    }
}

/// Keep `entry` in the first spool directory that takes it. Returns where.
pub(crate) fn write(state_url: &str, entry: &Entry) -> Option<PathBuf> {
    let body = serde_json::to_vec(entry).ok()?;
    for dir in dirs(state_url) {
        match write_in(&dir, &entry.run_id, &body) {
            Ok(path) => return Some(path),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot spool there"),
        }
    }
    None
}

fn write_in(dir: &Path, run_id: &str, body: &[u8]) -> std::io::Result<PathBuf> {
    ensure_dir(dir)?;
    let path = dir.join(format!("{run_id}.json"));
    crate::atomic_file::replace(&path, body, 0o600)?;
    Ok(path)
}

/// Spooled entries of this store, with their files.
fn entries(state_url: &str) -> Vec<(PathBuf, Entry)> {
    let key = store_key(state_url);
    let mut out = Vec::new();
    for dir in dirs(state_url) {
        if !trusted(&dir, true) {
            continue;
        }
        let Ok(list) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in list.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") || !trusted(&path, false) {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            {
                Some(entry) if entry.store == key => out.push((path, entry)),
                Some(_) => {}
                None => tracing::warn!(file = %path.display(), "unreadable spool entry left alone"),
            }
        }
    }
    out.sort_by_key(|(_, e)| e.spooled_ms);
    out
}

/// Record every spooled outcome of this store, release its lock and notify
/// it (when its job is known to `find_job`). Stops at the first store
/// error (the store is still unusable; the entries stay). Returns how many
/// were recorded.
pub(crate) fn replay(ctx: &Context, find_job: &dyn Fn(&str) -> Option<Job>) -> usize {
    let mut n = 0;
    for (path, entry) in entries(&ctx.state_url) {
        match record(ctx, &entry) {
            Ok(()) => {
                tracing::info!(run = %entry.run_id, "recorded a spooled outcome");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a replayed spool entry");
                }
                notify(ctx, &entry, find_job);
                n += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store still cannot record spooled outcomes");
                break;
            }
        }
    }
    n
}

fn record(ctx: &Context, entry: &Entry) -> crate::store::Result<()> {
    let store = ctx.store.as_ref();
    if !entry.items_failed.is_empty() {
        store.set_run_failed_items(&entry.run_id, &entry.items_failed)?;
    }
    let release = entry.release.as_ref().map(|(l, f)| (l.as_str(), *f));
    store.finish_run(&entry.run_id, release, &entry.end)
}

fn notify(ctx: &Context, entry: &Entry, find_job: &dyn Fn(&str) -> Option<Job>) {
    let Some(job) = find_job(&entry.job) else {
        return;
    };
    let Ok(Some(record)) = ctx.store.get_run(&entry.run_id) else {
        return;
    };
    let req = Request {
        params: record.params.clone().into_iter().collect(),
        scope: record.scope.clone(),
        ..Request::default()
    };
    match prepare(&job, &req, &ctx.global) {
        Ok(p) => {
            let end = &entry.end;
            let outcome = Outcome::parse(&end.outcome, end.exit_code, end.signal);
            super::notice::run_ended(
                ctx,
                &job,
                &p,
                &record,
                outcome,
                end,
                &entry.tail,
                &entry.items_failed,
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot notify the spooled run {}", entry.run_id),
    }
}
