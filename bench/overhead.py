#!/usr/bin/env python3
"""Per-run overhead of batchguard against the tools it replaces.

Wraps /bin/true and a 10 ms job many times, side by side in one run:
bare exec, `flock -n LOCK timeout 60 CMD`, `systemd-run --scope` (when
systemd runs this host), `batchguard exec` (cgroup and poll), and the
floor of a recorded run (bench/run_floor.rs: a store's lock and run row,
a log file, a cgroup, the child, the end record, and nothing else). The
variants are interleaved (round after round, each variant once per round),
so a busy spell of the machine weighs on all of them alike. Reports the
median wall time per run, each wrapper's added overhead over bare exec,
the ratio of batchguard's overhead to flock+timeout's, and the runner's
resident memory while it supervises a job.

    cargo build --release --bin batchguard --example run_floor
    python3 bench/overhead.py [--runs N] [--baseline OLD_BINARY]

--baseline adds an earlier build's `batchguard exec` (cgroup and poll) to
the same interleaved rounds, on a store of its own, so a change is measured against what it
replaces under the same conditions (this machine's speed drifts by 30%
over an hour; separate runs do not compare).
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import statistics
import time

from benchlib import installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "batchguard")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "run_floor")


def floor_cgroup_parent():
    """Where the floor makes its runs' memory cgroups: beside batchguard's,
    under this process's own cgroup v1 memory cgroup (mounted where Debian
    mounts it). None elsewhere."""
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        own = f"/sys/fs/cgroup/memory{path}".rstrip("/")
        if "memory" in controllers.split(",") and os.path.exists(f"{own}/memory.limit_in_bytes"):
            parent = f"{own}/batchguard-floor-{os.getpid()}"
            try:
                os.mkdir(parent)
                return parent
            except OSError:
                return None
    return None


def timed_interleaved(variants, runs):
    """Median ms per run of each (argv, env) in `variants`, interleaved."""
    for argv, env in variants:  # one warm-up each
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    samples = [[] for _ in variants]
    for _ in range(runs):
        for i, (argv, env) in enumerate(variants):
            start = time.perf_counter()
            subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
            samples[i].append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(s) for s in samples]


def systemd_running():
    return shutil.which("systemd-run") and os.path.isdir("/run/systemd/system")


def runner_rss(env, tmp):
    """Resident memory (KiB) of the runner supervising a 1 s job: VmRSS, VmHWM, RssAnon, RssFile."""
    p = subprocess.Popen([BIN, "exec", "--name", "rss", "--memory-max", "64MiB", "--", "sleep", "1"],
                         env=env, cwd=tmp)
    time.sleep(0.5)
    status = open(f"/proc/{p.pid}/status").read()
    p.wait()
    fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
    kib = lambda k: int(fields[k].split()[0])
    return kib("VmRSS"), kib("VmHWM"), kib("RssAnon"), kib("RssFile")


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--baseline", help="an earlier batchguard binary, measured in the same rounds")
    args = ap.parse_args()
    if not os.path.exists(BIN) or not os.path.exists(FLOOR):
        raise SystemExit("build first: cargo build --release --bin batchguard --example run_floor")
    tmp = tempfile.mkdtemp(prefix="bg-bench-")
    BIN = installed(BIN, tmp)
    floor = installed(FLOOR, tmp)
    floor_cg = floor_cgroup_parent()
    base = None
    if args.baseline:
        os.makedirs(f"{tmp}/baseline")
        base = installed(args.baseline, f"{tmp}/baseline")
    env = dict(os.environ, BATCHGUARD_STATE=f"sqlite:{tmp}/state.db",
               BATCHGUARD_CONFIG_DIR=f"{tmp}/etc")
    os.makedirs(f"{tmp}/etc/jobs")
    with open(f"{tmp}/etc/batchguard.toml", "w") as f:
        f.write(f'log_dir = "{tmp}/log"\n')
    lock = f"{tmp}/flock"
    jobs = {"/bin/true": ["/bin/true"], "10 ms job": ["sleep", "0.01"]}
    print(f"{args.runs} interleaved runs each; median wall time per run (ms); overhead = wrapper - bare\n")
    print("| job | bare | flock+timeout | systemd-run --scope | batchguard (cgroup) | batchguard (poll) | "
          "flock+timeout overhead | batchguard cgroup overhead (ratio) | batchguard poll overhead (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|")
    baselines = {}
    floors = {}
    for name, cmd in jobs.items():
        variants = [
            (cmd, None),
            (["flock", "-n", lock, "timeout", "60", *cmd], None),
            ([BIN, "exec", "--name", "bench", "--", *cmd], env),
            ([BIN, "exec", "--name", "bench", "--", *cmd], dict(env, BATCHGUARD_CGROUP="poll")),
        ]
        floor_argv = [floor, f"{tmp}/floor.db", f"{tmp}/floor-log", "bench"]
        variants += [
            (floor_argv + (["--cgroup", floor_cg] if floor_cg else []) + ["--", *cmd], None),
            (floor_argv + ["--", *cmd], None),
        ]
        if base:
            # Its own store: a store keeps the page size and layout of the
            # build that created it.
            benv = dict(env, BATCHGUARD_STATE=f"sqlite:{tmp}/baseline/state.db")
            variants += [
                ([base, "exec", "--name", "bench", "--", *cmd], benv),
                ([base, "exec", "--name", "bench", "--", *cmd], dict(benv, BATCHGUARD_CGROUP="poll")),
            ]
        if systemd_running():
            variants.append((["systemd-run", "--quiet", "--scope", *cmd], None))
        medians = timed_interleaved(variants, args.runs)
        bare, flock, bg, bgp = medians[:4]
        floors[name] = (medians[4] - bare, medians[5] - bare, flock - bare, bg - bare, bgp - bare)
        medians = medians[:4] + medians[6:]
        if base:
            baselines[name] = (medians[4] - bare, medians[5] - bare, flock - bare)
            medians = medians[:4] + medians[6:]
        sysd = medians[4] if len(medians) > 4 else None
        fo, bo, bpo = flock - bare, bg - bare, bgp - bare
        print(f"| {name} | {bare:.2f} | {flock:.2f} | {'n/a' if sysd is None else f'{sysd:.2f}'} | "
              f"{bg:.2f} | {bgp:.2f} | {fo:.2f} | {bo:.2f} ({bo / fo:.2f}x) | {bpo:.2f} ({bpo / fo:.2f}x) |")
    cg_label = "cgroup v1" if floor_cg else "no cgroup: none could be made here"
    print(f"\nthe floor of a recorded run (bench/run_floor.rs; its cgroup column: {cg_label}) in the same rounds: "
          "its overhead, its ratio to flock+timeout's, and batchguard's overhead over the floor's\n")
    print("| job | floor cgroup overhead (ratio) | floor poll overhead (ratio) | batchguard cgroup / floor | batchguard poll / floor |")
    print("|---|---|---|---|---|")
    for name, (fc, fp, fo, bo, bpo) in floors.items():
        print(f"| {name} | {fc:.2f} ({fc / fo:.2f}x) | {fp:.2f} ({fp / fo:.2f}x) | {bo / fc:.2f}x | {bpo / fp:.2f}x |")
    if floor_cg:
        try:
            os.rmdir(floor_cg)
        except OSError:
            pass
    if base:
        print(f"\nthe baseline ({args.baseline}) in the same rounds:\n")
        print("| job | baseline cgroup overhead (ratio) | baseline poll overhead (ratio) |")
        print("|---|---|---|")
        for name, (bo, bpo, fo) in baselines.items():
            print(f"| {name} | {bo:.2f} ({bo / fo:.2f}x) | {bpo:.2f} ({bpo / fo:.2f}x) |")
    rss, hwm, anon, file = runner_rss(env, tmp)
    print(f"\nrunner resident memory while supervising: {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB): "
          f"{anon / 1024:.1f} MiB its own (anonymous), {file / 1024:.1f} MiB pages of its binary and "
          "libraries mapped from the page cache (shared; how many depends on how the cache holds the file)")
    runs = json.loads(subprocess.run([BIN, "runs", "rss", "--format", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    print(f"memory enforcement of that run: {runs[0]['memory_enforcement']}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
