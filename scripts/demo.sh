#!/usr/bin/env bash
# The demo: bring up nginx + two echo servers (compose/), apply the shipped inventory with
# `nginxctl apply --reload`, and show connections alternating between the two backends.
# Stop it with: docker-compose -f compose/docker-compose.yml -p nginxctl-demo down -v
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
echo "== compose stack: nginxctl-demo-lb, nginxctl-demo-echo-a (:9001), nginxctl-demo-echo-b (:9002)"
compose -f compose/docker-compose.yml -p nginxctl-demo up -d
echo "== nginxctl apply --reload"
.venv/bin/nginxctl apply -i inventory.yaml --reload
echo "== status"
.venv/bin/nginxctl status -i inventory.yaml
echo "== 6 connections to 127.0.0.1:8000 (group 'echo')"
.venv/bin/python - <<'PY'
import socket
for i in range(1, 7):
    with socket.create_connection(("127.0.0.1", 8000), timeout=5) as s:
        print(f"connection {i} -> {s.makefile().readline().strip()}")
PY
echo "== stop: docker-compose -f compose/docker-compose.yml -p nginxctl-demo down -v"
