"""The controller as a container: the image scripts/build-controller-image.sh builds, run with the options of
compose/docker-compose.yml's `controller` service (read from that file, so the file is what is tested),
against a real nginx container. Also the process identity the watch lock and the published health rely on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nginxctl.host import process_alive, process_identity

from helpers import Pong, cli, free_port, wait_for, who

COMPOSE = Path(__file__).parent.parent / "compose" / "docker-compose.yml"
CONTROLLER_IMAGE = "nginxctl/nginxctl:local"


# -- the process identity (no Docker) ------------------------------------------------------------------------

def test_this_process_is_alive_and_a_dead_one_is_not():
    me = process_identity()
    assert me["boot"] and me["pidns"].startswith("pid:[") and me["start"]
    assert process_alive(me) is True
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_alive({**me, "pid": str(dead.pid)}) is False


def test_a_reused_pid_is_not_the_process_that_held_it():
    me = process_identity()
    assert process_alive({**me, "start": str(int(me["start"]) + 1)}) is False


def test_another_pid_namespace_or_machine_cannot_be_told():
    me = process_identity()
    assert process_alive({**me, "pidns": "pid:[1]"}) is None
    assert process_alive({**me, "boot": "another-machine"}) is None
    assert process_alive({"pid": me["pid"]}) is None  # no identity to compare: not guessed from the PID


# -- the compose service, run for real -------------------------------------------------------------------------

def service() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"]["controller"])


def expand(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR:-default}, with `values` in place of the environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), text)


class Controller:
    """The compose service `controller` as a container of our own: its inventory folder is a test's."""

    def __init__(self, client: Any, folder: Path, **override: Any) -> None:
        svc = service()
        self.metrics_port = free_port()
        values = {"NGINXCTL_METRICS_PORT": str(self.metrics_port), "NGINXCTL_INVENTORY_DIR": str(folder)}
        volumes = {}
        for spec in svc["volumes"]:
            source, target, *mode = expand(spec, values).split(":")
            volumes[source] = {"bind": target, "mode": mode[0] if mode else "rw"}
        kwargs: dict[str, Any] = {
            "network_mode": svc["network_mode"], "pid_mode": svc.get("pid"), "cap_drop": svc.get("cap_drop"),
            "cap_add": svc.get("cap_add"), "security_opt": svc.get("security_opt"),
            "read_only": svc.get("read_only", False), "environment": dict(svc.get("environment") or {}),
            "volumes": volumes, "working_dir": svc.get("working_dir"),
            "command": [expand(part, values) for part in svc["command"]],
        }
        kwargs.update(override)
        self.name = f"nginxctl-test-controller-{uuid.uuid4().hex[:8]}"
        self.container = client.containers.run(CONTROLLER_IMAGE, name=self.name, detach=True,
                                               labels={"nginxctl.test": "1"}, **kwargs)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.container.logs(stdout=False, stderr=True).decode().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "message": line})
        return out

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], after: int = 0,
                   timeout: float = 60.0) -> dict[str, Any]:
        """The first log event after the first `after` ones matching `predicate`."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [e for e in self.events()[after:] if predicate(e)]
            if not found:
                self.container.reload()
                assert self.container.status == "running", (self.container.status, self.events()[-10:])
            return bool(found)

        wait_for(check, timeout, lambda: f"no matching event; seen: {self.events()[-10:]}")
        return found[0]

    def applied(self, after: int = 0) -> dict[str, Any]:
        return self.wait_event(lambda e: e.get("event") in ("reload", "in-sync") and e.get("result", "ok") == "ok",
                               after)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def exit_code(self, timeout: float = 60.0) -> int:
        return int(self.container.wait(timeout=timeout)["StatusCode"])

    def remove(self) -> None:
        import docker

        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def controllers(docker_client: Any) -> Iterator[Callable[..., Controller]]:
    import docker

    try:
        docker_client.images.get(CONTROLLER_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {CONTROLLER_IMAGE} is missing: run scripts/setup.sh")
    made: list[Controller] = []

    def start(folder: Path, **override: Any) -> Controller:
        c = Controller(docker_client, folder, **override)
        made.append(c)
        return c

    yield start
    for c in made:
        c.remove()


PROBE = """
import os, signal, sys, docker
from nginxctl.nginx import LiveNginx
live = LiveNginx.attach(docker.from_env(), sys.argv[1])
if live.root is None:
    print("no local path"); sys.exit(0)
live.put_files("/etc/nginx/.probe", {"written": "from the controller"})
assert live.read_file("/etc/nginx/.probe/written") == b"from the controller"
live.processes()
master = live.processes().master
os.kill(master.pid, signal.SIGHUP)
print("local path:", live.root)
"""


def test_the_compose_service_gets_the_local_fast_path_with_sys_ptrace_alone(lb, controllers):
    """Read and write the target's files through /proc/PID/root, its processes from /proc, a signal to its
    master: with every capability dropped but SYS_PTRACE. Without it, the kernel refuses /proc/PID/root."""
    assert service()["cap_drop"] == ["ALL"] and service()["cap_add"] == ["SYS_PTRACE"]
    workers = lb.workers()
    probe = ["/opt/nginxctl/bin/python", "-c", PROBE, lb.name]
    granted = controllers(lb.inventory.parent, entrypoint=probe[0], command=probe[1:])
    assert granted.exit_code() == 0, granted.container.logs().decode()
    assert granted.container.logs(stderr=False).decode().startswith("local path: /proc/")
    wait_for(lambda: lb.workers().isdisjoint(workers), 30, lambda: "the SIGHUP from the container did not reload")
    denied = controllers(lb.inventory.parent, entrypoint=probe[0], command=probe[1:], cap_add=[])
    assert denied.exit_code() == 0, denied.container.logs().decode()
    assert denied.container.logs(stderr=False).decode() == "no local path\n"


def test_the_containerised_watch_applies_serves_metrics_and_follows_edits(lb, backends, controllers):
    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address])
    lb.write({"pool": g})
    c = controllers(lb.inventory.parent)
    c.applied()
    assert who(port) == "A"
    assert 'nginxctl_reloads_total{result="ok"} 1.0' in c.metrics()
    seen = len(c.events())
    port2, g2 = lb.group([b.address], port=port)
    tmp = lb.inventory.with_name(".inventory.yaml.new")  # an editor's save by rename: the folder is mounted
    tmp.write_text(yaml.safe_dump({"nginx": {"worker_processes": 2}, "target": {"container": lb.name},
                                   "upstreams": {"pool": g2}}))
    tmp.rename(lb.inventory)
    c.applied(after=seen)
    assert who(port) == "B"


@pytest.mark.parametrize("pid_mode", ["host", None], ids=["host PID namespace", "own PID namespace"])
def test_a_killed_controller_started_again_takes_its_own_lock_back_and_others_are_refused(
        lb, backends, controllers, pid_mode):
    a = backends("A")
    port, g = lb.group([a.address])
    lb.write({"pool": g})
    first = controllers(lb.inventory.parent, pid_mode=pid_mode)
    first.applied()
    first.container.kill()  # SIGKILL: the watch lock stays behind, held by a process that is gone
    assert first.exit_code() != 0
    again = controllers(lb.inventory.parent, pid_mode=pid_mode)  # recreated: a new container, a new host name
    again.applied()
    assert who(port) == "A"
    other = controllers(lb.inventory.parent, pid_mode=pid_mode, environment={"NGINXCTL_LOCK_OWNER": "someone-else"})
    assert other.exit_code() == 3
    assert "another nginxctl watch already controls" in other.container.logs().decode()
    on_host = cli("watch", "-i", str(lb.inventory))
    assert on_host.returncode == 3 and "owner nginxctl-demo-controller" in on_host.stderr, on_host.stderr


@pytest.mark.parametrize("pid_mode", ["host", None], ids=["host PID namespace", "own PID namespace"])
def test_status_on_the_host_reads_the_containerised_watchs_health_as_live(lb, controllers, pid_mode):
    a = Pong(free_port(), "A")
    try:
        port, g = lb.group([f"127.0.0.1:{a.server_address[1]}"],
                           health_check={"interval": "500ms", "timeout": "200ms", "fails": 2, "passes": 1})
        lb.write({"pool": g})
        c = controllers(lb.inventory.parent, pid_mode=pid_mode)
        c.applied()

        def health() -> dict[str, Any] | None:
            status = cli("status", "-i", str(lb.inventory), "-f", "json")
            assert status.returncode == 0, status.stderr
            return json.loads(status.stdout).get("health")

        wait_for(lambda: bool(health()), 30, lambda: "no health published")
        report = health()
        assert report is not None and report["stale"] is False, report
        c.container.stop(timeout=30)  # SIGTERM: the watch says it stopped
        report = health()
        assert report is not None and report["stale"] is True, report
    finally:
        a.close()
