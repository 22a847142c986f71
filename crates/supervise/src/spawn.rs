//! Starting the child process: `argv[0]` looked up in the child's PATH, the
//! setup between clone and exec (process group, cgroup, user, workdir, done
//! fd) with each step's failure reported to the parent; on cgroup v2
//! `clone3(CLONE_INTO_CGROUP)` so that the child is born inside its cgroup,
//! elsewhere a vfork-style clone (the C library's spawn as the fallback).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cgroup::{Cgroup, Entrance, Kind};
use crate::{SpawnError, Spec, StdinMode, procfs, sys, tree};

/// The working directory as a C string, after checking it is a directory.
pub(crate) fn check_workdir(dir: Option<&Path>) -> Result<Option<CString>, SpawnError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let bad = |source: io::Error| SpawnError::Workdir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(io::Error::from_raw_os_error(libc::ENOTDIR))),
        Err(e) => return Err(bad(e)),
    }
    CString::new(dir.as_os_str().as_bytes())
        .map(Some)
        .map_err(|_| {
            bad(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains NUL",
            ))
        })
}

/// The done descriptor's number must be between 3 and 65535.
pub(crate) fn check_done_fd(done_fd: Option<i32>) -> Result<(), SpawnError> {
    match done_fd {
        Some(n) if !(3..=65535).contains(&n) => Err(SpawnError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("done_fd {n} must be between 3 and 65535"),
        ))),
        _ => Ok(()),
    }
}

/// Look `program` up like execvp does, in the child's PATH.
pub fn resolve(program: &OsStr, env: &[(OsString, OsString)]) -> Result<PathBuf, SpawnError> {
    let name = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(SpawnError::NotFound { program: name });
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut not_exec = false;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() {
                if meta.permissions().mode() & 0o111 != 0 {
                    return Ok(candidate);
                }
                not_exec = true;
            }
        }
    }
    if not_exec {
        Err(SpawnError::NotExecutable { program: name })
    } else {
        Err(SpawnError::NotFound { program: name })
    }
}

/// Steps of the child's setup between fork and exec, reported through a private pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Cgroup = 1,
    User = 2,
    Workdir = 3,
    DoneFd = 4,
    /// clone3 path: setpgid or installing stdin/stdout/stderr.
    Setup = 5,
    /// clone3 path: execve itself (errno follows).
    Exec = 6,
}

/// Everything the child needs between fork and exec, prepared beforehand
/// (no allocation is allowed after fork in a multi-threaded process).
struct PreExec {
    report_fd: RawFd,
    cgroup_procs: Option<RawFd>,
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    cwd: Option<CString>,
    done: Option<(RawFd, RawFd)>,
}

impl PreExec {
    /// Runs in the child after fork. Only async-signal-safe calls.
    fn run(&self) -> io::Result<()> {
        let fail = |stage: Stage| -> io::Error {
            let err = io::Error::last_os_error();
            let byte = stage as u8;
            // SAFETY: writes one byte from a live local to a descriptor kept open by the
            // parent for the duration of the spawn; write(2) is async-signal-safe.
            let _ = unsafe { libc::write(self.report_fd, (&byte as *const u8).cast(), 1) };
            err
        };
        if let Some(fd) = self.cgroup_procs {
            // SAFETY: writes a static one-byte buffer to an open descriptor.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(fail(Stage::Cgroup));
            }
        }
        if let Some((uid, gid, groups)) = &self.user {
            // Raw syscalls, not the C library's wrappers: after a raw clone3 the
            // library still believes the parent's other threads exist and would
            // try to broadcast the credential change to them.
            // SAFETY: `groups` is a live Vec of gid_t; its pointer and length match.
            if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
                return Err(fail(Stage::User));
            }
            // SAFETY: integer argument only.
            if unsafe { libc::syscall(libc::SYS_setgid, *gid) } != 0 {
                return Err(fail(Stage::User));
            }
            // SAFETY: integer argument only.
            if unsafe { libc::syscall(libc::SYS_setuid, *uid) } != 0 {
                return Err(fail(Stage::User));
            }
        }
        if let Some(dir) = &self.cwd {
            // SAFETY: `dir` is a live NUL-terminated C string.
            if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
                return Err(fail(Stage::Workdir));
            }
        }
        if let Some((write_end, target)) = self.done {
            if write_end == target {
                // SAFETY: clears FD_CLOEXEC on a descriptor we own; no pointers.
                if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } != 0 {
                    return Err(fail(Stage::DoneFd));
                }
            // SAFETY: dup2 between two descriptors; the new one has no FD_CLOEXEC.
            } else if unsafe { libc::dup2(write_end, target) } != target {
                return Err(fail(Stage::DoneFd));
            }
        }
        Ok(())
    }
}

/// A started child: its pid and the parent's ends of its pipes.
pub(crate) struct Started {
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub done_reader: Option<File>,
}

impl Started {
    fn from_std(mut child: std::process::Child, done_reader: Option<File>) -> Started {
        let started = Started {
            pid: child.id() as i32,
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
            done_reader,
        };
        drop(child); // does not wait or kill; the caller owns the pid from now on.
        started
    }
}

/// Whether clone3(CLONE_INTO_CGROUP) failed as unsupported once (then never tried again).
static NO_CLONE3: AtomicBool = AtomicBool::new(false);
/// Whether the vfork-style clone failed as unsupported once (then never tried again).
static NO_VFORK: AtomicBool = AtomicBool::new(false);
/// Whether clone3(CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND) failed as
/// unsupported once (then the vfork-style child resets the handlers itself).
static NO_CLEAR_SIGHAND: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
thread_local! {
    /// Tests of the fallback: this thread spawns with the C library.
    static LIBC_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    /// Tests of the older kernels' path: this thread's vfork-style children
    /// reset the signal handlers themselves.
    static OWN_SIGHAND_RESET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a vfork-style child outside a cgroup v2 is cloned without
/// `CLONE_CLEAR_SIGHAND`.
fn no_clear_sighand() -> bool {
    #[cfg(test)]
    if OWN_SIGHAND_RESET.with(|f| f.get()) {
        return true;
    }
    NO_CLEAR_SIGHAND.load(Ordering::Relaxed)
}

/// Whether this spawn goes straight to the C library's spawn.
fn libc_spawn_only() -> bool {
    #[cfg(test)]
    if LIBC_SPAWN.with(|f| f.get()) {
        return true;
    }
    NO_VFORK.load(Ordering::Relaxed)
}

/// Start the child: into a cgroup v2 `cg` with clone3(CLONE_INTO_CGROUP)
/// where the kernel has it (Linux 5.7+; born inside, no migration), else
/// vfork-style with the child joining `cg` by itself before exec (on v1
/// through `tasks`). `joined`: a per-item child of a [`crate::Group`].
/// Where neither clone is offered (a seccomp filter), the C library spawns.
pub(crate) fn start(
    spec: &Spec,
    program: &Path,
    program_name: &str,
    cwd: Option<CString>,
    cg: Option<(&Cgroup, &Entrance)>,
    joined: bool,
) -> Result<Started, SpawnError> {
    if let Some((c, _)) = cg.filter(|(c, _)| c.kind == Kind::V2) {
        if !NO_CLONE3.load(Ordering::Relaxed) {
            match spawn_raw(spec, program, program_name, cwd.clone(), Way::IntoCgroup(c))? {
                Some(started) => return Ok(started),
                None => NO_CLONE3.store(true, Ordering::Relaxed),
            }
        }
    }
    // vfork-style: no copy of the runner's page tables and no copy-on-write
    // faults afterwards, and still every step between clone and exec (user,
    // workdir, done fd, the cgroup join) with its failure reported. A fork
    // of the runner costs a per-item child 0.22x of its rate (measured:
    // 1,191 against 1,530 items/s on cgroup v1).
    if !libc_spawn_only() {
        match spawn_raw(spec, program, program_name, cwd.clone(), Way::Vfork(cg))? {
            Some(started) => return Ok(started),
            None => NO_VFORK.store(true, Ordering::Relaxed),
        }
    }
    // The C library's spawn. A child with nothing to do between fork and exec
    // besides setpgid and chdir (no user, no done fd) is spawned without a
    // pre-exec hook, so the C library can use vfork-style posix_spawn; a
    // joined child is then moved into the group's cgroup by the parent right
    // away, then whatever it forked meanwhile (see `spawn_without_hook`). A
    // run's own child in a cgroup keeps the hook: it joins its cgroup before
    // exec, so the limit holds from its first allocation. A workdir that is
    // not a directory keeps it too, for the precise error.
    let plain = spec.user.is_none() && spec.done_fd.is_none();
    let workdir_ok = spec.cwd.as_ref().is_none_or(|d| d.is_dir());
    if plain && (joined || (cg.is_none() && workdir_ok)) {
        return spawn_without_hook(spec, program, program_name, cg);
    }
    spawn_process(spec, program, program_name, cwd, cg)
}

fn spawn_process(
    spec: &Spec,
    program: &Path,
    program_name: &str,
    cwd: Option<CString>,
    cg: Option<(&Cgroup, &Entrance)>,
) -> Result<Started, SpawnError> {
    let (report_r, report_w) = sys::pipe_cloexec()?;
    let done_pipe = match spec.done_fd {
        Some(_) => Some(sys::pipe_cloexec()?),
        None => None,
    };
    let pre = PreExec {
        report_fd: report_w.as_raw_fd(),
        cgroup_procs: cg.map(|(_, e)| e.by_self().as_raw_fd()),
        user: spec.user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone())),
        cwd,
        done: match (&done_pipe, spec.done_fd) {
            (Some((_, w)), Some(n)) => Some((w.as_raw_fd(), n)),
            _ => None,
        },
    };

    let mut cmd = base_command(spec, program);
    // SAFETY: `PreExec::run` only performs async-signal-safe syscalls (write, setgroups,
    // setgid, setuid, chdir, fcntl, dup2) on data prepared before the fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || pre.run());
    }

    let spawned = {
        // Until the child is registered (see `tree::SpawnGuard`).
        let guard = tree::SpawnGuard::new();
        // Occupy fd number `done_fd` during the fork so std's internal exec-error pipe
        // cannot land on it (the child's dup2 would clobber it).
        let _placeholder = match spec.done_fd {
            Some(n) => sys::reserve_fd(n)?,
            None => None,
        };
        let r = cmd.spawn();
        if let Ok(child) = &r {
            guard.register(child.id() as i32);
        }
        r
    };
    drop(report_w);
    match spawned {
        Ok(child) => {
            let reader = done_pipe.map(|(r, w)| {
                drop(w);
                File::from(r)
            });
            Ok(Started::from_std(child, reader))
        }
        Err(e) => {
            let mut stage = [0u8; 1];
            let mut report = File::from(report_r);
            let got = io::Read::read(&mut report, &mut stage).unwrap_or(0);
            Err(classify(
                e,
                if got == 1 { Some(stage[0]) } else { None },
                spec,
                program_name,
                cg.map(|(c, _)| c),
            ))
        }
    }
}

/// `spawn_process` for a joined child that needs no pre-exec hook. The
/// child is written into the group's `cgroup.procs` by the parent as soon as
/// the spawn returns (after its exec). Processes it forked before that move
/// completed (a cgroup v1 migration can take a while) are still outside: they
/// are moved next, parents before their children, by following
/// `/proc/PID/task/*/children` links (see `sweep_into_cgroup`). What remains
/// is a descendant that was forked, exited and was reaped within those
/// microseconds while its own children were re-parented to us: those stay
/// outside the group's cgroup (still tracked as part of the child's tree by
/// process group and ppid links).
fn spawn_without_hook(
    spec: &Spec,
    program: &Path,
    program_name: &str,
    cg: Option<(&Cgroup, &Entrance)>,
) -> Result<Started, SpawnError> {
    let mut cmd = base_command(spec, program);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let spawned = {
        let guard = tree::SpawnGuard::new();
        let r = cmd.spawn();
        if let Ok(child) = &r {
            guard.register(child.id() as i32);
        }
        r
    };
    match spawned {
        Ok(child) => {
            if let Some((c, _)) = cg {
                let pid = child.id().to_string();
                let moved = std::fs::OpenOptions::new()
                    .write(true)
                    .open(c.path.join("cgroup.procs"))
                    .and_then(|mut procs| {
                        io::Write::write_all(&mut procs, pid.as_bytes())?;
                        Ok(procs)
                    });
                match moved {
                    Ok(procs) => sweep_into_cgroup(&procs, child.id() as i32),
                    Err(e) => tracing::warn!(
                        path = %c.path.display(), pid = %pid, error = %e,
                        "cannot move the child into the run's cgroup"
                    ),
                }
            }
            Ok(Started::from_std(child, None))
        }
        Err(e) => Err(classify(e, None, spec, program_name, cg.map(|(c, _)| c))),
    }
}

/// Move the descendants of `root` (already moved) into the cgroup of `procs`.
/// Each process is moved before its children are listed, so whatever it forks
/// later is born inside; a usual child has not forked yet and this costs one
/// look at its (empty) children lists.
fn sweep_into_cgroup(mut procs: &File, root: i32) {
    let mut todo = vec![root];
    let mut moved = 0usize;
    while let Some(pid) = todo.pop() {
        for kid in procfs::children_of(pid) {
            // Bounded: a fork bomb is the cgroup's (pids / memory) problem.
            if moved >= 4096 {
                return;
            }
            moved += 1;
            if io::Write::write_all(&mut procs, kid.to_string().as_bytes()).is_ok() {
                todo.push(kid);
            }
        }
    }
}

/// The command both spawn paths start from: argv exactly as given, the
/// complete environment, piped output, its own process group.
fn base_command(spec: &Spec, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(match spec.stdin {
            StdinMode::Null => Stdio::null(),
            StdinMode::Pipe => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

fn classify(
    e: io::Error,
    stage: Option<u8>,
    spec: &Spec,
    program: &str,
    cg: Option<&Cgroup>,
) -> SpawnError {
    match stage {
        Some(s) if s == Stage::Cgroup as u8 => SpawnError::Cgroup {
            path: cg
                .map(|c| c.path.join(c.kind.self_join_file()))
                .unwrap_or_default(),
            source: e,
        },
        Some(s) if s == Stage::User as u8 => SpawnError::User {
            name: spec
                .user
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_default(),
            reason: format!("cannot switch to it: {e}"),
        },
        Some(s) if s == Stage::Workdir as u8 => SpawnError::Workdir {
            path: spec.cwd.clone().unwrap_or_default(),
            source: e,
        },
        Some(_) => SpawnError::Io(io::Error::new(
            e.kind(),
            format!("cannot install done fd: {e}"),
        )),
        None => match e.raw_os_error() {
            Some(libc::ENOENT) => SpawnError::NotFound {
                program: program.to_string(),
            },
            Some(
                libc::EACCES
                | libc::ENOEXEC
                | libc::EPERM
                | libc::EISDIR
                | libc::ETXTBSY
                | libc::ELOOP
                | libc::ENOTDIR,
            ) => SpawnError::NotExecutable {
                program: program.to_string(),
            },
            _ => SpawnError::Io(io::Error::new(e.kind(), format!("{program}: {e}"))),
        },
    }
}

// ---------------------------------------------------------------------------
// clone3(CLONE_INTO_CGROUP)

/// The child's side of a raw spawn, all prepared before the clone (the
/// child may not allocate): exec arguments, its three standard descriptors
/// and the setup steps of [`PreExec`].
struct RawChild<'a> {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    stdio: [RawFd; 3],
    pre: &'a PreExec,
    empty_mask: libc::sigset_t,
    /// The clone reset the runner's signal handlers already
    /// (`CLONE_CLEAR_SIGHAND`): the child need not.
    handlers_cleared: bool,
}

impl RawChild<'_> {
    /// Runs in the child after a raw clone: only async-signal-safe calls, no
    /// allocation, never returns. A failure is reported as its stage byte
    /// plus errno on the report pipe, then `_exit(127)`.
    fn exec(&self) -> ! {
        let report = |stage: Option<Stage>, errno: i32| -> ! {
            let mut msg = [0u8; 5];
            msg[0] = stage.map_or(0, |s| s as u8);
            msg[1..].copy_from_slice(&errno.to_ne_bytes());
            // With no stage the byte was already written by `PreExec::run`.
            let (from, len) = if stage.is_some() { (0, 5) } else { (1, 4) };
            // SAFETY: writes from a live local buffer (`from + len <= 5`) to the
            // report pipe, then ends the child without running any destructor.
            unsafe {
                let _ = libc::write(self.pre.report_fd, msg[from..].as_ptr().cast(), len);
                libc::_exit(127)
            }
        };
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // Signals are blocked (see `spawn_raw`): drop the runner's handlers
        // before any can run here (unless the clone did), then unblock.
        if !self.handlers_cleared {
            sys::default_signal_handlers();
        }
        sys::set_sigmask(&self.empty_mask);
        // SAFETY: signal/setpgid/dup2 with integer arguments; all async-signal-safe.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if libc::setpgid(0, 0) != 0 {
                report(Some(Stage::Setup), errno());
            }
            for (target, &fd) in self.stdio.iter().enumerate() {
                // The descriptors are >= 3 (see `spawn_raw`): dup2 never
                // clobbers one still to be installed, and clears close-on-exec.
                if libc::dup2(fd, target as RawFd) < 0 {
                    report(Some(Stage::Setup), errno());
                }
            }
        }
        if let Err(e) = self.pre.run() {
            report(None, e.raw_os_error().unwrap_or(0));
        }
        // SAFETY: `program` is a live C string, `argv`/`envp` NULL-terminated
        // arrays of pointers to live C strings owned by the parent's frame,
        // which the child's copy of the address space keeps intact.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        report(Some(Stage::Exec), errno())
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains NUL"))
}

/// The pipes of a raw spawn, both ends (close-on-exec).
struct RawFds {
    report_r: OwnedFd,
    report_w: OwnedFd,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    stdin_parent: Option<OwnedFd>,
    stdin_child: OwnedFd,
    done_pipe: Option<(OwnedFd, OwnedFd)>,
}

impl RawFds {
    fn new(spec: &Spec) -> io::Result<RawFds> {
        // Every descriptor the child uses sits above 2 and above the done fd's
        // number, so installing those never overwrites another one.
        let floor = spec.done_fd.map_or(3, |n| n + 1).max(3);
        let pair = || -> io::Result<(OwnedFd, OwnedFd)> {
            let (r, w) = sys::pipe_cloexec()?;
            Ok((sys::dup_above(r, floor)?, sys::dup_above(w, floor)?))
        };
        let (report_r, report_w) = pair()?;
        let (out_r, out_w) = pair()?;
        let (err_r, err_w) = pair()?;
        let (stdin_parent, stdin_child) = match spec.stdin {
            StdinMode::Pipe => {
                let (r, w) = pair()?;
                (Some(w), r)
            }
            StdinMode::Null => (
                None,
                sys::dup_above(OwnedFd::from(File::open("/dev/null")?), floor)?,
            ),
        };
        let done_pipe = match spec.done_fd {
            Some(_) => Some(pair()?),
            None => None,
        };
        Ok(RawFds {
            report_r,
            report_w,
            out_r,
            out_w,
            err_r,
            err_w,
            stdin_parent,
            stdin_child,
            done_pipe,
        })
    }
}

/// How [`spawn_raw`] starts its child.
#[derive(Clone, Copy)]
enum Way<'a> {
    /// `clone3(CLONE_INTO_CGROUP)` into this cgroup v2: the child is in the
    /// cgroup from its first instruction (its memory is charged there, its
    /// own forks are born there, nothing is migrated). vfork-style on
    /// x86_64 (`sys::clone3_vfork_into_cgroup`), elsewhere fork-style (the
    /// page tables are copied).
    IntoCgroup(&'a Cgroup),
    /// `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn does (no copy of the
    /// runner's memory), with the child joining this cgroup by itself before
    /// exec (on v1 through `tasks`: no global lock, see [`Entrance`]).
    Vfork(Option<(&'a Cgroup, &'a Entrance)>),
}

impl Way<'_> {
    fn cgroup(&self) -> Option<&Cgroup> {
        match self {
            Way::IntoCgroup(c) => Some(c),
            Way::Vfork(cg) => cg.map(|(c, _)| c),
        }
    }
}

/// The child's stack for a vfork-style clone: it runs `RawChild::exec`
/// only (no allocation, a few sigaction structs).
const VFORK_STACK: usize = 64 << 10;

/// A vfork-style clone of `child` outside a cgroup v2: clone3 with the
/// runner's signal handlers reset by the kernel where it offers that
/// (Linux 5.5+ on x86_64: 63 fewer system calls in every child), else
/// `clone(CLONE_VM | CLONE_VFORK)`, the child resetting them itself.
///
/// # Safety
/// As for `sys::vfork_clone`: `child` stays alive and unmoved until this
/// returns, and `stack` is used by nothing else meanwhile.
unsafe fn vfork_outside_cgroup(
    child: &mut RawChild<'_>,
    stack: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<i32> {
    if !no_clear_sighand() {
        child.handlers_cleared = true;
        // SAFETY: the caller's contract; `RawChild::exec` is async-signal-safe,
        // allocates nothing and never returns.
        match unsafe { sys::clone3_vfork(None, vfork_entry, stack, child_arg(child)) } {
            Some(Err(e)) if sys::clone3_unsupported(&e) => {
                NO_CLEAR_SIGHAND.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "clone3 with CLONE_CLEAR_SIGHAND is not offered here; each child resets the signal handlers itself");
            }
            Some(cloned) => return cloned,
            None => {}
        }
    }
    child.handlers_cleared = false;
    // SAFETY: as above.
    unsafe { sys::vfork_clone(vfork_entry, stack, child_arg(child)) }
}

/// The pointer `vfork_entry` receives.
fn child_arg(child: &RawChild<'_>) -> *mut libc::c_void {
    child as *const RawChild<'_> as *mut libc::c_void
}

/// The vfork child's entry point: `arg` is the parent's `RawChild`.
extern "C" fn vfork_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_raw` passes a pointer to a live `RawChild` in its own
    // frame, which stays alive while the parent is suspended in the clone.
    let child = unsafe { &*(arg as *const RawChild<'_>) };
    child.exec()
}

/// Start the child the `way` says, with every step between clone and exec
/// done by `RawChild::exec` (each failure reported with its stage).
/// `Ok(None)` when the kernel (or a seccomp filter) does not offer that
/// clone: then the caller falls back to the C library's spawn.
fn spawn_raw(
    spec: &Spec,
    program: &Path,
    program_name: &str,
    cwd: Option<CString>,
    way: Way<'_>,
) -> Result<Option<Started>, SpawnError> {
    let dir = match way {
        Way::IntoCgroup(cg) => Some(File::open(&cg.path).map_err(|e| SpawnError::Cgroup {
            path: cg.path.clone(),
            source: e,
        })?),
        Way::Vfork(_) => None,
    };
    let fds = RawFds::new(spec)?;
    let pre = PreExec {
        report_fd: fds.report_w.as_raw_fd(),
        cgroup_procs: match way {
            Way::Vfork(Some((_, entrance))) => Some(entrance.by_self().as_raw_fd()),
            _ => None,
        },
        user: spec.user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone())),
        cwd,
        done: match (&fds.done_pipe, spec.done_fd) {
            (Some((_, w)), Some(n)) => Some((w.as_raw_fd(), n)),
            _ => None,
        },
    };
    let (argv_c, envp_c) = exec_strings(spec)?;
    let mut child = RawChild {
        program: cstring(program.as_os_str().as_bytes())?,
        argv: nul_terminated(&argv_c),
        envp: nul_terminated(&envp_c),
        stdio: [
            fds.stdin_child.as_raw_fd(),
            fds.out_w.as_raw_fd(),
            fds.err_w.as_raw_fd(),
        ],
        pre: &pre,
        empty_mask: sys::empty_sigset(),
        // Every clone3 below passes CLONE_CLEAR_SIGHAND; `vfork_clone` not.
        handlers_cleared: true,
    };
    let mut stack: Vec<u8> = Vec::with_capacity(VFORK_STACK);
    let pid = {
        // Until the child is registered (see `tree::SpawnGuard`).
        let guard = tree::SpawnGuard::new();
        let mask = sys::block_all_signals();
        let cloned = match dir.as_ref() {
            // vfork-style into the cgroup where the platform has the
            // trampoline, else fork-style. SAFETY: as for `vfork_outside_cgroup`;
            // in a fork-style child (return value 0) only `RawChild::exec`
            // runs, which is async-signal-safe, allocates nothing and never
            // returns.
            Some(dir) => match unsafe {
                sys::clone3_vfork(
                    Some(dir.as_raw_fd()),
                    vfork_entry,
                    stack.spare_capacity_mut(),
                    child_arg(&child),
                )
            } {
                Some(cloned) => cloned,
                None => match unsafe { sys::clone3_into_cgroup(dir.as_raw_fd()) } {
                    Ok(0) => child.exec(),
                    other => other,
                },
            },
            // SAFETY: `child` lives in this frame, unmoved, until the clone
            // returns; `stack` is a buffer no one else uses.
            None => unsafe { vfork_outside_cgroup(&mut child, stack.spare_capacity_mut()) },
        };
        sys::set_sigmask(&mask);
        match cloned {
            Ok(pid) => {
                guard.register(pid);
                pid
            }
            Err(e) if sys::clone3_unsupported(&e) => {
                tracing::debug!(error = %e, "this clone is not offered here; the C library's spawn is used instead");
                return Ok(None);
            }
            Err(e) => return Err(SpawnError::Io(e)),
        }
    };
    drop(stack);
    drop((fds.report_w, fds.out_w, fds.err_w, fds.stdin_child, pre));
    let msg = crate::procfs::read_all(File::from(fds.report_r)).unwrap_or_default();
    if msg.is_empty() {
        // EOF without a word: the exec succeeded (the pipe was close-on-exec).
        return Ok(Some(Started {
            pid,
            stdin: fds.stdin_parent.map(ChildStdin::from),
            stdout: Some(fds.out_r),
            stderr: Some(fds.err_r),
            done_reader: fds.done_pipe.map(|(r, _w)| File::from(r)),
        }));
    }
    Err(exec_failure(pid, &msg, spec, program_name, way.cgroup()))
}

/// argv and `K=V` environment strings for execve.
fn exec_strings(spec: &Spec) -> io::Result<(Vec<CString>, Vec<CString>)> {
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<_>>()?;
    Ok((argv, envp))
}

/// A NULL-terminated array of pointers to `v`'s strings.
fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// The raw child reported `msg` (stage byte, errno) and exited: reap it
/// and name the failure.
fn exec_failure(
    pid: i32,
    msg: &[u8],
    spec: &Spec,
    program_name: &str,
    cg: Option<&Cgroup>,
) -> SpawnError {
    let _ = sys::reap_blocking(pid);
    tree::registry().remove(&pid);
    let errno = msg
        .get(1..5)
        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let e = io::Error::from_raw_os_error(errno);
    match msg.first().copied().unwrap_or(0) {
        s if s == Stage::Exec as u8 => classify(e, None, spec, program_name, cg),
        s if s == Stage::Setup as u8 => SpawnError::Io(io::Error::new(
            e.kind(),
            format!("cannot set up the child: {e}"),
        )),
        s => classify(e, Some(s), spec, program_name, cg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CgroupPlacement, Enforcement, Limits};

    /// Without cgroup v2 the child is started vfork-style with our own
    /// pre-exec steps (no fallback to the C library's spawn), and each
    /// step still reports its own failure: an exec error names the program.
    #[test]
    fn without_cgroup2_the_child_is_started_vfork_style() {
        let spec = Spec {
            argv: ["sh", "-c", "echo $$"].map(OsString::from).to_vec(),
            env: std::env::vars_os().collect(),
            ..Spec::default()
        };
        let child = crate::spawn_with(spec, Limits::default(), Enforcement::Poll).expect("spawn");
        let pid = child.pid();
        let mut out = Vec::new();
        let end = child.wait(|_, l| out.push(String::from_utf8_lossy(l).into_owned()));
        assert!(
            !NO_VFORK.load(Ordering::Relaxed),
            "the C library's spawn was used"
        );
        assert_eq!(out, [pid.to_string()], "{end:?}");
        let dir = std::env::temp_dir().join(format!("bg-noexec-{}", std::process::id()));
        std::fs::write(&dir, "not a program").unwrap();
        let spec = Spec {
            argv: vec![dir.clone().into_os_string()],
            env: std::env::vars_os().collect(),
            ..Spec::default()
        };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = crate::spawn_with(spec, Limits::default(), Enforcement::Poll).err();
        let _ = std::fs::remove_file(&dir);
        assert!(
            matches!(err, Some(SpawnError::NotExecutable { .. })),
            "{err:?}"
        );
    }

    /// Both vfork-style clones give the job the dispositions an exec after
    /// a plain fork would: a signal the runner ignores stays ignored, SIGPIPE
    /// (which the runner ignores) is back at its default. On Linux 5.5+ the
    /// kernel resets the handlers in the clone (`CLONE_CLEAR_SIGHAND`), and
    /// the older kernels' path, where the child does it, still works.
    #[test]
    fn a_vfork_style_child_keeps_ignored_signals_and_gets_sigpipe_back() {
        // SAFETY: signal with integer arguments; no test here sends SIGUSR2.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        let ignored_in_child = |own_reset: bool| -> u64 {
            OWN_SIGHAND_RESET.with(|f| f.set(own_reset));
            let spec = Spec {
                argv: ["grep", "SigIgn", "/proc/self/status"]
                    .map(OsString::from)
                    .to_vec(),
                env: std::env::vars_os().collect(),
                ..Spec::default()
            };
            let child =
                crate::spawn_with(spec, Limits::default(), Enforcement::Poll).expect("spawn");
            let mut out = Vec::new();
            child.wait(|_, l| out.push(String::from_utf8_lossy(l).into_owned()));
            OWN_SIGHAND_RESET.with(|f| f.set(false));
            let hex = out[0].trim_start_matches("SigIgn:").trim();
            u64::from_str_radix(hex, 16).expect("a SigIgn mask")
        };
        let bit = |sig: i32| 1u64 << (sig - 1);
        for own_reset in [false, true] {
            let mask = ignored_in_child(own_reset);
            assert_ne!(
                mask & bit(libc::SIGUSR2),
                0,
                "own reset {own_reset}: {mask:x}"
            );
            assert_eq!(
                mask & bit(libc::SIGPIPE),
                0,
                "own reset {own_reset}: {mask:x}"
            );
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse().unwrap_or(0));
        let (major, minor): (u32, u32) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        if (major, minor) >= (5, 5) && cfg!(target_arch = "x86_64") {
            assert!(
                !NO_CLEAR_SIGHAND.load(Ordering::Relaxed),
                "Linux {release} refused clone3 with CLONE_CLEAR_SIGHAND"
            );
        }
    }

    /// The fallback for a refused clone, the C library's spawn, still
    /// starts every kind of child: plain, as another user, with a done fd.
    #[test]
    fn the_c_library_spawn_still_starts_every_kind_of_child() {
        LIBC_SPAWN.with(|f| f.set(true));
        let run = |argv: &[&str], user: bool, done: bool| {
            let spec = Spec {
                argv: argv.iter().map(OsString::from).collect(),
                env: std::env::vars_os().collect(),
                user: user.then(|| crate::RunAs::lookup("nobody").expect("nobody")),
                done_fd: done.then_some(3),
                ..Spec::default()
            };
            let mut child =
                crate::spawn_with(spec, Limits::default(), Enforcement::Poll).expect("spawn");
            let done = child.take_done_reader();
            let mut out = Vec::new();
            child.wait(|_, l| out.push(String::from_utf8_lossy(l).into_owned()));
            let said = done.map(|mut r| {
                let mut s = String::new();
                io::Read::read_to_string(&mut r, &mut s).unwrap();
                s
            });
            (out, said)
        };
        assert_eq!(run(&["echo", "plain"], false, false).0, ["plain"]);
        if nix::unistd::geteuid().is_root() {
            let nobody = crate::RunAs::lookup("nobody").unwrap();
            assert_eq!(run(&["id", "-u"], true, false).0, [nobody.uid.to_string()]);
        }
        let (_, said) = run(&["sh", "-c", "echo k >&3"], false, true);
        assert_eq!(said.as_deref(), Some("k\n"));
        // A per-item child is moved into its group's cgroup by the parent,
        // right after the spawn returns (so it looks a moment later).
        let host = crate::detect_host();
        if matches!(host, Enforcement::Cgroup1 | Enforcement::Cgroup2) {
            let name = format!("libc-spawn-{}", std::process::id());
            let group = crate::Group::create(&name, None, host).expect("group");
            let spec = Spec {
                argv: ["sh", "-c", "sleep 0.2; cat /proc/self/cgroup"]
                    .map(OsString::from)
                    .to_vec(),
                env: std::env::vars_os().collect(),
                cgroup: CgroupPlacement::Join(group.handle()),
                ..Spec::default()
            };
            let child = crate::spawn_with(spec, Limits::default(), host).expect("spawn");
            let mut out = Vec::new();
            child.wait(|_, l| out.push(String::from_utf8_lossy(l).into_owned()));
            assert!(
                out.iter().any(|l| l.ends_with(&format!("/{name}"))),
                "{out:?}"
            );
        }
        LIBC_SPAWN.with(|f| f.set(false));
    }

    /// On a cgroup v2 host (the test VM) the child is started with
    /// clone3(CLONE_INTO_CGROUP) and its very first look finds it in its leaf.
    #[test]
    fn cgroup2_child_is_born_in_its_cgroup() {
        if crate::detect_host() != Enforcement::Cgroup2 {
            eprintln!("not a cgroup v2 host; skipped");
            return;
        }
        let name = format!("clone3-{}", std::process::id());
        let spec = Spec {
            argv: ["cat", "/proc/self/cgroup"].map(OsString::from).to_vec(),
            env: std::env::vars_os().collect(),
            cgroup: CgroupPlacement::Create { name: name.clone() },
            ..Spec::default()
        };
        let child =
            crate::spawn_with(spec, Limits::default(), Enforcement::Cgroup2).expect("spawn");
        let mut out = Vec::new();
        child.wait(|_, l| out.push(String::from_utf8_lossy(l).into_owned()));
        assert!(
            !NO_CLONE3.load(Ordering::Relaxed),
            "clone3(CLONE_INTO_CGROUP) was not used"
        );
        assert!(
            out.iter().any(|l| l.ends_with(&format!("/{name}"))),
            "{out:?}"
        );
    }
}
