#!/usr/bin/env python3
"""Where a run's CPU time goes, batchguard beside flock+timeout.

`perf record` (cpu-clock, kernel call chains) over N runs of each wrapper
around /bin/true; every sample taken in the wrapper's own processes
(batchguard and its threads; flock and timeout; never the job, the
`/bin/true` they start) is put in one bucket, by the system call or fault
it sits in when in the kernel, by the library it runs in when not:

  kernel: process image   exec, exit, page faults, mmap/mprotect/munmap/brk
  kernel: store I/O       pread/pwrite/fsync/ftruncate/fcntl locks
  kernel: files           open/close/stat/readdir/unlink/readlink/...
  kernel: cgroup          mkdir/rmdir (the run's cgroup), its file writes go to files
  kernel: processes       clone (the job), clone3 (threads), wait, signals
  kernel: sockets, other  the publish socket, the wake-ups; the rest
  user: SQLite, Rust, loader, libc

and printed as milliseconds of CPU per run (samples / frequency / runs),
so the table says which part of the distance to flock+timeout is the
kernel's and which is batchguard's own code.

    cargo build --release && sudo python3 bench/run_profile.py [--runs 300]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchlib import installed, perf_args, perf_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "batchguard")

IMAGE = {"execve", "exit_group", "exit", "mmap", "munmap", "mprotect", "brk", "madvise", "arch_prctl",
         "set_tid_address", "set_robust_list", "rseq", "prlimit64"}
STORE = {"pread64", "pwrite64", "fsync", "fdatasync", "ftruncate", "fcntl"}
FILES = {"openat", "open", "close", "newfstatat", "statx", "fstat", "getdents64", "unlink", "unlinkat",
         "readlink", "readlinkat", "read", "write", "lseek", "fchown", "chmod", "access", "faccessat2",
         "ioctl", "dup2", "dup3", "chdir", "uname", "getrandom"}
CGROUP = {"mkdir", "mkdirat", "rmdir"}
PROCESSES = {"clone", "clone3", "wait4", "waitid", "pidfd_open", "pidfd_send_signal", "kill", "rt_sigaction",
             "rt_sigprocmask", "sigaltstack", "futex", "sched_getaffinity", "setpgid", "pipe2", "eventfd2"}
SOCKETS = {"socket", "socketpair", "bind", "listen", "accept4", "connect", "sendto", "recvfrom", "poll",
           "ppoll", "shutdown"}


def bucket(frames):
    """The bucket of one sample: `frames` is [(symbol, dso)], innermost first."""
    kernel = [s for s, d in frames if d == "[kernel.kallsyms]"]
    if not kernel:
        dso = os.path.basename(frames[0][1]) if frames else "?"
        sym = frames[0][0] if frames else "?"
        if dso.startswith("ld-linux"):
            return "user: loader (ld.so)"
        if dso.startswith("libc.so") or dso.startswith("libm.so") or dso.startswith("libgcc"):
            return "user: libc, libm, libgcc"
        if dso.startswith("batchguard"):
            # SQLite is C: its symbols are plain; Rust's are mangled paths.
            plain = not (sym.startswith("_ZN") or sym.startswith("_R") or "::" in sym or sym.startswith("<"))
            return "user: SQLite" if plain and sym != "[unknown]" else "user: Rust (batchguard, std, crates)"
        return "user: " + dso
    for s in reversed(kernel):  # outermost first
        if s in ("exc_page_fault", "asm_exc_page_fault"):
            return "kernel: process image"
        m = re.match(r"__(?:x64|do)_sys_(\w+)", s)
        if m:
            name = m.group(1)
            for group, names in (("process image", IMAGE), ("store I/O", STORE), ("files", FILES),
                                 ("cgroup", CGROUP), ("processes", PROCESSES), ("sockets", SOCKETS)):
                if name in names:
                    return "kernel: " + group
            return "kernel: other"
        if s.startswith("ret_from_fork"):
            return "kernel: processes"
    return "kernel: other"


def main():
    args = perf_args()
    if not os.path.exists(BIN):
        raise SystemExit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="bg-profile-")
    binary = installed(BIN, tmp)
    env = dict(os.environ, BATCHGUARD_STATE=f"sqlite:{tmp}/state.db", BATCHGUARD_CONFIG_DIR=f"{tmp}/etc")
    os.makedirs(f"{tmp}/etc/jobs")
    with open(f"{tmp}/etc/batchguard.toml", "w") as f:
        f.write(f'log_dir = "{tmp}/log"\n')
    comm = os.path.basename(binary)[:15]
    peers = [
        ("batchguard exec (cgroup)", [binary, "exec", "--name", "bench", "--", "/bin/true"], env, {comm}),
        ("batchguard exec (poll)", [binary, "exec", "--name", "bench", "--", "/bin/true"],
         dict(env, BATCHGUARD_CGROUP="poll"), {comm}),
        ("flock -n L timeout 60", ["flock", "-n", f"{tmp}/flock", "timeout", "60", "/bin/true"], env,
         {"flock", "timeout"}),
        ("bare /bin/true (its exec)", ["/bin/true"], env, {"true"}),
    ]
    for _, argv, e, _ in peers:  # warm-up, and the store exists
        for _ in range(5):
            subprocess.run(argv, env=e, check=True, stdout=subprocess.DEVNULL)
    tables = [(name, perf_profile(argv, e, args.runs, args.freq, comms, bucket, tmp))
              for name, argv, e, comms in peers]
    rows = sorted({k for _, t in tables for k in t}, key=lambda k: (not k.startswith("kernel"), k))
    print(f"CPU ms per run in the wrapper's own processes (not the job's), perf cpu-clock at "
          f"{args.freq} Hz over {args.runs} runs each\n")
    print("| | " + " | ".join(n for n, _ in tables) + " |")
    print("|---|" + "---|" * len(tables))
    for k in rows:
        print(f"| {k} | " + " | ".join(f"{t.get(k, 0):.2f}" for _, t in tables) + " |")
    for label, pred in (("kernel", lambda k: k.startswith("kernel")), ("user", lambda k: k.startswith("user")),
                        ("total", lambda k: True)):
        print(f"| **{label}** | " + " | ".join(f"**{sum(v for k, v in t.items() if pred(k)):.2f}**"
                                             for _, t in tables) + " |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
