"""The virtual IP for real: two nginx targets on a network this test builds, keepalived beside each (created by
`nginxctl apply`), and the address moving when the master's nginx stops answering.

The network exists only here (tests/ha_net.py, the `ha_net` fixture): a bridge inside a network namespace the test
creates, veth pairs, addresses in 10.254.0.0/16. The nginx containers run with `network_mode: none` and get one
veth end each as eth0; a backend and a client run in namespaces of their own on the same bridge. Everything is
removed at the end, even on failure. No sleep synchronises anything: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import sys
import time

import pytest

from ha_net import BACKEND, CLIENT, VIP, inventory, run, wait_for
from helpers import cli

pytestmark = pytest.mark.integration


def test_apply_runs_keepalived_beside_each_target_and_the_vip_follows_a_working_nginx(ha_net, tmp_path,
                                                                                         docker_client):
    inv = inventory(tmp_path, ha_net)
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    for lb in ("lb1", "lb2"):
        assert f"{ha_net.prefix}-{lb}-keepalived: keepalived created" in result.stderr
        companion = docker_client.containers.get(f"{ha_net.prefix}-{lb}-keepalived")
        target = docker_client.containers.get(f"{ha_net.prefix}-{lb}")
        assert companion.attrs["HostConfig"]["NetworkMode"] == f"container:{target.id}"
        caps = sorted(c.removeprefix("CAP_") for c in companion.attrs["HostConfig"]["CapAdd"])
        assert caps == ["NET_ADMIN", "NET_BROADCAST", "NET_RAW", "SETGID", "SETUID"]
        assert companion.attrs["HostConfig"]["CapDrop"] in (["ALL"], ["CAP_ALL"])

    # lb1 has the higher priority (200): it takes the address, and only it.
    assert wait_for("the VIP on one target", lambda: ha_net.holders() == ["lb1"] and ha_net.holders()) == ["lb1"]
    assert wait_for("a connection through the VIP", lambda: ha_net.connect() == "backend" and "backend")

    # The same apply again changes nothing on the companions.
    again = cli("apply", "-i", str(inv), "--reload")
    assert again.returncode == 0 and f"{ha_net.prefix}-lb1-keepalived: keepalived unchanged" in again.stderr

    # nginx hung (paused): its kernel still accepts connections, but it no longer answers the health listener.
    docker_client.containers.get(f"{ha_net.prefix}-lb1").pause()
    paused_at = time.monotonic()
    try:
        wait_for("the VIP moving to lb2", lambda: ha_net.holders() == ["lb2"], net=ha_net)
        moved = time.monotonic() - paused_at
        wait_for("a connection through the VIP on lb2", lambda: ha_net.connect() == "backend")
        print(f"VIP moved {moved:.1f}s after nginx on lb1 was paused")
        # fall (2) checks at the advert interval (1s), each up to 1s, then lb2 takes over at once (priority 0
        # advert): well within 3 advert intervals plus one check, with margin for a loaded machine.
        assert moved < 10, moved
    finally:
        docker_client.containers.get(f"{ha_net.prefix}-lb1").unpause()

    # nopreempt: lb1 recovers as BACKUP and leaves the address where it is.
    since = int(time.time()) - 1
    companion = docker_client.containers.get(f"{ha_net.prefix}-lb1-keepalived")
    wait_for("lb1's keepalived back in BACKUP", lambda: b"Entering BACKUP STATE" in companion.logs(since=since))
    assert ha_net.holders() == ["lb2"]
    assert ha_net.connect() == "backend"


def test_a_companion_left_by_a_restarted_target_is_recreated(ha_net, tmp_path, docker_client):
    inv = inventory(tmp_path, ha_net)
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    lb2 = docker_client.containers.get(f"{ha_net.prefix}-lb2")
    lb2.restart(timeout=1)
    lb2.reload()
    ha_net.pids["lb2"] = lb2.attrs["State"]["Pid"]
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    assert (f"{ha_net.prefix}-lb2-keepalived: keepalived recreated (the target restarted after it (a new network "
            "namespace))") in result.stderr
    assert f"{ha_net.prefix}-lb1-keepalived: keepalived unchanged" in result.stderr


def test_a_refused_keepalived_conf_changes_neither_target(ha_net, tmp_path, docker_client):
    inv = inventory(tmp_path, ha_net)
    (tmp_path / "tpl" / "keepalived").mkdir(parents=True)
    (tmp_path / "tpl" / "keepalived" / "keepalived.conf.j2").write_text("vrrp_instance x {\n    bogus_keyword 1\n}\n")
    inv.write_text(inv.read_text() + "templates: tpl\n")
    before = {lb: docker_client.containers.get(f"{ha_net.prefix}-{lb}").get_archive("/etc/nginx/nginx.conf")[1]
              for lb in ("lb1", "lb2")}
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 1, result.stderr
    assert "lb1: keepalived rejected its keepalived.conf" in result.stderr and "bogus_keyword" in result.stderr
    for lb in ("lb1", "lb2"):
        after = docker_client.containers.get(f"{ha_net.prefix}-{lb}").get_archive("/etc/nginx/nginx.conf")[1]
        assert (after["size"], after["mtime"]) == (before[lb]["size"], before[lb]["mtime"])
        assert not docker_client.containers.list(all=True, filters={"name": f"{ha_net.prefix}-{lb}-keepalived"})


def test_the_vip_leaves_a_target_whose_nginx_container_was_killed(ha_net, tmp_path, docker_client):
    assert cli("apply", "-i", str(inventory(tmp_path, ha_net)), "--reload").returncode == 0
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)
    lb1 = docker_client.containers.get(f"{ha_net.prefix}-lb1")
    pid = ha_net.pids["lb1"]
    # keepalived keeps lb1's namespace (and the address) alive after nginx is gone: its check must give it up.
    keeper = docker_client.containers.get(f"{ha_net.prefix}-lb1-keepalived").attrs["State"]["Pid"]
    lb1.kill()
    ha_net.pids["lb1"] = keeper
    killed_at = time.monotonic()
    wait_for("the VIP moving to lb2", lambda: ha_net.holders() == ["lb2"], net=ha_net)
    print(f"VIP moved {time.monotonic() - killed_at:.1f}s after nginx on lb1 was killed (pid {pid})")
    wait_for("a connection through the VIP on lb2", lambda: ha_net.connect() == "backend")


def test_a_companion_killed_and_started_again_runs_and_survives_a_docker_restart_policy(ha_net, tmp_path,
                                                                                         docker_client):
    """A keepalived killed (not stopped) leaves no pid file behind it that stops the next start, and its companion
    comes back by itself after a Docker restart unless stopped by hand."""
    assert cli("apply", "-i", str(inventory(tmp_path, ha_net)), "--reload").returncode == 0
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)
    companion = docker_client.containers.get(f"{ha_net.prefix}-lb2-keepalived")
    assert companion.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    companion.kill()
    since = int(time.time()) - 1
    companion.start()
    wait_for("lb2's keepalived running again, as BACKUP",
             lambda: b"Entering BACKUP STATE" in companion.logs(since=since), net=ha_net)
    companion.reload()
    assert companion.status == "running" and b"already running" not in companion.logs(since=since)


def test_a_group_listening_on_the_virtual_ip_itself_binds_on_the_standby_too(ha_net, tmp_path):
    """`listen: VIP:PORT`: the standby's nginx binds an address it does not hold (apply sets ip_nonlocal_bind in
    each target's namespace first), and clients reach the group through the holder."""
    inv = inventory(tmp_path, ha_net)
    inv.write_text(inv.read_text().replace("upstreams:\n", "upstreams:\n  on_vip: {listen: "
                                           f"\"{VIP}:6667\", servers: [\"{BACKEND[0]}:{BACKEND[1]}\"]}}\n"))
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 0, result.stderr
    assert "lb2: net.ipv4.ip_nonlocal_bind=1 in its network namespace" in result.stdout + result.stderr
    wait_for("the VIP on lb1", lambda: ha_net.holders() == ["lb1"], net=ha_net)
    wait_for("a connection to the group on the VIP", lambda: run(
        "ip", "netns", "exec", f"{ha_net.prefix}-cl", sys.executable, "-c", CLIENT, VIP, "6667").strip() == "backend")
    again = cli("apply", "-i", str(inv), "--reload")
    assert again.returncode == 0 and "ip_nonlocal_bind" not in again.stdout + again.stderr   # set once
