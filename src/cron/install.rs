//! `/etc/cron.d` files (G13): one `batchguard-JOB` file per scheduled job
//! plus `batchguard-watchdog`, each starting with [`MARKER`] and a line
//! naming the config dir. Installation is atomic per file (temporary file in
//! the same directory, fsync, chmod 0644, rename, fsync of the directory),
//! leaves identical files alone, removes marked `batchguard-*` files of jobs
//! of *this* config dir that no longer exist, and never touches a file
//! without the marker or a job file of another config dir.
//!
//! Every line runs the runner as `root` (cron's user field); the runner
//! drops to the job's `user` itself. The line depends on the daemon
//! ([`Flavor`]): a job with a `timezone` gets `CRON_TZ=` on cronie and a
//! per-minute `run JOB --if-due` line on daemons that ignore `CRON_TZ`;
//! busybox lines have no user field. One `batchguard-watchdog` file serves
//! every config dir installed into the directory: one line per config dir.

use super::CronError;
use super::flavor::Flavor;
use super::schedule::Schedule;
use batchguard_config::Job;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// First line of every file batchguard writes; only files that start with
/// it are ever replaced or removed.
pub const MARKER: &str =
    "# Managed by batchguard: do not edit (batchguard cron install rewrites it).";
/// Every file batchguard writes is named `batchguard-…` (no dots: cron
/// ignores file names with dots).
pub const FILE_PREFIX: &str = "batchguard-";
/// The watchdog's file, which [`install`] always writes.
pub const WATCHDOG_FILE: &str = "batchguard-watchdog";

const SHELL_LINE: &str = "SHELL=/bin/sh";
const PATH_LINE: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MODE: u32 = 0o644;

/// One scheduled job, as cron.d needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronEntry {
    pub job: String,
    /// As written in the job file (5 fields or a nickname).
    pub schedule: String,
    /// IANA name; rendered as `CRON_TZ=` (cronie) or an `--if-due` line.
    pub timezone: Option<String>,
    /// The job's `user`, or `root`. Not cron's user field: cron always
    /// starts the runner as root, which drops to this user.
    pub user: String,
}

impl CronEntry {
    /// The entry of `job` on `schedule`, in `timezone`, running as `user`.
    pub fn new(job: &str, schedule: &str, timezone: Option<&str>, user: &str) -> CronEntry {
        CronEntry {
            job: job.into(),
            schedule: schedule.into(),
            timezone: timezone.map(str::to_string),
            user: user.into(),
        }
    }

    /// The entry of a job with a `schedule`; `None` for unscheduled jobs.
    pub fn from_job(job: &Job) -> Option<CronEntry> {
        Some(CronEntry::new(
            &job.name,
            job.schedule.as_deref()?,
            job.timezone.as_deref(),
            job.user.as_deref().unwrap_or("root"),
        ))
    }
}

/// What [`install`] did, per file (paths inside the directory, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    pub written: Vec<PathBuf>,
    pub unchanged: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// `batchguard-JOB`.
pub fn file_name(job: &str) -> String {
    format!("{FILE_PREFIX}{job}")
}

/// The cron.d file of one job: marker, a comment naming the job and its
/// config dir, `SHELL`, `PATH`, then
/// - cronie: `CRON_TZ` when a timezone is set, `SCHEDULE root BIN
///   --config-dir DIR run JOB`;
/// - Debian's cron and busybox, with a timezone: a comment, then `* * * * *
///   root BIN --config-dir DIR run JOB --if-due` (no `root` on busybox);
///   without one, the schedule as on cronie.
///
/// Ends with a newline. Assumes a valid entry (as [`install`] checks); the
/// schedule's whitespace is normalised to single spaces, so it can never
/// span lines.
pub fn render(
    entry: &CronEntry,
    batchguard_bin: &Path,
    config_dir: &Path,
    flavor: Flavor,
) -> String {
    let cron_tz = entry
        .timezone
        .as_deref()
        .filter(|_| flavor.honours_cron_tz());
    let mut s = header(&format!("job {}", entry.job), config_dir, cron_tz);
    let if_due = entry.timezone.is_some() && !flavor.honours_cron_tz();
    let schedule = if if_due {
        s.push_str(&format!(
            "# timezone {}: this cron ignores CRON_TZ, so the runner starts every minute and runs the job only in the minutes due in that zone (run --if-due)\n",
            entry.timezone.as_deref().unwrap_or_default()
        ));
        "* * * * *".to_string()
    } else {
        entry
            .schedule
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    s.push_str(&format!(
        "{schedule} {}{} --config-dir {} run {}{}\n",
        user_field(flavor),
        cron_word(batchguard_bin),
        cron_word(config_dir),
        entry.job,
        if if_due { " --if-due" } else { "" }
    ));
    s
}

fn user_field(flavor: Flavor) -> &'static str {
    if flavor.has_user_field() { "root " } else { "" }
}

/// `batchguard-watchdog` serving one config dir: `* * * * * root BIN
/// --config-dir DIR watchdog`. [`install`] adds the lines of the other
/// config dirs already in the file.
pub fn render_watchdog(batchguard_bin: &Path, config_dir: &Path, flavor: Flavor) -> String {
    let mut s = header("watchdog", config_dir, None);
    s.push_str(&watchdog_line(batchguard_bin, config_dir, flavor));
    s
}

fn watchdog_line(batchguard_bin: &Path, config_dir: &Path, flavor: Flavor) -> String {
    format!(
        "* * * * * {}{} --config-dir {} watchdog\n",
        user_field(flavor),
        cron_word(batchguard_bin),
        cron_word(config_dir)
    )
}

/// The config dir as the header names it.
fn dir_label(config_dir: &Path) -> String {
    config_dir.display().to_string().replace(['\n', '\r'], "?")
}

const WATCHDOG_COMMENT: &str = "# batchguard watchdog, config dir ";

/// The watchdog file serving `ours` (rendered now) and every other config
/// dir whose line `existing` holds and whose directory still exists.
fn merge_watchdog(existing: Option<&str>, ours_dir: &Path, ours: &str) -> String {
    let mut blocks: BTreeMap<String, String> = BTreeMap::new();
    if let Some(text) = existing {
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(dir) = line.strip_prefix(WATCHDOG_COMMENT) {
                current = Some(dir.to_string());
            } else if line.starts_with('#') || line.trim().is_empty() || is_env_line(line) {
                continue;
            } else if let Some(dir) = current.take() {
                blocks.insert(dir, format!("{line}\n"));
            }
        }
    }
    let ours_label = dir_label(ours_dir);
    blocks.retain(|dir, _| *dir != ours_label && Path::new(dir).is_dir());
    let mut s = ours.to_string();
    for (dir, line) in blocks {
        s.push_str(&format!("{WATCHDOG_COMMENT}{dir}\n{line}"));
    }
    s
}

fn is_env_line(line: &str) -> bool {
    let head = line.split_whitespace().next().unwrap_or("");
    head.contains('=') && !head.starts_with('*') && !head.starts_with('@')
}

fn header(what: &str, config_dir: &Path, timezone: Option<&str>) -> String {
    let dir = dir_label(config_dir);
    let mut s =
        format!("{MARKER}\n# batchguard {what}, config dir {dir}\n{SHELL_LINE}\n{PATH_LINE}\n");
    if let Some(tz) = timezone {
        s.push_str(&format!("CRON_TZ={tz}\n"));
    }
    s
}

/// The config dir a marked job file names in its header (`None` when it
/// names none, e.g. the watchdog's).
fn header_config_dir(path: &Path) -> Result<Option<String>, CronError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(8192).read_to_end(&mut buf))
        .map_err(|e| CronError::io("read", path, e))?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().nth(1).and_then(|l| {
        let rest = l.strip_prefix("# batchguard job ")?;
        rest.split_once(", config dir ").map(|(_, d)| d.to_string())
    }))
}

/// A path as one `/bin/sh` word on a cron line: bare when it only has safe
/// characters, else single-quoted; `%` (cron turns it into a newline) is
/// escaped as `\%` either way.
fn cron_word(path: &Path) -> String {
    let s = path.to_string_lossy();
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=".contains(c));
    let word = if safe {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    };
    word.replace('%', r"\%")
}

fn check_path(what: &'static str, path: &Path) -> Result<(), CronError> {
    let err = |reason: &str| CronError::Path {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let Some(s) = path.to_str() else {
        return Err(err("it is not valid UTF-8"));
    };
    if !path.is_absolute() {
        return Err(err(
            "cron runs commands from the user's home directory, so it must be absolute",
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(err(
            "it contains a control character (a cron entry is one line)",
        ));
    }
    Ok(())
}

fn check_entry(entry: &CronEntry) -> Result<(), CronError> {
    let err = |reason: String| CronError::Entry {
        job: entry.job.clone(),
        reason,
    };
    if !batchguard_config::is_valid_job_name(&entry.job) {
        return Err(err(
            "job names match ^[a-z0-9][a-z0-9_-]{0,62}$ (cron ignores file names with dots)".into(),
        ));
    }
    if file_name(&entry.job) == WATCHDOG_FILE {
        return Err(err(format!(
            "its file would be {WATCHDOG_FILE}, the watchdog's; rename the job"
        )));
    }
    Schedule::parse(&entry.schedule)?;
    let u = entry.user.as_bytes();
    let user_ok = !u.is_empty()
        && u[0] != b'-'
        && u.iter().enumerate().all(|(i, c)| {
            c.is_ascii_alphanumeric()
                || matches!(c, b'_' | b'.' | b'-')
                || (*c == b'$' && i == u.len() - 1)
        });
    if !user_ok {
        return Err(err(format!("invalid user name \"{}\"", entry.user)));
    }
    if let Some(tz) = &entry.timezone {
        let plausible = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.contains("..")
            && tz
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !plausible || batchguard_config::zone::zone(tz).is_none() {
            return Err(err(format!("unknown time zone \"{tz}\"")));
        }
    }
    Ok(())
}

/// Whether the existing file is one batchguard wrote (starts with [`MARKER`]).
fn is_marked(path: &Path) -> Result<bool, CronError> {
    let mut buf = Vec::with_capacity(MARKER.len() + 2);
    File::open(path)
        .and_then(|f| f.take(MARKER.len() as u64 + 2).read_to_end(&mut buf))
        .map_err(|e| CronError::io("read", path, e))?;
    Ok(buf.starts_with(MARKER.as_bytes())
        && matches!(&buf[MARKER.len()..], [] | [b'\n', ..] | [b'\r', b'\n']))
}

/// `symlink_metadata`, `None` when the path does not exist.
fn metadata(path: &Path) -> Result<Option<fs::Metadata>, CronError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CronError::io("inspect", path, e)),
    }
}

/// Whether `path` holds exactly `content` with a mode cron accepts
/// (cronie requires `mode & 07533 == 0400`: readable by the owner, not
/// executable, not writable by group or others).
fn is_current(path: &Path, content: &str, exact_mode: bool) -> Result<bool, CronError> {
    let Some(meta) = metadata(path)? else {
        return Ok(false);
    };
    let mode = meta.permissions().mode() & 0o7777;
    let mode_ok = if exact_mode {
        mode == MODE
    } else {
        mode & 0o7533 == 0o400
    };
    if !meta.file_type().is_file() || !mode_ok || meta.len() != content.len() as u64 {
        return Ok(false);
    }
    let on_disk = fs::read(path).map_err(|e| CronError::io("read", path, e))?;
    Ok(on_disk == content.as_bytes())
}

/// Whether `dir/batchguard-JOB` holds exactly what [`render`] produces
/// now for `flavor`, with a mode cron accepts (for `check`, G13).
pub fn installed_current(
    entry: &CronEntry,
    dir: &Path,
    bin: &Path,
    config_dir: &Path,
    flavor: Flavor,
) -> Result<bool, CronError> {
    check_entry(entry)?;
    is_current(
        &dir.join(file_name(&entry.job)),
        &render(entry, bin, config_dir, flavor),
        false,
    )
}

/// Whether `dir/batchguard-watchdog` runs the watchdog of `config_dir`
/// with the current line (other config dirs' lines may be there too).
pub fn watchdog_installed_current(
    dir: &Path,
    bin: &Path,
    config_dir: &Path,
) -> Result<bool, CronError> {
    let path = dir.join(WATCHDOG_FILE);
    if !is_current_mode(&path)? {
        return Ok(false);
    }
    let text = fs::read_to_string(&path).map_err(|e| CronError::io("read", &path, e))?;
    let label = format!("{WATCHDOG_COMMENT}{}", dir_label(config_dir));
    Ok(Flavor::ALL.iter().any(|f| {
        let line = watchdog_line(bin, config_dir, *f);
        let mut lines = text.lines().skip_while(|l| *l != label).skip(1);
        lines.find(|l| !l.starts_with('#') && !is_env_line(l)) == Some(line.trim_end())
    }))
}

fn is_current_mode(path: &Path) -> Result<bool, CronError> {
    Ok(metadata(path)?
        .is_some_and(|m| m.file_type().is_file() && (m.permissions().mode() & 0o7533) == 0o400))
}

/// Writes one `batchguard-JOB` file per entry plus `batchguard-watchdog`
/// into `dir` (normally `/etc/cron.d`, which must exist), each atomically
/// and with mode 0644, rendered for `flavor`; files whose content and mode
/// are already right are left alone. Then removes the `batchguard-*` files
/// in `dir` that start with [`MARKER`], name `config_dir` in their header
/// and belong to no entry. The watchdog file keeps the lines of other
/// config dirs that still exist. Files without the marker are never
/// modified, nor job files of another config dir: if one sits where a job's
/// file must go, nothing is written and [`CronError::Foreign`] or
/// [`CronError::OtherConfig`] names it.
pub fn install(
    entries: &[CronEntry],
    dir: &Path,
    batchguard_bin: &Path,
    config_dir: &Path,
    flavor: Flavor,
) -> Result<InstallReport, CronError> {
    if !dir.is_dir() {
        return Err(CronError::NoDir(dir.to_path_buf()));
    }
    check_path("the batchguard binary", batchguard_bin)?;
    check_path("the config directory", config_dir)?;
    let ours = dir_label(config_dir);
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for e in entries {
        check_entry(e)?;
        let content = render(e, batchguard_bin, config_dir, flavor);
        if wanted.insert(file_name(&e.job), content).is_some() {
            return Err(CronError::Entry {
                job: e.job.clone(),
                reason: "listed twice".into(),
            });
        }
    }

    // Refuse before writing anything if a target is not ours.
    for name in wanted.keys() {
        let path = dir.join(name);
        if let Some(meta) = metadata(&path)? {
            if !meta.file_type().is_file() || !is_marked(&path)? {
                return Err(CronError::Foreign { path });
            }
            if let Some(other) = header_config_dir(&path)?.filter(|d| *d != ours) {
                return Err(CronError::OtherConfig {
                    path,
                    config_dir: other,
                });
            }
        }
    }
    let watchdog_path = dir.join(WATCHDOG_FILE);
    let existing_watchdog = match metadata(&watchdog_path)? {
        None => None,
        Some(meta) if meta.file_type().is_file() && is_marked(&watchdog_path)? => Some(
            fs::read_to_string(&watchdog_path)
                .map_err(|e| CronError::io("read", &watchdog_path, e))?,
        ),
        Some(_) => {
            return Err(CronError::Foreign {
                path: watchdog_path,
            });
        }
    };
    wanted.insert(
        WATCHDOG_FILE.to_string(),
        merge_watchdog(
            existing_watchdog.as_deref(),
            config_dir,
            &render_watchdog(batchguard_bin, config_dir, flavor),
        ),
    );

    let mut report = InstallReport::default();
    for (name, content) in &wanted {
        let path = dir.join(name);
        if is_current(&path, content, true)? {
            report.unchanged.push(path);
        } else {
            write_atomic(dir, name, content)?;
            report.written.push(path);
        }
    }

    let listing = fs::read_dir(dir).map_err(|e| CronError::io("read directory", dir, e))?;
    let mut stale = Vec::new();
    for item in listing {
        let item = item.map_err(|e| CronError::io("read directory", dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(FILE_PREFIX) || wanted.contains_key(name) {
            continue;
        }
        let path = item.path();
        let is_file = metadata(&path)?.is_some_and(|m| m.file_type().is_file());
        // Only this config dir's job files: another config dir's (or an
        // unmarked) file is never ours to remove.
        if is_file && is_marked(&path)? && header_config_dir(&path)?.as_deref() == Some(&ours) {
            stale.push(path);
        }
    }
    stale.sort();
    for path in stale {
        match fs::remove_file(&path) {
            Ok(()) => report.removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CronError::io("remove", path, e)),
        }
    }
    if !report.written.is_empty() || !report.removed.is_empty() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CronError::io("sync directory", dir, e))?;
    }
    Ok(report)
}

/// Writes `dir/name` atomically with mode 0644 ([`crate::atomic_file`]:
/// cron ignores the temporary file's dotted name).
fn write_atomic(dir: &Path, name: &str, content: &str) -> Result<(), CronError> {
    let target = dir.join(name);
    crate::atomic_file::replace(&target, content.as_bytes(), MODE)
        .map_err(|e| CronError::io("write", &target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_unsafe_paths_for_sh_and_cron() {
        assert_eq!(
            cron_word(Path::new("/usr/bin/batchguard")),
            "/usr/bin/batchguard"
        );
        assert_eq!(cron_word(Path::new("/opt/my app/bg")), "'/opt/my app/bg'");
        assert_eq!(cron_word(Path::new("/opt/it's")), r"'/opt/it'\''s'");
        assert_eq!(cron_word(Path::new("/opt/50%")), r"'/opt/50\%'");
    }

    #[test]
    fn checks_entries() {
        let ok = CronEntry {
            job: "nightly".into(),
            schedule: "30 3 * * *".into(),
            timezone: Some("Asia/Tokyo".into()),
            user: "batch".into(),
        };
        assert!(check_entry(&ok).is_ok());
        let bad = |f: &dyn Fn(&mut CronEntry)| {
            let mut e = ok.clone();
            f(&mut e);
            check_entry(&e).unwrap_err().to_string()
        };
        assert!(bad(&|e| e.job = "a.b".into()).contains("`a.b`"));
        assert!(bad(&|e| e.job = "watchdog".into()).contains("watchdog"));
        assert!(bad(&|e| e.user = "bad user".into()).contains("user"));
        assert!(bad(&|e| e.timezone = Some("Mars/Olympus".into())).contains("time zone"));
        assert!(bad(&|e| e.schedule = "30 3 * *".into()).contains("invalid schedule"));
        assert!(check_path("x", Path::new("relative/bg")).is_err());
        assert!(check_path("x", Path::new("/a\nb")).is_err());
    }
}
