//! Thin, audited wrappers around the few raw syscalls the crate needs.
//! Every `unsafe` block of the crate outside the child's code between fork and
//! exec (`spawn::PreExec`, `spawn::Clone3Child`) lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A non-blocking, close-on-exec eventfd used as a wake-up doorbell.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the return value is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Make the eventfd readable (wakes every poller).
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local u64 to a descriptor we own.
        // A failure (counter overflow, impossible in practice) only means it is already readable.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Reset the counter (non-blocking).
    pub(crate) fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local u64; the fd is non-blocking.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut value as *mut u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` terminates.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `poll(2)` on the given set; EINTR counts as "nothing ready".
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => {
            // Round up so that we never wake a hair before a deadline and spin.
            let ms = d.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for its whole length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

pub(crate) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// How a child ended, as reported by waitid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawStatus {
    Exited(i32),
    Signaled(i32),
}

fn waitid(pid: i32, flags: libc::c_int) -> io::Result<Option<RawStatus>> {
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t that outlives the call.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid succeeded, so the SIGCHLD fields of `info` are initialised
        // (si_pid stays 0 under WNOHANG when nothing changed).
        let (got, status) = unsafe { (info.si_pid(), info.si_status()) };
        if got == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => RawStatus::Exited(status),
            _ => RawStatus::Signaled(status),
        }));
    }
}

/// Status of child `pid` if it has terminated, WITHOUT reaping it (the zombie keeps
/// the pid and the process group id reserved while we clean up the tree).
pub(crate) fn peek_exit(pid: i32) -> io::Result<Option<RawStatus>> {
    waitid(pid, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
}

/// Reap child `pid`, blocking until it has terminated.
pub(crate) fn reap_blocking(pid: i32) -> io::Result<Option<RawStatus>> {
    waitid(pid, libc::WEXITED)
}

/// Reap child `pid` if it is a zombie.
pub(crate) fn reap_nohang(pid: i32) -> io::Result<Option<RawStatus>> {
    waitid(pid, libc::WEXITED | libc::WNOHANG)
}

/// Send `sig` to `pid`; false if it does not exist (or on any other error).
pub(crate) fn kill(pid: i32, sig: Signal) -> bool {
    if pid <= 1 {
        return false;
    }
    signal::kill(Pid::from_raw(pid), sig).is_ok()
}

/// Send `sig` to process group `pgid`. Refuses 0/1 and our own group.
pub(crate) fn killpg(pgid: i32, sig: Signal) -> bool {
    if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
        return false;
    }
    signal::killpg(Pid::from_raw(pgid), sig).is_ok()
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One `ioctl(FIONBIO)` (the status flag `fcntl(F_SETFL, O_NONBLOCK)` sets,
/// without the `F_GETFL` before it): two output pipes per child, every item.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `read(2)` of at most `max` bytes from `fd`, appended to `buf` (no zero-filling).
pub(crate) fn read_append(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: `spare` is the vector's writable, allocated but unused capacity of at
    // least `len` bytes; read(2) writes at most `len` bytes there.
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast::<libc::c_void>(), len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` (<= len) bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Inode number of the file open on `fd` (`fstat`).
pub(crate) fn inode(fd: RawFd) -> io::Result<u64> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer that outlives the call.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Whether descriptor number `fd` is currently open in this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Make sure descriptor number `target` is occupied while we fork, so that no
/// descriptor created during spawn (std's exec-error pipe, ours) can get that
/// number and be clobbered by the child's dup2 onto it. Returns the placeholder
/// to drop after spawn, or None if `target` was already open.
pub(crate) fn reserve_fd(target: RawFd) -> io::Result<Option<OwnedFd>> {
    if fd_is_open(target) {
        return Ok(None);
    }
    let mut extra = Vec::new();
    // Descriptors are allocated lowest-first: opening repeatedly reaches `target`
    // unless someone else takes it first (then it is occupied, which is also fine).
    for _ in 0..=target {
        let f = std::fs::File::open("/dev/null")?;
        let fd = OwnedFd::from(f);
        let raw = fd.as_raw_fd();
        if raw == target {
            return Ok(Some(fd));
        }
        extra.push(fd);
        if raw > target {
            return Ok(None);
        }
    }
    Ok(None)
}

pub(crate) fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The child starts with every signal the parent handles back at its
/// default action (ignored ones stay ignored, as across exec), done by the
/// kernel in the clone (Linux 5.5+), instead of 63 `sigaction` queries by
/// the child before it may unblock signals.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// `clone3(CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND)`: fork into the cgroup
/// v2 directory `cgroup_dir`, the runner's signal handlers reset in the
/// child. Returns the child's pid in the parent and 0 in the child.
///
/// # Safety
/// Like `fork` in a multi-threaded process: the child has only the calling
/// thread, and the C library does not know it was forked (no atfork handlers,
/// stale thread list). The child must only make async-signal-safe raw calls,
/// must not allocate or unwind, and must end in `execve` or `_exit`.
pub(crate) unsafe fn clone3_into_cgroup(cgroup_dir: RawFd) -> io::Result<i32> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    args.cgroup = cgroup_dir as u64;
    // SAFETY: `args` is a live, initialised clone_args of the size we pass; the
    // caller upholds the fork-like contract for the child.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// `clone(CLONE_VM | CLONE_VFORK)`, the way `posix_spawn` starts a child:
/// the child runs `entry(arg)` on `stack`, sharing this process's memory
/// (no copy of the page tables, no copy-on-write faults afterwards) with
/// its own descriptor table and signal dispositions, and the calling thread
/// is suspended until the child has exec'd or exited. Returns its pid.
///
/// # Safety
/// `entry` runs in the child with the caller's memory: it may only make
/// async-signal-safe calls, must not allocate, unwind or return, and must
/// end in `execve` or `_exit`; `arg` must stay valid for it, and `stack`
/// must not be used by anything else until this returns.
pub(crate) unsafe fn vfork_clone(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [std::mem::MaybeUninit<u8>],
    arg: *mut libc::c_void,
) -> io::Result<i32> {
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `top` is inside the live buffer `stack`; the caller upholds the
    // contract for `entry` and `arg`.
    let rc = unsafe {
        libc::clone(
            entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND)`: [`vfork_clone`]
/// with the runner's signal handlers reset in the child by the kernel, and
/// with `cgroup_dir` (`CLONE_INTO_CGROUP`) the child born inside that
/// cgroup v2. The raw syscall returns in the child on the new stack, in the
/// middle of this function, so the child's side is a few instructions of
/// assembly that call `entry(arg)` there. x86_64 only; `None` elsewhere
/// (the caller then clones another way).
///
/// # Safety
/// As for [`vfork_clone`].
pub(crate) unsafe fn clone3_vfork(
    cgroup_dir: Option<RawFd>,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [std::mem::MaybeUninit<u8>],
    arg: *mut libc::c_void,
) -> Option<io::Result<i32>> {
    #[cfg(target_arch = "x86_64")]
    {
        // The kernel starts the child with its stack pointer at
        // stack + stack_size: a 16-byte aligned top, so that `call` leaves
        // the alignment the C ABI expects at `entry`.
        let base = stack.as_mut_ptr() as usize;
        let size = ((base + stack.len()) & !15) - base;
        let into = if cgroup_dir.is_some() {
            CLONE_INTO_CGROUP
        } else {
            0
        };
        let mut args = CloneArgs {
            flags: libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | CLONE_CLEAR_SIGHAND | into,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: size as u64,
            cgroup: cgroup_dir.map_or(0, |fd| fd as u64),
            ..CloneArgs::default()
        };
        let ret: i64;
        // SAFETY: the syscall reads the live `args`. In the parent only rax,
        // rcx and r11 change (declared). In the child (rax = 0) the code runs
        // on the fresh stack: it calls `entry(arg)` (r12 and r13 survive the
        // syscall), which never returns; should it, the child exits.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, 60",
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &mut args as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") entry,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            return Some(Err(io::Error::from_raw_os_error(-ret as i32)));
        }
        Some(Ok(ret as i32))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (cgroup_dir, entry, stack, arg);
        None
    }
}

/// Whether a clone3 error means "not offered here" (old kernel: ENOSYS, no
/// CLONE_INTO_CGROUP or CLONE_CLEAR_SIGHAND: EINVAL / E2BIG, a seccomp
/// filter: EPERM / ENOSYS)
/// rather than a real failure to start a process.
pub(crate) fn clone3_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM)
    )
}

/// A duplicate of `fd` numbered at least `floor` (close-on-exec); `fd` is closed.
pub(crate) fn dup_above(fd: OwnedFd, floor: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= floor {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; no pointers.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// An empty signal set (for the child's signal mask).
pub(crate) fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises the live local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Block every signal on the calling thread; returns the previous mask for
/// [`set_sigmask`]. Around clone3: until the child has reset the runner's
/// signal handlers, a signal to it (a TERM sent to its new process group)
/// must not run one of them there (it would, e.g., count as a signal to the
/// runner).
pub(crate) fn block_all_signals() -> libc::sigset_t {
    // SAFETY: both sets are live locals; sigfillset initialises `all`, and
    // pthread_sigmask writes the old mask into `old`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// Set the calling thread's signal mask (async-signal-safe).
pub(crate) fn set_sigmask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is a live, initialised sigset_t; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// In a freshly cloned child: every signal with a handler goes back to its
/// default action (ignored ones stay ignored, as across exec).
/// Async-signal-safe: sigaction only.
pub(crate) fn default_signal_handlers() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction_t is plain old data; sigaction reads into the live
        // local `cur` and reads the live local `dfl`.
        unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                continue;
            }
            if cur.sa_sigaction != libc::SIG_DFL && cur.sa_sigaction != libc::SIG_IGN {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Mark every descriptor this process inherited above stderr close-on-exec,
/// so no job ever receives one (a `nobody` job must not read a root-only
/// file its runner's parent happened to hold open, SPEC §4). Descriptors
/// batchguard opens itself are close-on-exec already; the done fd is
/// passed on purpose (dup2 onto 3 in the child clears the flag there).
pub fn seal_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags;
        // an fd that closed meanwhile (the read_dir's own) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// `rename(src, dest)` with the permissions of `user` (uid, gid and
/// groups), done by a short-lived child so that the runner, which may be
/// root, never renames anything the job itself could not. With `None`, or
/// when `user` is who we are, the rename happens here.
pub fn rename_as(
    user: Option<&crate::RunAs>,
    src: &std::path::Path,
    dest: &std::path::Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(user) = user.filter(|u| u.uid != nix::unistd::geteuid().as_raw()) else {
        return std::fs::rename(src, dest);
    };
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (src, dest) = (c(src)?, c(dest)?);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: between fork and _exit the child only makes raw syscalls
    // (setgroups, setgid, setuid, rename) on data prepared before the fork,
    // all async-signal-safe; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; the child ends with _exit.
        unsafe {
            let ok = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
                && libc::syscall(libc::SYS_setgid, user.gid) == 0
                && libc::syscall(libc::SYS_setuid, user.uid) == 0;
            if !ok {
                libc::_exit(126);
            }
            if libc::rename(src.as_ptr(), dest.as_ptr()) == 0 {
                libc::_exit(0);
            }
            let errno = *libc::__errno_location();
            libc::_exit(if (1..126).contains(&errno) {
                errno
            } else {
                125
            });
        }
    }
    match reap_blocking(pid)? {
        Some(RawStatus::Exited(0)) => Ok(()),
        Some(RawStatus::Exited(126)) => Err(io::Error::other(format!(
            "cannot take the identity of user {}",
            user.name
        ))),
        Some(RawStatus::Exited(errno)) if errno < 125 => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other("the rename helper failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The read end becomes non-blocking, the write end (the child's) stays blocking.
    #[test]
    fn set_nonblocking_sets_o_nonblock_on_that_descriptor_only() {
        let (r, w) = pipe_cloexec().unwrap();
        set_nonblocking(r.as_raw_fd()).unwrap();
        // SAFETY: F_GETFL on descriptors this test owns.
        let flags = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_ne!(flags(r.as_raw_fd()) & libc::O_NONBLOCK, 0);
        assert_eq!(flags(w.as_raw_fd()) & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 1];
        // SAFETY: a read into a live buffer of the right length.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 1) };
        assert_eq!(n, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
    }
}
