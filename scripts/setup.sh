#!/usr/bin/env bash
# Set up a fresh Debian machine for nginxctl: Docker engine, the nginx image, a venv with nginxctl, the
# controller image (nginxctl/nginxctl:local), and the tools the tests run (etcd, Prometheus, systemd-analyze).
# Idempotent. Writes the PID of a dockerd it started to .dockerd.pid (scripts/test.sh stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1 \
   || ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  echo "== installing Docker (docker.io, docker-compose) and etcd (etcd-server: the tests' real etcd)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose etcd-server etcd-client >/dev/null
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 \
   || ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "== installing Prometheus (promtool tests of the alert rules, the real-Prometheus check) and systemd"
  echo "   (systemd-analyze verify of the unit); nothing is started"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus systemd >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd (no bridge, no iptables: containers use host networking or none)"
  nohup dockerd --bridge=none --iptables=false >/tmp/nginxctl-dockerd.log 2>&1 &
  echo $! >.dockerd.pid
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/nginxctl-dockerd.log"; exit 1; }
fi

echo "== nginx image"
bash scripts/build-nginx-image.sh

echo "== keepalived image (ha:, from Debian's keepalived package)"
bash scripts/build-keepalived-image.sh

echo "== nginxctl in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# A regular (non-editable) install of the wheel: proves the templates ship inside it.
rm -rf dist
.venv/bin/python -m pip wheel -q --no-deps --wheel-dir dist . >/dev/null
.venv/bin/python -m pip install -q --force-reinstall --no-deps dist/nginxctl-*.whl >/dev/null
.venv/bin/python -m pip install -q ".[test]" >/dev/null
.venv/bin/nginxctl --version
(cd / && "$OLDPWD/.venv/bin/nginxctl" render -i "$OLDPWD/inventory.yaml" --full >/dev/null) \
  || { echo "the installed package cannot render: are the templates in the wheel?"; exit 1; }

echo "== controller image (the same wheel)"
PYTHON=.venv/bin/python bash scripts/build-controller-image.sh dist/nginxctl-*.whl
