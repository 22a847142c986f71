#!/usr/bin/env python3
"""Server-side time of `batchguard serve` pages on a big store (SPEC §10).

Builds a store of 1,000 jobs and 1,000,000 runs (1,000 hourly runs per job,
about 1% failures), in SQLite and in PostgreSQL, by inserting the rows
directly with SQL into the schema batchguard's own migrations created
(PostgreSQL's trigger keeps `run_totals` as it would for real runs; for
SQLite, which counts in the backend's code since its migration 9, the
counts are added after the insert, in the same transaction), and
1,000 job files (each scheduled, with timeout, expected_duration and
memory_max). Then it starts `batchguard serve` on each store and requests
each page and API route N times, reading the server's own time from the
`Server-Timing` header (the time from request to response body, without
the network), and prints median and p95 per route and store.

    cargo build && python3 bench/dashboard.py [--runs 20] [--bin target/release/batchguard]
        [--pg postgres://postgres@127.0.0.1:5432/DB] [--no-pg] [--keep DIR [--reuse]]

The PostgreSQL store is a schema `bench_dashboard` in --pg's database
(default $BATCHGUARD_TEST_PG), dropped and rebuilt on every run.
"""
import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = 1000
RUNS = 1_000_000
HOUR = 3_600_000


def run_sql(n_jobs, n_runs, base_ms, dialect):
    """One INSERT … SELECT that makes every run (SQLite or PostgreSQL)."""
    if dialect == "sqlite":
        gen = f"WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {n_runs - 1})"
        job = f"'job-' || printf('%04d', n % {n_jobs})"
        rid = "printf('01BENCH%019d', n)"
        at = "strftime('%Y-%m-%dT%H:%M:%f', {ms} / 1000.0, 'unixepoch') || '+00:00'"
        src = "FROM g"
        div = "/"
    else:
        gen = ""
        job = f"'job-' || lpad((n % {n_jobs})::text, 4, '0')"
        rid = "'01BENCH' || lpad(n::text, 19, '0')"
        at = "to_char(to_timestamp({ms} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"+00:00\"')"
        src = f"FROM generate_series(0::bigint, {n_runs - 1}) AS g(n)"
        div = "/"
    started = f"({base_ms} + (n {div} {n_jobs}) * {HOUR} + (n % {n_jobs}) * 1000)"
    duration = "(1000 + (n * 7919) % 60000)"
    outcome = "CASE WHEN n % 97 = 0 THEN 'failure' WHEN n % 389 = 0 THEN 'timeout' ELSE 'success' END"
    return f"""{gen}
INSERT INTO runs (id, job, lock_name, host, boot_id, pid, pid_start, fence, attempt, scope, params,
  started_at, started_ms, ended_at, ended_ms, duration_ms, outcome, exit_code, signal,
  peak_memory_bytes, memory_max_bytes, memory_enforcement, heartbeat_ms)
SELECT {rid}, {job}, {job}, 'bench-01', 'boot', 4242, 1, (n {div} {n_jobs}) + 1, 1, NULL, '{{}}',
  {at.format(ms=started)}, {started}, {at.format(ms=started + ' + ' + duration)}, {started} + {duration},
  {duration}, {outcome}, CASE WHEN n % 97 = 0 THEN 1 ELSE 0 END, NULL,
  52428800 + (n * 104729) % 209715200, 536870912, 'cgroup2', {started} + {duration}
{src}"""


# SQLite's run counts of the inserted runs (the seed run is counted already).
SQLITE_TOTALS = """INSERT INTO run_totals (job, outcome, n)
SELECT job, outcome, count(*) FROM runs WHERE id LIKE '01BENCH%' GROUP BY job, outcome
ON CONFLICT (job, outcome) DO UPDATE SET n = n + excluded.n"""


def write_config(root, state):
    etc = os.path.join(root, "etc")
    os.makedirs(os.path.join(etc, "jobs"), exist_ok=True)
    with open(os.path.join(etc, "batchguard.toml"), "w") as f:
        f.write(f'log_dir = "{root}/log"\nstate = "{state}"\n')
    for i in range(JOBS):
        with open(os.path.join(etc, "jobs", f"job-{i:04d}.toml"), "w") as f:
            f.write(
                f'description = "Benchmark job {i}"\ncommand = ["true"]\nworkdir = "/tmp"\n'
                f'schedule = "{i % 60} * * * *"\ntimeout = "5m"\nexpected_duration = "1m"\n'
                f'memory_max = "512MiB"\n'
            )
    return etc


def seed(bin_, etc, state):
    """Let batchguard create the schema (its migrations) with one real run."""
    subprocess.run([bin_, "--config-dir", etc, "--state", state, "exec", "--name", "seed", "--", "true"],
                   check=True, stdout=subprocess.DEVNULL)


def start(bin_, etc, state):
    p = subprocess.Popen([bin_, "--config-dir", etc, "--state", state, "serve", "--listen", "127.0.0.1:0"],
                         stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        p.kill()
        raise SystemExit(f"serve did not start: {line}")
    return p, int(m.group(1))


def measure(port, path, n):
    server, wall = [], []
    for i in range(n + 1):
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
            r.read()
            timing = r.headers.get("Server-Timing", "")
        if i == 0:
            continue  # warm-up (first load of 1,000 job files, caches)
        wall.append((time.perf_counter() - t) * 1000)
        server.append(float(timing.split("dur=")[1]))
    server.sort()
    return {
        "median_ms": round(statistics.median(server), 1),
        "p95_ms": round(server[min(len(server) - 1, int(len(server) * 0.95))], 1),
        "wall_median_ms": round(statistics.median(wall), 1),
    }


ROUTES = [
    "/",
    "/api/jobs",
    "/jobs/job-0500",
    "/api/jobs/job-0500/runs",
    "/api/jobs/job-0500/runs?limit=50&before=01BENCH0000000000000500500",
    "/api/jobs/job-0500",
    "/runs/01BENCH0000000000000999500",
    "/timeline",
    "/metrics",
]


def bench(bin_, etc, state, n):
    p, port = start(bin_, etc, state)
    try:
        return {route: measure(port, route, n) for route in ROUTES}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    default_bin = os.path.join(ROOT, "target", "release", "batchguard")
    if not os.path.exists(default_bin):
        default_bin = os.path.join(ROOT, "target", "debug", "batchguard")
    ap.add_argument("--bin", default=default_bin)
    ap.add_argument("--pg", default=os.environ.get("BATCHGUARD_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--keep", help="build the stores in DIR and keep them")
    ap.add_argument("--reuse", action="store_true", help="reuse the stores --keep kept")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="bg-bench-dash-")
    os.makedirs(root, exist_ok=True)
    base_ms = int(time.time() * 1000) - (RUNS // JOBS + 1) * HOUR
    results = {"bin": a.bin, "jobs": JOBS, "runs": RUNS}
    try:
        # SQLite.
        db = os.path.join(root, "state.db")
        state = f"sqlite:{db}"
        etc = write_config(os.path.join(root, "sqlite"), state)
        if not (a.reuse and os.path.exists(db)):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
            seed(a.bin, etc, state)
            t = time.perf_counter()
            c = sqlite3.connect(db)
            c.execute("PRAGMA journal_mode = WAL")
            c.executescript("BEGIN;" + run_sql(JOBS, RUNS, base_ms, "sqlite") + ";" + SQLITE_TOTALS + ";COMMIT;")
            c.execute("ANALYZE")
            c.close()
            results["sqlite_build_s"] = round(time.perf_counter() - t, 1)
        results["sqlite"] = bench(a.bin, etc, state, a.runs)
        # PostgreSQL.
        if not a.no_pg and shutil.which("psql"):
            schema = "bench_dashboard"
            state = f"{a.pg}?schema={schema}"
            etc = write_config(os.path.join(root, "postgres"), state)
            have = subprocess.run(["psql", a.pg, "-tAc", f"SELECT to_regclass('{schema}.runs') IS NOT NULL"],
                                  capture_output=True, text=True).stdout.strip() == "t"
            if not (a.reuse and have):
                subprocess.run(["psql", a.pg, "-q", "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], check=True)
                seed(a.bin, etc, state)
                t = time.perf_counter()
                sql = f"SET search_path TO {schema};\n" + run_sql(JOBS, RUNS, base_ms, "postgres") + ";\nANALYZE runs;\n"
                subprocess.run(["psql", a.pg, "-q", "-v", "ON_ERROR_STOP=1"], input=sql, text=True, check=True)
                results["postgres_build_s"] = round(time.perf_counter() - t, 1)
            results["postgres"] = bench(a.bin, etc, state, a.runs)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    for store in ("sqlite", "postgres"):
        if store in results:
            print(f"\n{store}: median / p95 server time (ms), {a.runs} requests each")
            for route, r in results[store].items():
                print(f"  {route:<72} {r['median_ms']:>7} {r['p95_ms']:>7}")


if __name__ == "__main__":
    main()
