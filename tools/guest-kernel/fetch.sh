#!/usr/bin/env bash
# Puts a kernel with BPF LSM where the guard's VM test looks for it
# (crates/exfilguard-dataplane/tests/guard_vm.rs). The build host's kernel may refuse BPF LSM
# programs (this project's CI kernel does, EPERM), so the guard is tested in a QEMU guest
# booting Debian 12's stock kernel with `lsm=...,bpf`. Debian's image is just unpacked from
# its package: nothing is installed, no boot loader touched.
set -euo pipefail
dest=${1:-/var/cache/exfilguard/guest}
[ -s "$dest/vmlinuz" ] && exit 0
pick() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
pkg=$(pick)
[ -n "$pkg" ] || { apt-get update -qq && pkg=$(pick); }
[ -n "$pkg" ] || { echo "no linux-image package behind linux-image-amd64" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) \
  || (cd "$work" && chmod 777 "$work" && apt-get download "$pkg")
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/x"
mkdir -p "$dest"
cp "$work"/x/boot/vmlinuz-* "$dest/vmlinuz"
cp "$work"/x/boot/config-* "$dest/config"
echo "$pkg" > "$dest/package"
echo "guest kernel: $pkg -> $dest/vmlinuz"
