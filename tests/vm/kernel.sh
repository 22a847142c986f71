# Sourced by tests/vm/run.sh and bench/cgroup_v1_move.sh: `vm_kernel CACHE`
# prints the path of Debian's cloud kernel, downloaded once into
# CACHE/k/ (apt-get download + dpkg-deb -x) and reused after that.
vm_kernel() {
  local cache=$1 kernel pkg
  kernel=$(ls "$cache"/k/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$kernel" ]; then
    pkg=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64-unsigned$' \
          | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$pkg" ] || { echo "vm: no linux-image-*-cloud-amd64-unsigned package (apt-get update?)" >&2; return 1; }
    echo "vm: downloading $pkg" >&2
    mkdir -p "$cache"
    (cd "$cache" && rm -f ./*.deb && apt-get download "$pkg" 2>&1 | tail -n1 >&2 && dpkg-deb -x ./*.deb k && rm -f ./*.deb)
    kernel=$(ls "$cache"/k/boot/vmlinuz-* | sort -V | tail -n1)
  fi
  echo "$kernel"
}
