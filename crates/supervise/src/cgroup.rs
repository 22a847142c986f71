//! cgroup v2 / v1 (memory controller) discovery, creation, accounting and removal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{Enforcement, procfs, sys};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    V2,
    V1,
}

impl Kind {
    /// The cgroup kind a memory enforcement mode asks for.
    pub(crate) fn of(mode: Enforcement) -> Option<Kind> {
        match mode {
            Enforcement::Cgroup2 => Some(Kind::V2),
            Enforcement::Cgroup1 => Some(Kind::V1),
            Enforcement::Poll | Enforcement::None => None,
        }
    }

    pub(crate) fn enforcement(self) -> Enforcement {
        match self {
            Kind::V2 => Enforcement::Cgroup2,
            Kind::V1 => Enforcement::Cgroup1,
        }
    }

    /// The file a child writes `0` to between fork and exec to join a cgroup
    /// of this kind (see [`Entrance`]).
    pub(crate) fn self_join_file(self) -> &'static str {
        match self {
            Kind::V2 => "cgroup.procs",
            Kind::V1 => "tasks",
        }
    }
}

/// The file through which a child enters a cgroup by itself, opened once
/// when the cgroup is created (before any clone, so the child only has to
/// write `0` to a descriptor).
///
/// A child joining between clone and exec is single-threaded, so on cgroup
/// v1 it writes to `tasks`, which moves only the calling thread. That is
/// the same move as through `cgroup.procs` for a one-thread process, but
/// the kernel then skips the global `cgroup_threadgroup_rwsem`, whose write
/// side waits for an RCU grace period: measured on Linux 6.18, 1.2 ms for
/// `sh -c 'echo 0 > tasks'` against 6.7 ms (up to 18.6) through
/// `cgroup.procs` (docs/performance.md). A kernel without that fast path
/// takes the lock either way. On cgroup v2 a child normally starts inside
/// (`clone3(CLONE_INTO_CGROUP)`); the fallback writes `cgroup.procs`, since
/// v2 refuses a lone thread in a domain cgroup. (A parent moving a started
/// child by its pid, the C library spawn's fallback, opens `cgroup.procs`
/// itself: the whole thread group moves.)
#[derive(Debug)]
pub(crate) struct Entrance(File);

impl Entrance {
    /// What a freshly cloned child writes `0` to before exec.
    pub(crate) fn by_self(&self) -> &File {
        &self.0
    }
}

/// A leaf cgroup owned by one run.
#[derive(Debug)]
pub(crate) struct Cgroup {
    pub kind: Kind,
    pub path: PathBuf,
}

/// A failure while preparing a cgroup, naming the file or directory involved.
#[derive(Debug)]
pub(crate) struct CgError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path, source: io::Error) -> CgError {
    CgError {
        path: path.to_path_buf(),
        source,
    }
}

/// A hierarchy that is not there.
fn unavailable(path: &str, why: &str) -> CgError {
    err(Path::new(path), io::Error::other(why.to_string()))
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// Undo the octal escapes (`\040` …) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process, read once (see [`v2_root`]).
fn mounts() -> &'static [Mount] {
    static MOUNTS: OnceLock<Vec<Mount>> = OnceLock::new();
    MOUNTS.get_or_init(read_mounts)
}

/// The cgroup mounts (`cgroup`, `cgroup2`) of /proc/self/mountinfo, the
/// only ones asked about: the others (often dozens) are skipped before
/// anything of theirs is split or unescaped.
fn read_mounts() -> Vec<Mount> {
    let Ok(text) = procfs::read_small("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_cgroup_mount).collect()
}

/// One mountinfo line, if it is a cgroup mount.
fn parse_cgroup_mount(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut post = post.split(' ');
    let fstype = post.next()?;
    if fstype != "cgroup" && fstype != "cgroup2" {
        return None;
    }
    let super_opts = post.nth(1)?;
    let mut pre = pre.split(' ').skip(3);
    let root = unescape(pre.next()?);
    let point = PathBuf::from(unescape(pre.next()?));
    Some(Mount {
        root,
        point,
        fstype: fstype.to_string(),
        super_opts: super_opts.to_string(),
    })
}

/// The whitespace-separated words of a small file (none if unreadable).
fn words(path: &Path) -> Vec<String> {
    procfs::read_small(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn has_word(path: &Path, word: &str) -> bool {
    words(path).iter().any(|w| w == word)
}

/// The root of a cgroup2 hierarchy that offers the memory controller.
/// Looked up once per process: a run asks several times (the planned
/// cgroup, the enforcement, the spawn), and the mounts do not change under
/// a runner.
pub(crate) fn v2_root() -> Option<PathBuf> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(find_v2_root).clone()
}

fn find_v2_root() -> Option<PathBuf> {
    let default = PathBuf::from("/sys/fs/cgroup");
    if has_word(&default.join("cgroup.controllers"), "memory") {
        return Some(default);
    }
    mounts()
        .iter()
        .filter(|m| m.fstype == "cgroup2" && m.root == "/")
        .map(|m| m.point.clone())
        .find(|p| has_word(&p.join("cgroup.controllers"), "memory"))
}

/// The base of the run cgroups on cgroup v2, once it was set up.
static V2_BASE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Where run cgroups are created on cgroup v2, set up on first use (then
/// remembered for the life of the process):
///
/// 1. `ROOT/batchguard`, with `memory` (and `pids`) enabled in the root's
///    and its own `cgroup.subtree_control`: a host without systemd, or root
///    on a host whose manager tolerates a top-level cgroup.
/// 2. Else (not writable, read-only, or the root is a cgroup namespace's
///    root holding processes) below our own cgroup, `OWN/batchguard`, which
///    only works where that subtree was delegated to us (systemd
///    `Delegate=yes`, the memory controller listed in `OWN/cgroup.controllers`).
///    cgroup v2 hands controllers down only from a cgroup without processes,
///    so the processes of `OWN` (the runner itself and whatever else the
///    unit runs) are moved into the leaf `OWN/supervisor` first.
///
/// An error means neither works; the caller falls back to polling.
pub(crate) fn v2_base(root: &Path) -> Result<PathBuf, CgError> {
    let mut cached = V2_BASE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(base) = cached.as_ref() {
        return Ok(base.clone());
    }
    let base = match top_level_base(root) {
        Ok(base) => base,
        Err(top) => {
            tracing::debug!(path = %top.path.display(), error = %top.source, "no top-level batchguard cgroup; trying our own (delegated) cgroup");
            delegated_base(root).map_err(|own| {
                tracing::debug!(path = %own.path.display(), error = %own.source, "no delegated cgroup subtree either");
                top
            })?
        }
    };
    tracing::debug!(base = %base.display(), "run cgroups go here");
    *cached = Some(base.clone());
    Ok(base)
}

/// The planned base for `planned_cgroup`: the one set up, else set it up now.
pub(crate) fn v2_base_planned() -> Option<PathBuf> {
    v2_base(&v2_root()?).ok()
}

fn top_level_base(root: &Path) -> Result<PathBuf, CgError> {
    enable_v2(root, "memory", &["pids"])?;
    let base = root.join("batchguard");
    mkdir_if_missing(&base)?;
    enable_v2(&base, "memory", &["pids"])?;
    // Made by root earlier: only usable if we may create run cgroups in it.
    nix::unistd::access(&base, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| err(&base, io::Error::from_raw_os_error(e as i32)))?;
    Ok(base)
}

/// Our own cgroup v2 directory (the `0::PATH` line of /proc/self/cgroup).
fn own_v2(root: &Path) -> Option<PathBuf> {
    let text = procfs::read_small("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim().trim_start_matches('/')))
}

fn delegated_base(root: &Path) -> Result<PathBuf, CgError> {
    let own = own_v2(root).ok_or_else(|| {
        err(
            Path::new("/proc/self/cgroup"),
            io::Error::other("no cgroup v2 entry"),
        )
    })?;
    // Already moved into our leaf by an earlier call: the unit's cgroup is above it.
    let own = match own.file_name() {
        Some(n) if n == "supervisor" => own.parent().map(Path::to_path_buf).unwrap_or(own),
        _ => own,
    };
    if own == root {
        return Err(err(&own, io::Error::other("our own cgroup is the root")));
    }
    if !has_word(&own.join("cgroup.controllers"), "memory") {
        return Err(err(
            &own,
            io::Error::other(
                "the memory controller is not delegated to our cgroup (systemd: Delegate=yes)",
            ),
        ));
    }
    if let Err(e) = enable_v2(&own, "memory", &["pids"]) {
        if e.source.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
        // "No internal processes": move the unit's processes into a leaf.
        let leaf = own.join("supervisor");
        mkdir_if_missing(&leaf)?;
        for _ in 0..3 {
            let pids = procfs::read_small(own.join("cgroup.procs")).map_err(|e| err(&own, e))?;
            for pid in pids.split_whitespace() {
                // A process that exited meanwhile (ESRCH) is fine.
                let _ = write_file(&leaf.join("cgroup.procs"), pid);
            }
            if enable_v2(&own, "memory", &["pids"]).is_ok() {
                break;
            }
        }
        enable_v2(&own, "memory", &["pids"])?;
    }
    let base = own.join("batchguard");
    mkdir_if_missing(&base)?;
    enable_v2(&base, "memory", &["pids"])?;
    Ok(base)
}

/// Our own cgroup directory in the v1 memory hierarchy, looked up once per
/// process (like [`v2_root`]; batchguard moves its children, never itself).
pub(crate) fn v1_own() -> Option<PathBuf> {
    static OWN: OnceLock<Option<PathBuf>> = OnceLock::new();
    OWN.get_or_init(find_v1_own).clone()
}

fn find_v1_own() -> Option<PathBuf> {
    let mount = mounts()
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == "memory"))?;
    let text = procfs::read_small("/proc/self/cgroup").ok()?;
    let own = text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })?;
    // Inside a container the mount's root may itself be a sub-cgroup.
    let rel = if mount.root != "/" {
        own.strip_prefix(mount.root.as_str())
            .unwrap_or(&own)
            .to_string()
    } else {
        own
    };
    let dir = mount.point.join(rel.trim_start_matches('/'));
    dir.join("memory.limit_in_bytes").exists().then_some(dir)
}

fn write_file(path: &Path, value: &str) -> Result<(), CgError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| err(path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| err(path, e))
}

fn read_u64(path: &Path) -> Option<u64> {
    procfs::read_small(path).ok()?.trim().parse().ok()
}

/// Value of `key N` in a flat-keyed file (memory.events, memory.oom_control).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = procfs::read_small(path).ok()?;
    find_key(&text, key)
}

fn find_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn mkdir_if_missing(path: &Path) -> Result<(), CgError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(path, e)),
    }
}

/// Create `path`, replacing an empty stale directory of the same name.
fn mkdir_fresh(path: &Path) -> Result<(), CgError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_dir(path).map_err(|e| err(path, e))?;
            fs::create_dir(path).map_err(|e| err(path, e))
        }
        Err(e) => Err(err(path, e)),
    }
}

/// Enable controllers for the children of `dir` (v2). `memory` is required, the rest best effort.
fn enable_v2(dir: &Path, required: &str, optional: &[&str]) -> Result<(), CgError> {
    let control = dir.join("cgroup.subtree_control");
    let available = dir.join("cgroup.controllers");
    // Read once: on every run after the first both are enabled already, and
    // nothing else is then read or written here.
    let mut enabled = words(&control);
    let mut wrote = false;
    for (ctrl, needed) in
        std::iter::once((required, true)).chain(optional.iter().map(|c| (*c, false)))
    {
        if enabled.iter().any(|w| w == ctrl) || !has_word(&available, ctrl) {
            continue;
        }
        wrote = true;
        if let Err(e) = write_file(&control, &format!("+{ctrl}")) {
            if needed {
                return Err(e);
            }
            tracing::debug!(path = %control.display(), error = %e.source, "could not enable {ctrl}");
        }
    }
    if wrote {
        enabled = words(&control);
    }
    if !enabled.iter().any(|w| w == required) {
        return Err(err(
            &control,
            io::Error::other(format!("controller {required} not enabled")),
        ));
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid cgroup name {name:?}"),
        ));
    }
    Ok(())
}

/// An open `memory.events` / `memory.oom_control`: re-reading it from offset 0
/// makes the kernel generate fresh content, so each read of the counter costs one
/// `pread` instead of a path lookup, open, read and close.
#[derive(Debug)]
pub(crate) struct OomCounter(File);

impl OomCounter {
    /// The current `oom_kill` value, None if the file cannot be read.
    pub(crate) fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let mut len = 0;
        while len < buf.len() {
            match self.0.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        find_key(std::str::from_utf8(&buf[..len]).ok()?, "oom_kill")
    }
}

impl Cgroup {
    /// Create the leaf cgroup `name` and return it with its [`Entrance`] opened
    /// for writing. `oom_group` (v2 only): on OOM the
    /// kernel kills every process of the cgroup instead of the largest one.
    pub(crate) fn create(
        kind: Kind,
        name: &str,
        memory_max: Option<u64>,
        oom_group: bool,
    ) -> Result<(Cgroup, Entrance), CgError> {
        let cg = match kind {
            Kind::V2 => {
                let root = v2_root().ok_or_else(|| {
                    unavailable(
                        "/sys/fs/cgroup",
                        "no cgroup2 hierarchy with the memory controller",
                    )
                })?;
                check_name(name).map_err(|e| err(&root, e))?;
                let leaf = v2_base(&root)?.join(name);
                mkdir_fresh(&leaf)?;
                Cgroup { kind, path: leaf }
            }
            Kind::V1 => {
                let own = v1_own().ok_or_else(|| {
                    unavailable("/sys/fs/cgroup/memory", "no cgroup v1 memory hierarchy")
                })?;
                check_name(name).map_err(|e| err(&own, e))?;
                let base = own.join("batchguard");
                mkdir_if_missing(&base)?;
                let leaf = base.join(name);
                mkdir_fresh(&leaf)?;
                Cgroup { kind, path: leaf }
            }
        };
        // From here on, remove the directory again if anything fails.
        match cg.configure(memory_max, oom_group) {
            Ok(entrance) => Ok((cg, entrance)),
            Err(e) => {
                let _ = fs::remove_dir(&cg.path);
                Err(e)
            }
        }
    }

    fn configure(&self, memory_max: Option<u64>, oom_group: bool) -> Result<Entrance, CgError> {
        let p = &self.path;
        if let Some(max) = memory_max {
            match self.kind {
                Kind::V2 => {
                    write_file(&p.join("memory.max"), &max.to_string())?;
                    let swap = p.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                    // Kill the whole group on OOM rather than one random member.
                    let group = p.join("memory.oom.group");
                    if oom_group && group.exists() {
                        write_file(&group, "1")?;
                    }
                }
                Kind::V1 => {
                    write_file(&p.join("memory.limit_in_bytes"), &max.to_string())?;
                    // memsw (memory + swap) equal to the memory limit: no swap for the group.
                    let memsw = p.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &max.to_string())?;
                    }
                }
            }
        }
        let file = p.join(self.kind.self_join_file());
        OpenOptions::new()
            .write(true)
            .open(&file)
            .map(Entrance)
            .map_err(|e| err(&file, e))
    }

    /// A cgroup path read back from elsewhere (the state store: a dead
    /// runner's leftovers), verified before use: an existing directory on a
    /// cgroup filesystem, directly below a `batchguard` base, the path free of
    /// `..`. Anything else is refused (and logged), so a bad path never makes
    /// us signal the pids some file lists or remove some directory.
    pub(crate) fn open_verified(path: &Path) -> Option<Cgroup> {
        use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
        let below_base = path.parent().and_then(Path::file_name) == Some("batchguard".as_ref());
        let plain = path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
        let on_cgroupfs = statfs(path).is_ok_and(|f| {
            let t = f.filesystem_type();
            t == CGROUP2_SUPER_MAGIC || t == CGROUP_SUPER_MAGIC
        });
        if below_base && plain && on_cgroupfs && path.is_dir() {
            Some(Cgroup::open(path))
        } else {
            if path.exists() {
                tracing::warn!(path = %path.display(), "not a batchguard run cgroup; left alone");
            }
            None
        }
    }

    /// Open an existing cgroup directory (leftover cleanup).
    fn open(path: &Path) -> Cgroup {
        let kind = if path.join("cgroup.controllers").exists() {
            Kind::V2
        } else {
            Kind::V1
        };
        Cgroup {
            kind,
            path: path.to_path_buf(),
        }
    }

    /// The leaf and every sub-cgroup below it, parents first.
    ///
    /// A cgroup directory (kernfs, v1 and v2) counts its sub-cgroups in its
    /// link count, `2 + subdirectories`: one `stat` says there are none,
    /// where listing a v1 memory cgroup reads its 34 control files (twice
    /// per run: the leftover check and the removal).
    fn dirs(&self) -> Vec<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let mut out = vec![self.path.clone()];
        let mut i = 0;
        while i < out.len() {
            let no_subdirs = fs::metadata(&out[i]).is_ok_and(|m| m.nlink() == 2);
            if no_subdirs {
                i += 1;
                continue;
            }
            if let Ok(rd) = fs::read_dir(&out[i]) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(e.path());
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Every pid in the cgroup (and its sub-cgroups) that is not a zombie.
    pub(crate) fn live_pids(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for dir in self.dirs() {
            if let Ok(text) = procfs::read_small(dir.join("cgroup.procs")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                        .filter(|&p| p != me && procfs::stat(p).is_some_and(|s| s.is_live())),
                );
            }
        }
        out
    }

    /// v2 `cgroup.kill` (Linux 5.14+): the kernel SIGKILLs every process of the
    /// cgroup and its sub-cgroups at once, including one forking right now.
    /// False when the file does not exist (older kernel, v1) or cannot be written.
    pub(crate) fn kill(&self) -> bool {
        if self.kind != Kind::V2 {
            return false;
        }
        let kill = self.path.join("cgroup.kill");
        kill.exists() && write_file(&kill, "1").is_ok()
    }

    /// Send `sig` to every member; KILL goes through [`Cgroup::kill`] where
    /// the kernel offers it (fallback: every pid in cgroup.procs, one by one).
    pub(crate) fn signal_all(&self, sig: Signal) {
        if sig == Signal::SIGKILL && self.kill() {
            return;
        }
        for pid in self.live_pids() {
            sys::kill(pid, sig);
        }
    }

    fn oom_file(&self) -> PathBuf {
        match self.kind {
            Kind::V2 => self.path.join("memory.events"),
            Kind::V1 => self.path.join("memory.oom_control"),
        }
    }

    /// Number of processes the kernel OOM killer killed in this group.
    pub(crate) fn oom_kills(&self) -> u64 {
        read_key(&self.oom_file(), "oom_kill").unwrap_or(0)
    }

    /// The file holding the OOM kill counter, opened once for [`OomCounter::read`].
    pub(crate) fn oom_counter(&self) -> Option<OomCounter> {
        File::open(self.oom_file()).ok().map(OomCounter)
    }

    /// High-water mark of the group's memory as kept by the kernel, if it keeps one.
    pub(crate) fn peak(&self) -> Option<u64> {
        match self.kind {
            Kind::V2 => read_u64(&self.path.join("memory.peak")),
            Kind::V1 => read_u64(&self.path.join("memory.max_usage_in_bytes")),
        }
    }

    pub(crate) fn has_kernel_peak(&self) -> bool {
        match self.kind {
            Kind::V2 => self.path.join("memory.peak").exists(),
            Kind::V1 => true,
        }
    }

    pub(crate) fn current(&self) -> Option<u64> {
        match self.kind {
            Kind::V2 => read_u64(&self.path.join("memory.current")),
            Kind::V1 => read_u64(&self.path.join("memory.usage_in_bytes")),
        }
    }

    /// Remove the leaf (and any sub-cgroups), retrying briefly while the kernel
    /// finishes tearing down exited members.
    pub(crate) fn remove(&self) -> io::Result<()> {
        let mut dirs = self.dirs();
        dirs.reverse();
        for dir in dirs {
            let mut attempt = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt < 100 && e.raw_os_error() == Some(libc::EBUSY) => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only cgroup mounts are kept, with their root, point (unescaped),
    /// type and super options; a short or foreign line is skipped.
    #[test]
    fn mountinfo_lines_of_cgroup_mounts_only() {
        let v1 = "35 31 0:30 /process_api /sys/fs/cgroup/mem\\040ory rw,relatime shared:9 - cgroup cgroup rw,memory";
        let m = parse_cgroup_mount(v1).expect("a v1 mount");
        assert_eq!(m.root, "/process_api");
        assert_eq!(m.point, PathBuf::from("/sys/fs/cgroup/mem ory"));
        assert_eq!(
            (m.fstype.as_str(), m.super_opts.as_str()),
            ("cgroup", "rw,memory")
        );
        let v2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(parse_cgroup_mount(v2).expect("v2").fstype, "cgroup2");
        assert!(parse_cgroup_mount("22 27 0:21 / /proc rw,relatime - proc proc rw").is_none());
        assert!(parse_cgroup_mount("garbage").is_none());
        assert!(
            parse_cgroup_mount("1 2 - cgroup cgroup rw").is_none(),
            "no root and point"
        );
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    /// A v2 cgroup without `memory.peak` (kernels before 5.19): no kernel
    /// peak, so the supervisor samples `memory.current` instead.
    #[test]
    fn v2_without_memory_peak_falls_back_to_current() {
        let dir = std::env::temp_dir().join(format!("cg-nopeak-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("memory.current"), "12345\n").expect("write");
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .expect("write");
        let c = Cgroup {
            kind: Kind::V2,
            path: dir.clone(),
        };
        assert!(!c.has_kernel_peak());
        assert_eq!(c.peak(), None);
        assert_eq!(c.current(), Some(12345));
        assert_eq!(c.oom_kills(), 2);
        assert!(
            !c.kill(),
            "no cgroup.kill file: fall back to signalling every pid"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_bad_names() {
        assert!(check_name("").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("run-01H").is_ok());
    }
}
