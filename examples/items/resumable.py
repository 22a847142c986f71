#!/usr/bin/env python3
"""A resumable batch in stream mode: batchguard hands out the keys that are
not done yet on stdin; write each key to BATCHGUARD_DONE_FD once its work
succeeded. Killed halfway, the next run continues where this one stopped."""
import os
import sys

done = os.fdopen(int(os.environ["BATCHGUARD_DONE_FD"]), "w", buffering=1)
for line in sys.stdin:
    order = line.rstrip("\n")
    print(f"processing {order}")          # ... the real, idempotent work here ...
    done.write(order + "\n")              # only after the work succeeded
