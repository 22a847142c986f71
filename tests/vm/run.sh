#!/usr/bin/env bash
# Boot a small Linux VM with cgroup v2 (qemu, TCG) and run batchguard's
# cgroup v2 scenarios and the supervise crate's tests inside it.
#
#   bash tests/vm/run.sh            # build, pack, boot, assert
#
# Needs qemu-system-x86 and busybox-static (installed when missing, as
# root). The kernel (Debian's cloud kernel) is downloaded once and cached
# in target/vm-cache/. Exits non-zero on any FAIL, a missing result or a
# timeout, and then prints the console log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=$ROOT/target/vm-cache
VM_TIMEOUT=${VM_TIMEOUT:-600}
mkdir -p "$CACHE"

log() { echo "vm: $*" >&2; }

# --- tools -----------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || true
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}"
fi
BUSYBOX=/bin/busybox
file_static() { ! ldd "$1" >/dev/null 2>&1; }
file_static "$BUSYBOX" || { log "$BUSYBOX is not static (need busybox-static)"; exit 1; }

# --- kernel (cached) -----------------------------------------------------------
. tests/vm/kernel.sh
kernel=$(vm_kernel "$CACHE")
log "kernel $kernel"

# --- binaries ------------------------------------------------------------------
# VM_PROFILE=release measures the overhead with the binary users run
# (bench: VM_PROFILE=release bash tests/vm/run.sh); CI checks the debug one.
profile="${VM_PROFILE:-debug}"
log "building ($profile)"
# The release build brings the per-run floor too (bench/run_floor.rs).
if [ "$profile" = release ]; then cargo build -q --release --bin batchguard --example run_floor; else cargo build -q --bin batchguard; fi
mapfile -t tests < <(cargo test -q -p batchguard-supervise --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | grep -v '/throughput-' || true)
[ -n "${SKIP_CRATE_TESTS:-}" ] && tests=()

# --- initramfs -----------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r=$work/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,srv,tests,var,run,lib64}
cp "$BUSYBOX" "$r/bin/busybox"
for app in $("$BUSYBOX" --list-full); do
  [ -e "$r/$app" ] || ln -s /bin/busybox "$r/$app"
done
pack_bin() { # src dest: copy stripped, with the shared libraries ldd lists
  strip --strip-debug -o "$r/$2" "$1"
  ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$r$lib" ] || cp -L --parents "$lib" "$r"
  done
}
pack_bin "$ROOT/target/$profile/batchguard" bin/batchguard
[ "$profile" = release ] && pack_bin "$ROOT/target/release/examples/run_floor" bin/run_floor
# util-linux flock, for the overhead beside flock+timeout (busybox has timeout).
[ -e "$r/usr/bin/flock" ] || pack_bin "$(command -v flock)" usr/bin/flock
for t in "${tests[@]}"; do pack_bin "$t" "tests/$(basename "$t")"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
cp tests/vm/init.sh "$r/init" && chmod 755 "$r/init"
cp tests/vm/scenarios.sh "$r/scenarios.sh"
(cd "$r" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"
log "initramfs $(du -h "$work/initrd.gz" | cut -f1), ${#tests[@]} crate test binaries"

# --- boot ----------------------------------------------------------------------
console=$CACHE/console.log
log "booting (TCG, timeout ${VM_TIMEOUT}s); console: $console"
t0=$(date +%s)
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=1" </dev/null >"$console" 2>&1
qrc=$?
set -e
t1=$(date +%s)
tr -d '\r' < "$console" > "$console.txt"

# --- verdict -------------------------------------------------------------------
grep -E '^VMTEST (INFO|PASS|FAIL|TIME)' "$console.txt" || true
expected=(oom-exit oom-outcome oom-cgroup2 oom-peak timeout-exit timeout-outcome
  timeout-grandchild-gone timeout-nothing-left forbid-one-runs forbid-recorded
  nobody-oom nobody-cgroup2 no-cgroups-left delegated-oom delegated-cgroup2
  delegated-below-own nodelegation-poll)
for t in "${tests[@]}"; do expected+=("crate-tests-$(basename "$t" | sed 's/-[0-9a-f]*$//')"); done
bad=0
[ $qrc -eq 124 ] && { log "TIMEOUT after ${VM_TIMEOUT}s"; bad=1; }
grep -q '^VMTEST DONE' "$console.txt" || { log "the scenarios did not finish"; bad=1; }
grep -q '^VMTEST FAIL' "$console.txt" && bad=1
for e in "${expected[@]}"; do
  grep -q "^VMTEST PASS $e\$" "$console.txt" || { log "no PASS for $e"; bad=1; }
done
log "qemu exit $qrc, wall time $((t1 - t0))s"
if [ $bad -ne 0 ]; then
  log "FAILED; console log:"
  cat "$console.txt"
  exit 1
fi
log "all ${#expected[@]} checks passed"
