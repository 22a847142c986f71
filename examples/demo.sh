#!/usr/bin/env bash
# Build batchguard and run the example jobs end to end on the embedded
# SQLite store, in a throw-away directory (default /tmp/batchguard-demo).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=${1:-/tmp/batchguard-demo}

# Only a directory this script made (or an empty one) is ever wiped.
if [ -e "$demo" ] && [ ! -e "$demo/.batchguard-demo" ] && [ -n "$(ls -A "$demo" 2>/dev/null)" ]; then
  echo "demo.sh: $demo exists and is not a demo directory (no .batchguard-demo); pick another: $0 DIR" >&2
  exit 2
fi
if [ -n "${BATCHGUARD_DEMO_BIN:-}" ]; then
  bin=$(realpath "$BATCHGUARD_DEMO_BIN")   # an existing build (CI)
else
  echo "# building batchguard (release build: about 2 minutes the first time)"
  cargo build --release --manifest-path "$here/../Cargo.toml"
  echo
  bin=$(cd "$here/.." && pwd)/target/release/batchguard
fi
export PATH="$(dirname "$bin"):$PATH"   # jobs call `batchguard publish`

rm -rf "$demo"
mkdir -p "$demo/etc/jobs" "$demo/env" "$demo/reports"
touch "$demo/.batchguard-demo"
cat > "$demo/etc/batchguard.toml" <<TOML
state = "sqlite:$demo/state.db"
log_dir = "$demo/log"
TOML
echo "REPORT_DB_PASSWORD=correct-horse-battery" > "$demo/env/nightly-report.env"
for f in "$here"/jobs/*.toml; do
  sed -e "s|@DEMO@|$demo|g" -e "s|@EXAMPLES@|$here|g" -e "s|@BIN@|$bin|g" "$f" > "$demo/etc/jobs/$(basename "$f")"
done
bg() { echo "\$ batchguard $*"; "$bin" --config-dir "$demo/etc" "$@"; }

bg validate
echo
echo "# run the nightly report (quiet on success, like chronic)"
bg run nightly-report
echo "exit code $?"
echo
echo "# a second run of the same day while the first holds the lock is skipped (exit 75)"
"$bin" --config-dir "$demo/etc" run nightly-report --param date=2026-01-01 &
sleep 0.2
bg run nightly-report --param date=2026-01-01 || echo "exit code $?"
wait
bg runs nightly-report --limit 3
echo
echo "# a failing job: the report cron would mail"
bg run flaky-sync || echo "exit code $?"
echo
echo "# a resumable items job (stream mode, 500 keys): a re-run skips every finished key"
items() { "$bin" --config-dir "$demo/etc" runs order-sync --limit 1 --format json \
  | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]["items"]; print("  -> %d keys done, %d skipped as already finished, %d failed" % (i["done"], i["skipped"], i["failed"]))'; }
bg run order-sync
items
bg run order-sync
items
bg ledger order-sync
echo
echo "# the guideline audit of one job (exit 1: some rules fail)"
bg check nightly-report || echo "exit code $?"
echo
bg status
echo
bg runs nightly-report
echo
run=$("$bin" --config-dir "$demo/etc" runs nightly-report --format json | python3 -c 'import json,sys; print([r for r in json.load(sys.stdin) if r["outcome"]=="success"][0]["id"])')
bg show "$run"
echo
echo "# its log (timestamped, stream-tagged, the password redacted)"
bg logs "$run"
echo
ls -l "$demo/reports"
