#!/bin/sh
# A resumable batch in stream mode, in shell: pending keys arrive on stdin;
# write each key to the descriptor in $BATCHGUARD_DONE_FD once it is done.
while IFS= read -r key; do
  echo "processing $key"                  # ... the real, idempotent work here ...
  echo "$key" >&"$BATCHGUARD_DONE_FD"     # only after the work succeeded
done
