#!/usr/bin/env python3
"""Distributed stream mode against a PostgreSQL job queue (issue 6).

batchguard: N no-op keys (handler `exec cat >&3`: every key handed out is
reported done at once), `[distributed] enabled = true`, items.mode =
"stream", state in a fresh schema of the PostgreSQL at --pg. Measured end to
end (`batchguard run` start to exit: reading the keys, the plan, enqueueing,
processing, every key committed to the ledger and acknowledged in the queue):

  1 worker:  the coordinator alone (`--concurrency` default, i.e. parallelism 1)
  2 workers: the coordinator + one `batchguard worker --follow`

The peer: pg-boss 10 installed with npm into a temp dir (or --peer-dir),
its own fresh schema, the same N no-op jobs inserted in bulk (not timed),
then 1 and 2 worker processes (`boss.work`, batchSize --peer-batch, by
default the same as batchguard's batch, polling every 0.5 s, the minimum
pg-boss allows; a handler that does nothing), measured from the first fetch
to no job left created/retry/active. Note: a pg-boss worker waits out the
polling interval after every fetch, so one worker does at most batchSize
jobs per 0.5 s.

    cargo build --release && python3 bench/distributed.py [--keys 200000]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from benchlib import installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "batchguard")

PEER_JS = r"""
const { PgBoss } = (() => { const m = require('pg-boss'); return { PgBoss: m.default || m }; })();
const { Client } = require('pg');
const { fork } = require('child_process');
const [mode, url, schema, a1, a2] = process.argv.slice(2);
const QUEUE = 'noop';

async function boss() {
  const b = new PgBoss({ connectionString: url, schema, supervise: false, schedule: false });
  b.on('error', e => console.error(e));
  await b.start();
  return b;
}

async function enqueue(n) {
  const b = await boss();
  await b.createQueue(QUEUE);
  for (let i = 0; i < n; i += 10000) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + 10000); j++) jobs.push({ name: QUEUE, data: { k: j } });
    await b.insert(jobs);
  }
  await b.stop({ graceful: false, wait: true });
}

async function work(batch) {
  const b = await boss();
  let first = true;
  await b.work(QUEUE, { batchSize: batch, pollingIntervalSeconds: 0.5 }, async () => {
    if (first) { first = false; process.send({ first: Date.now() }); }
  });
  process.on('message', async () => { await b.stop({ graceful: false, wait: false }); process.exit(0); });
}

async function measure(workers, batch) {
  const c = new Client({ connectionString: url });
  await c.connect();
  const kids = [];
  let first = null;
  for (let i = 0; i < workers; i++) {
    const k = fork(__filename, ['work', url, schema, String(batch)]);
    k.on('message', m => { if (m.first && (first === null || m.first < first)) first = m.first; });
    kids.push(k);
  }
  let left = -1;
  while (true) {
    const r = await c.query(`SELECT count(*)::int AS n FROM "${schema}".job WHERE name = $1 AND state IN ('created', 'retry', 'active')`, [QUEUE]);
    left = r.rows[0].n;
    if (left === 0 && first !== null) break;
    await new Promise(r => setTimeout(r, 20));
  }
  const end = Date.now();
  const done = await c.query(`SELECT count(*)::int AS n FROM "${schema}".job WHERE name = $1 AND state = 'completed'`, [QUEUE]);
  for (const k of kids) k.send('stop');
  await c.end();
  console.log(JSON.stringify({ seconds: (end - first) / 1000, completed: done.rows[0].n }));
}

(async () => {
  if (mode === 'enqueue') await enqueue(Number(a1));
  else if (mode === 'work') await work(Number(a1));
  else if (mode === 'measure') await measure(Number(a1), Number(a2));
})().catch(e => { console.error(e); process.exit(1); });
"""


def psql(pg, sql):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    subprocess.run(["psql", pg, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL, env=env)


def fresh_schema(pg, name):
    psql(pg, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    return name


def batchguard(tmp, pg, n, batch, workers):
    schema = fresh_schema(pg, f"bench_bg_{os.getpid()}_{workers}")
    etc = os.path.join(tmp, f"etc{workers}")
    os.makedirs(os.path.join(etc, "jobs"), exist_ok=True)
    with open(os.path.join(etc, "batchguard.toml"), "w") as f:
        f.write(f'log_dir = "{tmp}/log{workers}"\nlog_max = "1MiB"\n')
    keys = os.path.join(tmp, "keys.txt")
    if not os.path.exists(keys):
        with open(keys, "w") as f:
            f.write("".join(f"key-{i:08d}\n" for i in range(n)))
    with open(os.path.join(etc, "jobs", "noop.toml"), "w") as f:
        f.write('command = ["sh", "-c", "exec cat >&3"]\n'
                f'[items]\nmode = "stream"\nsource_file = "{keys}"\n'
                f'[distributed]\nenabled = true\nbatch = {batch}\nlease = "60s"\n')
    sep = "&" if "?" in pg else "?"
    env = dict(os.environ, BATCHGUARD_STATE=f"{pg}{sep}schema={schema}")
    # Create the schema (migrations) before timing.
    subprocess.run([BIN, "--config-dir", etc, "ledger", "noop"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    extra = []
    for _ in range(workers - 1):
        extra.append(subprocess.Popen([BIN, "--config-dir", etc, "worker", "noop", "--follow"],
                                      env=env, stdout=subprocess.DEVNULL))
    start = time.perf_counter()
    r = subprocess.run([BIN, "--config-dir", etc, "run", "noop"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    for p in extra:
        p.send_signal(signal.SIGTERM)
        p.wait()
    if r.returncode != 0:
        raise SystemExit(f"batchguard run failed ({r.returncode}): {r.stderr}")
    out = subprocess.run(["psql", pg, "-tA", "-c",
                          f'SELECT count(*) FILTER (WHERE state = 1 AND attempts = 1), '
                          f'count(DISTINCT run_id) FROM "{schema}".ledger'],
                         check=True, capture_output=True, text=True).stdout.strip()
    done, runs = (int(x) for x in out.split("|"))
    assert done == n, f"{done} of {n} keys done exactly once"
    psql(pg, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return took


def peer(peer_dir, pg, n, batch, workers):
    schema = fresh_schema(pg, f"bench_pgboss_{os.getpid()}_{workers}")
    script = os.path.join(peer_dir, "peer.js")
    subprocess.run(["node", script, "enqueue", pg, schema, str(n)], check=True, cwd=peer_dir)
    out = subprocess.run(["node", script, "measure", pg, schema, str(workers), str(batch)],
                         check=True, cwd=peer_dir, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["completed"] == n, f"pg-boss completed {r['completed']} of {n}"
    psql(pg, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return r["seconds"]


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000, help="[distributed] batch for batchguard")
    ap.add_argument("--peer-batch", type=int, help="pg-boss batchSize per fetch (default: --batch)")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/test")
    ap.add_argument("--peer-dir", help="a dir with pg-boss already installed (else npm install into a temp dir)")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    n = args.keys
    if args.peer_batch is None:
        args.peer_batch = args.batch
    tmp = tempfile.mkdtemp(prefix="bg-bench-dist-")
    BIN = installed(BIN, tmp)
    try:
        rows = {}
        for w in (1, 2):
            rows[w] = [batchguard(tmp, args.pg, n, args.batch, w)]
            print(f"batchguard, {w} worker(s): {n / rows[w][0]:,.0f} keys/s ({rows[w][0]:.2f} s)", flush=True)
        peer_ok = False
        if not args.no_peer:
            peer_dir = args.peer_dir or os.path.join(tmp, "peer")
            os.makedirs(peer_dir, exist_ok=True)
            try:
                if not args.peer_dir:
                    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "pg-boss@10", "pg"],
                                   cwd=peer_dir, check=True, stdout=subprocess.DEVNULL, timeout=300)
                with open(os.path.join(peer_dir, "peer.js"), "w") as f:
                    f.write(PEER_JS)
                for w in (1, 2):
                    rows[w].append(peer(peer_dir, args.pg, n, args.peer_batch, w))
                    print(f"pg-boss, {w} worker(s): {n / rows[w][1]:,.0f} jobs/s ({rows[w][1]:.2f} s)", flush=True)
                peer_ok = True
            except (subprocess.SubprocessError, OSError) as e:
                print(f"peer (pg-boss) not measured: {e}")
        print()
        print(f"{n:,} no-op keys, batchguard batch {args.batch}, pg-boss batchSize {args.peer_batch}")
        print(f"{'workers':>7} | {'batchguard keys/s':>17} | {'pg-boss jobs/s':>14} | {'ratio':>6}")
        for w in (1, 2):
            bg = n / rows[w][0]
            if peer_ok:
                pb = n / rows[w][1]
                print(f"{w:>7} | {bg:>17,.0f} | {pb:>14,.0f} | {bg / pb:>5.1f}x")
            else:
                print(f"{w:>7} | {bg:>17,.0f} | {'n/a':>14} | {'n/a':>6}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
