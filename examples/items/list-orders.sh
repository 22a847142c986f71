#!/bin/sh
# An items source: one key per line (here: 500 order ids for the date in $1).
seq -f "order-$1-%g" 1 "${2:-500}"
