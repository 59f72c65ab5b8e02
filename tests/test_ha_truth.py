"""The virtual IP's truth for real (issue 16, "Truth"): `status` and `watch` read who holds the address from the
targets' network namespaces and what each keepalived says, on the network of tests/ha_net.py (namespaces, veth
and a bridge this test builds, 10.254.0.0/16 only, removed even on failure), with real keepalived companions.

Every wait polls a condition with a deadline (generous: the machine runs other jobs); the 60 s run samples every
0.5 s, a pace, not a synchronisation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from nginxctl.inventory import parse_inventory
from nginxctl.nginx import vip as vip_module
from nginxctl.nginx.vip import read_vip

from ha_net import VIP, Net, inventory, wait_for
from helpers import Watch, cli

pytestmark = pytest.mark.integration


def status(inv: Path) -> tuple[int, dict[str, Any]]:
    result = cli("status", "-i", str(inv), "--format", "json")
    return result.returncode, json.loads(result.stdout)


def settled(inv: Path, holders: list[str], states: dict[str, Any], net: Net, timeout: float = 40.0) \
        -> tuple[int, dict[str, Any]]:
    """`status` once its ha block says `holders` and `states` (a state may be a tuple of acceptable ones)."""
    def check() -> tuple[int, dict[str, Any]] | None:
        code, doc = status(inv)
        ha = doc.get("ha") or {}
        ok = ha.get("holders") == holders and all(
            ha.get("targets", {}).get(n) in (s if isinstance(s, tuple) else (s,)) for n, s in states.items())
        return (code, doc) if ok else None

    return wait_for(f"status saying {holders} hold the VIP and states {states}", check, timeout, net=net)


def apply_and_settle(inv: Path, net: Net) -> None:
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    wait_for("the VIP on lb1", lambda: net.holders() == ["lb1"], 40, net=net)


def test_status_reports_the_holder_and_each_keepalived_state(ha_net, tmp_path):
    inv = inventory(tmp_path, ha_net)
    apply_and_settle(inv, ha_net)
    code, doc = settled(inv, ["lb1"], {"lb1": "MASTER", "lb2": "BACKUP"}, ha_net)
    assert code == 0 and doc["ok"] is True
    ha = doc["ha"]
    assert ha["vip"] == f"{VIP}/16" and ha["interface"] == "eth0"
    assert ha["split_brain"] is False and ha["error"] is None and ha["unreadable"] == []
    # root on the engine's host: read from the kernel in each namespace, no exec
    assert {m["read_via"] for m in ha["members"].values()} == {"netlink"}
    assert ha["members"]["lb1"]["holds"] is True and ha["members"]["lb2"]["holds"] is False
    assert [t["name"] for t in doc["targets"]] == ["lb1", "lb2"]

    text = cli("status", "-i", str(inv))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"vip         {VIP}/16 on eth0: held by lb1"
    assert lines[1].startswith(f"  lb1  MASTER   holds {VIP}  since ")
    assert lines[2].startswith("  lb2  BACKUP   since ")
    assert "WARNING" not in text.stdout and "== lb1" in text.stdout

    # --targets narrows the targets' reports, never the virtual IP's block (a split brain is between targets)
    one = cli("status", "-i", str(inv), "--targets", "lb2", "--format", "json")
    assert json.loads(one.stdout)["ha"]["targets"] == {"lb1": "MASTER", "lb2": "BACKUP"}


def test_a_paused_master_moves_the_vip_and_status_and_watch_follow(ha_net, tmp_path, docker_client):
    inv = inventory(tmp_path, ha_net)
    apply_and_settle(inv, ha_net)
    settled(inv, ["lb1"], {"lb1": "MASTER", "lb2": "BACKUP"}, ha_net)
    watch = Watch(inv)
    lb1 = docker_client.containers.get(ha_net.name("lb1"))
    try:
        first = watch.wait(lambda e: e["event"] == "vip", timeout=60)
        assert (first["from"], first["to"]) == (None, ["lb1"]), first
        assert first["states"] == {"lb1": "MASTER", "lb2": "BACKUP"}
        holder = {("lb1", 1.0), ("lb2", 0.0)}
        assert wait_for("the holder gauge", lambda: _gauge(watch) == holder, 30)

        lb1.pause()
        wait_for("the VIP moving to lb2", lambda: ha_net.holders() == ["lb2"], 40, net=ha_net)
        moved = watch.wait(lambda e: e["event"] == "vip" and e["to"] == ["lb2"], timeout=60)
        vips = [e for e in watch.seen if e["event"] == "vip"]
        assert vips[1]["from"] == ["lb1"], vips   # straight to lb2, or through a moment with no holder
        assert moved["states"]["lb2"] == "MASTER" and moved["states"]["lb1"] in ("FAULT", "BACKUP"), moved
        assert wait_for("the gauge following", lambda: _gauge(watch) == {("lb1", 0.0), ("lb2", 1.0)}, 30)

        # lb1's nginx is paused: status cannot reach it (exit 3, as for any unreachable target) yet still reads
        # its namespace and its keepalived, which is running and says FAULT
        code, doc = settled(inv, ["lb2"], {"lb1": "FAULT", "lb2": "MASTER"}, ha_net)
        assert code == 3 and doc["ha"]["members"]["lb1"]["holds"] is False and doc["ha"]["error"] is None
        assert any(t["name"] == "lb1" and t.get("reachable") is False for t in doc["targets"])
    finally:
        if docker_client.containers.get(ha_net.name("lb1")).status == "paused":
            lb1.unpause()
        assert watch.stop() == 0


def _gauge(watch: Watch) -> set[tuple[str, float]]:
    return {(dict(labels)["target"], value) for (name, labels), value in watch.metrics().items()
            if name == "nginxctl_vip_holder" and dict(labels).get("vip") == f"{VIP}/16"}


def test_no_double_master_over_a_minute(ha_net, tmp_path, docker_client):
    """Both targets healthy for 60 s: at every sample (every 0.5 s) the address is on exactly one namespace, as
    `ip` sees it from outside and as nginxctl reads it, and exactly one keepalived says MASTER."""
    inv = inventory(tmp_path, ha_net)
    apply_and_settle(inv, ha_net)
    settled(inv, ["lb1"], {"lb1": "MASTER", "lb2": "BACKUP"}, ha_net)
    parsed = parse_inventory(inv.read_text(), str(inv))
    samples = []
    end = time.monotonic() + 60
    while time.monotonic() < end and len(samples) < 200:
        at = time.monotonic()
        outside = ha_net.holders()
        read = read_vip(lambda host: docker_client, parsed)
        samples.append((round(at - end + 60, 1), outside, read.holders, read.states()))
        time.sleep(max(0.0, at + 0.5 - time.monotonic()))
    assert len(samples) >= 60, samples   # a loaded machine samples slower, never this slowly
    bad = [s for s in samples if s[1] != ["lb1"] or s[2] != ["lb1"] or list(s[3].values()).count("MASTER") != 1]
    assert bad == [], bad[:10]


def test_a_keepalived_killed_on_the_master_is_a_split_brain_said_loudly(ha_net, tmp_path, docker_client,
                                                                          monkeypatch):
    """SIGKILL gives keepalived no chance to remove the address: lb2 takes over (no adverts) while lb1's namespace
    keeps it. Read through the Docker API alone too (as for a remote engine: exec, archives, a throwaway)."""
    inv = inventory(tmp_path, ha_net)
    apply_and_settle(inv, ha_net)
    settled(inv, ["lb1"], {"lb1": "MASTER", "lb2": "BACKUP"}, ha_net)
    parsed = parse_inventory(inv.read_text(), str(inv))
    with monkeypatch.context() as remote:
        remote.setattr(vip_module, "local_root", lambda container: None)
        api = read_vip(lambda host: docker_client, parsed, throwaway=True)
    assert api.holders == ["lb1"] and api.states() == {"lb1": "MASTER", "lb2": "BACKUP"}
    assert {m.via for m in api.members} == {"exec"} and all(m.since for m in api.members)

    docker_client.containers.get(f"{ha_net.name('lb1')}-keepalived").kill()
    wait_for("lb2 taking the address while lb1 keeps it", lambda: ha_net.holders() == ["lb1", "lb2"], 40, net=ha_net)
    code, doc = settled(inv, ["lb1", "lb2"], {"lb1": "down", "lb2": "MASTER"}, ha_net)
    assert code == 0   # a report, not a failure: the alert pages (docs/controller.md)
    ha = doc["ha"]
    assert ha["split_brain"] is True and ha["error"].startswith(f"split brain: lb1 and lb2 all hold {VIP} on eth0")
    assert ha["members"]["lb1"]["why"] == "keepalived is exited" and ha["members"]["lb1"]["read_via"] == "netlink"
    text = cli("status", "-i", str(inv)).stdout.splitlines()
    assert text[0] == f"vip         {VIP}/16 on eth0: held by lb1, lb2"
    assert text[1].startswith(f"WARNING     split brain: lb1 and lb2 all hold {VIP}")

    with monkeypatch.context() as remote:
        remote.setattr(vip_module, "local_root", lambda container: None)
        api = read_vip(lambda host: docker_client, parsed, throwaway=True)
        quiet = read_vip(lambda host: docker_client, parsed)   # what watch does: never a throwaway container
    assert api.holders == ["lb1", "lb2"] and [m.via for m in api.members] == ["throwaway", "exec"]
    assert quiet.unreadable == ["lb1"] and quiet.holders == ["lb2"]


def test_every_nginx_paused_leaves_no_holder_said_loudly_with_the_error(ha_net, tmp_path, docker_client):
    """Both nginx paused: both keepalived in FAULT give the address up. No target can be reached (exit 3, the
    error as always), and the virtual IP's block still comes with it: no holder, said loudly."""
    inv = inventory(tmp_path, ha_net)
    apply_and_settle(inv, ha_net)
    settled(inv, ["lb1"], {"lb1": "MASTER", "lb2": "BACKUP"}, ha_net)
    boxes = [docker_client.containers.get(ha_net.name(lb)) for lb in ("lb1", "lb2")]
    try:
        for box in boxes:
            box.pause()
        wait_for("the VIP on no target", lambda: ha_net.holders() == [], 40, net=ha_net)
        code, doc = settled(inv, [], {"lb1": "FAULT", "lb2": "FAULT"}, ha_net)
        assert code == 3 and doc["ok"] is False
        assert doc["errors"][0]["message"].startswith("no target of the fleet can be reached")
        assert doc["ha"]["error"].startswith(f"no target holds {VIP} on eth0") and doc["ha"]["split_brain"] is False
        text = cli("status", "-i", str(inv))
        assert text.returncode == 3
        assert text.stdout.splitlines()[:2] == [f"vip         {VIP}/16 on eth0: held by no target",
                                                f"WARNING     {doc['ha']['error']}"]
        assert "error: no target of the fleet can be reached" in text.stderr
    finally:
        for box in boxes:
            box.reload()
            if box.status == "paused":
                box.unpause()
