"""What the benches share (imported from the bench/ directory they run in)."""
import argparse
import collections
import os
import re
import shutil
import subprocess


def installed(path, tmp):
    """A fresh copy of `path` in `tmp`, as install(1) or dpkg would write it.

    The file the linker has just written starts measurably slower than a
    copy of it (0.3-0.5 ms per `batchguard exec` here: its page-cache pages
    fault in in smaller pieces), and that is not what a host runs."""
    copy = os.path.join(tmp, os.path.basename(path))
    shutil.copy2(path, copy)
    return copy


def shq(s):
    """`s` quoted for sh."""
    return "'" + s.replace("'", "'\\''") + "'"


def perf_profile(argv, env, runs, freq, comms, classify, tmp):
    """CPU ms per run by class: `perf record` (cpu-clock, call graphs) over
    `runs` runs of `argv`, every sample of a process whose name is in
    `comms` given to `classify(frames)` ([(symbol, dso)], innermost first)."""
    data = os.path.join(tmp, "perf.data")
    command = " ".join(map(shq, argv)) + " >/dev/null"
    loop = f"for i in $(seq {runs}); do {command}; done"
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq), "-g", "-o", data,
                    "--", "sh", "-c", loop], env=env, check=True, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    counts = collections.Counter()
    comm, frames = None, []

    def flush():
        if comm in comms:
            counts[classify(frames)] += 1

    for line in out.splitlines():
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line[0].isspace():
            comm, frames = line.split()[0], []
        else:
            m = re.match(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$", line)
            if m:
                frames.append((m.group(1).split("+0x")[0], m.group(2)))
    flush()
    ms = 1000.0 / freq / runs
    return {k: v * ms for k, v in counts.items()}


def perf_args():
    """The command line of a perf profile (`--runs`, `--freq`), once perf is
    known to be there."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--freq", type=int, default=15000)
    args = ap.parse_args()
    if not shutil.which("perf"):
        raise SystemExit("needs perf (apt-get install linux-perf)")
    return args
