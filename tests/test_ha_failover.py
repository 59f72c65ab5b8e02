"""The virtual IP for real: two nginx targets on a network this test builds, keepalived beside each (created by
`nginxctl apply`), and the address moving when the master's nginx stops answering.

The network exists only here: a bridge inside a network namespace the test creates, veth pairs, addresses in
10.254.0.0/16. The nginx containers run with `network_mode: none` and get one veth end each as eth0; a backend and
a client run in namespaces of their own on the same bridge. Everything is removed at the end, even on failure.
No sleep synchronises anything: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nginxctl.clock import poll_until

from helpers import cli

pytestmark = pytest.mark.integration

NGINX_IMAGE = "nginxctl/nginx:latest"
VIP = "10.254.7.100"
BACKEND = ("10.254.1.5", 7000)
ADDRESSES = {"lb1": "10.254.0.11", "lb2": "10.254.0.12", "be": "10.254.1.5", "cl": "10.254.2.1"}

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"backend\\n"); c.close()
"""

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
        print(c.recv(64).decode().strip() or "closed")
except OSError as exc:
    print(type(exc).__name__)
"""


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass
class Net:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def plug(self, short: str, peer_netns: str, address: str) -> None:
        """A veth from the bridge to `peer_netns` (a namespace name or a PID), named eth0 there, with `address`."""
        run("ip", "-n", self.bridge_ns, "link", "add", f"v-{short}", "type", "veth", "peer", "name", "eth0",
            "netns", peer_netns)
        run("ip", "-n", self.bridge_ns, "link", "set", f"v-{short}", "master", "br0", "up")
        enter = ["nsenter", "-t", peer_netns, "-n"] if peer_netns.isdigit() else ["ip", "netns", "exec", peer_netns]
        run(*enter, "ip", "addr", "add", f"{address}/16", "dev", "eth0")
        run(*enter, "ip", "link", "set", "eth0", "up")

    def addresses(self, lb: str) -> str:
        return run("nsenter", "-t", str(self.pids[lb]), "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0")

    def holders(self) -> list[str]:
        return [lb for lb in ("lb1", "lb2") if f" {VIP}/" in self.addresses(lb)]

    def connect(self) -> str:
        return run("ip", "netns", "exec", f"{self.prefix}-cl", sys.executable, "-c", CLIENT, VIP, "6666").strip()


@pytest.fixture
def ha_net(docker_client) -> Iterator[Net]:  # type: ignore[no-untyped-def]
    net = Net(f"nx16{uuid.uuid4().hex[:6]}")
    try:
        br = net.namespace("br")
        run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", br, "link", "set", "br0", "up")
        for lb in ("lb1", "lb2"):
            name = f"{net.prefix}-{lb}"
            net.containers += [name, f"{name}-keepalived"]
            container = docker_client.containers.run(NGINX_IMAGE, detach=True, name=name, network_mode="none",
                                                     labels={"nginxctl.test": "ha-failover"})
            container.reload()
            net.pids[lb] = container.attrs["State"]["Pid"]
            net.plug(lb, str(net.pids[lb]), ADDRESSES[lb])
        for side in ("be", "cl"):
            net.plug(side, net.namespace(side), ADDRESSES[side])
        server = subprocess.Popen(["ip", "netns", "exec", f"{net.prefix}-be", sys.executable, "-c", SERVER,
                                   *map(str, BACKEND)], stdout=subprocess.PIPE, text=True)
        net.processes.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield net
    finally:
        for process in net.processes:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for name in net.containers:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        for ns in reversed(net.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def inventory(tmp_path: Path, net: Net) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""\
nginx: {{worker_processes: 1}}
upstreams:
  pool: {{listen: 6666, servers: ["{BACKEND[0]}:{BACKEND[1]}"], proxy_connect_timeout: 1s}}
ha: {{vip: {VIP}/16, interface: eth0, virtual_router_id: 77, advert_interval: 1s}}
targets:
  - {{name: lb1, container: {net.prefix}-lb1}}
  - {{name: lb2, container: {net.prefix}-lb2}}
""")
    return path


def wait_for(what: str, check, timeout: float = 20.0, net: Net | None = None):  # type: ignore[no-untyped-def]
    polled = poll_until(lambda: (bool(value := check()), value), timeout, interval=0.1)
    if not polled.done and net is not None:  # say what keepalived saw
        logs = "\n".join(subprocess.run(["docker", "logs", "--tail", "15", f"{net.prefix}-{lb}-keepalived"],
                                        capture_output=True, text=True).stderr for lb in ("lb1", "lb2"))
        what += f" (holders {net.holders()}):\n{logs}"
    assert polled.done, f"{what}: still {polled.value!r} after {timeout}s"
    return polled.value


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
