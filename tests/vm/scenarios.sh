#!/bin/sh
# Runs INSIDE the test VM (busybox sh, cgroup v2 at /sys/fs/cgroup, no
# systemd): the batchguard binary's scenarios for cgroup v2, then the
# supervise crate's own test binaries when they were packed. Every check
# prints `VMTEST PASS name` or `VMTEST FAIL name: why` on the console;
# tests/vm/run.sh asserts them.

BG="/bin/batchguard --config-dir /etc/bg --state sqlite:/tmp/state.db"
CG=/sys/fs/cgroup

pass() { echo "VMTEST PASS $1"; }
fail() { echo "VMTEST FAIL $1: $2"; }
check() { # name, condition (a shell test), why
  if eval "$2"; then pass "$1"; else fail "$1" "$3"; fi
}
# The newest run of JOB as JSON (one object).
last_run() { $BG runs "$1" --limit 1 --format json 2>/dev/null | tr -d '\n'; }
# Value of "key" in the JSON object on stdin: a string, a number or null.
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p"; }
job() { # name, toml body
  printf '%s\n' "$2" > "/etc/bg/jobs/$1.toml"
}
# Run JOB; sets $rc, $r (its run record) and $outcome, $enforcement.
run_job() {
  $BG run "$1" > "/tmp/$1.out" 2>&1
  rc=$?
  r=$(last_run "$1")
  outcome=$(echo "$r" | field outcome)
  enforcement=$(echo "$r" | field memory_enforcement)
  echo "VMTEST INFO $1 rc=$rc $r"
}

mkdir -p /etc/bg/jobs /var/log/bg /srv
printf 'log_dir = "/var/log/bg"\n' > /etc/bg/batchguard.toml
echo "VMTEST INFO kernel $(uname -r)"
echo "VMTEST INFO controllers $(cat $CG/cgroup.controllers)"
echo "VMTEST INFO features $(cat /sys/kernel/cgroup/features 2>/dev/null | tr '\n' ' ')"

# dd filling a 200 MB buffer: far above a 64 MiB limit.
HOG='["sh", "-c", "dd if=/dev/zero of=/dev/null bs=200000000 count=1; echo survived"]'

# 1. memory_max on cgroup v2: oom, enforcement cgroup2, a peak.
job hog "command = $HOG
memory_max = \"64MiB\"
timeout = \"120s\""
run_job hog
check oom-exit "[ $rc = 137 ]" "exit $rc, want 137"
check oom-outcome "[ x$outcome = xoom ]" "outcome $outcome"
check oom-cgroup2 "[ x$enforcement = xcgroup2 ]" "memory_enforcement $enforcement"
peak=$(echo "$r" | field peak_memory_bytes)
check oom-peak "[ -n \"$peak\" ] && [ \"$peak\" != null ] && [ \"$peak\" -gt 33554432 ] && [ \"$peak\" -le 71303168 ]" "peak_memory_bytes $peak"

# 2. timeout reaches a setsid grandchild; nothing is left.
job sleeper 'command = ["sh", "-c", "setsid sh -c '\''echo $$ > /tmp/gc.pid; exec sleep 301'\'' & sleep 302"]
timeout = "2s"
kill_grace = "1s"
memory_max = "256MiB"'
rm -f /tmp/gc.pid
run_job sleeper
check timeout-exit "[ $rc = 124 ]" "exit $rc, want 124"
check timeout-outcome "[ x$outcome = xtimeout ]" "outcome $outcome"
gc=$(cat /tmp/gc.pid 2>/dev/null)
check timeout-grandchild-gone "[ -n \"$gc\" ] && ! kill -0 $gc 2>/dev/null" "grandchild ${gc:-?} alive or never started"
check timeout-nothing-left "! ps -o pid,args | grep -q '[s]leep 30[12]'" "left: $(ps -o pid,args | grep '[s]leep 30[12]')"

# 3. forbid: 10 simultaneous starts, exactly 1 runs, 9 skipped (75).
job once 'command = ["sleep", "4"]
concurrency = "forbid"
memory_max = "64MiB"'
i=0
while [ $i -lt 10 ]; do
  ( $BG run once > /tmp/once.$i.out 2>&1; echo $? > /tmp/once.$i.rc ) &
  i=$((i + 1))
done
wait
ok=0; skipped=0; other=""
for f in /tmp/once.*.rc; do
  case $(cat "$f") in
    0) ok=$((ok + 1)) ;;
    75) skipped=$((skipped + 1)) ;;
    *) other="$other $(cat "$f")" ;;
  esac
done
echo "VMTEST INFO forbid ok=$ok skipped=$skipped other=[$other]"
check forbid-one-runs "[ $ok = 1 ] && [ $skipped = 9 ] && [ -z \"$other\" ]" "ran $ok, skipped $skipped, other [$other]"
nskip=$($BG runs once --limit 20 --format json | grep -o '"outcome": *"skipped"' | wc -l)
check forbid-recorded "[ $nskip = 9 ]" "$nskip runs recorded skipped"

# 4. user = "nobody" is still enforced by cgroup v2.
job hognobody "command = $HOG
user = \"nobody\"
workdir = \"/srv\"
memory_max = \"64MiB\"
timeout = \"120s\""
run_job hognobody
check nobody-oom "[ $rc = 137 ] && [ x$outcome = xoom ]" "exit $rc, outcome $outcome: $(tail -n 3 /tmp/hognobody.out)"
check nobody-cgroup2 "[ x$enforcement = xcgroup2 ]" "memory_enforcement $enforcement"

# 5. no run cgroup is left behind.
left=$(find $CG/batchguard -mindepth 1 -type d 2>/dev/null)
check no-cgroups-left "[ -d $CG/batchguard ] && [ -z \"$left\" ]" "left: ${left:-no $CG/batchguard at all}"

# 6. a delegated subtree (systemd Delegate=yes, here by hand): a runner that
# may not touch the root's cgroup.subtree_control (not root) creates its run
# cgroups below its own cgroup, after moving the unit's processes into a leaf.
mkdir -p $CG/unit /etc/bgd/jobs /srv/deleg/log
chown -R nobody:nogroup $CG/unit /srv/deleg
printf 'log_dir = "/srv/deleg/log"\n' > /etc/bgd/batchguard.toml
cp /etc/bg/jobs/hog.toml /etc/bgd/jobs/hog.toml
sh -c "echo \$\$ > $CG/unit/cgroup.procs; exec su -p -s /bin/sh nobody -c \
  '/bin/batchguard --config-dir /etc/bgd --state sqlite:/srv/deleg/state.db run hog'" > /tmp/deleg.out 2>&1
rc=$?
r=$(su -p -s /bin/sh nobody -c '/bin/batchguard --config-dir /etc/bgd --state sqlite:/srv/deleg/state.db runs hog --limit 1 --format json' | tr -d '\n')
echo "VMTEST INFO delegated rc=$rc $r"
check delegated-oom "[ $rc = 137 ] && [ \"$(echo "$r" | field outcome)\" = oom ]" "exit $rc, outcome $(echo "$r" | field outcome): $(tail -n 5 /tmp/deleg.out)"
check delegated-cgroup2 "[ \"$(echo "$r" | field memory_enforcement)\" = cgroup2 ]" "memory_enforcement $(echo "$r" | field memory_enforcement)"
left=$(find $CG/unit/batchguard -mindepth 1 -type d 2>/dev/null)
check delegated-below-own "[ -d $CG/unit/batchguard ] && [ -d $CG/unit/supervisor ] && [ -z \"$left\" ] && [ ! -d $CG/batchguard/hog ]" "unit: $(ls $CG/unit | tr '\n' ' '), left: $left"

# 7. no delegation: a non-root runner in the root cgroup may create no
# cgroup at all; memory is enforced by polling and recorded as such.
mkdir -p /srv/nodeleg/log
chown nobody:nogroup /srv/nodeleg /srv/nodeleg/log
mkdir -p /etc/bgp/jobs
printf 'log_dir = "/srv/nodeleg/log"\n' > /etc/bgp/batchguard.toml
cp /etc/bg/jobs/hog.toml /etc/bgp/jobs/hog.toml
BGP='/bin/batchguard --config-dir /etc/bgp --state sqlite:/srv/nodeleg/state.db'
su -p -s /bin/sh nobody -c "$BGP run hog" > /tmp/nodeleg.out 2>&1
rc=$?
r=$(su -p -s /bin/sh nobody -c "$BGP runs hog --limit 1 --format json" | tr -d '\n')
echo "VMTEST INFO nodelegation rc=$rc $r"
check nodelegation-poll "[ \"$(echo "$r" | field memory_enforcement)\" = poll ] && [ \"$(echo "$r" | field outcome)\" = oom ]" "exit $rc, $(echo "$r" | field memory_enforcement) $(echo "$r" | field outcome): $(tail -n 3 /tmp/nodeleg.out)"

# 6. the supervise crate's test binaries, on cgroup v2.
for t in /tests/*; do
  [ -x "$t" ] || continue
  name=$(basename "$t" | sed 's/-[0-9a-f]*$//')
  ( cd /tmp && "$t" --test-threads=1 > "/tmp/$name.test.log" 2>&1 )
  rc=$?
  grep -E '^test .*(ok|FAILED|ignored)$|^test result' "/tmp/$name.test.log" | sed "s/^/VMTEST LOG $name: /"
  if [ $rc = 0 ]; then pass "crate-tests-$name"; else
    fail "crate-tests-$name" "exit $rc"
    sed -n '/^failures:/,$p' "/tmp/$name.test.log" | head -n 60 | sed "s/^/VMTEST LOG $name: /"
  fi
done
# What a per-item child costs here (clone3 into the group vs. no cgroup).
for t in /tests/group-*; do
  [ -x "$t" ] && (cd /tmp && "$t" spawn_cost --nocapture 2>&1 | grep 'spawn+wait' | sed 's/^/VMTEST INFO /')
done
# Per-run overhead on cgroup v2 beside flock+timeout (INFO, not a check:
# software emulation, read the ratio only; docs/performance.md).
up() { cut -d' ' -f1 /proc/uptime; }
per_run_ms() { # runs, command...
  n=$1; shift
  t0=$(up); i=0
  while [ $i -lt "$n" ]; do "$@" > /dev/null 2>&1; i=$((i + 1)); done
  awk -v a="$t0" -v b="$(up)" -v n="$n" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }'
}
bare=$(per_run_ms 20 /bin/true)
pair=$(per_run_ms 20 flock -n /tmp/tick.lock timeout 60 /bin/true)
bg=$(per_run_ms 20 $BG exec --name tick -- /bin/true)
BATCHGUARD_LOG=debug $BG exec --name tick -- /bin/true 2>&1 | sed 's/^/VMTEST INFO phase /'
echo "VMTEST INFO overhead ($(/bin/batchguard --version)) $(awk -v b="$bare" -v p="$pair" -v g="$bg" 'BEGIN { printf "bare %.1f ms, flock+timeout %.1f ms, batchguard exec %.1f ms: batchguard adds %.2fx what the pair adds", b, p, g, (g - b) / (p - b) }')"
# The floor of a recorded run (release builds only), its cgroups beside
# batchguard's (the base batchguard set up, memory enabled for children).
if [ -x /bin/run_floor ] && [ -d /sys/fs/cgroup/batchguard ]; then
  floor=$(per_run_ms 20 /bin/run_floor /tmp/floor.db /tmp/floor-log tick --cgroup /sys/fs/cgroup/batchguard -- /bin/true)
  echo "VMTEST INFO floor $(awk -v b="$bare" -v p="$pair" -v f="$floor" -v g="$bg" 'BEGIN { printf "run_floor (cgroup v2) %.1f ms: the floor adds %.2fx what the pair adds; batchguard adds %.2fx what the floor adds", f, (f - b) / (p - b), (g - b) / (f - b) }')"
fi
echo "VMTEST DONE"
