//! Gathering the facts the audit rules judge: everything that touches the
//! host (`/proc`, crontabs, the user database, the file system, the replica
//! database). The rules themselves ([`super::check_job`]) are pure.
//!
//! Nothing here fails: what cannot be read is recorded as an error or a note
//! next to the fact, and the rule reports `unknown` or mentions it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchguard_config::{Job, Reads, dotenv};

use crate::store::RunRecord;

/// A TCP socket in LISTEN state on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub address: IpAddr,
    /// The socket's inode (links it to the process owning it).
    pub inode: u64,
    /// The owning process's name, when it could be found.
    pub process: Option<String>,
}

impl Listener {
    /// Whether only this host can reach it (127.0.0.0/8, ::1, ::ffff:127.x).
    pub fn is_loopback(&self) -> bool {
        match self.address {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }

    /// `address:port (process)` for messages.
    pub fn describe(&self) -> String {
        let addr = match self.address {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        match &self.process {
            Some(p) => format!("{addr} ({p})"),
            None => addr,
        }
    }
}

/// One line of a crontab that runs something (not a comment, not a variable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrontabLine {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    pub text: String,
}

/// Facts about the host, gathered once for all jobs ([`gather_host`]).
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// TCP listeners from `/proc/net/tcp` and `/proc/net/tcp6`.
    pub listening: Vec<Listener>,
    /// Why the listeners could not be read (G01 is then `unknown`).
    pub listening_error: Option<String>,
    /// `MemTotal` from `/proc/meminfo`.
    pub host_memory_bytes: Option<u64>,
    /// Command lines of user crontabs (`/var/spool/cron/crontabs/*`,
    /// `/var/spool/cron/*`) and `/etc/crontab`. The rules pick the lines that
    /// concern each job.
    pub crontab_lines: Vec<CrontabLine>,
    /// Crontabs or crontab directories that exist but could not be read.
    pub crontab_unreadable: Vec<String>,
}

/// The account a job runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub shell: PathBuf,
    pub home: PathBuf,
}

/// What probing the declared replica found (G04).
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaProbe {
    /// `pg_is_in_recovery()` is false: this is a primary.
    Primary,
    /// A replica, with its replay lag.
    Replica { lag: Duration },
    /// The DSN variable is set nowhere (job env, env_file, environment).
    DsnUnset { var: String },
    /// Connecting or querying failed (never contains the DSN itself).
    Failed(String),
}

/// What kind of program the job's command starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProgramKind {
    /// The job has no command to inspect.
    #[default]
    NoCommand,
    /// A language interpreter (`python3`, `ruby`, `node`, `perl`, `php`).
    Interpreter(String),
    /// A POSIX shell (`sh`, `bash`, …).
    Shell(String),
    /// A compiled or self-contained program.
    Binary,
    /// A tool that isolates what it runs (bundle exec, docker run, uv run…).
    Wrapper(String),
    /// The program could not be found or read; the reason.
    Unresolved(String),
}

/// The command's interpreter, as inspected (G15).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterpreterInfo {
    /// argv[0] as written.
    pub program: String,
    /// The file that runs the code: argv[0] resolved through PATH, or the
    /// interpreter named by the script's `#!` line.
    pub path: Option<PathBuf>,
    pub kind: ProgramKind,
    /// What isolates it, e.g. `virtualenv (/srv/x/.venv/pyvenv.cfg)`;
    /// `None` for a global installation.
    pub isolation: Option<String>,
    /// How the interpreter was reached, e.g. `#!/usr/bin/env python3 of /srv/x/run.py`.
    pub via: Option<String>,
}

/// A cloud access key found in the job's environment or credentials (G14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFinding {
    /// Where: `env AWS_ACCESS_KEY_ID`, `env_file /etc/x.env:3`, `/home/u/.aws/credentials:2 [default]`.
    pub place: String,
    /// The key with all but its last 4 characters masked.
    pub masked: String,
    /// `AKIA…` (long-term) rather than `ASIA…` (temporary, STS).
    pub long_term: bool,
}

/// Facts about one job ([`gather_job`]; the caller adds the cron facts).
#[derive(Clone, Debug, Default)]
pub struct JobFacts {
    /// Recent runs, newest first (`Store::list_runs`).
    pub history: Vec<RunRecord>,
    /// Why the history could not be read, if it could not.
    pub history_error: Option<String>,
    /// Time between two fires of the schedule (`cron::interval`); `None`
    /// when unscheduled or unknown.
    pub schedule_interval: Option<Duration>,
    /// Whether `/etc/cron.d/batchguard-JOB` is installed and current
    /// (`cron::installed_current`); `None` when it could not be told.
    pub cron_file_current: Option<bool>,
    /// The `user` account when `user` is set: found, or why it could not
    /// be (e.g. no such user). `None` when `user` is not set.
    pub run_user: Option<Result<UserInfo, String>>,
    /// The replica probe, when `replica_dsn_env` is declared.
    pub replica: Option<ReplicaProbe>,
    pub interpreter: InterpreterInfo,
    /// Access keys found in `env`, `env_file` and the run user's AWS files.
    pub aws_keys: Vec<KeyFinding>,
    /// Files that could not be scanned for keys.
    pub aws_notes: Vec<String>,
    /// Secrets (env_file values, `secrets`) too short to be redacted.
    pub short_secrets: Vec<String>,
}

impl JobFacts {
    /// The `user` account, when it is set and was found.
    pub fn found_user(&self) -> Option<&UserInfo> {
        self.run_user.as_ref().and_then(|r| r.as_ref().ok())
    }
}

// ---------------------------------------------------------------- host

/// Reads the host facts: listeners, memory, crontabs.
pub fn gather_host() -> HostFacts {
    let mut h = HostFacts::default();
    let mut errors = Vec::new();
    let mut read_any = false;
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                read_any = true;
                h.listening.extend(parse_proc_net_tcp(&text, v6));
            }
            // tcp6 is absent on hosts without IPv6: not an error.
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    if !read_any {
        h.listening_error = Some(errors.join("; "));
    }
    h.listening.sort_by_key(|l| (l.port, l.address));
    h.listening
        .dedup_by(|a, b| a.port == b.port && a.address == b.address);
    name_listener_processes(&mut h.listening);
    h.host_memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_total(&t));
    read_crontabs(&mut h);
    h
}

/// Parses `/proc/net/tcp` (or `tcp6` when `v6`) and returns the sockets in
/// LISTEN state (`st` = `0A`). Malformed lines are skipped.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((addr_hex, port_hex)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        let Some(address) = parse_hex_addr(addr_hex, v6) else {
            continue;
        };
        let Ok(inode) = f[9].parse::<u64>() else {
            continue;
        };
        out.push(Listener {
            port,
            address,
            inode,
            process: None,
        });
    }
    out
}

/// The kernel prints each 32-bit word of the address as the hex of its
/// in-memory (native-endian) value.
fn parse_hex_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Option<Vec<[u8; 4]>> = (0..hex.len() / 8)
        .map(|i| {
            hex.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_ne_bytes)
        })
        .collect();
    let words = words?;
    match (v6, hex.len(), words.as_slice()) {
        (false, 8, [w]) => Some(IpAddr::V4(Ipv4Addr::from(*w))),
        (true, 32, ws) => {
            let mut b = [0u8; 16];
            for (i, w) in ws.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Finds which process owns each listener by scanning `/proc/PID/fd`
/// (best effort: other users' processes need root).
fn name_listener_processes(listeners: &mut [Listener]) {
    if listeners.is_empty() {
        return;
    }
    let mut wanted: BTreeMap<u64, Option<String>> =
        listeners.iter().map(|l| (l.inode, None)).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut left = wanted.len();
    for p in procs.flatten() {
        if left == 0 {
            break;
        }
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(slot @ None) = wanted.get_mut(&inode) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                *slot = Some(if comm.is_empty() {
                    format!("pid {pid}")
                } else {
                    format!("{comm}, pid {pid}")
                });
                left -= 1;
            }
        }
    }
    for l in listeners {
        l.process = wanted.get(&l.inode).cloned().flatten();
    }
}

/// `MemTotal` in bytes from `/proc/meminfo` text.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut f = line.split_whitespace().skip(1);
    let n: u64 = f.next()?.parse().ok()?;
    match f.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

const CRONTAB_DIRS: &[&str] = &["/var/spool/cron/crontabs", "/var/spool/cron"];
const SYSTEM_CRONTAB: &str = "/etc/crontab";

fn read_crontabs(h: &mut HostFacts) {
    let mut files = vec![PathBuf::from(SYSTEM_CRONTAB)];
    for dir in CRONTAB_DIRS {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .collect();
                found.sort();
                files.extend(found);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => h.crontab_unreadable.push(format!("{dir}: {e}")),
        }
    }
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => h.crontab_lines.extend(crontab_command_lines(&f, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => h.crontab_unreadable.push(format!("{}: {e}", f.display())),
        }
    }
}

/// The lines of a crontab that schedule something: not blank, not a
/// comment, not a `NAME=value` assignment.
pub fn crontab_command_lines(path: &Path, text: &str) -> Vec<CrontabLine> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            if let Some((name, _)) = t.split_once('=')
                && !name.trim().is_empty()
                && !name.trim().contains(char::is_whitespace)
            {
                return None;
            }
            Some(CrontabLine {
                path: path.to_path_buf(),
                line: i + 1,
                text: t.to_string(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------- job

/// G14: secrets (env_file values and those named by `secrets`) shorter
/// than the redaction floor, which are shown as they are.
fn short_secrets(
    job: &Job,
    env_file_vars: &[dotenv::Var],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let short = |v: &str| !v.is_empty() && crate::redact::too_short(v);
    let mut out: Vec<String> = env_file_vars
        .iter()
        .filter(|v| short(&v.value))
        .map(|v| format!("{} (env_file line {})", v.name, v.line))
        .collect();
    for name in &job.secrets {
        if lookup(name).is_some_and(|v| short(&v)) {
            out.push(format!("{name} (secrets)"));
        }
    }
    out
}

/// Gathers the facts about one job: its run user, command interpreter,
/// access keys, and the replica probe (G04, which connects to the database
/// named by `replica_dsn_env`, 3 s timeout). `history` is the job's recent
/// runs, newest first. The cron facts (`schedule_interval`,
/// `cron_file_current`) are left `None` for the caller to fill in.
pub fn gather_job(job: &Job, history: Vec<RunRecord>) -> JobFacts {
    let mut f = JobFacts {
        history,
        ..JobFacts::default()
    };
    if let Some(name) = &job.user {
        f.run_user = Some(match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(user_info(&u)),
            Ok(None) => Err(format!("no user `{name}` on this host")),
            Err(e) => Err(format!("cannot look up user `{name}`: {e}")),
        });
    }

    // The job's own variables, with the runner's precedence: env over env_file.
    // The same reader as the runner's, so G14 audits what the job receives.
    let mut env_file_vars = Vec::new();
    if let Some(path) = &job.env_file {
        match dotenv::read(path) {
            Ok(vars) => env_file_vars = vars,
            Err(e) => f.aws_notes.push(format!("env_file {e}")),
        }
    }
    let lookup = |name: &str| -> Option<String> {
        job.env
            .get(name)
            .cloned()
            .or_else(|| {
                let var = env_file_vars.iter().rev().find(|v| v.name == name);
                var.map(|v| v.value.clone())
            })
            .or_else(|| std::env::var(name).ok())
    };

    f.short_secrets = short_secrets(job, &env_file_vars, &lookup);

    // G15.
    let argv = job.program_argv();
    let path_var = lookup("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    f.interpreter = inspect_program(argv, &job.workdir, &path_var);

    // G14: env, env_file, the run user's AWS files.
    for (k, v) in &job.env {
        for (key, long_term) in find_access_keys(v) {
            f.aws_keys.push(KeyFinding {
                place: format!("env {k}"),
                masked: mask_key(&key),
                long_term,
            });
        }
    }
    if let Some(path) = &job.env_file {
        for dotenv::Var { line, name, value } in &env_file_vars {
            for (key, long_term) in find_access_keys(value) {
                f.aws_keys.push(KeyFinding {
                    place: format!("env_file {}:{line} ({name})", path.display()),
                    masked: mask_key(&key),
                    long_term,
                });
            }
        }
    }
    let home = match (&job.user, f.found_user()) {
        (Some(_), Some(u)) => Some(u.home.clone()),
        (Some(_), None) => None,
        // Unset: the job runs as whoever invokes batchguard; judge by this process.
        (None, _) => nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir),
    };
    let mut aws_files = Vec::new();
    if let Some(p) = lookup("AWS_SHARED_CREDENTIALS_FILE") {
        aws_files.push(PathBuf::from(p));
    }
    if let Some(p) = lookup("AWS_CONFIG_FILE") {
        aws_files.push(PathBuf::from(p));
    }
    if let Some(home) = home {
        aws_files.push(home.join(".aws/credentials"));
        aws_files.push(home.join(".aws/config"));
    }
    aws_files.dedup();
    for path in aws_files {
        match std::fs::read_to_string(&path) {
            Ok(text) => f.aws_keys.extend(scan_aws_file(&path, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => f
                .aws_notes
                .push(format!("{} not readable: {e}", path.display())),
        }
    }

    // G04.
    if let Some(var) = &job.guideline.replica_dsn_env
        && job.guideline.reads != Some(Reads::None)
    {
        f.replica = Some(match lookup(var) {
            Some(dsn) if !dsn.trim().is_empty() => probe_replica(&dsn),
            _ => ReplicaProbe::DsnUnset { var: var.clone() },
        });
    }
    f
}

fn user_info(u: &nix::unistd::User) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        uid: u.uid.as_raw(),
        shell: u.shell.clone(),
        home: u.dir.clone(),
    }
}

/// Connects to `dsn` (libpq key/value or URL form; 3 s connect timeout, no
/// TLS) and asks whether it is in recovery, and if so how far replay lags.
pub fn probe_replica(dsn: &str) -> ReplicaProbe {
    let mut config: postgres::Config = match dsn.parse() {
        Ok(c) => c,
        Err(e) => return ReplicaProbe::Failed(format!("invalid DSN: {e}")),
    };
    config.connect_timeout(Duration::from_secs(3));
    if config.get_options().is_none() {
        config.options("-c statement_timeout=5000");
    }
    if config.get_application_name().is_none() {
        config.application_name("batchguard check");
    }
    let mut client = match config.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => return ReplicaProbe::Failed(format!("cannot connect: {e}")),
    };
    let in_recovery: bool = match client.query_one("SELECT pg_is_in_recovery()", &[]) {
        Ok(row) => row.get(0),
        Err(e) => return ReplicaProbe::Failed(format!("SELECT pg_is_in_recovery() failed: {e}")),
    };
    if !in_recovery {
        return ReplicaProbe::Primary;
    }
    let lag_sql =
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8";
    match client.query_one(lag_sql, &[]) {
        Ok(row) => {
            let secs: f64 = row.get(0);
            let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
            ReplicaProbe::Replica {
                lag: Duration::from_secs_f64(secs.min(1e12)),
            }
        }
        Err(e) => ReplicaProbe::Failed(format!("replay lag query failed: {e}")),
    }
}

/// AWS access key ids in `text`: `AKIA` (long-term, `true`) or `ASIA`
/// (temporary, `false`) followed by 16 uppercase letters or digits, not
/// inside a longer word.
pub fn find_access_keys(text: &str) -> Vec<(String, bool)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 20 <= b.len() {
        let prefix = &b[i..i + 4];
        let long_term = prefix == b"AKIA";
        let boundary_before = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if (long_term || prefix == b"ASIA")
            && boundary_before
            && b[i + 4..i + 20]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && b.get(i + 20).is_none_or(|c| !c.is_ascii_alphanumeric())
        {
            out.push((text[i..i + 20].to_string(), long_term));
            i += 20;
        } else {
            i += 1;
        }
    }
    out
}

/// Masks all but the last 4 characters of a key.
pub fn mask_key(key: &str) -> String {
    let n = key.chars().count();
    key.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

/// Keys in an AWS credentials or config file, with their profile.
pub fn scan_aws_file(path: &Path, text: &str) -> Vec<KeyFinding> {
    let mut out = Vec::new();
    let mut profile = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') && t.ends_with(']') {
            profile = t.to_string();
            continue;
        }
        if t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        for (key, long_term) in find_access_keys(t) {
            let place = if profile.is_empty() {
                format!("{}:{}", path.display(), i + 1)
            } else {
                format!("{}:{} {profile}", path.display(), i + 1)
            };
            out.push(KeyFinding {
                place,
                masked: mask_key(&key),
                long_term,
            });
        }
    }
    out
}

// ---------------------------------------------------------------- G15

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"];

/// The interpreter family of an executable's file name (`python3.11` →
/// `python`), if it is one.
pub fn interpreter_family(name: &str) -> Option<&'static str> {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match base {
        "python" | "pypy" => Some("python"),
        "ruby" => Some("ruby"),
        "node" | "nodejs" => Some("node"),
        "perl" => Some("perl"),
        "php" => Some("php"),
        _ => None,
    }
}

/// A wrapper that runs the rest of argv in an isolated environment.
fn wrapper_kind(name: &str, args: &[String]) -> Option<String> {
    let sub = args.first().map(String::as_str);
    let w = match (name, sub) {
        ("bundle" | "bundler", Some("exec")) => "bundler (bundle exec)",
        ("docker" | "podman" | "nerdctl", Some("run" | "exec" | "compose")) => "a container",
        ("poetry" | "pipenv" | "uv" | "pdm" | "hatch" | "rye", Some("run")) => {
            "a project environment (… run)"
        }
        ("carton", Some("exec")) => "carton (local Perl libs)",
        ("npx" | "pnpm" | "yarn" | "bun", _) => "the project's node_modules",
        ("nix-shell" | "nix", _) => "nix",
        ("systemd-run", _) => "a systemd unit",
        _ => return None,
    };
    Some(w.to_string())
}

/// What isolates an interpreter at `path`, judging by the path alone:
/// `.venv`, `vendor/bundle`, `node_modules`, `/nix/`, `/gnu/store`, `/opt/`.
pub fn isolation_by_path(path: &Path) -> Option<String> {
    let s = path.to_string_lossy();
    let comps: Vec<&str> = s.split('/').collect();
    if comps.contains(&".venv") {
        return Some(format!("a project virtualenv (.venv in {s})"));
    }
    if s.contains("/vendor/bundle/") {
        return Some(format!("bundler's vendor/bundle ({s})"));
    }
    if comps.contains(&"node_modules") {
        return Some(format!("the project's node_modules ({s})"));
    }
    if s.starts_with("/nix/") || s.starts_with("/gnu/store/") {
        return Some(format!("a nix/guix store path ({s})"));
    }
    if s.starts_with("/opt/") {
        return Some(format!("a self-contained /opt prefix ({s})"));
    }
    None
}

/// [`isolation_by_path`], plus markers on disk: `pyvenv.cfg` (virtualenv)
/// or `conda-meta` (conda env) in the parent of the interpreter's directory.
fn isolation_of(path: &Path) -> Option<String> {
    if let Some(root) = path.parent().and_then(Path::parent) {
        let cfg = root.join("pyvenv.cfg");
        if cfg.is_file() {
            return Some(format!("a virtualenv ({})", cfg.display()));
        }
        let conda = root.join("conda-meta");
        if conda.is_dir() {
            return Some(format!("a conda environment ({})", root.display()));
        }
    }
    isolation_by_path(path)
}

fn resolve_program(program: &str, workdir: &Path, path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = workdir.join(program);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| workdir.join(d).join(program))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Inspects what runs the job's code: resolves argv[0] through PATH, sees
/// through `env` and `#!` lines, and classifies the result.
pub fn inspect_program(argv: &[String], workdir: &Path, path_var: &str) -> InterpreterInfo {
    let Some(program) = argv.first() else {
        return InterpreterInfo::default();
    };
    let mut info = InterpreterInfo {
        program: program.clone(),
        ..InterpreterInfo::default()
    };
    classify(&mut info, argv, workdir, path_var, 0);
    info
}

fn classify(
    info: &mut InterpreterInfo,
    argv: &[String],
    workdir: &Path,
    path_var: &str,
    depth: u8,
) {
    let Some(program) = argv.first() else {
        info.kind = ProgramKind::Unresolved("`env` without a program".into());
        return;
    };
    if program.contains('{') {
        info.kind = ProgramKind::Unresolved(format!("`{program}` is a template"));
        return;
    }
    let Some(path) = resolve_program(program, workdir, path_var) else {
        info.kind = ProgramKind::Unresolved(if program.contains('/') {
            format!("`{program}` does not exist")
        } else {
            format!("`{program}` is not found in PATH ({path_var})")
        });
        return;
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    info.path = Some(path.clone());
    if name == "env" && depth < 3 {
        // `env [-S] [NAME=value]... PROGRAM ARGS...`
        let rest: Vec<String> = argv[1..]
            .iter()
            .flat_map(|a| {
                if let Some(s) = a.strip_prefix("-S") {
                    s.split_whitespace().map(str::to_string).collect()
                } else {
                    vec![a.clone()]
                }
            })
            .skip_while(|a| a.starts_with('-') || a.contains('='))
            .collect();
        info.via = Some(match &info.via {
            Some(v) => format!("{v} via env"),
            None => "via env".into(),
        });
        return classify(info, &rest, workdir, path_var, depth + 1);
    }
    if let Some(w) = wrapper_kind(&name, &argv[1..]) {
        info.kind = ProgramKind::Wrapper(w);
        return;
    }
    if let Some(fam) = interpreter_family(&name) {
        info.isolation = isolation_of(&path);
        info.kind = ProgramKind::Interpreter(fam.into());
        return;
    }
    if SHELLS.contains(&name.as_str()) {
        info.kind = ProgramKind::Shell(name);
        return;
    }
    // Not an interpreter by name: a script with a #! line, or a binary.
    let mut head = [0u8; 256];
    let n = match std::fs::File::open(&path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut head)
    }) {
        Ok(n) => n,
        Err(e) => {
            info.kind = ProgramKind::Unresolved(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let head = &head[..n];
    if let Some(rest) = head.strip_prefix(b"#!")
        && depth < 3
    {
        let line = String::from_utf8_lossy(rest.split(|b| *b == b'\n').next().unwrap_or(&[]))
            .trim()
            .to_string();
        let shebang: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if shebang.is_empty() {
            info.kind = ProgramKind::Binary;
            return;
        }
        info.via = Some(format!("#!{line} of {}", path.display()));
        // Absolute interpreter paths resolve as themselves.
        return classify(info, &shebang, Path::new("/"), path_var, depth + 1);
    }
    info.isolation = isolation_of(&path);
    info.kind = ProgramKind::Binary;
}
