#!/usr/bin/env bash
# Build the controller image, nginxctl/nginxctl:local, where no registry can be reached: Debian's Python
# (python3.11-minimal, libpython3.11-stdlib) and the libraries it links against, taken as
# scripts/build-nginx-image.sh takes nginx's, plus a venv (/opt/nginxctl) holding the project's wheel and
# its dependencies, made by that Python in a chroot; then `docker import`. No shell in the image.
#
# Usage: scripts/build-controller-image.sh WHEEL [--force]
#   PYTHON (default python3) runs `pip wheel` for the dependencies (PyPI or the pip index configured).
# Skips the build when the image exists and was built from the same wheel: the image carries the label
# nginxctl.wheel, a hash of the wheel's contents (names and bytes; its timestamps do not count).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

IMAGE=${IMAGE:-nginxctl/nginxctl:local}
wheel=$(realpath "$1")
python=${PYTHON:-python3}
case "$python" in */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;; esac  # we cd below

digest=$("$python" - "$wheel" <<'PY'
import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(z.namelist()):
        h.update(name.encode() + b"\0" + z.read(name) + b"\0")
print(h.hexdigest()[:16])
PY
)
if [ "${2:-}" != "--force" ] \
   && [ "$(docker image inspect -f '{{index .Config.Labels "nginxctl.wheel"}}' "$IMAGE" 2>/dev/null)" = "$digest" ]; then
  echo "image $IMAGE is built from this wheel ($digest; use --force to rebuild)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt-get download runs as _apt when it can; let it write here.
chmod 0777 "$work"
cd "$work"

"$python" -m pip wheel -q --wheel-dir "$work/wheels" "$wheel"
apt-get download python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-pip-whl >/dev/null

root="$work/rootfs"
mkdir -p "$root"
for deb in ./*.deb; do
  dpkg-deb -x "$deb" "$root"
done
ln -s python3.11 "$root/usr/bin/python3"

# The shared libraries Python and its extension modules link against, from this (Debian) machine: the
# release the packages were built for. A module whose library this machine lacks is left unusable.
copy_libs "$root" "$root/usr/bin/python3.11"
for module in "$root"/usr/lib/python3.11/lib-dynload/*.so; do
  copy_libs "$root" "$module"
done

mkdir -p "$root/etc" "$root/tmp" "$root/dev" "$root/root"
base_etc "$root"

# The venv, made and filled by the image's own Python (pip run from Debian's pip wheel), offline.
cp -r "$work/wheels" "$root/tmp/wheels"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 444 "$root/dev/urandom" c 1 9
pip_wheel=$(cd "$root" && echo usr/share/python-wheels/pip-*.whl)
in_root() { env -i HOME=/root PATH=/usr/bin:/bin "$(command -v chroot)" "$root" "$@"; }
in_root /usr/bin/python3.11 -m venv --without-pip /opt/nginxctl
in_root /opt/nginxctl/bin/python "/$pip_wheel/pip" install -q --no-index --no-cache-dir \
  --disable-pip-version-check --find-links /tmp/wheels "/tmp/wheels/$(basename "$wheel")"
# The dependencies' own compiled modules (manylinux wheels) need libraries of this machine too.
while read -r module; do
  copy_libs "$root" "$module"
done < <(find "$root/opt/nginxctl" -name '*.so')
# Debian compiles the standard library at install time; so do we (the root file system is read-only at run).
in_root /usr/bin/python3.11 -m compileall -q /usr/lib/python3.11 >/dev/null || true
in_root /opt/nginxctl/bin/python -W error -c 'import nginxctl.cli, nginxctl.controller.loop, requests'
in_root /opt/nginxctl/bin/nginxctl --version >/dev/null
rm -rf "$root/tmp/wheels" "$root/dev/null" "$root/dev/urandom" "$root/usr/share/python-wheels" \
       "$root/usr/share/doc" "$root/usr/share/man" "$root/root/.cache"

tar -C "$root" -c . | docker import \
  --change "LABEL nginxctl.wheel=$digest" \
  --change 'ENV PATH=/opt/nginxctl/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1' \
  --change 'ENTRYPOINT ["/opt/nginxctl/bin/nginxctl"]' \
  --change 'CMD ["--help"]' \
  --message "nginxctl from its wheel on Debian's Python, built by scripts/build-controller-image.sh" \
  - "$IMAGE" >/dev/null
echo "built $IMAGE ($digest)"
