#!/bin/sh
# A per-item handler: gets the key as $1 (and in $BATCHGUARD_ITEM).
echo "processing $1"
