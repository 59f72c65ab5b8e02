"""`watch` runs the keepalived companions of a fleet with `ha:`, for real (the network of tests/ha_net.py): an
edit of `ha:` reaches every companion under the watch (recorded with the nginx config, one history entry), and a
target restarted under the watch gets its companion made again in its new network namespace, where it can take
the virtual IP (a connection through it answers)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from nginxctl.history import sha
from nginxctl.nginx import companion_config

from ha_net import inventory, wait_for
from helpers import Watch, cli

pytestmark = pytest.mark.integration


def netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_watch_gives_an_ha_edit_to_the_companions_and_remakes_a_restarted_targets_companion(
        ha_net, tmp_path, docker_client, watches: Callable[..., Watch]):
    inv = inventory(tmp_path, ha_net)
    applied = cli("apply", "-i", str(inv), "--reload")
    assert applied.returncode == 0, applied.stderr
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)
    w = watches(inv, "--quiet-period", "1s", "--max-wait", "3s")
    try:
        w.wait(lambda e: e["event"] in ("in-sync", "reload"))

        # (a) an edit of ha: alone: both companions get it, with the nginx config, one history entry each
        inventory(tmp_path, ha_net, ha="advert_interval: 2s")
        w.wait(lambda e: e["event"] == "in-sync" and "keepalived.conf applied" in e["message"])   # nginx: no reload
        said = {(e["target"], e["action"]) for e in w.seen if e["event"] == "keepalived"}
        assert said == {("lb1", "reloaded"), ("lb2", "reloaded")}, w.seen[-10:]
        history = cli("history", "-i", str(inv), "--format", "json")
        assert history.returncode == 0, history.stderr
        entries = {t["name"]: t["entries"] for t in json.loads(history.stdout)["targets"]}
        for lb in ("lb1", "lb2"):
            conf = companion_config(docker_client, ha_net.name(lb)) or ""
            assert "advert_int 2" in conf
            newest = entries[lb][0]
            assert newest["current"] and newest["keepalived_sha256"] == sha(conf)
            assert entries[lb][1]["keepalived_sha256"] not in (None, newest["keepalived_sha256"])

        # (b) lb2 restarted: a new network namespace; its companion, left in the old one, is made again there
        lb2 = docker_client.containers.get(ha_net.name("lb2"))
        lb2.restart(timeout=1)
        ha_net.replug(docker_client, "lb2")   # the harness's veth went with the old namespace
        made = w.wait(lambda e: e["event"] == "keepalived" and e.get("target") == "lb2"
                      and e.get("action") == "recreated")
        assert made["why"] and [e for e in w.seen if e["event"] == "keepalived" and e.get("state") == "stale"]
        lb2.reload()
        companion = docker_client.containers.get(f"{ha_net.name('lb2')}-keepalived")
        assert companion.status == "running" and companion.attrs["HostConfig"]["NetworkMode"] == f"container:{lb2.id}"
        assert netns(companion.attrs["State"]["Pid"]) == netns(lb2.attrs["State"]["Pid"])
        assert "advert_int 2" in (companion_config(docker_client, ha_net.name("lb2")) or "")

        # it serves: lb1's nginx hangs, the address moves to lb2, a client through the VIP is answered
        lb1 = docker_client.containers.get(ha_net.name("lb1"))
        lb1.pause()
        try:
            wait_for("the VIP moving to the restarted lb2", lambda: ha_net.holders() == ["lb2"], net=ha_net)
            wait_for("a connection through the VIP on lb2", lambda: ha_net.connect() == "backend")
        finally:
            lb1.unpause()
        assert w.stop() == 0
    finally:
        w.close()
