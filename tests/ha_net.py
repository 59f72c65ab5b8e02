"""A network for the virtual IP tests (`ha:`): two nginx targets, lb1 and lb2, on a bridge this harness builds,
with a backend and a client beside them; keepalived runs beside each target once `nginxctl apply` makes it.

The network exists only here: a bridge inside a network namespace the harness creates, veth pairs, addresses in
10.254.0.0/16. The nginx containers run with `network_mode: none` and get one veth end each as eth0; a backend and
a client run in namespaces of their own on the same bridge. Everything is removed at the end, even on failure, by
the names this harness gave it. No sleep synchronises anything: every wait polls a condition with a deadline.

A test module takes it as a fixture:

    @pytest.fixture
    def ha_net(docker_client):
        with network(docker_client) as net:
            yield net
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nginxctl.clock import poll_until

NGINX_IMAGE = "nginxctl/nginx:latest"
VIP = "10.254.7.100"
BACKEND = ("10.254.1.5", 7000)
ADDRESSES = {"lb1": "10.254.0.11", "lb2": "10.254.0.12", "be": "10.254.1.5", "cl": "10.254.2.1"}
LBS = ("lb1", "lb2")

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

    def name(self, lb: str) -> str:
        """The container of target `lb` (its keepalived companion is this name + `-keepalived`)."""
        return f"{self.prefix}-{lb}"

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

    def replug(self, docker_client: Any, lb: str) -> None:
        """`lb`'s container started again (a new network namespace, lo only): its eth0 made again."""
        container = docker_client.containers.get(self.name(lb))
        self.pids[lb] = container.attrs["State"]["Pid"]
        subprocess.run(["ip", "-n", self.bridge_ns, "link", "del", f"v-{lb}"], capture_output=True)  # if left
        self.plug(lb, str(self.pids[lb]), ADDRESSES[lb])

    def addresses(self, lb: str) -> str:
        return run("nsenter", "-t", str(self.pids[lb]), "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0")

    def holders(self) -> list[str]:
        return [lb for lb in LBS if f" {VIP}/" in self.addresses(lb)]

    def connect(self) -> str:
        return run("ip", "netns", "exec", f"{self.prefix}-cl", sys.executable, "-c", CLIENT, VIP, "6666").strip()

    def keepalived_logs(self, tail: int = 15) -> str:
        return "\n".join(subprocess.run(["docker", "logs", "--tail", str(tail), f"{self.name(lb)}-keepalived"],
                                        capture_output=True, text=True).stderr for lb in LBS)


@contextlib.contextmanager
def network(docker_client: Any) -> Iterator[Net]:
    """The network, the two targets, the backend and the client's namespace; all removed on the way out."""
    net = Net(f"nx16{uuid.uuid4().hex[:6]}")
    try:
        br = net.namespace("br")
        run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", br, "link", "set", "br0", "up")
        for lb in LBS:
            name = net.name(lb)
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
        # the nginxctl locks left on these targets (a watch killed before it let go, say)
        for lock in docker_client.containers.list(all=True, filters={"label": "nginxctl.role=lock"},
                                                  ignore_removed=True):
            if lock.labels.get("nginxctl.target") in net.containers:
                subprocess.run(["docker", "rm", "-f", lock.name], capture_output=True)
        for ns in reversed(net.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def inventory(tmp_path: Path, net: Net, *, ha: str = "advert_interval: 1s", pool: str = "proxy_connect_timeout: 1s",
              extra: str = "") -> Path:
    """The pair's inventory: `ha` and `pool` are extra keys of the ha: section and of the group."""
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""\
nginx: {{worker_processes: 1}}
upstreams:
  pool: {{listen: 6666, servers: ["{BACKEND[0]}:{BACKEND[1]}"], {pool}}}
ha: {{vip: {VIP}/16, interface: eth0, virtual_router_id: 77, {ha}}}
targets:
  - {{name: lb1, container: {net.name("lb1")}}}
  - {{name: lb2, container: {net.name("lb2")}}}
{extra}""")
    return path


def wait_for(what: str, check, timeout: float = 20.0, net: Net | None = None):  # type: ignore[no-untyped-def]
    polled = poll_until(lambda: (bool(value := check()), value), timeout, interval=0.1)
    if not polled.done and net is not None:  # say what keepalived saw
        what += f" (holders {net.holders()}):\n{net.keepalived_logs()}"
    assert polled.done, f"{what}: still {polled.value!r} after {timeout}s"
    return polled.value
