//! Run one process tree safely: its own process group and (where the host allows)
//! its own cgroup, a wall-clock timeout and a memory limit that reach the whole
//! tree, line-oriented capture of stdout/stderr, and an [`Outcome`] at the end.
//!
//! This crate knows nothing about configs, stores or jobs: plain data in
//! ([`Spec`], [`Limits`]), outcome out.
//!
//! # Theory of operation
//!
//! * [`spawn`] resolves `argv[0]` in the child's `PATH`, optionally creates a fresh
//!   leaf cgroup (v2: `BASE/<name>`, BASE being `/sys/fs/cgroup/batchguard` or,
//!   where that is not writable, `<own delegated cgroup>/batchguard`; v1:
//!   `<own memory cgroup>/batchguard/<name>`) with the memory limit, and starts the
//!   child (module `spawn`). On cgroup v2 that is `clone3(CLONE_INTO_CGROUP)`: the
//!   child is born inside its cgroup. Otherwise (v1, poll, or a kernel without it)
//!   the child is started vfork-style (`clone3(CLONE_VM | CLONE_VFORK |
//!   CLONE_CLEAR_SIGHAND)`, no copy of the runner's memory, its signal handlers
//!   reset by the kernel; on kernels before 5.5 `clone(CLONE_VM | CLONE_VFORK)`
//!   and the child resets them) and writes `0` to the cgroup's `cgroup.procs`, on
//!   v1 its `tasks` (opened before the clone, so even its first fork is inside;
//!   `tasks` moves the one thread the child has without the kernel's global
//!   lock and its RCU grace period, see `cgroup::Entrance`). Where that clone is
//!   refused (a seccomp filter), `std::process::Command` spawns instead.
//!   Between fork and exec the child puts itself in a new process group, drops
//!   privileges (setgroups, setgid, setuid), changes directory and installs the
//!   optional "done" descriptor. Each of those steps reports a failure through a
//!   private close-on-exec pipe, so the parent can tell a bad workdir from a
//!   missing program.
//! * Main children are recorded in a process-wide registry. The runner is expected
//!   to be a child subreaper ([`become_subreaper`]); orphaned descendants then
//!   reparent to it and are reaped here, but never a registered main child, whose
//!   status belongs to its own [`Child::wait`] (which may run on another thread).
//! * [`Child::wait`] is event driven: it `poll`s a pidfd of the main child, the
//!   (non-blocking) stdout and stderr pipes and an eventfd rung by [`StopHandle`]
//!   with a timeout equal to the next deadline (timeout, kill grace, memory
//!   sample). The output is read on the waiting thread itself (no reader threads):
//!   each pass drains what the pipes hold (bounded per pass, so a chatty child
//!   never blocks and never starves the deadlines), cuts lines (64 KiB max per
//!   piece) and hands them to `on_line` in arrival order. It reads the exit status with
//!   `waitid(WNOWAIT)`, so the main child's zombie keeps its pid and process group
//!   id reserved while the rest of the tree is being killed, and reaps it last.
//! * "The tree" is every live process of the cgroup, or without a cgroup: the
//!   process group, all descendants by ppid links, every process seen earlier in
//!   the tree (pid + start time), and, once the main child has exited, any process
//!   still holding our output pipes. Stopping is TERM (or the runner's own INT /
//!   HUP / QUIT, [`StopReason::first_signal`]), sent exactly once to each process
//!   (the process group with one `killpg`, then only members outside it), then
//!   KILL after the grace (v2: `cgroup.kill`), repeated until the tree is empty
//!   (bounded). After the main child exits on its own, leftovers get TERM and at
//!   most 1 s (or the grace if shorter) before KILL.
//! * Memory: with a cgroup the kernel enforces the limit and the outcome is
//!   [`End::OutOfMemory`] when the group's `oom_kill` counter moved; peak comes from
//!   `memory.peak` / `memory.max_usage_in_bytes` (or sampling `memory.current`).
//!   Without a cgroup the tree's RSS is sampled every 100 ms and the tree is
//!   KILLed above the limit.
//! * Per-item mode: a [`Group`] is one run-level cgroup created once; children
//!   spawned with [`CgroupPlacement::Join`] enter it (no cgroup created or removed
//!   per child, no limit of their own): each joins by itself before exec as
//!   above (with the C library's spawn, the fallback, a plain child's pid is
//!   written to `cgroup.procs` by the parent right after the spawn). The
//!   group's limit bounds all of them together. A joined child's own tree (timeout,
//!   stop, leftovers) is its process group plus tracked descendants, as without a
//!   cgroup, because the cgroup is shared with its siblings; its outcome is
//!   [`End::OutOfMemory`] by the heuristic documented on `joined_oom` (group OOM
//!   counter moved during its run and it died of SIGKILL, or in poll mode a
//!   [`Group::sample`] breach and death by signal). Without a cgroup the group keeps
//!   the list of its live members for [`Group::sample`] and [`Group::kill_all`].
//!   Short children stay cheap: no /proc scan unless they outlive the first tick or
//!   an orphan was re-parented to us (`tree::only_main_children`).

use std::ffi::{CString, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

mod cgroup;
mod group;
mod output;
pub mod procfs;
mod spawn;
mod sys;
mod tree;

use cgroup::{Cgroup, Kind};
use output::Output;
use sys::{EventFd, RawStatus};
use tree::Tracker;

pub use group::{Group, GroupHandle};
pub use output::MAX_LINE;
pub use spawn::resolve as resolve_program;
pub use sys::{rename_as, seal_inherited_fds};

/// Memory sampling period without a cgroup (and for cgroup v2 without memory.peak).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// When the first memory sample / housekeeping tick happens.
const FIRST_TICK: Duration = Duration::from_millis(10);
/// Housekeeping period otherwise (orphan reaping).
const HOUSEKEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the tree is re-checked / re-KILLed while it is being torn down.
const TEARDOWN_TICK: Duration = Duration::from_millis(20);
/// Give up KILLing a tree that does not die (processes stuck in D state) after this.
const KILL_GIVE_UP: Duration = Duration::from_secs(10);
/// Longest grace for leftovers after the main child exited on its own.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// Without a cgroup: how long EOF may lag behind the end of the known tree before
/// we look for other processes holding our output pipes.
const EOF_LAG: Duration = Duration::from_millis(50);
/// How long to wait for pipe EOF once the whole known tree is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Plain data in

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// Program and arguments; `argv[0]` is looked up in the `PATH` of `env` if it has no '/'.
    pub argv: Vec<OsString>,
    /// Working directory of the child (entered after dropping privileges).
    pub cwd: Option<PathBuf>,
    /// The complete environment of the child (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Drop privileges in the child: setgroups, setgid, setuid (in that order).
    pub user: Option<RunAs>,
    pub stdin: StdinMode,
    /// If `Some(n)` (n >= 3): a pipe whose write end the child gets as fd `n`;
    /// read it with [`Child::take_done_reader`].
    pub done_fd: Option<i32>,
    pub cgroup: CgroupPlacement,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdinMode {
    #[default]
    Null,
    Pipe,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CgroupPlacement {
    /// A fresh leaf cgroup named after the run (if the host supports it).
    Create { name: String },
    #[default]
    None,
    /// Join the cgroup of a run-level [`Group`] (per-item mode): no cgroup is
    /// created or removed for this child and `Limits::memory_max` is ignored (the
    /// group's limit applies). Its own tree — for timeout, stop and leftovers — is
    /// its process group plus tracked descendants, never the shared cgroup.
    Join(GroupHandle),
}

/// An account to run the child as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

impl RunAs {
    /// `getpwnam` + `getgrouplist`.
    pub fn lookup(name: &str) -> Result<RunAs, SpawnError> {
        let user_err = |reason: String| SpawnError::User {
            name: name.to_string(),
            reason,
        };
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| user_err(format!("getpwnam failed: {e}")))?
            .ok_or_else(|| user_err("no such user".to_string()))?;
        let cname = CString::new(name).map_err(|_| user_err("name contains NUL".to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| user_err(format!("getgrouplist failed: {e}")))?;
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            home: user.dir,
        })
    }
}

/// Bounds of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit; at the deadline the tree gets TERM, then KILL after `kill_grace`.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL.
    pub kill_grace: Duration,
    /// Memory limit in bytes for the whole tree.
    pub memory_max: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: None,
            kill_grace: Duration::from_secs(10),
            memory_max: None,
        }
    }
}

/// How memory is (or can be) enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enforcement {
    Cgroup2,
    Cgroup1,
    Poll,
    None,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Cgroup2 => "cgroup2",
            Enforcement::Cgroup1 => "cgroup1",
            Enforcement::Poll => "poll",
            Enforcement::None => "none",
        }
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Enforcement::from_str`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown memory enforcement {0:?} (expected cgroup2, cgroup1, poll or none)")]
pub struct ParseEnforcementError(pub String);

impl FromStr for Enforcement {
    type Err = ParseEnforcementError;
    fn from_str(s: &str) -> Result<Enforcement, ParseEnforcementError> {
        match s {
            "cgroup2" => Ok(Enforcement::Cgroup2),
            "cgroup1" => Ok(Enforcement::Cgroup1),
            "poll" => Ok(Enforcement::Poll),
            "none" => Ok(Enforcement::None),
            other => Err(ParseEnforcementError(other.to_string())),
        }
    }
}

/// Where a cgroup named `name` (`CgroupPlacement::Create` or
/// [`Group::create`]) is placed in `mode`, without creating it (on cgroup v2
/// the base below which it goes is set up on first use, see
/// docs/supervision.md). A runner records it before spawning, so that whoever
/// cleans up after a runner killed right after the spawn still finds the
/// whole tree. None where no cgroup can be created (poll).
pub fn planned_cgroup(name: &str, mode: Enforcement) -> Option<PathBuf> {
    match mode {
        Enforcement::Cgroup2 => cgroup::v2_base_planned().map(|b| b.join(name)),
        Enforcement::Cgroup1 => cgroup::v1_own().map(|o| o.join("batchguard").join(name)),
        Enforcement::Poll | Enforcement::None => None,
    }
}

/// What this host can do, honouring `BATCHGUARD_CGROUP=auto|cgroup2|cgroup1|poll|none`.
pub fn detect() -> Enforcement {
    match std::env::var("BATCHGUARD_CGROUP") {
        Ok(v) if !v.is_empty() && v != "auto" => match v.parse() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("BATCHGUARD_CGROUP: {e}; detecting");
                detect_host()
            }
        },
        _ => detect_host(),
    }
}

/// What this host can do, ignoring the environment: cgroup2 if a cgroup2 hierarchy
/// offers the memory controller, else cgroup1 if a v1 memory hierarchy is mounted,
/// else poll. (Whether we may write there is only known when creating a cgroup.)
pub fn detect_host() -> Enforcement {
    if cgroup::v2_root().is_some() {
        Enforcement::Cgroup2
    } else if cgroup::v1_own().is_some() {
        Enforcement::Cgroup1
    } else {
        Enforcement::Poll
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a child could not be started.
#[derive(thiserror::Error, Debug)]
pub enum SpawnError {
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{program}: not executable")]
    NotExecutable { program: String },
    #[error("working directory {}: {source}", path.display())]
    Workdir { path: PathBuf, source: io::Error },
    #[error("user {name}: {reason}")]
    User { name: String, reason: String },
    #[error("cgroup {}: {source}", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("cannot start: {0}")]
    Io(#[from] io::Error),
}

impl SpawnError {
    /// Shell convention: 127 not found, 126 not executable / cannot start.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            _ => 126,
        }
    }
}

// ---------------------------------------------------------------------------
// Outcome out

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// "stdout" or "stderr".
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// A newer run took the lock.
    Fenced,
    /// The runner received this signal and forwarded it.
    Signal(i32),
    /// Stopped on request (API / operator).
    Requested,
}

impl StopReason {
    /// The signal that starts a graceful stop: the runner's own TERM, INT, HUP
    /// or QUIT is forwarded as itself (INT stays INT), anything else is TERM.
    pub fn first_signal(self) -> Signal {
        match self {
            StopReason::Signal(s) => match Signal::try_from(s) {
                Ok(sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT)) => {
                    sig
                }
                _ => Signal::SIGTERM,
            },
            StopReason::Fenced | StopReason::Requested => Signal::SIGTERM,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    OutOfMemory,
    Stopped(StopReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub end: End,
    pub peak_memory_bytes: Option<u64>,
    /// Enforcement actually used for the memory limit (`None` without a limit).
    pub enforcement: Enforcement,
    /// From spawn until the tree was gone and output drained.
    pub duration: Duration,
}

// ---------------------------------------------------------------------------
// Stop handle

#[derive(Debug)]
struct StopShared {
    reason: Mutex<Option<StopReason>>,
    kill_now: AtomicBool,
    wake: Arc<EventFd>,
}

/// Stops a running child from any thread. Clone + Send + Sync.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<StopShared>);

impl StopHandle {
    fn set(&self, reason: StopReason) {
        let mut r = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
    }

    /// TERM the whole tree, KILL it after `kill_grace`. The first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        self.set(reason);
        self.0.wake.signal();
    }

    /// KILL the whole tree now. The first reason given wins.
    pub fn kill(&self, reason: StopReason) {
        self.set(reason);
        self.0.kill_now.store(true, Ordering::SeqCst);
        self.0.wake.signal();
    }

    fn reason(&self) -> Option<StopReason> {
        *self.0.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------
// Spawning

/// Start `spec` under `limits`, with the enforcement [`detect`] reports.
pub fn spawn(spec: Spec, limits: Limits) -> Result<Child, SpawnError> {
    spawn_with(spec, limits, detect())
}

/// Like [`spawn`] but with the memory enforcement mode forced (tests, or a runner
/// that already ran [`detect`] once). `Cgroup2`/`Cgroup1` fall back to `Poll` if the
/// cgroup cannot be created; `None` means no cgroup and no memory enforcement.
pub fn spawn_with(spec: Spec, limits: Limits, mode: Enforcement) -> Result<Child, SpawnError> {
    let started = Instant::now();
    let Some(argv0) = spec.argv.first() else {
        return Err(SpawnError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty argv",
        )));
    };
    let program_name = argv0.to_string_lossy().into_owned();
    let program = spawn::resolve(argv0, &spec.env)?;
    let cwd = spawn::check_workdir(spec.cwd.as_deref())?;
    spawn::check_done_fd(spec.done_fd)?;
    let joined = joined_group(&spec.cgroup)?;
    let mut limits = limits;
    if joined.is_some() {
        // The group's limit bounds the child; it has none of its own.
        limits.memory_max = None;
    }
    let cg = own_cgroup(&spec.cgroup, limits.memory_max, mode);
    let effective = match (&cg, &joined) {
        (_, Some(g)) => g.mode(),
        (Some((c, _)), None) => c.kind.enforcement(),
        (None, None) if mode == Enforcement::None => Enforcement::None,
        (None, None) => Enforcement::Poll,
    };
    if limits.memory_max.is_some() && effective == Enforcement::None {
        tracing::warn!("memory_max set but memory enforcement is 'none': not enforced");
    }
    // Joined children: the group's OOM counters before this child started.
    let oom_before = joined.as_ref().map_or(0, |g| g.oom_kills());
    let breaches_before = joined.as_ref().map_or(0, |g| g.breaches());
    let target = match &joined {
        Some(g) => g.join_target(),
        None => cg.as_ref().map(|(c, f)| (c, f)),
    };
    let proc = match spawn::start(
        &spec,
        &program,
        &program_name,
        cwd,
        target,
        joined.is_some(),
    ) {
        Ok(p) => p,
        Err(e) => {
            if let Some((c, _)) = &cg {
                let _ = c.remove();
            }
            return Err(e);
        }
    };
    let memory_enforcement = match &joined {
        Some(g) => g.enforcement(),
        None if limits.memory_max.is_some() => effective,
        None => Enforcement::None,
    };
    let plan = Supervision {
        started,
        limits,
        mode: effective,
        memory_enforcement,
        cgroup: cg.map(|(c, _procs)| c),
        group: joined,
        oom_before,
        breaches_before,
    };
    plan.attach(proc)
}

/// The group a [`CgroupPlacement::Join`] child joins (an error once it is closed).
fn joined_group(placement: &CgroupPlacement) -> Result<Option<Arc<group::GroupInner>>, SpawnError> {
    match placement {
        CgroupPlacement::Join(h) if h.0.is_closed() => Err(group::closed_error(&h.0)),
        CgroupPlacement::Join(h) => Ok(Some(h.0.clone())),
        _ => Ok(None),
    }
}

/// The child's own cgroup for [`CgroupPlacement::Create`] in a cgroup `mode`,
/// with its `cgroup.procs` open; None (poll) when it cannot be created.
fn own_cgroup(
    placement: &CgroupPlacement,
    memory_max: Option<u64>,
    mode: Enforcement,
) -> Option<(Cgroup, cgroup::Entrance)> {
    let (Some(kind), CgroupPlacement::Create { name }) = (Kind::of(mode), placement) else {
        return None;
    };
    match Cgroup::create(kind, name, memory_max, true) {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(
                path = %e.path.display(),
                error = %e.source,
                "cannot create a {mode} cgroup; tracking the process tree by polling instead"
            );
            None
        }
    }
}

/// How a started child will be supervised: what [`spawn_with`] decided.
struct Supervision {
    started: Instant,
    limits: Limits,
    mode: Enforcement,
    memory_enforcement: Enforcement,
    cgroup: Option<Cgroup>,
    group: Option<Arc<group::GroupInner>>,
    oom_before: u64,
    breaches_before: u64,
}

impl Supervision {
    /// Build the [`Child`] around the running process `proc`. On failure the
    /// child (already running) is killed and reaped, its cgroup removed.
    fn attach(self, proc: spawn::Started) -> Result<Child, SpawnError> {
        let pid = proc.pid;
        if let Some(g) = &self.group {
            g.add_member(pid);
        }
        let abort = |e: io::Error| abort_spawn(pid, self.cgroup.as_ref(), self.group.as_deref(), e);
        let wake = Arc::new(EventFd::new().map_err(abort)?);
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(pid, error = %e, "pidfd_open failed; falling back to a 10 ms exit check");
                None
            }
        };
        let pipes: Vec<(Stream, OwnedFd)> =
            [(Stream::Stdout, proc.stdout), (Stream::Stderr, proc.stderr)]
                .into_iter()
                .filter_map(|(stream, fd)| Some((stream, fd?)))
                .collect();
        // Only the no-cgroup tracker looks for holders of the pipes.
        let tracker = self.cgroup.is_none().then(|| {
            let inodes = pipes
                .iter()
                .filter_map(|(_, fd)| sys::inode(fd.as_raw_fd()).ok())
                .collect();
            Tracker::new(pid, pid, inodes)
        });
        let output = Output::new(pipes).map_err(abort)?;
        let stop = StopHandle(Arc::new(StopShared {
            reason: Mutex::new(None),
            kill_now: AtomicBool::new(false),
            wake: wake.clone(),
        }));
        Ok(Child {
            pid,
            started: self.started,
            limits: self.limits,
            mode: self.mode,
            memory_enforcement: self.memory_enforcement,
            cgroup: self.cgroup,
            stdin: proc.stdin,
            done_reader: proc.done_reader,
            pidfd,
            wake,
            stop,
            output,
            tracker,
            group: self.group,
            oom_before: self.oom_before,
            breaches_before: self.breaches_before,
            main_exited: false,
            no_orphans_seen: false,
            peak: None,
            finished: false,
        })
    }
}

/// Cleanup when the child is running but its supervision could not be set up.
/// A joined child's shared group cgroup is left alone (siblings live there).
fn abort_spawn(
    pid: i32,
    cgroup: Option<&Cgroup>,
    group: Option<&group::GroupInner>,
    e: io::Error,
) -> SpawnError {
    if let Some(c) = cgroup {
        c.signal_all(Signal::SIGKILL);
    }
    sys::killpg(pid, Signal::SIGKILL);
    sys::kill(pid, Signal::SIGKILL);
    if let Some(g) = group {
        g.remove_member(pid);
    }
    let _ = sys::reap_blocking(pid);
    tree::registry().remove(&pid);
    if let Some(c) = cgroup {
        let _ = c.remove();
    }
    SpawnError::Io(e)
}

// ---------------------------------------------------------------------------
// The running child

/// Why the run is being torn down (first one wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Timeout,
    Memory,
    Stop(StopReason),
}

/// The state of one [`Child::wait`] loop.
struct WaitState {
    grace: Duration,
    deadline: Option<Instant>,
    /// The main child's exit status, once it exited (not reaped yet).
    status: Option<RawStatus>,
    cause: Option<Cause>,
    phase: Phase,
    next_tick: Instant,
    drain_deadline: Option<Instant>,
    /// Set once the known tree was gone but the pipes were still open: from then on
    /// also look for processes holding our pipes (no-cgroup mode only).
    deep: bool,
    deep_at: Option<Instant>,
    /// When [`Child::wait_then`]'s hook is due (until it ran).
    later_at: Option<Instant>,
}

impl WaitState {
    fn new(limits: &Limits, started: Instant) -> WaitState {
        WaitState {
            grace: limits.kill_grace,
            deadline: limits.timeout.map(|t| started + t),
            status: None,
            cause: None,
            phase: Phase::Running,
            // The first sample after FIRST_TICK: a short job never pays for a
            // scan of the process table.
            next_tick: Instant::now() + FIRST_TICK,
            drain_deadline: None,
            deep: false,
            deep_at: None,
            later_at: None,
        }
    }
}

/// What `Child::after_exit` found.
enum AfterExit {
    /// Tree gone and output drained (or given up): conclude.
    Done,
    /// Look again at once (the deep search was just switched on).
    LookAgain,
    Wait,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Running,
    Terminating { kill_at: Instant },
    Killing { since: Instant, next: Instant },
}

/// A supervised child. Call [`Child::wait`]; dropping it without waiting KILLs the tree.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    started: Instant,
    limits: Limits,
    /// How the tree is tracked / memory would be enforced.
    mode: Enforcement,
    /// Reported enforcement (None without memory_max).
    memory_enforcement: Enforcement,
    cgroup: Option<Cgroup>,
    stdin: Option<ChildStdin>,
    done_reader: Option<File>,
    pidfd: Option<OwnedFd>,
    wake: Arc<EventFd>,
    stop: StopHandle,
    /// The stdout/stderr pipes not yet at EOF, read by `wait`.
    output: Output,
    tracker: Option<Tracker>,
    /// The run-level group this child joined (CgroupPlacement::Join).
    group: Option<Arc<group::GroupInner>>,
    /// The group's kernel oom_kill counter / poll-mode breach count at spawn.
    oom_before: u64,
    breaches_before: u64,
    /// Set by `wait` once the main process has exited.
    main_exited: bool,
    /// Whether the latest `tree` call answered from `tree::only_main_children`:
    /// then there was no orphan to reap a moment ago and `wait` skips its final
    /// `tree::reap_orphans` (one listing of our children instead of two).
    no_orphans_seen: bool,
    peak: Option<u64>,
    finished: bool,
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child's process group (it is the group leader).
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    /// The child's own cgroup, or for a joined child the group's (shared) cgroup.
    pub fn cgroup_path(&self) -> Option<&Path> {
        match &self.group {
            Some(g) => g.path(),
            None => self.cgroup.as_ref().map(|c| c.path.as_path()),
        }
    }

    /// Enforcement actually used for the memory limit (`None` when no memory_max).
    pub fn enforcement(&self) -> Enforcement {
        self.memory_enforcement
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn take_done_reader(&mut self) -> Option<File> {
        self.done_reader.take()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Live processes of the tree. `deep` adds holders of our output pipes (no-cgroup mode).
    fn tree(&mut self, deep: bool) -> Vec<i32> {
        self.no_orphans_seen = false;
        match (&self.cgroup, &mut self.tracker) {
            (Some(c), _) => c.live_pids(),
            // Once the main process has exited, every surviving descendant
            // was re-parented to us (we are a child subreaper): no child of
            // ours besides supervised main processes means no leftovers, and
            // the scan of every process in /proc can be skipped.
            (None, Some(_)) if self.main_exited && !deep && tree::only_main_children() => {
                self.no_orphans_seen = true;
                Vec::new()
            }
            (None, Some(t)) => t.scan(deep),
            (None, None) => tree::live_in_group(self.pid),
        }
    }

    /// Send `sig` once to every process of the tree (see [`tree::signal_once`]):
    /// the process group first, then members outside it. KILL of an own v2
    /// cgroup is one write to `cgroup.kill`. The main child's zombie keeps the
    /// group id reserved until the reap, so `killpg` never hits a stranger.
    fn signal_tree(&mut self, sig: Signal, deep: bool) {
        if sig == Signal::SIGKILL && self.cgroup.as_ref().is_some_and(Cgroup::kill) {
            sys::killpg(self.pid, sig);
            return;
        }
        let pgid = self.pid;
        tree::signal_once(&[pgid], || self.tree(deep), sig);
    }

    /// Periodic work: memory sampling, orphan reaping. Returns true if the poll-mode
    /// memory limit was exceeded.
    fn tick(&mut self) -> bool {
        tree::reap_orphans();
        let mut over = false;
        match (&self.cgroup, self.mode) {
            (Some(c), _) => {
                if !c.has_kernel_peak() {
                    if let Some(cur) = c.current() {
                        self.peak = Some(self.peak.unwrap_or(0).max(cur));
                    }
                }
            }
            (None, Enforcement::Poll) => {
                let page = sys::page_size();
                let pids = self.tree(false);
                let rss: u64 = pids
                    .iter()
                    .filter_map(|&p| procfs::rss_bytes(p, page))
                    .sum();
                if !pids.is_empty() {
                    self.peak = Some(self.peak.unwrap_or(0).max(rss));
                }
                if let Some(max) = self.limits.memory_max {
                    over = rss > max;
                }
            }
            (None, _) => {
                // Keep the tracker's memory of the tree fresh.
                let _ = self.tree(false);
            }
        }
        over
    }

    fn tick_period(&self) -> Duration {
        match &self.cgroup {
            Some(c) if c.has_kernel_peak() => HOUSEKEEP_EVERY,
            _ => SAMPLE_EVERY,
        }
    }

    /// Block until the main child has exited, the rest of its tree is gone and both
    /// output pipes reached EOF (or the tree was killed). `on_line` is called on this
    /// thread for every line of output, in arrival order.
    pub fn wait(self, on_line: impl FnMut(Stream, &[u8])) -> Outcome {
        self.wait_then(on_line, Duration::MAX, || {})
    }

    /// [`Child::wait`], and `later` is called once, on this thread, when the
    /// wait lasts `after` or longer: for what a short child never needs, such
    /// as a runner's helper threads.
    pub fn wait_then(
        mut self,
        mut on_line: impl FnMut(Stream, &[u8]),
        after: Duration,
        later: impl FnOnce(),
    ) -> Outcome {
        let mut w = WaitState::new(&self.limits, self.started);
        w.later_at = Instant::now().checked_add(after);
        let mut later = Some(later);
        loop {
            self.wake.drain();
            self.check_exit(&mut w);
            // After the exit check: a main child that exited has closed its end of
            // the pipes, so a lone child's EOF is seen in this very pass.
            self.output.pump(&mut on_line);
            let now = Instant::now();
            if w.later_at.is_some_and(|at| now >= at) {
                w.later_at = None;
                if let Some(f) = later.take() {
                    f();
                }
            }
            self.main_exited = w.status.is_some();
            self.act(&mut w, now);
            if w.status.is_some() {
                match self.after_exit(&mut w, now) {
                    AfterExit::Done => break,
                    AfterExit::LookAgain => continue,
                    AfterExit::Wait => {}
                }
            }
            self.sleep(&w, now);
        }
        self.conclude(w, &mut on_line)
    }

    /// Has the main child exited? (`waitid(WNOWAIT)`: its zombie stays.)
    fn check_exit(&mut self, w: &mut WaitState) {
        if w.status.is_none() {
            match sys::peek_exit(self.pid) {
                Ok(s) => w.status = s,
                Err(e) => {
                    tracing::error!(pid = self.pid, error = %e, "waitid failed");
                    w.status = Some(RawStatus::Signaled(0));
                }
            }
        }
    }

    /// Requests from outside, the deadline, sampling and escalation.
    fn act(&mut self, w: &mut WaitState, now: Instant) {
        let running = w.status.is_none();
        if running && w.cause.is_none() {
            if let Some(r) = self.stop.reason() {
                w.cause = Some(Cause::Stop(r));
                w.phase = self.begin_term(w.phase, now, w.grace, r.first_signal());
            }
        }
        if self.stop.0.kill_now.load(Ordering::SeqCst) {
            w.phase = self.begin_kill(w.phase, now);
        }
        if running && w.cause.is_none() && w.deadline.is_some_and(|d| now >= d) {
            w.cause = Some(Cause::Timeout);
            w.phase = self.begin_term(w.phase, now, w.grace, Signal::SIGTERM);
        }
        if now >= w.next_tick {
            let over = self.tick();
            if over && running && w.cause.is_none() {
                tracing::info!(pid = self.pid, "memory limit exceeded; killing the tree");
                w.cause = Some(Cause::Memory);
                w.phase = self.begin_kill(w.phase, now);
            }
            w.next_tick = now + self.tick_period();
        }
        match w.phase {
            Phase::Terminating { kill_at } if now >= kill_at => {
                w.phase = self.begin_kill(w.phase, now)
            }
            Phase::Killing { since, next } if now >= next => {
                self.signal_tree(Signal::SIGKILL, w.deep);
                w.phase = Phase::Killing {
                    since,
                    next: now + TEARDOWN_TICK,
                };
            }
            _ => {}
        }
    }

    /// After the main child exited: make sure the rest of the tree goes too,
    /// and decide when the output is drained.
    fn after_exit(&mut self, w: &mut WaitState, now: Instant) -> AfterExit {
        let alive = self.tree(w.deep && !self.output.all_closed());
        if !alive.is_empty() {
            w.drain_deadline = None;
            if matches!(w.phase, Phase::Running) {
                tracing::debug!(
                    pid = self.pid,
                    leftovers = alive.len(),
                    "main process exited; terminating leftovers"
                );
                let grace = w.grace.min(LEFTOVER_GRACE);
                w.phase = self.begin_term(w.phase, now, grace, Signal::SIGTERM);
            }
            if let Phase::Killing { since, .. } = w.phase {
                if now.duration_since(since) > KILL_GIVE_UP {
                    tracing::warn!(pid = self.pid, leftovers = ?alive, "processes survive SIGKILL; giving up");
                    return AfterExit::Done;
                }
            }
            return AfterExit::Wait;
        }
        if self.output.all_closed() {
            return AfterExit::Done;
        }
        if !w.deep && self.cgroup.is_none() {
            // Usually EOF is only microseconds behind the exit: give it a
            // moment before the expensive search for pipe holders.
            let at = *w.deep_at.get_or_insert(now + EOF_LAG);
            if now >= at {
                w.deep = true;
                return AfterExit::LookAgain;
            }
        }
        let d = *w.drain_deadline.get_or_insert(now + DRAIN_GRACE);
        if now >= d {
            tracing::warn!(
                pid = self.pid,
                "output pipes still open after the tree ended; not waiting for EOF"
            );
            return AfterExit::Done;
        }
        AfterExit::Wait
    }

    /// Sleep until something happens (exit, output, a stop request) or the next deadline.
    fn sleep(&self, w: &WaitState, now: Instant) {
        let running = w.status.is_none();
        let mut wake_at = w.next_tick;
        let mut consider = |t: Instant| wake_at = wake_at.min(t);
        if running && w.cause.is_none() {
            if let Some(d) = w.deadline {
                consider(d);
            }
        }
        match w.phase {
            Phase::Running => {}
            Phase::Terminating { kill_at } => {
                consider(kill_at);
                consider(now + TEARDOWN_TICK);
            }
            Phase::Killing { next, .. } => consider(next),
        }
        if !running {
            consider(now + TEARDOWN_TICK);
        }
        if let Some(d) = w.drain_deadline {
            consider(d);
        }
        if let (Some(d), false) = (w.deep_at, w.deep) {
            consider(d);
        }
        if let Some(d) = w.later_at {
            consider(d);
        }
        if running && self.pidfd.is_none() {
            consider(now + Duration::from_millis(10));
        }
        // The wake-up eventfd, the pidfd, the open output pipes (-1: unused).
        let mut set = [sys::pollfd(-1); 4];
        set[0] = sys::pollfd(self.wake.raw());
        if let (true, Some(fd)) = (running, &self.pidfd) {
            set[1] = sys::pollfd(fd.as_raw_fd());
        }
        for (slot, fd) in set[2..].iter_mut().zip(self.output.pollfds()) {
            *slot = fd;
        }
        if let Err(e) = sys::poll(
            &mut set,
            Some(wake_at.saturating_duration_since(Instant::now())),
        ) {
            tracing::error!(error = %e, "poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The tree is gone: collect the verdict, reap, clean up.
    fn conclude(mut self, w: WaitState, on_line: &mut impl FnMut(Stream, &[u8])) -> Outcome {
        if let Some(g) = &self.group {
            // Before the reap: the zombie still reserves the process group id.
            g.remove_member(self.pid);
        }
        let final_status = match sys::reap_blocking(self.pid) {
            Ok(Some(s)) => Some(s),
            _ => w.status,
        };
        tree::registry().remove(&self.pid);
        let mut oom_kills = 0;
        if let Some(c) = &self.cgroup {
            oom_kills = c.oom_kills();
            if let Some(p) = c.peak() {
                self.peak = Some(self.peak.unwrap_or(0).max(p));
            }
        }
        self.output.finish(on_line);
        if let Some(c) = &self.cgroup {
            if let Err(e) = c.remove() {
                tracing::warn!(path = %c.path.display(), error = %e, "cannot remove cgroup");
            }
        }
        if !self.no_orphans_seen {
            tree::reap_orphans();
        }
        self.finished = true;
        let group_oom = self
            .group
            .as_ref()
            .is_some_and(|g| joined_oom(g, self.oom_before, self.breaches_before, final_status));
        let end = match w.cause {
            Some(Cause::Timeout) => End::TimedOut,
            Some(Cause::Memory) => End::OutOfMemory,
            Some(Cause::Stop(r)) => End::Stopped(r),
            None => match final_status {
                Some(RawStatus::Exited(0)) => End::Exited(0),
                _ if oom_kills > 0 || group_oom => End::OutOfMemory,
                Some(RawStatus::Exited(c)) => End::Exited(c),
                Some(RawStatus::Signaled(s)) => End::Signaled(s),
                None => End::Signaled(0),
            },
        };
        Outcome {
            end,
            peak_memory_bytes: self.peak.filter(|_| self.mode != Enforcement::None),
            enforcement: self.memory_enforcement,
            duration: self.started.elapsed(),
        }
    }

    /// Start the graceful stop with `sig` (TERM, or the runner's own signal):
    /// sent exactly once, never repeated during the grace.
    fn begin_term(&mut self, phase: Phase, now: Instant, grace: Duration, sig: Signal) -> Phase {
        match phase {
            Phase::Running => {
                self.signal_tree(sig, false);
                // SIGCONT so that stopped members can act on TERM.
                self.signal_tree(Signal::SIGCONT, false);
                Phase::Terminating {
                    kill_at: now + grace,
                }
            }
            other => other,
        }
    }

    fn begin_kill(&mut self, phase: Phase, now: Instant) -> Phase {
        match phase {
            Phase::Killing { .. } => phase,
            _ => {
                self.signal_tree(Signal::SIGKILL, false);
                Phase::Killing {
                    since: now,
                    next: now + TEARDOWN_TICK,
                }
            }
        }
    }
}

impl Drop for Child {
    /// A child dropped without `wait`: KILL the tree, reap, remove the cgroup.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.signal_tree(Signal::SIGKILL, true);
        let give_up = Instant::now() + Duration::from_secs(5);
        while Instant::now() < give_up && !self.tree(false).is_empty() {
            std::thread::sleep(TEARDOWN_TICK);
            self.signal_tree(Signal::SIGKILL, false);
        }
        if let Some(g) = &self.group {
            g.remove_member(self.pid);
        }
        let _ = sys::reap_blocking(self.pid);
        tree::registry().remove(&self.pid);
        if let Some(c) = &self.cgroup {
            let _ = c.remove();
        }
    }
}

/// Whether a joined child died of the group's memory limit. The group's cgroup is
/// shared, so its counters cannot name the victim; the rule is a heuristic:
///
/// * cgroup modes: the group's kernel `oom_kill` counter increased while this child
///   ran AND the child died of SIGKILL (what the OOM killer sends). A sibling's OOM
///   kill during the run plus a SIGKILL from elsewhere would also match.
/// * poll mode: a [`Group::sample`] found the group above its limit while this
///   child ran AND the child died of any signal (the caller's [`Group::kill_all`]
///   sends TERM first). A child that catches TERM and exits keeps its exit code.
fn joined_oom(
    g: &group::GroupInner,
    oom_before: u64,
    breaches_before: u64,
    status: Option<RawStatus>,
) -> bool {
    match status {
        Some(RawStatus::Signaled(sig)) => {
            (sig == libc::SIGKILL && g.oom_kills() > oom_before) || g.breaches() > breaches_before
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Cleanup after a dead runner

fn leftover_pids(cgroup: Option<&Path>, pgid: Option<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    if let Some(c) = cgroup.and_then(Cgroup::open_verified) {
        out.extend(c.live_pids());
    }
    if let Some(g) = pgid {
        if g != nix::unistd::getpgrp().as_raw() {
            out.extend(tree::live_in_group(g));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether any process of a tree left by a previous runner is still alive
/// (every pid in `cgroup`'s cgroup.procs, and every member of process group `pgid`).
/// `cgroup` comes from the state store and is only used when it is a run
/// cgroup: a directory on a cgroup filesystem directly below a `batchguard`
/// base (else it is ignored with a warning).
pub fn tree_alive(cgroup: Option<&Path>, pgid: Option<i32>) -> bool {
    !leftover_pids(cgroup, pgid).is_empty()
}

/// Send `sig` once to every process of a leftover tree (KILL: also `cgroup.kill`).
fn signal_leftovers(cgroup: Option<&Path>, pgid: Option<i32>, sig: Signal) {
    if sig == Signal::SIGKILL {
        if let Some(c) = cgroup.and_then(Cgroup::open_verified) {
            c.kill();
        }
    }
    tree::signal_once(pgid.as_slice(), || leftover_pids(cgroup, pgid), sig);
}

/// Kill a tree left by a previous runner: TERM, wait up to `grace`, KILL, wait until
/// it is gone (bounded), remove the cgroup directory. Returns whether anything was alive.
pub fn kill_leftovers(cgroup: Option<&Path>, pgid: Option<i32>, grace: Duration) -> bool {
    let was_alive = tree_alive(cgroup, pgid);
    if was_alive {
        signal_leftovers(cgroup, pgid, Signal::SIGTERM);
        signal_leftovers(cgroup, pgid, Signal::SIGCONT);
        let kill_at = Instant::now() + grace;
        while Instant::now() < kill_at && tree_alive(cgroup, pgid) {
            tree::reap_orphans();
            std::thread::sleep(TEARDOWN_TICK);
        }
        let give_up = Instant::now() + KILL_GIVE_UP;
        while tree_alive(cgroup, pgid) {
            if Instant::now() >= give_up {
                tracing::warn!("leftover processes survive SIGKILL; giving up");
                break;
            }
            signal_leftovers(cgroup, pgid, Signal::SIGKILL);
            tree::reap_orphans();
            std::thread::sleep(TEARDOWN_TICK);
        }
    }
    tree::reap_orphans();
    if let Some(c) = cgroup.and_then(Cgroup::open_verified) {
        if let Err(e) = c.remove() {
            tracing::warn!(path = %c.path.display(), error = %e, "cannot remove leftover cgroup");
        }
    }
    was_alive
}

/// `prctl(PR_SET_CHILD_SUBREAPER)`: orphaned descendants reparent to this process
/// (and are reaped by the supervisor) instead of init.
pub fn become_subreaper() {
    if let Err(e) = sys::set_child_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
}
