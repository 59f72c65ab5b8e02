#!/usr/bin/env bash
# Build the keepalived image nginxctl runs beside each target's nginx when the inventory has `ha:`, from
# Debian's own packages, with `docker import` (no registry, no Dockerfile base), the way
# scripts/build-nginx-image.sh builds nginx.
#
#   nginxctl/keepalived:local   keepalived (VRRP; the kernel needs no IP_VS for it) + the libraries it links
#                               + busybox (static): the health check nginxctl renders runs
#                               `busybox sh -c '... nc 127.0.0.1 PORT | grep ...'` (keepalived runs scripts
#                               without a shell of its own).
#
# Usage: scripts/build-keepalived-image.sh [--force]
# Skips the build when the tag exists, unless --force.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

IMAGE=${IMAGE:-nginxctl/keepalived:local}
if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE exists (use --force to rebuild)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chmod 0777 "$work"  # apt-get download runs as _apt when it can

# keepalived, and the packages of the libraries it links that a minimal Debian host may lack (its SNMP
# support pulls net-snmp, which pulls perl's library); the rest is copied from this (same-release) host.
packages="keepalived libnl-3-200 libnl-genl-3-200 libsnmp40 libpci3 libperl5.36 libsensors5 libwrap0
          busybox-static"
# shellcheck disable=SC2086
apt-get download $packages >/dev/null

root="$work/rootfs"
mkdir -p "$root"
for deb in *.deb; do
  dpkg-deb -x "$deb" "$root"
done
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/etc/init.d" "$root/etc/default" \
       "$root/lib/systemd" "$root/usr/lib/systemd" "$root/usr/share/perl" "$root/usr/share/locale"

# Libraries the binary needs, resolved against the extracted packages first, then this host.
libpath="$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu"
missing=$(LD_LIBRARY_PATH=$libpath ldd "$root/usr/sbin/keepalived" | awk '/not found/{print $1}')
if [ -n "$missing" ]; then
  echo "keepalived needs libraries no package above provides: $missing" >&2
  exit 1
fi
copy_libs "$root" "$root/usr/sbin/keepalived"
# The packages' own libraries were found under $root by path; the loader must find them there too.
mkdir -p "$root/etc"
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$root/etc/ld.so.conf"

mkdir -p "$root/bin" "$root/run" "$root/tmp" "$root/etc/keepalived" "$root/var/run"
base_etc "$root"

# --dont-fork --log-console: one process tree in the foreground, its log on stderr (docker logs).
tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/sbin/keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp"]' \
  --change 'CMD ["--use-file", "/etc/keepalived/keepalived.conf"]' \
  --message "keepalived from Debian packages, built by nginxctl" - "$IMAGE" >/dev/null
echo "built $IMAGE"
