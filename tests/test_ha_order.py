"""A fleet with `ha:` changed in order, for real (the network of tests/ha_net.py: two nginx targets, keepalived
beside each, the virtual IP moving between them):

- standby first: `apply` changes the target that does not hold the virtual IP first and its holder last, seen in
  when each target's new workers started; the address moved to lb2, the order flips;
- keepalived.conf in the history: each apply records it with the nginx config as one entry, `rollback` puts both
  back (keepalived reloaded), and an apply that changes only nginx does not reload keepalived;
- maintenance of one member: `watch` keeps the holder in step while the other one is stopped, and catches the
  other up when it is started again.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from nginxctl.host import started_at
from nginxctl.nginx import LiveNginx, companion_config

from ha_net import VIP, Net, inventory, wait_for
from helpers import Watch, cli

pytestmark = pytest.mark.integration




def reloaded_at(docker_client: Any, net: Net, lb: str) -> float:
    """When the target's current nginx workers started: its last reload."""
    starts = [started_at(p.pid) for p in LiveNginx.attach(docker_client, net.name(lb)).processes().workers]
    assert starts and all(s is not None for s in starts), starts
    return min(s for s in starts if s is not None)


def apply(inv: Any) -> subprocess.CompletedProcess[str]:
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    return result


def test_apply_changes_the_standby_first_and_the_holder_of_the_virtual_ip_last(ha_net, tmp_path, docker_client):
    apply(inventory(tmp_path, ha_net))
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)

    result = apply(inventory(tmp_path, ha_net, pool="proxy_connect_timeout: 2s"))
    assert f"ha: lb1 holds the virtual IP {VIP}: changing lb2 first (the canary is a standby), lb1 last" \
        in result.stderr
    assert result.stderr.index("lb2: applying (the canary)") < result.stderr.index("lb1: applying")
    assert result.stdout.index("lb2: applied and reloaded") < result.stdout.index("lb1: applied and reloaded")
    assert reloaded_at(docker_client, ha_net, "lb2") < reloaded_at(docker_client, ha_net, "lb1")

    # lb1's nginx hangs until the address moves to lb2; back, it waits as BACKUP (nopreempt)
    lb1 = docker_client.containers.get(ha_net.name("lb1"))
    lb1.pause()
    try:
        wait_for("the VIP moving to lb2", lambda: ha_net.holders() == ["lb2"], net=ha_net)
    finally:
        lb1.unpause()

    result = apply(inventory(tmp_path, ha_net, pool="proxy_connect_timeout: 3s"))
    assert f"ha: lb2 holds the virtual IP {VIP}: changing lb1 first (the canary is a standby), lb2 last" \
        in result.stderr
    assert result.stderr.index("lb1: applying (the canary)") < result.stderr.index("lb2: applying")
    assert reloaded_at(docker_client, ha_net, "lb1") < reloaded_at(docker_client, ha_net, "lb2")
    assert ha_net.holders() == ["lb2"]
    wait_for("a connection through the VIP on lb2", lambda: ha_net.connect() == "backend")


def keepalived_logs(docker_client: Any, net: Net, lb: str, since: float) -> str:
    companion = docker_client.containers.get(f"{net.name(lb)}-keepalived")
    return bytes(companion.logs(stdout=True, stderr=True, since=since)).decode(errors="replace")


def history(inv: Any) -> dict[str, list[dict[str, Any]]]:
    result = cli("history", "-i", str(inv), "--format", "json")
    assert result.returncode == 0, result.stderr
    return {t["name"]: t["entries"] for t in json.loads(result.stdout)["targets"]}


def slot(docker_client: Any, net: Net, lb: str, entry: int, kind: str = "") -> str:
    raw = LiveNginx.attach(docker_client, net.name(lb)).read_file(
        f"/etc/nginx/.nginxctl/history/slot-{entry % 50:02d}{kind}.conf")
    assert raw is not None, (lb, entry, kind)
    return raw.decode()


def test_keepalived_conf_is_recorded_with_the_config_and_rollback_puts_both_back(ha_net, tmp_path, docker_client):
    apply(inventory(tmp_path, ha_net))
    result = apply(inventory(tmp_path, ha_net, ha="advert_interval: 2s"))
    for lb in ("lb1", "lb2"):
        assert f"{ha_net.name(lb)}-keepalived: keepalived reloaded" in result.stderr
        assert (f"{ha_net.name(lb)} already runs this nginx config (not reloaded); {ha_net.name(lb)}-keepalived: "
                "keepalived reloaded") in result.stdout   # the result says what changed: keepalived alone
        assert "advert_int 2" in (companion_config(docker_client, ha_net.name(lb)) or "")

    # two entries, each with both files: the nginx config and the keepalived.conf installed with it
    entries = history(inventory(tmp_path, ha_net))
    for lb in ("lb1", "lb2"):
        newer, older = entries[lb][:2]
        assert newer["current"] and newer["keepalived_sha256"] and older["keepalived_sha256"]
        assert newer["keepalived_sha256"] != older["keepalived_sha256"]
        assert newer["sha256"] == older["sha256"]   # an edit only keepalived reads is no change of nginx's config
        assert "advert_int 2" in slot(docker_client, ha_net, lb, newer["id"], ".keepalived")
        assert "advert_int 1" in slot(docker_client, ha_net, lb, older["id"], ".keepalived")
        assert "listen 127.0.0.1:61999;" in slot(docker_client, ha_net, lb, older["id"])

    since = time.time()
    rolled = cli("rollback", "-i", str(inventory(tmp_path, ha_net)))
    assert rolled.returncode == 0, rolled.stderr
    for lb in ("lb1", "lb2"):
        older = entries[lb][1]
        assert (f"{ha_net.name(lb)} runs history entry {older['id']}" in rolled.stdout   # nginx's config is the same
                and f"{ha_net.name(lb)}-keepalived: keepalived reloaded" in rolled.stdout)
        assert companion_config(docker_client, ha_net.name(lb)) == slot(docker_client, ha_net, lb, older["id"],
                                                                        ".keepalived")
        # keepalived re-read it: its reload, then adverts at 1s again (the other one, not rolled back yet
        # when this one reloaded, or rolled back first, said the mismatch)
        wait_for(f"{lb}'s keepalived reloaded", lambda lb=lb: "Reload complete" in keepalived_logs(
            docker_client, ha_net, lb, since))
    assert [e["id"] for e in history(inventory(tmp_path, ha_net))["lb1"] if e["current"]] == \
        [entries["lb1"][0]["id"] + 1]   # the rollback is recorded: nginx and keepalived.conf as they run now

    # an apply that changes only nginx: keepalived untouched
    since = time.time()
    result = apply(inventory(tmp_path, ha_net, pool="proxy_connect_timeout: 2s"))
    for lb in ("lb1", "lb2"):
        assert f"{ha_net.name(lb)}-keepalived: keepalived unchanged" in result.stderr
        assert f"{lb}: applied and reloaded" in result.stdout
        assert "Reloading" not in keepalived_logs(docker_client, ha_net, lb, since)
    after = history(inventory(tmp_path, ha_net))
    assert after["lb1"][0]["keepalived_sha256"] == entries["lb1"][1]["keepalived_sha256"]


def test_watch_keeps_the_holder_in_step_while_the_other_member_is_stopped(ha_net, tmp_path, docker_client,
                                                                          watches: Callable[..., Watch]):
    inv = inventory(tmp_path, ha_net)
    apply(inv)
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)
    w = watches(inv, "--quiet-period", "200ms", "--max-wait", "2s")
    try:
        w.wait(lambda e: e["event"] in ("in-sync", "reload"))
        lb2 = docker_client.containers.get(ha_net.name("lb2"))
        lb2.stop(timeout=1)
        away = w.wait(lambda e: e["event"] == "member" and e.get("state") == "unreachable")
        assert away["target"] == "lb2" and away["holder"] == ["lb1"]
        assert f"the watch keeps lb1 (it holds the virtual IP {VIP}) in step without it" in away["message"]

        inventory(tmp_path, ha_net, pool="proxy_connect_timeout: 2s")
        w.reload()
        assert "proxy_connect_timeout 2s;" in LiveNginx.attach(docker_client, ha_net.name("lb1")).read_file(
            "/etc/nginx/nginx.conf").decode()   # type: ignore[union-attr]

        lb2.start()
        back = w.wait(lambda e: e["event"] == "member" and e.get("state") == "back")
        assert back["target"] == "lb2"
        w.reload()
        assert "proxy_connect_timeout 2s;" in LiveNginx.attach(docker_client, ha_net.name("lb2")).read_file(
            "/etc/nginx/nginx.conf").decode()   # type: ignore[union-attr]
        assert not [e for e in w.seen if e["event"] == "drift"]
        assert w.stop() == 0
    finally:
        w.close()
