"""The one-shot commands (render, apply, drain) with discovering groups: what they say about the sources and
what they refuse, against a real Docker engine, a real nginx and an etcd endpoint where none listens."""

from __future__ import annotations

import uuid

import pytest

from helpers import cli, free_port, who, write_inventory

pytestmark = pytest.mark.integration


def test_backends_seen_now_counts_only_this_inventorys_groups(tmp_path, labelled):
    """The engine is shared: containers labelled for another load balancer's group are not this one's backends."""
    group = f"pool{uuid.uuid4().hex[:8]}"
    for port in ("7001", "7002"):
        labelled({"nginxctl.group": group, "nginxctl.port": port, "nginxctl.address": "127.0.0.1"})
    labelled({"nginxctl.group": f"{group}-other", "nginxctl.port": "7003", "nginxctl.address": "127.0.0.1"})
    inv = write_inventory(tmp_path / "inventory.yaml",
                          {"upstreams": {group: {"listen": f"127.0.0.1:{free_port()}", "discover": "docker"}}})
    result = cli("render", "-i", str(inv))
    assert result.returncode == 0, result.stderr
    assert f"discover: docker: 2 backend(s) seen now for {group} (a snapshot" in result.stderr, result.stderr
    assert result.stdout.count("server 127.0.0.1:700") == 2


def test_a_dry_run_with_a_discovery_source_down_refuses_as_apply_does(lb):
    """`apply --reload --dry-run` must not preview a change the real apply refuses: with etcd unreachable, both
    exit 3 with the same reason, and the target keeps what it runs."""
    port, group = lb.group(["127.0.0.1:7001"], discover={"etcd": "/nginxctl-test/pool/"})
    lb.write({"pool": group}, discovery={"etcd": {"endpoints": [f"http://127.0.0.1:{free_port()}"]}})  # no etcd there
    before = lb.container.exec_run(["nginx", "-T"], stderr=False).output
    runs = {args: cli("apply", "-i", str(lb.inventory), *args)
            for args in (("--reload",), ("--reload", "--dry-run"), ("--dry-run",))}
    reasons = {}
    for args, result in runs.items():
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "would be allowed" not in result.stdout + result.stderr
        reasons[args] = [line for line in result.stderr.splitlines() if "discovery from etcd is not reachable" in line]
    assert reasons[("--reload",)] == reasons[("--reload", "--dry-run")] == reasons[("--dry-run",)] != [], reasons
    assert "applying now would drop the servers of pool found there" in reasons[("--reload",)][0]
    assert lb.container.exec_run(["nginx", "-T"], stderr=False).output == before


def test_drain_of_a_docker_discovered_server_is_refused_and_the_documented_way_works(lb, backends, labelled):
    """drain refuses (exit 2) a server the group discovers from Docker, changes nothing, and says how to drain it;
    doing what it says (list it with down: true, drain again) takes it out of rotation with a verified reload."""
    a, b = backends("A"), backends("B")
    name = f"pool{uuid.uuid4().hex[:8]}"  # the engine is shared: labels for this test's group only
    port, group = lb.group([a.address], discover="docker")
    lb.write({name: group})
    labelled({"nginxctl.group": name, "nginxctl.address": "127.0.0.1", "nginxctl.port": str(b.port)})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    assert {who(port) for _ in range(6)} == {"A", "B"}
    before = lb.inventory.read_text()
    refused = cli("drain", name, b.address, "-i", str(lb.inventory))
    assert refused.returncode == 2, refused.stderr
    assert (f"no server {b.address} in group '{name}' (servers: {a.address}); if it is a backend discovered from "
            "docker: drain marks down only the servers the inventory lists. Drain a discovered backend at its source: "
            "stop or remove its container") in refused.stderr, refused.stderr
    assert f"add {{address: {b.address}, down: true}} to the group's servers:" in refused.stderr
    assert lb.inventory.read_text() == before
    assert {who(port) for _ in range(6)} == {"A", "B"}
    group["servers"] = [a.address, {"address": b.address, "down": True}]
    lb.write({name: group})
    done = cli("drain", name, b.address, "-i", str(lb.inventory))
    assert done.returncode == 0, done.stderr
    assert f"drained {b.address} in '{name}': inventory unchanged, reloaded" in done.stdout
    assert [who(port) for _ in range(6)] == ["A"] * 6
