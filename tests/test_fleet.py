"""A fleet of load balancers (`targets:`): tested everywhere first, changed one at a time (the first is the
canary), every changed one put back when one fails; per-target status, diff, history; unreachable targets
found before anything changes. Real nginx containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from nginxctl.history import sha
from nginxctl.nginx import LiveNginx

from helpers import cli, free_port, wait_for, who

pytestmark = pytest.mark.integration


def fleet(lb: Any, lb2: Any, groups: dict[str, Any], **extra: Any) -> Path:
    lb.inventory.write_text(yaml.safe_dump({
        "nginx": {"worker_processes": 1},
        "targets": [{"name": "lb1", "container": lb.name}, {"name": "lb2", "container": lb2.name},
                    *extra.pop("more", [])],
        "upstreams": groups, **extra}, sort_keys=False))
    return lb.inventory


def deployed(client: Any, name: str) -> bytes | None:
    return LiveNginx.attach(client, name).read_file("/etc/nginx/nginx.conf")


def test_a_two_target_fleet_converges_and_reports_each(lb, isolated, backends, docker_client):
    a = backends("A")
    lb2 = isolated()
    port = free_port()
    inv = fleet(lb, lb2, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    assert "lb1: applied and reloaded" in result.stdout and "lb2: applied and reloaded" in result.stdout
    assert result.stderr.index("lb1: applying (the canary)") < result.stderr.index("lb2: applying")
    assert who(port) == "A"
    status = json.loads(cli("status", "-i", str(inv), "--format", "json").stdout)
    assert [(t["name"], t["drift"], t["reload_pending"]) for t in status["targets"]] == \
        [("lb1", False, False), ("lb2", False, False)]
    assert cli("diff", "-i", str(inv)).returncode == 0
    history = json.loads(cli("history", "-i", str(inv), "--format", "json").stdout)
    assert [t["name"] for t in history["targets"]] == ["lb1", "lb2"]
    assert all(sum(r["current"] for r in t["entries"]) == 1 for t in history["targets"])
    only = cli("status", "-i", str(inv), "--targets", "lb2", "--format", "json")
    assert [t["name"] for t in json.loads(only.stdout)["targets"]] == ["lb2"]
    unknown = cli("status", "-i", str(inv), "--targets", "lb9")
    assert unknown.returncode == 2 and "no target lb9 in the inventory (targets: lb1, lb2)" in unknown.stderr


def hold_port_in(container: Any, port: int) -> subprocess.Popen[str]:
    """A process of ours holding 127.0.0.1:port inside the container's network namespace."""
    pid = container.attrs["State"]["Pid"]
    proc = subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-c",
                             "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
                             "s.listen(); print('held', flush=True); sys.stdin.read()", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_failure_on_the_second_target_puts_the_first_back_verified(lb, isolated, backends, docker_client):
    a = backends("A")
    lb2 = isolated()
    lb2.reload()
    port = free_port()
    groups: dict[str, Any] = {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}
    inv = fleet(lb, lb2, groups)
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    before1, before2 = deployed(docker_client, lb.name), deployed(docker_client, lb2.name)
    clash = free_port()
    holder = hold_port_in(lb2, clash)  # lb2's reload will fail to bind it; nginx -t does not notice
    try:
        groups["clash"] = {"listen": f"127.0.0.1:{clash}", "servers": [a.address]}
        fleet(lb, lb2, groups)
        result = cli("apply", "-i", str(inv), "--reload")
        assert result.returncode == 4, result.stderr
        assert "fleet rollout stopped at lb2" in result.stderr
        assert "put back to their previous config, verified: lb1" in result.stderr
        assert deployed(docker_client, lb.name) == before1 and deployed(docker_client, lb2.name) == before2
        status = json.loads(cli("status", "-i", str(inv), "--format", "json").stdout)
        loaded = {t["name"]: t["loaded"] for t in status["targets"]}
        assert loaded == {"lb1": sha(before1), "lb2": sha(before2)}
        assert who(port) == "A"
        with pytest.raises(ConnectionRefusedError):  # lb1 runs its previous config: nothing listens there
            who(clash)
    finally:
        holder.kill()
        holder.wait(5)
        if holder.stdout:
            holder.stdout.close()
        if holder.stdin:
            holder.stdin.close()


def test_an_unreachable_target_is_found_before_anything_changes(lb, isolated, backends, docker_client, tmp_path):
    a = backends("A")
    lb2 = isolated()
    port = free_port()
    inv = fleet(lb, lb2, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}},
                more=[{"name": "lb3", "container": "far", "docker_host": f"unix://{tmp_path}/no-engine.sock"}])
    before = deployed(docker_client, lb.name), deployed(docker_client, lb2.name)
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 3, result.stderr
    assert "target lb3 is not reachable" in result.stderr and "no target changed" in result.stderr
    assert (deployed(docker_client, lb.name), deployed(docker_client, lb2.name)) == before
    chosen = cli("apply", "-i", str(inv), "--reload", "--targets", "lb1,lb2")
    assert chosen.returncode == 0, chosen.stderr


def test_a_target_killed_in_the_middle_of_a_rollout(lb, isolated, backends, docker_client):
    a, b = backends("A"), backends("B")
    lb2 = isolated()
    port = free_port()
    groups: dict[str, Any] = {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}
    inv = fleet(lb, lb2, groups)
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    before1 = deployed(docker_client, lb.name)
    groups["pool"]["servers"] = [b.address]
    fleet(lb, lb2, groups)
    proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "apply", "-i", str(inv), "--reload"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # lb2 dies as the rollout reaches it
        seen.append(line)
        if "lb2: applying" in line:
            lb2.kill(signal="KILL")
            break
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 5, err
    assert "fleet rollout stopped at lb2" in err and "verified: lb1" in err
    assert "lb2 may not run its previous config" in err
    assert deployed(docker_client, lb.name) == before1
    assert who(port) == "A"


def test_watch_keeps_a_fleet_in_step(lb, isolated, backends, docker_client, watches):
    a, b = backends("A"), backends("B")
    lb2 = isolated()
    port = free_port()
    groups: dict[str, Any] = {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}
    inv = fleet(lb, lb2, groups)
    w = watches(inv, "--quiet-period", "200ms")

    def reloads() -> int:
        return sum(1 for e in w.all if e["event"] == "reload" and e.get("result") == "ok")

    wait_for(lambda: reloads() >= 1, 60, lambda: w.all[-5:])
    assert w.all[0]["message"].endswith(f"targets {lb.name}, {lb2.name}")
    groups["pool"]["servers"] = [b.address]
    fleet(lb, lb2, groups)
    wait_for(lambda: reloads() >= 2, 60, lambda: w.all[-5:])
    status = json.loads(cli("status", "-i", str(inv), "--format", "json").stdout)
    assert [(t["name"], t["drift"], t["reload_pending"]) for t in status["targets"]] == \
        [("lb1", False, False), ("lb2", False, False)]
    assert who(port) == "B"
    assert w.stop() == 0


def test_a_config_a_target_rejects_is_installed_nowhere(lb, isolated, backends, docker_client):
    a = backends("A")
    lb2 = isolated()
    port = free_port()
    inv = fleet(lb, lb2, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    before = deployed(docker_client, lb.name), deployed(docker_client, lb2.name)
    fleet(lb, lb2, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, "no-such-host.invalid:80"]}})
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 1, result.stderr
    assert "lb1: nginx rejected the config" in result.stderr and "host not found" in result.stderr
    assert "upstreams.pool.servers[1]" in result.stderr
    assert (deployed(docker_client, lb.name), deployed(docker_client, lb2.name)) == before
