"""The pure core stays pure: loading, validating, capacity, rendering and tracing import neither the
Docker SDK nor the CLI framework (checked in a fresh interpreter, where nothing was imported before)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = ["nginxctl.inventory", "nginxctl.render", "nginxctl.capacity", "nginxctl.trace", "nginxctl.edit",
        "nginxctl.hashring", "nginxctl.vipview",
        # the controller's pure rooms: its model, merging snapshots, the reconcile decision, damping, debouncing,
        # finding refused servers
        "nginxctl.controller.model", "nginxctl.controller.merge", "nginxctl.controller.decide",
        "nginxctl.controller.damping", "nginxctl.controller.debounce", "nginxctl.controller.isolate"]
EDGE = ["docker", "typer", "click", "requests", "prometheus_client", "etcd3gw", "watchdog"]


def test_the_core_imports_no_docker_and_no_typer() -> None:
    script = ("import importlib, json, sys\n"
              f"for name in {CORE!r}:\n"
              "    importlib.import_module(name)\n"
              f"print(json.dumps(sorted(m for m in {EDGE!r} if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_check_would_see_an_edge_import() -> None:
    """The subprocess really reports what it imported (so the test above can fail)."""
    script = "import json, sys, typer\nprint(json.dumps(sorted(m for m in ['typer'] if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["typer"]
