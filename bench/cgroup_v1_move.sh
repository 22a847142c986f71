#!/usr/bin/env bash
# A process's move into a cgroup v1, through cgroup.procs and through tasks
# (see bench/cgmove.c and docs/performance.md), on this host and, with
# --vm, in Debian's cloud kernel under qemu (TCG: read the ratio only).
#
#   sudo bash bench/cgroup_v1_move.sh [--vm] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
vm=0; [ "${1:-}" = --vm ] && { vm=1; shift; }
runs=${1:-15}
work=$(mktemp -d); trap 'rm -rf "$work"; rmdir /sys/fs/cgroup/memory/bg-move-bench 2>/dev/null || true' EXIT
gcc -O2 -static -o "$work/cgmove" bench/cgmove.c
if [ $vm -eq 0 ]; then
  mem=$(awk '$3 == "cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
  [ -n "$mem" ] || { echo "no cgroup v1 memory hierarchy here; try --vm" >&2; exit 1; }
  mkdir -p "$mem/bg-move-bench"
  "$work/cgmove" "$mem/bg-move-bench" "$runs" | sed 's/^CGMOVE //'
  rmdir "$mem/bg-move-bench"
  exit 0
fi
. tests/vm/kernel.sh
kernel=$(vm_kernel target/vm-cache)
r=$work/root; mkdir -p "$r"/{bin,proc,sys,dev}
cp /bin/busybox "$r/bin/" && for a in sh mount mkdir cat poweroff; do ln -s busybox "$r/bin/$a"; done
cp "$work/cgmove" "$r/bin/"
cat > "$r/init" <<INIT
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /sys/fs/cgroup; mkdir /sys/fs/cgroup/memory
mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory; mkdir /sys/fs/cgroup/memory/leaf
echo "CGMOVE \$(cat /proc/version)"
/bin/cgmove /sys/fs/cgroup/memory/leaf $runs
poweroff -f
INIT
chmod 755 "$r/init"
(cd "$r" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"
timeout 300 qemu-system-x86_64 -accel tcg -m 512 -smp 2 -nographic -no-reboot -kernel "$kernel" \
  -initrd "$work/initrd.gz" -append "console=ttyS0 panic=-1 quiet loglevel=1" </dev/null 2>&1 \
  | tr -d '\r' | grep -o 'CGMOVE.*' | sed 's/^CGMOVE //'
