"""`nginxctl watch` against a real nginx container, real backends (containers of the project's nginx image
serving a fixed reply with a stream `return`, TCP servers on the host) and a real etcd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from nginxctl.history import sha
from nginxctl.nginx import LiveNginx

from helpers import IMAGE, TIMEOUT, free_port, read_line

pytestmark = pytest.mark.integration
QUIET = ["--quiet-period", "300ms", "--max-wait", "3s"]


def reply(port: int) -> str | None:
    """What a new connection through the load balancer answers (None: closed with no answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            return read_line(s) or None
    except OSError:
        return None


def replies(port: int, n: int = 6) -> set[str | None]:
    return {reply(port) for _ in range(n)}


def reloads_in_nginx_log(lb: Any, since: float) -> int:
    """Reloads nginx itself logged since `since` (its `reconfiguring` notices)."""
    log = lb.container.logs(stdout=False, stderr=True, since=since).decode()
    return sum(1 for line in log.splitlines() if line.endswith("reconfiguring") and "signal" not in line)


def write(lb: Any, groups: dict[str, Any], **top: Any) -> Path:
    lb.inventory.write_text(yaml.safe_dump({"target": {"container": lb.name}, "nginx": {"worker_processes": 1},
                                            "upstreams": groups, **top}, sort_keys=False))
    return lb.inventory


def watched(lb: Any, watches: Any, server: Any) -> tuple[int, Path, Any]:
    """A group "pool" of `server` on a free port, under a watch that has applied it: (port, inventory, watch)."""
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [server.address]}})
    w = watches(inv, *QUIET)
    w.reload()
    return port, inv, w


def test_a_labelled_container_joins_and_leaves(lb, backends, backend_containers, watches):
    static = backends("S")
    port = free_port()
    group = f"pool{uuid.uuid4().hex[:8]}"  # the engine is shared: labels for this test's group only
    inv = write(lb, {group: {"listen": f"127.0.0.1:{port}", "servers": [static.address], "discover": "docker"}})
    w = watches(inv, *QUIET)
    w.reload()
    assert replies(port) == {"S"}
    port_d1 = free_port()
    d1 = backend_containers("D1", {"nginxctl.group": group, "nginxctl.port": str(port_d1)}, port=port_d1)
    event = w.reload()
    assert event["added"] == [f"{group}/127.0.0.1:{port_d1}"]
    assert event["since_first_change"] <= 0.3 + 3.0  # within the quiet period plus one reload (max-wait bound)
    assert replies(port, 8) == {"S", "D1"}
    d1.stop(timeout=1)
    event = w.reload()
    assert event["removed"] == [f"{group}/127.0.0.1:{port_d1}"]
    assert replies(port) == {"S"}
    m = w.metrics()
    assert m[("nginxctl_reloads_total", (("result", "ok"),))] == 3
    assert m[("nginxctl_servers", (("group", group), ("source", "static"), ("state", "up")))] == 1
    assert w.stop() == 0


REGISTER = """
import sys, threading, etcd3gw
client = etcd3gw.Etcd3Client(host="127.0.0.1", port=int(sys.argv[1]), timeout=5)
lease = client.lease(ttl=int(sys.argv[4]))
client.put(sys.argv[2], sys.argv[3], lease=lease)
print("registered", flush=True)
while True:
    lease.refresh()
    threading.Event().wait(0.5)
"""


def register(etcd: Any, key: str, value: str, ttl: int = 2) -> subprocess.Popen[str]:
    """A backend's registering process: PUT under a `ttl`-second lease, kept alive until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", REGISTER, str(etcd.port), key, value, str(ttl)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "registered"
    return proc


def etcd_group(lb: Any, etcd: Any, port: int, servers: list[str] | None = None, **extra: Any) -> Path:
    group: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "discover": {"etcd": "/ns/netty_pool/"}, **extra}
    if servers is not None:
        group["servers"] = servers
    return write(lb, {"netty_pool": group}, discovery={"etcd": {"endpoints": [etcd.endpoint]}})


def test_a_server_registered_in_etcd_under_a_lease_joins_and_leaves_when_its_process_dies(
        lb, backends, etcd, watches):
    a = backends("A")
    port = free_port()
    inv = etcd_group(lb, etcd, port)
    w = watches(inv, *QUIET)
    w.reload()
    assert replies(port, 2) == {None}  # no backend yet: the listen is there, connections find nothing
    registrar = register(etcd, f"/ns/netty_pool/{a.address}", a.address, ttl=2)
    try:
        event = w.reload()
        assert event["added"] == [f"netty_pool/{a.address}"]
        assert replies(port) == {"A"}
        killed = time.monotonic()
        registrar.send_signal(signal.SIGKILL)
        registrar.wait(5)
        event = w.reload(timeout=15)
        left = time.monotonic() - killed
        assert event["removed"] == [f"netty_pool/{a.address}"]
        assert left <= 2 + 3.0 + 5, left  # lease TTL + max-wait + one reload, with room for a slow machine
    finally:
        registrar.kill()
        registrar.wait(5)
        if registrar.stdout:
            registrar.stdout.close()
    assert replies(port, 2) == {None}


def test_etcd_json_values_and_bad_values(lb, backends, etcd, watches):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = etcd_group(lb, etcd, port)
    client = etcd.client()
    client.put(f"/ns/netty_pool/{a.address}", json.dumps({"address": a.address, "weight": 3}))
    client.put("/ns/netty_pool/bad-port", "127.0.0.1:99999")
    client.put("/ns/netty_pool/injection", json.dumps({"address": b.address, "weight": "1; evil"}))
    w = watches(inv, *QUIET)
    first = w.reload()
    assert first["servers"] == 1
    skipped = [e for e in w.seen if e["event"] == "skip" and e["source"] == "etcd"]
    assert {e["origin"] for e in skipped} == {"/ns/netty_pool/bad-port", "/ns/netty_pool/injection"}
    assert any("65535" in e["message"] for e in skipped)
    assert "weight=3" in LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf").decode()
    assert replies(port) == {"A"}
    m = w.metrics()
    assert m[("nginxctl_discovered_skipped", (("source", "etcd"),))] == 2


def test_a_burst_of_20_changes_gives_one_reload(lb, backends, etcd, watches):
    a = backends("A")
    port = free_port()
    inv = etcd_group(lb, etcd, port, servers=[a.address])
    w = watches(inv, "--quiet-period", "1s", "--max-wait", "10s")
    w.reload()
    since = time.time()
    client = etcd.client()
    for i in range(20):
        client.put(f"/ns/netty_pool/b{i}", f"127.0.0.1:{40000 + i}")
    event = w.reload()
    assert len(event["added"]) == 20
    assert reloads_in_nginx_log(lb, since) == 1
    assert w.metrics()[("nginxctl_reloads_total", (("result", "ok"),))] == 2


def test_a_backend_that_registers_and_dies_in_a_loop_is_coalesced(lb, backends, etcd, watches):
    a = backends("A")
    port = free_port()
    inv = etcd_group(lb, etcd, port, servers=[a.address])
    w = watches(inv, "--quiet-period", "1s", "--max-wait", "4s")
    w.reload()
    since = time.time()
    client = etcd.client()
    started = time.monotonic()
    while time.monotonic() - started < 6:  # flapping for 6 s, bounded
        client.put("/ns/netty_pool/flappy", "127.0.0.1:40999")
        client.delete("/ns/netty_pool/flappy")
    w.wait(lambda e: e["event"] in ("reload", "in-sync") and time.monotonic() - started > 6, timeout=15)
    assert reloads_in_nginx_log(lb, since) <= 2  # at most one per --max-wait of churn, never one per change
    assert replies(port) == {"A"}


def test_etcd_outage_keeps_the_servers_and_resyncs(lb, backends, etcd, watches):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = etcd_group(lb, etcd, port)
    etcd.client().put(f"/ns/netty_pool/{a.address}", a.address)
    w = watches(inv, *QUIET)
    w.reload()
    etcd.stop()
    w.wait(lambda e: e["event"] == "source" and "unreachable" in e["message"])
    assert replies(port) == {"A"}  # the pool did not empty
    assert w.metrics()[("nginxctl_source_stale", (("source", "etcd"),))] == 1
    etcd.start()
    client = etcd.client()
    client.put(f"/ns/netty_pool/{b.address}", b.address)
    w.wait(lambda e: e["event"] == "source" and "reachable again" in e["message"], timeout=40)
    event = w.reload(timeout=40)
    assert event["added"] == [f"netty_pool/{b.address}"]
    assert replies(port, 8) == {"A", "B"}
    assert w.metrics()[("nginxctl_source_stale", (("source", "etcd"),))] == 0


def test_an_invalid_edit_keeps_the_last_good_config_and_the_next_valid_one_applies(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port, inv, w = watched(lb, watches, a)
    good = LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf")
    inv.write_text(inv.read_text().replace(a.address, "127.0.0.1:99999"))
    event = w.wait(lambda e: e["event"] == "inventory" and "invalid" in e["message"])
    assert any(f"{inv}:" in p and "expected a port from 1 to 65535" in p for p in event["problems"])
    assert w.metrics()[("nginxctl_inventory_invalid", ())] == 1
    assert LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf") == good
    assert replies(port) == {"A"}
    with open(inv, "w") as fh:  # saved half-written: a truncated file, then the rest
        fh.write("target: {container: ")
        fh.flush()
        w.wait(lambda e: e["event"] == "inventory" and "invalid" in e["message"])
        fh.seek(0)
        fh.truncate()
        fh.write(yaml.safe_dump({"target": {"container": lb.name}, "nginx": {"worker_processes": 1},
                                 "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "servers": [b.address]}}}))
    event = w.reload()
    assert event["added"] == [f"pool/{b.address}"] and event["removed"] == [f"pool/{a.address}"]
    assert replies(port) == {"B"}
    assert w.metrics()[("nginxctl_inventory_invalid", ())] == 0


def test_an_editor_saving_by_rename_is_seen(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port, inv, w = watched(lb, watches, a)
    tmp = inv.with_name(".inventory.yaml.swp")
    tmp.write_text(inv.read_text().replace(a.address, b.address))
    os.replace(tmp, inv)
    w.reload()
    assert replies(port) == {"B"}


def test_sigterm_in_the_middle_of_an_apply_leaves_a_whole_valid_config(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port, inv, w = watched(lb, watches, a)
    live = LiveNginx.attach(lb.client, lb.name)
    before = live.read_file("/etc/nginx/nginx.conf")
    inv.write_text(inv.read_text().replace(a.address, b.address))
    w.wait(lambda e: e["event"] == "apply")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert any(e["event"] == "stop" for e in [*w.seen, *list(w.lines.queue)])
    after = live.read_file("/etc/nginx/nginx.conf")
    assert after is not None and (after == before or f"server {b.address};".encode() in after)
    assert live.exec(["-t"]).exit_code == 0
    status = json.loads(subprocess.run([sys.executable, "-m", "nginxctl", "status", "-i", str(inv), "-f", "json"],
                                       capture_output=True, text=True, cwd="/").stdout)
    assert status["last_apply"] == "done" and status["loaded"] == status["deployed_sha256"] == sha(after)
    assert replies(port) == ({"B"} if after != before else {"A"})


def test_sigusr1_dumps_every_thread_and_the_watch_goes_on(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port, inv, w = watched(lb, watches, a)
    for _ in range(5):   # each time, while its threads run (a dump that walked them unlocked crashed it)
        w.proc.send_signal(signal.SIGUSR1)
        w.wait(lambda e: "most recent call first" in e.get("message", ""))
        w.wait(lambda e: "in _run" in e.get("message", ""))   # the sources' threads too, not only the loop's
    inv.write_text(inv.read_text().replace(a.address, b.address))   # it still follows changes
    w.wait(lambda e: e["event"] == "reload" and e.get("result") == "ok")
    assert replies(port) == {"B"}
    assert w.stop() == 0


def test_a_second_watch_on_the_same_target_fails_at_once_naming_the_holder(lb, backends, watches):
    a = backends("A")
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}})
    first = watches(inv, *QUIET)
    first.reload()
    second = subprocess.run([sys.executable, "-m", "nginxctl", "watch", "-i", str(inv)], capture_output=True,
                            text=True, cwd="/", timeout=60)
    assert second.returncode == 3, second.stderr
    assert f"another nginxctl watch already controls {lb.name} (watch by pid {first.proc.pid}" in second.stderr


def test_bad_labels_are_logged_and_skipped_without_breaking_the_others(lb, backends, backend_containers, watches):
    a = backends("A")
    port = free_port()
    group = f"pool{uuid.uuid4().hex[:8]}"  # the engine is shared: labels for this test's group only
    inv = write(lb, {group: {"listen": f"127.0.0.1:{port}", "servers": [a.address], "discover": "docker"}})
    good_port = free_port()
    backend_containers("G", {"nginxctl.group": group, "nginxctl.port": str(good_port)}, port=good_port)
    backend_containers("X", {"nginxctl.group": group, "nginxctl.port": "http"})
    backend_containers("Y", {"nginxctl.group": group, "nginxctl.port": "7000", "nginxctl.weight": "5;x"})
    backend_containers("Z", {"nginxctl.group": group})
    backend_containers("O", {"nginxctl.group": f"{group}-elsewhere", "nginxctl.port": "7000"})
    w = watches(inv, *QUIET)
    event = w.reload()
    assert event["servers"] == 2
    skipped = [e for e in w.seen if e["event"] == "skip"]
    assert len(skipped) == 3 and all(e["group"] == group for e in skipped)  # not the other load balancer's
    assert replies(port, 8) == {"A", "G"}


def test_the_target_restarted_is_checked_and_reapplied(lb, backends, backend_containers, watches):
    a = backends("A")
    port, inv, w = watched(lb, watches, a)
    lb.container.restart(timeout=5)  # nginx starts from the installed file: in sync, nothing to do
    w.wait(lambda e: e["event"] == "in-sync")
    assert replies(port) == {"A"}
    lb.container.stop(timeout=2)
    w.wait(lambda e: e["event"] == "reload" and e.get("result") == "error")
    lb.container.start()
    w.wait(lambda e: e["event"] in ("in-sync", "reload") and e.get("result", "ok") == "ok", timeout=40)
    assert replies(port) == {"A"}


def test_a_reload_deferred_by_lingering_generations_is_applied_when_they_drain(lb, backends, watches):
    a = backends("A")
    port = free_port()
    groups: dict[str, Any] = {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}
    inv = write(lb, groups)
    w = watches(inv, *QUIET, "--max-generations", "1")
    w.reload()
    held = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        assert read_line(held) == "A"
        groups["second"] = {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}
        write(lb, groups)
        w.reload()  # the held connection now lingers in an old generation
        third = free_port()
        groups["third"] = {"listen": f"127.0.0.1:{third}", "servers": [a.address]}
        write(lb, groups)
        refused = w.wait(lambda e: e["event"] == "reload" and e.get("result") == "refused")
        assert "1 old worker generation(s) linger" in refused["message"]
        assert w.metrics()[("nginxctl_pending_changes", ())] >= 1
        assert reply(third) is None  # not applied yet: nothing listens there
    finally:
        held.close()
    w.reload(timeout=30)  # retried when the old generation is gone
    assert reply(third) == "A"
    m = w.metrics()
    assert m[("nginxctl_reloads_total", (("result", "refused"),))] >= 1
    assert m[("nginxctl_reloads_total", (("result", "ok"),))] == 3
    assert m[("nginxctl_pending_changes", ())] == 0


class EngineProxy:
    """A unix socket in front of the Docker engine's: stopping it is, for whoever talks through it, the
    engine going away (connections cut, new ones refused); starting it again is the engine coming back."""

    def __init__(self, path: Path, engine: str = "/var/run/docker.sock") -> None:
        self.path, self.engine = path, engine
        self.server: Any = None
        self.conns: set[socket.socket] = set()

    def start(self) -> EngineProxy:
        import socketserver

        proxy = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                import selectors

                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(proxy.engine)
                proxy.conns.update({self.request, upstream})
                sel = selectors.DefaultSelector()
                sel.register(self.request, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, self.request)
                try:
                    while True:
                        for key, _ in sel.select():
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            key.data.sendall(data)
                except OSError:
                    return
                finally:
                    sel.close()
                    upstream.close()

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        self.path.unlink(missing_ok=True)
        self.server = Server(str(self.path), Pipe)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for conn in list(self.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns.clear()
        self.path.unlink(missing_ok=True)


def test_the_docker_engine_going_away_and_coming_back(lb, backends, watches, tmp_path, monkeypatch):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    proxy = EngineProxy(tmp_path / "engine.sock").start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
        w = watches(inv, *QUIET)
        w.reload()
        proxy.stop()  # the engine restarts: its API is gone for a while
        w.wait(lambda e: e["event"] == "source" and "docker unreachable" in e["message"])
        inv.write_text(inv.read_text().replace(a.address, b.address))
        failed = w.wait(lambda e: e["event"] == "reload" and e.get("result") == "error")
        assert failed["message"].startswith("target unreachable:") and failed["retry_in"] > 0
        assert replies(port) == {"A"}  # nginx keeps running the last good config meanwhile
        proxy.start()  # back
        w.reload(timeout=40)
        assert replies(port) == {"B"}
        assert any(e["event"] == "source" and "reachable again" in e["message"] for e in w.seen)
    finally:
        proxy.stop()


def test_the_target_removed_then_created_again_is_reapplied(lb, backends, watches, docker_client):
    a = backends("A")
    port, inv, w = watched(lb, watches, a)
    lb.container.remove(force=True)
    assert reply(port) is None
    w.wait(lambda e: e["event"] == "target" or (e["event"] == "reload" and e.get("result") == "error"))
    lb.container = docker_client.containers.run(IMAGE, name=lb.name, detach=True, network_mode="host",
                                                labels={"nginxctl.test": "1"})
    w.reload(timeout=40)  # a new container runs the image's bootstrap config: it drifted, re-applied
    assert replies(port) == {"A"}
    second = subprocess.run([sys.executable, "-m", "nginxctl", "watch", "-i", str(inv)], capture_output=True,
                            text=True, cwd="/", timeout=60)
    assert second.returncode == 3, second.stderr  # the lock follows the name: still one watch per target


def test_etcd_down_when_watch_starts_does_not_empty_the_pool(lb, backends, etcd, watches):
    a = backends("A")
    port = free_port()
    inv = etcd_group(lb, etcd, port)
    etcd.client().put(f"/ns/netty_pool/{a.address}", a.address)
    assert subprocess.run([sys.executable, "-m", "nginxctl", "apply", "-i", str(inv), "--reload"],
                          capture_output=True, text=True, cwd="/").returncode == 0
    assert replies(port) == {"A"}
    etcd.stop()
    refused = subprocess.run([sys.executable, "-m", "nginxctl", "apply", "-i", str(inv), "--reload"],
                             capture_output=True, text=True, cwd="/")
    assert refused.returncode == 3 and "discovery from etcd is not reachable" in refused.stderr
    w = watches(inv, *QUIET)
    w.wait(lambda e: e["event"] == "wait" and "etcd not reachable yet" in e["message"])
    assert replies(port) == {"A"}  # the target keeps what it runs
    etcd.start()
    w.wait(lambda e: e["event"] in ("in-sync", "reload") and e.get("result", "ok") == "ok", timeout=40)
    assert replies(port) == {"A"}
