"""The virtual IP's test network (issue 16): two nginx targets on a network the test builds, a backend and a
client, everything in 10.254.0.0/16 inside network namespaces made here and removed at the end, even on failure.

A bridge inside a namespace of its own, veth pairs, the nginx containers with `network_mode: none` each given
one veth end as eth0. Only names with the net's random prefix are ever created or removed. The `ha_net` fixture
(conftest.py) yields a `Net`; `inventory()` writes the ha inventory for it. No sleep synchronises anything:
`wait_for` polls a condition with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nginxctl.clock import poll_until

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

    def container(self, lb: str) -> str:
        return f"{self.prefix}-{lb}"

    def keepalived_logs(self) -> str:
        return "\n".join(subprocess.run(["docker", "logs", "--tail", "15", f"{self.prefix}-{lb}-keepalived"],
                                        capture_output=True, text=True).stderr for lb in ("lb1", "lb2"))


@contextmanager
def ha_network(docker_client: Any) -> Iterator[Net]:
    """Build the network, two nginx targets plugged into it, and the backend; tear all of it down afterwards."""
    net = Net(f"nx16{uuid.uuid4().hex[:6]}")
    try:
        br = net.namespace("br")
        run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", br, "link", "set", "br0", "up")
        for lb in ("lb1", "lb2"):
            name = net.container(lb)
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
        what += f" (holders {net.holders()}):\n{net.keepalived_logs()}"
    assert polled.done, f"{what}: still {polled.value!r} after {timeout}s"
    return polled.value
