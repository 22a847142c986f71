#!/usr/bin/env python3
"""A small nightly report, the kind of batch batchguard is for.

It "computes" a report for one date, writes it to a temporary file and
hands it to `batchguard publish`, which renames it into place only while
this run still holds the newest fencing token: a slower, older run can
never overwrite a newer run's result (guideline G07).
"""
import os
import subprocess
import sys
import tempfile
import time

date = sys.argv[1]
out_dir = sys.argv[2]
os.makedirs(out_dir, exist_ok=True)

print(f"building the sales report for {date} (run {os.environ['BATCHGUARD_RUN_ID']}, "
      f"fence {os.environ['BATCHGUARD_FENCE']})")
rows = []
for shop in range(1, 6):
    rows.append(f"{date},shop-{shop},{shop * 1234}")
    print(f"shop-{shop}: {shop * 1234} sales")
    time.sleep(0.2)
# The password arrives from env_file; batchguard redacts it in the log.
print(f"connected with password {os.environ.get('REPORT_DB_PASSWORD', '?')}")

fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".report-")
with os.fdopen(fd, "w") as f:
    f.write("date,shop,sales\n" + "\n".join(rows) + "\n")
dest = os.path.join(out_dir, f"sales-{date}.csv")
subprocess.run(["batchguard", "publish", tmp, dest], check=True)
print(f"published {dest}")
