#!/usr/bin/env bash
# The Debian package, for real: build it, install it with dpkg, check the
# files, owners and modes, run the example job as root through the installed
# binary with the default config dir and state store, then purge it and
# check nothing is left. Needs root and a host where /etc/batchguard and
# /var/lib/batchguard are not in use (CI's fresh machine; refuses otherwise).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "package test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root"
if dpkg -s batchguard >/dev/null 2>&1 || [ -e /etc/batchguard ] || [ -e /var/lib/batchguard ]; then
  fail "batchguard is already installed or configured on this host; not touching it"
fi
deb="$(packaging/deb/build.sh target/deb)"
echo "package test: built $deb ($(du -h "$deb" | cut -f1))"
[ "$(dpkg-deb --field "$deb" Package)" = batchguard ] || fail "no control"
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge batchguard >/dev/null 2>&1 || true' EXIT

mode() { stat -c '%a %U' "$1"; }
[ "$(mode /usr/bin/batchguard)" = "755 root" ] || fail "binary $(mode /usr/bin/batchguard)"
[ "$(mode /var/lib/batchguard)" = "700 root" ] || fail "/var/lib/batchguard $(mode /var/lib/batchguard)"
[ "$(stat -c %a /var/log/batchguard)" = 750 ] || fail "/var/log/batchguard $(mode /var/log/batchguard)"
[ -f /etc/batchguard/jobs/example.toml ] || fail "no example job"
grep -q '/usr/bin/batchguard --config-dir /etc/batchguard watchdog$' /etc/cron.d/batchguard-watchdog \
  || fail "watchdog cron line: $(cat /etc/cron.d/batchguard-watchdog)"
[ "$(stat -c %a /etc/cron.d/batchguard-watchdog)" = 644 ] || fail "cron.d mode"
[ "$(zcat /usr/share/man/man1/batchguard.1.gz | grep -c '^\.TH batchguard 1')" = 1 ] || fail "man page"
grep -q 'complete -F' /usr/share/bash-completion/completions/batchguard || fail "bash completion"
[ -s /usr/share/zsh/vendor-completions/_batchguard ] || fail "zsh completion"
[ -s /usr/share/fish/vendor_completions.d/batchguard.fish ] || fail "fish completion"
[ -s /usr/share/doc/batchguard/reference.md ] || fail "reference"
[ -s /usr/share/batchguard/schema/job.schema.json ] || fail "schema"

# A real job through the installed binary, defaults everywhere.
env -u BATCHGUARD_STATE -u BATCHGUARD_CONFIG_DIR batchguard validate >/dev/null
env -u BATCHGUARD_STATE -u BATCHGUARD_CONFIG_DIR batchguard run example
out="$(env -u BATCHGUARD_STATE -u BATCHGUARD_CONFIG_DIR batchguard runs example --format json)"
case "$out" in *'"outcome": "success"'*) ;; *) fail "run not recorded: $out" ;; esac
[ "$(stat -c %a /var/lib/batchguard/state.db)" = 600 ] || fail "state.db mode"
log="$(echo "$out" | sed -n 's/.*"log_path": "\(.*\)".*/\1/p' | head -n1)"
grep -q 'batchguard example ran as root' "$log" || fail "log $log"
[ "$(stat -c %a "$log")" = 640 ] || fail "log mode"

# Remove keeps the conffiles and the state; purge removes everything.
dpkg -r batchguard >/dev/null
[ ! -e /usr/bin/batchguard ] || fail "binary left after remove"
[ -f /etc/batchguard/batchguard.toml ] || fail "conffile removed by remove"
dpkg --purge batchguard >/dev/null
for p in /usr/bin/batchguard /etc/batchguard /var/lib/batchguard /var/log/batchguard \
  /etc/cron.d/batchguard-watchdog /usr/share/man/man1/batchguard.1.gz; do
  [ ! -e "$p" ] || fail "$p left after purge"
done
trap - EXIT
echo "package test: installed, ran the example job, removed and purged cleanly"
