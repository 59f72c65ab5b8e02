#!/usr/bin/env bash
# The demo: bring up nginx + two echo servers (compose/), apply the shipped inventory with
# `nginxctl apply --reload`, and show connections alternating between the two backends; then start the
# controller (`nginxctl watch` in its container, the compose service `controller`), start a third echo
# server labelled nginxctl.group=echo, and show it join.
# Stop it with: docker-compose -f compose/docker-compose.yml -p nginxctl-demo down -v
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
connections() {
  .venv/bin/python - "$1" <<'PY'
import socket, sys
for i in range(1, int(sys.argv[1]) + 1):
    with socket.create_connection(("127.0.0.1", 8000), timeout=5) as s:
        print(f"connection {i} -> {s.makefile().readline().strip()}")
PY
}
echo "== compose stack: nginxctl-demo-lb, nginxctl-demo-echo-a (:9001), nginxctl-demo-echo-b (:9002)"
compose -f compose/docker-compose.yml -p nginxctl-demo up -d lb echo-a echo-b
echo "== nginxctl apply --reload"
.venv/bin/nginxctl apply -i inventory.yaml --reload
echo "== status"
.venv/bin/nginxctl status -i inventory.yaml
echo "== 6 connections to 127.0.0.1:8000 (group 'echo')"
connections 6

echo "== the controller, nginxctl watch, in its container (nginxctl-demo-controller; metrics on 127.0.0.1:9145)"
compose -f compose/docker-compose.yml -p nginxctl-demo up -d controller
logged() { docker logs nginxctl-demo-controller 2>&1 | grep -qE "$1"; }
for _ in $(seq 1 100); do logged '"event": "(reload|in-sync)"' && break; sleep 0.1; done
echo "== start nginxctl-demo-echo-c, labelled nginxctl.group=echo nginxctl.port=9003"
compose -f compose/docker-compose.yml -p nginxctl-demo up -d echo-c
for _ in $(seq 1 100); do logged '"added": \["echo/127.0.0.1:9003"\]' && break; sleep 0.1; done
docker logs nginxctl-demo-controller 2>&1
echo "== the controller's metrics"
.venv/bin/python -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9145/metrics").read().decode())' \
  | grep -E '^nginxctl_(reloads_total|servers|pending_changes)'
echo "== 6 connections to 127.0.0.1:8000: echo-c has joined"
connections 6
echo "== stop: docker-compose -f compose/docker-compose.yml -p nginxctl-demo down -v"
