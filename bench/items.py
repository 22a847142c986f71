#!/usr/bin/env python3
"""Item throughput of batchguard against the tools people use instead.

Side by side in one run:
  per-item mode: N keys, handler /bin/true, parallelism 2, against
    `xargs -P2` (no ledger) and GNU parallel with --joblog and
    --resume (a ledger of sorts; measured on fewer keys, it is slow), and
    the machine's spawn floor (bench/spawn_floor.rs: a bare posix_spawn
    loop with nothing else, what the kernel and C library cost here);
  stream mode: 1,000,000 keys through a handler that only echoes them to the
    done fd, keys durably recorded per second;
  resume: a scope holding 1,000,000 done keys plus 1,000 pending: time from
    `batchguard run` to the first pending key reaching the handler.

    cargo build --release --bin batchguard --example spawn_floor
    python3 bench/items.py [--keys 10000] [--stream-keys 1000000]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "batchguard")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "spawn_floor")


def write_keys(path, n, prefix="key"):
    with open(path, "w") as f:
        f.write("".join(f"{prefix}-{i}\n" for i in range(n)))


def timed(argv, **kw):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


class Bg:
    def __init__(self, tmp):
        self.tmp = tmp
        self.etc = os.path.join(tmp, "etc")
        os.makedirs(os.path.join(self.etc, "jobs"), exist_ok=True)
        with open(os.path.join(self.etc, "batchguard.toml"), "w") as f:
            f.write(f'log_dir = "{tmp}/log"\nlog_max = "1MiB"\n')
        self.env = dict(os.environ, BATCHGUARD_STATE=f"sqlite:{tmp}/state.db")

    def job(self, name, text):
        with open(os.path.join(self.etc, "jobs", f"{name}.toml"), "w") as f:
            f.write(text)

    def run(self, name, scope=None):
        extra = ["--scope", scope] if scope else []
        return timed([BIN, "--config-dir", self.etc, "run", name, *extra], env=self.env)

    def last_run(self, name):
        out = subprocess.run([BIN, "--config-dir", self.etc, "runs", name, "--limit", "1", "--format", "json"],
                             env=self.env, capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]


def per_item(tmp, n, parallel_n, rounds):
    """Items/s of each tool, the median of `rounds` interleaved rounds (each
    round runs every tool once, batchguard in a fresh ledger scope)."""
    keys = os.path.join(tmp, "keys.txt")
    write_keys(keys, n)
    pkeys = os.path.join(tmp, "pkeys.txt")
    write_keys(pkeys, parallel_n)
    bg = Bg(os.path.join(tmp, "per-item"))
    bg.job("per-item", f'[items]\nsource_file = "{keys}"\nrun = ["/bin/true", "{{item}}"]\nparallelism = 2\n')
    has_parallel = shutil.which("parallel") is not None
    times = {"xargs": [], "bg": [], "parallel": [], "floor": []}
    for r in range(rounds):
        times["floor"].append(timed([FLOOR, str(n), "2", "/bin/true", "key"]))
        with open(keys) as f:
            times["xargs"].append(timed(["xargs", "-P2", "-n1", "/bin/true"], stdin=f))
        times["bg"].append(bg.run("per-item", scope=f"round-{r}"))
        run = bg.last_run("per-item")
        assert run["items"]["done"] == n, run
        if has_parallel:
            joblog = os.path.join(tmp, f"joblog-{r}")
            with open(pkeys) as f:
                times["parallel"].append(timed(["parallel", "--will-cite", "--joblog", joblog, "--resume",
                                                "-j2", "/bin/true", "{}"], stdin=f))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rows = [("xargs -P2 (no ledger)", n, med["xargs"]), ("batchguard per-item", n, med["bg"])]
    if has_parallel:
        rows.append(("GNU parallel --joblog --resume", parallel_n, med["parallel"]))
    rows.append(("spawn floor: bare posix_spawn loop, 2 threads, output piped (bench/spawn_floor.rs)",
                 n, med["floor"]))
    return rows


def stream(tmp, n):
    keys = os.path.join(tmp, "stream-keys.txt")
    write_keys(keys, n)
    bg = Bg(os.path.join(tmp, "stream"))
    bg.job("stream", f'command = ["sh", "-c", "exec cat >&3"]\n[items]\nmode = "stream"\nsource_file = "{keys}"\n')
    t = bg.run("stream")
    run = bg.last_run("stream")
    assert run["items"]["done"] == n, run
    return t, bg, keys


def resume(tmp, bg, keys, n, pending):
    # Same scope: the n keys are done; add `pending` new ones.
    with open(keys, "a") as f:
        f.write("".join(f"new-{i}\n" for i in range(pending)))
    first = os.path.join(tmp, "first")
    bg.job("stream", f'command = ["sh", "-c", "read k; date +%s.%N > {first}; echo $k >&3; exec cat >&3"]\n'
                     f'[items]\nmode = "stream"\nsource_file = "{keys}"\n')
    start = time.time()
    total = bg.run("stream")
    with open(first) as f:
        t_first = float(f.read()) - start
    run = bg.last_run("stream")
    assert run["items"]["done"] == pending and run["items"]["skipped"] == n, run
    return t_first, total


def crash_redo(tmp, n, crashes, parallelism=4):
    """Keys processed twice after `crashes` SIGKILLs of the runner of an
    n-key per-item job (10 ms items), then a run to the end."""
    import random
    import signal
    keys = os.path.join(tmp, "crash-keys.txt")
    write_keys(keys, n)
    done = os.path.join(tmp, "processed")
    bg = Bg(os.path.join(tmp, "crash"))
    bg.job("crashy", f'[items]\nsource_file = "{keys}"\n'
                     f'run = ["sh", "-c", "echo $0 >> {done}; sleep 0.01", "{{item}}"]\n'
                     f'parallelism = {parallelism}\n')
    rnd = random.Random(7)
    argv = [BIN, "--config-dir", bg.etc, "run", "crashy"]
    for _ in range(crashes):
        p = subprocess.Popen(argv, env=bg.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3 + rnd.random() * 0.5)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    subprocess.run(argv, env=bg.env, check=True, stdout=subprocess.DEVNULL)
    with open(done) as f:
        lines = f.read().split()
    assert len(set(lines)) == n, (len(set(lines)), n)
    return len(lines) - n


def main():
    global BIN, FLOOR
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--parallel-keys", type=int, default=1000)
    ap.add_argument("--stream-keys", type=int, default=1000000)
    ap.add_argument("--crash-keys", type=int, default=3000)
    ap.add_argument("--crashes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the per-item comparison")
    args = ap.parse_args()
    if not os.path.exists(BIN) or not os.path.exists(FLOOR):
        raise SystemExit("build first: cargo build --release --bin batchguard --example spawn_floor")
    tmp = tempfile.mkdtemp(prefix="bg-items-bench-")
    BIN, FLOOR = installed(BIN, tmp), installed(FLOOR, tmp)
    try:
        rows = per_item(tmp, args.keys, args.parallel_keys, args.rounds)
        base = rows[0][1] / rows[0][2]
        print(f"per-item mode, handler /bin/true, 2 at a time (median of {args.rounds} interleaved rounds)\n")
        print("| tool | keys | seconds | items/s | vs xargs |")
        print("|---|---|---|---|---|")
        for name, n, t in rows:
            print(f"| {name} | {n} | {t:.2f} | {n / t:.0f} | {n / t / base:.2f}x |")
        bg_rate = rows[1][1] / rows[1][2]
        floor_rate = rows[-1][1] / rows[-1][2]
        if len(rows) > 3:
            par_rate = rows[2][1] / rows[2][2]
            print(f"\nbatchguard / GNU parallel: {bg_rate / par_rate:.1f}x; "
                  f"the spawn floor / GNU parallel: {floor_rate / par_rate:.1f}x")
        print(f"batchguard / spawn floor: {bg_rate / floor_rate:.2f}x")
        t, bg, keys = stream(tmp, args.stream_keys)
        print(f"\nstream mode: {args.stream_keys} keys durably recorded in {t:.2f} s "
              f"= {args.stream_keys / t:,.0f} keys/s (whole run: source, ledger scan, handler, commits)")
        t_first, total = resume(tmp, bg, keys, args.stream_keys, 1000)
        print(f"resume: scope with {args.stream_keys} done + 1000 pending keys: first pending key "
              f"reached the handler after {t_first:.2f} s (whole run {total:.2f} s)")
        redone = crash_redo(tmp, args.crash_keys, args.crashes)
        print(f"crash: {args.crash_keys} keys of 10 ms, parallelism 4, runner SIGKILLed {args.crashes} times "
              f"at random moments: {redone} keys redone ({redone / args.crashes:.1f} per crash)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
