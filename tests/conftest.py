"""Fixtures that own real resources: nginx containers and echo servers, removed even when a test fails.

Integration tests need a Docker engine and the nginx image (scripts/build-nginx-image.sh). Where
either is missing they fail with that message: they never skip.
"""

from __future__ import annotations

import io
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ha_net import Net, network  # noqa: E402
from helpers import BACKEND_CONF, IMAGE, Backend, Etcd, Pong, Watch, free_port, write_inventory  # noqa: E402

DOCKER_FIXTURES = {"docker_client", "lb", "lb_factory", "etcd", "backend_containers", "isolated", "labelled", "ha_net"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses Docker is an integration test: `pytest -m "not integration"` is the fast loop."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine ({exc}); run scripts/setup.sh")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE} is missing: run scripts/build-nginx-image.sh")
    yield client
    client.close()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Start echo servers: backends('A') -> a TCP server named A on a free port."""
    started: list[Backend] = []

    def start(name: str, udp: bool = False, host: str = "127.0.0.1", port: int | None = None) -> Backend:
        import socket

        port = port or free_port(socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        backend = Backend(name, port, udp, host).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        try:
            backend.stop()
        except Exception:
            pass


@pytest.fixture
def pongs() -> Iterator[Callable[..., Pong]]:
    """Start PING/PONG servers: pongs('A') -> a server named A on a free port, that `hang` can make hang."""
    made: list[Pong] = []

    def make(name: str = "P") -> Pong:
        server = Pong(free_port(), name)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


class LB:
    """A load balancer under test: an nginx container (host network) and an inventory for it."""

    def __init__(self, client: Any, tmp_path: Path, image: str = IMAGE, **run: Any) -> None:
        self.client = client
        self.name = f"nginxctl-test-{uuid.uuid4().hex[:10]}"
        self.container = client.containers.run(image, name=self.name, detach=True, network_mode="host",
                                               labels={"nginxctl.test": "1"}, **run)
        self.inventory = tmp_path / "inventory.yaml"

    def write(self, upstreams: dict[str, Any], nginx: dict[str, Any] | None = None,
              **extra: Any) -> Path:
        data: dict[str, Any] = {"nginx": {"worker_processes": 2, **(nginx or {})},
                                "target": {"container": self.name}, "upstreams": upstreams, **extra}
        return write_inventory(self.inventory, data)

    def group(self, servers: list[Any], port: int | None = None, **options: Any) -> tuple[int, dict[str, Any]]:
        port = port or free_port()
        return port, {"listen": f"127.0.0.1:{port}", "servers": servers, **options}

    def workers(self) -> set[int]:
        from nginxctl.nginx import LiveNginx

        return LiveNginx.attach(self.client, self.name).processes().worker_pids

    def remove(self) -> None:
        import docker

        for name in (self.name,):
            try:
                self.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        remove_locks(self.client, self.name)


@pytest.fixture
def lb_factory(docker_client: Any, tmp_path: Path) -> Iterator[Callable[..., LB]]:
    made: list[LB] = []

    def make(image: str = IMAGE, **run: Any) -> LB:
        """`run`: more options for the container (e.g. extra_hosts)."""
        lb = LB(docker_client, tmp_path, image, **run)
        made.append(lb)
        return lb

    yield make
    for lb in made:
        lb.remove()


@pytest.fixture
def lb(lb_factory: Callable[..., LB]) -> LB:
    return lb_factory()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd server of our own on 127.0.0.1 (Debian's etcd-server), stopped and removed afterwards."""
    server = Etcd(tmp_path / "etcd-data")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def watches() -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(inventory: Path, *args: str) -> Watch:
        w = Watch(inventory, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


@pytest.fixture
def backend_containers(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """Backends as containers of the project's nginx image, answering a fixed reply (stream `return`)."""
    made: list[Any] = []

    def make(reply: str, labels: dict[str, str], port: int | None = None, start: bool = True) -> Any:
        port = port or free_port()
        container = docker_client.containers.create(
            IMAGE, ["/usr/sbin/nginx", "-c", "/etc/nginx/backend.conf", "-g", "daemon off;"],
            name=f"nginxctl-test-be-{uuid.uuid4().hex[:8]}", network_mode="host",
            labels={"nginxctl.test": "1", **labels})
        made.append(container)
        data = BACKEND_CONF.format(port=port, reply=reply).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("backend.conf")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        container.put_archive("/etc/nginx", buf.getvalue())
        container.port_ = port
        if start:
            container.start()
        return container

    yield make
    for container in made:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 (already gone)
            pass


def remove_locks(client: Any, target: str) -> None:
    """The nginxctl locks left on a test's target (the engine is shared: other locks come and go meanwhile)."""
    import docker

    for lock in client.containers.list(all=True, filters={"label": "nginxctl.role=lock"}, ignore_removed=True):
        if lock.labels.get("nginxctl.target") == target:
            try:
                lock.remove(force=True)
            except docker.errors.NotFound:
                pass


class OwnedContainers:
    """Containers of the nginx image on network `none` that a test starts and owns: removed afterwards, with
    any nginxctl lock left on them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.made: list[Any] = []

    def run(self, prefix: str, labels: dict[str, str] | None = None) -> Any:
        box = self.client.containers.run(IMAGE, name=f"{prefix}{uuid.uuid4().hex[:10]}", detach=True,
                                         network_mode="none", labels={"nginxctl.test": "1", **(labels or {})})
        self.made.append(box)
        return box

    def remove(self) -> None:
        for box in self.made:
            try:
                box.remove(force=True)
            except Exception:  # noqa: BLE001 (already gone)
                pass
            remove_locks(self.client, box.name)


@pytest.fixture
def isolated(docker_client: Any) -> Iterator[Callable[[], Any]]:
    """An nginx container in a network namespace of its own (network none): a second load balancer that can
    bind the same 127.0.0.1 ports as the host-network one."""
    owned = OwnedContainers(docker_client)
    yield lambda: owned.run("nginxctl-test-")
    owned.remove()


@pytest.fixture
def labelled(docker_client: Any) -> Iterator[Callable[[dict[str, str]], Any]]:
    """Running containers with the given labels (no network: only their labels matter), removed afterwards."""
    owned = OwnedContainers(docker_client)
    yield lambda labels: owned.run("nginxctl-test-lab-", labels)
    owned.remove()


@pytest.fixture
def ha_net(docker_client: Any) -> Iterator[Net]:
    """The virtual IP's network (tests/ha_net.py): two nginx targets, a backend and a client in namespaces of
    their own, in 10.254.0.0/16; all of it removed afterwards, even on failure."""
    with network(docker_client) as net:
        yield net
