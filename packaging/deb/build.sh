#!/usr/bin/env bash
# Build the Debian package from this checkout with Debian's own dpkg-deb:
#   packaging/deb/build.sh [OUT_DIR]      (default: target/deb)
# Contents: /usr/bin/batchguard; /etc/batchguard (batchguard.toml and an
# example job, conffiles); /var/lib/batchguard 0700 and /var/log/batchguard
# 0750 (root); the watchdog's /etc/cron.d file; the man page; bash, zsh and
# fish completions; the reference and the JSON Schemas. Purging removes the
# state and the logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/deb}"
# PROFILE=debug packages the debug build (CI's package test: it tests the
# packaging, and spares a second full build).
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin batchguard
else
  cargo build --quiet --bin batchguard
fi
bin="$(realpath "target/$profile/batchguard")"
version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

install -D -m 0755 "$bin" "$root/usr/bin/batchguard"
install -d -m 0755 "$root/etc/batchguard/jobs"
install -m 0644 packaging/deb/batchguard.toml "$root/etc/batchguard/batchguard.toml"
install -m 0644 packaging/deb/example.toml "$root/etc/batchguard/jobs/example.toml"
install -d -m 0700 "$root/var/lib/batchguard"
install -d -m 0750 "$root/var/log/batchguard"

# The watchdog's cron.d file, rendered by batchguard itself for Debian's
# cron, naming the installed binary and config dir.
"$bin" --config-dir "$root/etc/batchguard" cron render --cron-flavor vixie \
  | awk '/^# file: batchguard-watchdog$/ {on=1; next} on' \
  | sed -e "s|$bin|/usr/bin/batchguard|g" -e "s|$root/etc/batchguard|/etc/batchguard|g" \
  > "$stage/watchdog"
grep -q ' watchdog$' "$stage/watchdog"
install -D -m 0644 "$stage/watchdog" "$root/etc/cron.d/batchguard-watchdog"

install -d -m 0755 "$root/usr/share/man/man1"
"$bin" man | gzip -9n > "$root/usr/share/man/man1/batchguard.1.gz"
chmod 0644 "$root/usr/share/man/man1/batchguard.1.gz"
install -d -m 0755 "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/batchguard"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_batchguard"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/batchguard.fish"
install -D -m 0644 docs/reference.md "$root/usr/share/doc/batchguard/reference.md"
install -D -m 0644 README.md "$root/usr/share/doc/batchguard/README.md"
gzip -9nc CHANGELOG.md > "$stage/changelog.gz"
install -m 0644 "$stage/changelog.gz" "$root/usr/share/doc/batchguard/changelog.gz"
printf 'batchguard\nLicense: Apache-2.0\n' > "$stage/copyright"
install -m 0644 "$stage/copyright" "$root/usr/share/doc/batchguard/copyright"
install -D -m 0644 schema/job.schema.json "$root/usr/share/batchguard/schema/job.schema.json"
install -m 0644 schema/batchguard.schema.json "$root/usr/share/batchguard/schema/batchguard.schema.json"

install -d -m 0755 "$root/DEBIAN"
size="$(du -sk "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: batchguard
Version: $version
Architecture: $arch
Maintainer: batchguard maintainers <batchguard@localhost>
Installed-Size: $size
Depends: libc6, cron | cron-daemon
Section: admin
Priority: optional
Description: run batch jobs supervised, locked, bounded and recorded
 One binary that runs any batch job with hard memory and time limits, a
 per-job lock with fencing tokens, a durable item ledger, failure
 notifications that carry the runbook, cron.d schedules and an audit of
 the batch guideline (batchguard check).
CONTROL
printf '/etc/batchguard/batchguard.toml\n/etc/batchguard/jobs/example.toml\n' > "$root/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst "$root/DEBIAN/postinst"
install -m 0755 packaging/deb/postrm "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/batchguard_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
