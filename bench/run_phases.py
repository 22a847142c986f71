#!/usr/bin/env python3
"""Where one run's CPU time goes, part by part: batchguard beside the floor.

Builds batchguard and the floor of a recorded run (bench/run_floor.rs)
with frame pointers (into target/fp, the release profile otherwise), then
`perf record` (cpu-clock, call graphs) over N runs of each around
/bin/true, in a memory cgroup where the host has cgroup v1 (both), and
puts every sample taken in the wrapper's own process (never the job after
its exec) in the part of the run its innermost known frame belongs to:

  process start   the kernel's exec, the loader, its relocations, libc's start
  arguments       clap; diagnostics: the tracing subscriber
  configuration   batchguard.toml, the job, the prepared run
  store           opening: settings, the WAL index rebuilt from the WAL
                  (every invocation is the store's first connection), the
                  schema read; a checkpoint when the WAL is over its cap
  lock + run row  the first write transaction
  cgroup          detection, creation, removal
  the child       spawn (until the job's exec) and wait
  end record      the process group row, the fence check, the last write
  notifications   the noise policy, the outbox
  log             the run's log file (on ext4, finding a free inode), log
                  retention
  publish socket  the job's way to ask for `batchguard publish`
  exit            the process's end

and prints CPU milliseconds per run for each (perf's own cost included,
so read the parts against each other, not against wall-clock figures).
bench/overhead.py gives the wall-clock side; this says which of
batchguard's parts are the floor's too and which are its own.

    sudo python3 bench/run_phases.py [--runs 300]
"""
import os
import shutil
import subprocess
import sys
import tempfile

from benchlib import installed, perf_args, perf_profile
from overhead import floor_cgroup_parent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP_DIR = os.path.join(ROOT, "target", "fp")

# (part, patterns): a sample belongs to the part of its innermost frame that
# matches; user-space frames first (so a child's exec, still in the
# runner's process, is the child's), then the kernel's.
USER_PARTS = [
    ("store: WAL index rebuild", ["walIndexReadHdr"]),
    ("store: checkpoint", ["sqlite3WalCheckpoint"]),
    ("store: schema", ["sqlite3InitOne"]),
    ("process start: relocations", ["_dl_relocate_object"]),
    ("process start: loader, libc", ["_dl_start", "dl_main", "_dl_map_object", "__libc_early_init",
                                     "_dl_init", "init_cpu_features", "_dl_start_user", "__libc_start_main",
                                     "sanitize_process_start", "__libc_start_call_main", "handle_amd",
                                     "handle_intel", "get_common_indices", "update_active", "__cpu_indicator_init",
                                     "do_lookup_x", "check_match", "_dl_lookup_symbol_x", "__tunables_init"]),
    ("arguments, diagnostics", ["clap_builder::", "clap_lex::", "batchguard::cli::args", "tracing_subscriber::",
                                "diagnostics_filter"]),
    ("configuration", ["batchguard_config::", "batchguard::exec::prepare", "cli::assemble"]),
    ("store: open", ["SqliteStore::open", "open_store"]),
    ("lock + run row", ["RunStore>::acquire", "RunStore>::insert_run", "take_lock", "runner::base_record"]),
    ("cgroup", ["batchguard_supervise::cgroup", "batchguard_supervise::detect", "make_cgroup", "remove_cgroup"]),
    ("the child: spawn, wait", ["batchguard_supervise::spawn", "batchguard_supervise::Child", "run_child",
                                "Attempt::spawn_and_wait", "Attempt::wait_child"]),
    ("end record", ["RunStore>::finish_run", "RunStore>::set_run_process", "RunStore>::current_fence",
                    "record_end", "Run::record_end"]),
    ("notifications", ["runner::notice", "batchguard::notify::"]),
    ("log: file, retention", ["batchguard::logs::", "exec::open_attempt_log", "runner::prune_logs", "open_log",
                              "Attempt::note"]),
    ("publish socket", ["batchguard::publish::"]),
    ("exit", ["__run_exit_handlers", "drop_in_place<batchguard::exec::Context>", "std::process::exit"]),
    ("the rest of the run (ours)", ["batchguard::", "run_floor::main", "main"]),
]
KERNEL_PARTS = [
    ("log: file, retention", ["__ext4_new_inode"]),
    ("process start: exec", ["__x64_sys_execve"]),
    ("exit", ["do_exit", "__x64_sys_exit_group"]),
]


def part(frames):
    """The part of one sample: `frames` is [(symbol, dso)], innermost first."""
    user = [s for s, d in frames if d != "[kernel.kallsyms]"]
    kernel = [s for s, d in frames if d == "[kernel.kallsyms]"]
    # The catch-all last: a sample in any part's callee is that part's.
    for syms, parts in ((user, USER_PARTS[:-1]), (kernel, KERNEL_PARTS), (user, USER_PARTS[-1:])):
        for s in syms:
            for name, patterns in parts:
                if any(p == s if p == "main" else p in s for p in patterns):
                    return name
    if kernel and any(s in ("asm_exc_page_fault", "exc_page_fault") for s in kernel):
        return "page faults outside the parts"
    if user and user[0] in ("malloc", "_int_malloc", "_int_free", "free", "realloc", "cfree", "sysmalloc"):
        return "malloc, free (caller not known)"
    return "other (no known frame)"


def build():
    """batchguard and the floor with frame pointers (target/fp), so that
    perf can walk their stacks."""
    env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=yes")
    subprocess.run(["cargo", "build", "--release", "--bin", "batchguard", "--example", "run_floor",
                    "--target-dir", FP_DIR], cwd=ROOT, env=env, check=True)
    release = os.path.join(FP_DIR, "release")
    return os.path.join(release, "batchguard"), os.path.join(release, "examples", "run_floor")


def main():
    args = perf_args()
    bg_built, floor_built = build()
    tmp = tempfile.mkdtemp(prefix="bg-phases-")
    bg = installed(bg_built, tmp)
    floor = installed(floor_built, tmp)
    env = dict(os.environ, BATCHGUARD_STATE=f"sqlite:{tmp}/state.db", BATCHGUARD_CONFIG_DIR=f"{tmp}/etc")
    os.makedirs(f"{tmp}/etc/jobs")
    with open(f"{tmp}/etc/batchguard.toml", "w") as f:
        f.write(f'log_dir = "{tmp}/log"\n')
    cg = floor_cgroup_parent()
    peers = [
        ("batchguard exec", [bg, "exec", "--name", "bench", "--", "/bin/true"], "batchguard"),
        ("the floor", [floor, f"{tmp}/floor.db", f"{tmp}/floor-log", "bench",
                       *(["--cgroup", cg] if cg else []), "--", "/bin/true"], "run_floor"),
    ]
    for _, argv, _ in peers:  # warm-up, and the stores exist
        for _ in range(5):
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    tables = [(name, perf_profile(argv, env, args.runs, args.freq, {comm}, part, tmp))
              for name, argv, comm in peers]
    order = [n for n, _ in USER_PARTS] + [n for n, _ in KERNEL_PARTS] + [
        "page faults outside the parts", "malloc, free (caller not known)", "other (no known frame)"]
    rows = sorted({k for _, t in tables for k in t}, key=order.index)
    print(f"CPU ms per run in the wrapper's own process, perf cpu-clock at {args.freq} Hz over "
          f"{args.runs} runs each; cgroup: {'v1, both' if cg else 'batchguard only (no v1 parent here)'}\n")
    print("| part of the run | " + " | ".join(n for n, _ in tables) + " | batchguard - floor |")
    print("|---|" + "---|" * (len(tables) + 1))
    for k in rows:
        vals = [t.get(k, 0) for _, t in tables]
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {vals[0] - vals[1]:+.3f} |")
    totals = [sum(t.values()) for _, t in tables]
    print("| **total** | " + " | ".join(f"**{v:.3f}**" for v in totals) + f" | **{totals[0] - totals[1]:+.3f}** |")
    shutil.rmtree(tmp, ignore_errors=True)
    if cg:
        os.rmdir(cg)


if __name__ == "__main__":
    sys.exit(main())
