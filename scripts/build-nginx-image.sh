#!/usr/bin/env bash
# Build the nginx images nginxctl uses where no registry can be reached, from
# Debian's own packages, with `docker import` (no registry, no Dockerfile base).
#
#   nginxctl/nginx:bare    nginx + the stream module + the libraries they need.
#                          No shell, no coreutils: nginxctl must work with this.
#   nginxctl/nginx:latest  the same plus busybox, for the demo's echo servers.
#
# Usage: scripts/build-nginx-image.sh [--force]
# Skips the build when both tags exist, unless --force.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

REPO=${REPO:-nginxctl/nginx}
if [ "${1:-}" != "--force" ] \
   && docker image inspect "$REPO:bare" >/dev/null 2>&1 \
   && docker image inspect "$REPO:latest" >/dev/null 2>&1; then
  echo "images $REPO:bare and $REPO:latest exist (use --force to rebuild)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# apt-get download runs as _apt when it can; let it write here.
chmod 0777 "$work"
apt-get download nginx nginx-common libnginx-mod-stream busybox-static >/dev/null

root="$work/rootfs"
mkdir -p "$root"
for deb in nginx_*.deb nginx-common_*.deb libnginx-mod-stream_*.deb; do
  dpkg-deb -x "$deb" "$root"
done
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/etc/init.d" \
       "$root/etc/logrotate.d" "$root/etc/ufw" "$root/etc/default"

# The shared libraries nginx and the module link against, taken from this
# (Debian) machine: the same release the packages were built for.
copy_libs "$root" "$root/usr/sbin/nginx"
copy_libs "$root" "$root/usr/lib/nginx/modules/ngx_stream_module.so"

mkdir -p "$root/etc" "$root/run" "$root/tmp" "$root/var/log/nginx" \
         "$root/var/lib/nginx" "$root/etc/nginx/modules-enabled"
base_etc "$root" "www-data:x:33:33:www-data:/var/www:/sbin/nologin" "www-data:x:33:"
# A bootstrap config: nothing listens until nginxctl applies an inventory.
cat >"$root/etc/nginx/nginx.conf" <<'EOF'
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
error_log stderr notice;
pid /run/nginx.pid;
events {
    worker_connections 1024;
}
stream {
}
EOF

import() {
  tar -C "$1" -c . | docker import \
    --change 'CMD ["/usr/sbin/nginx", "-g", "daemon off;"]' \
    --message "nginx from Debian packages, built by nginxctl" - "$2" >/dev/null
  echo "built $2"
}
import "$root" "$REPO:bare"

mkdir -p "$root/bin"
dpkg-deb -x busybox-static_*.deb "$work/bb"
cp "$work/bb/bin/busybox" "$root/bin/busybox"
import "$root" "$REPO:latest"
