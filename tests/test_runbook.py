"""docs/runbook.md, executed: each test runs the exact shell lines of its section against real nginx and
real long-lived connections, so the runbook cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from nginxctl.hashring import Ring

from helpers import Devices, Held, free_port, who

RUNBOOK = (Path(__file__).parent.parent / "docs" / "runbook.md").read_text()


def blocks(title: str) -> list[list[str]]:
    """The ```sh blocks of the section `## title`, as lists of command lines."""
    body = RUNBOOK.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [[line for line in b.splitlines() if line.strip()] for b in re.findall(r"```sh\n(.*?)```", body, re.S)]


def env(**values: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **values}


def run(block: list[str], cwd: Path, **values: str) -> list[subprocess.CompletedProcess[str]]:
    return [subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, env=env(**values), text=True,
                           capture_output=True, timeout=180) for line in block]


def ok(results: list[subprocess.CompletedProcess[str]]) -> list[subprocess.CompletedProcess[str]]:
    for r in results:
        assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return results


def edit(lb, change) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(lb.inventory.read_text())
    change(data)
    lb.inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def start(lb, servers, **group):  # type: ignore[no-untyped-def]
    port, g = lb.group([s.address for s in servers], **group)
    lb.write({"netty_pool": g})
    assert subprocess.run([sys.executable, "-m", "nginxctl", "apply", "--reload", "-q"], cwd=lb.inventory.parent,
                          env=env(), capture_output=True).returncode == 0
    return port


def test_every_procedure_names_a_test_that_exists():
    sections = re.findall(r"\n## (.+)\n<!-- test: (\w+) -->", RUNBOOK)
    assert len(sections) == RUNBOOK.count("\n## ") >= 12
    assert all(name in globals() and callable(globals()[name]) for _, name in sections)
    assert all(blocks(title) for title, _ in sections)


@pytest.mark.integration
def test_add_a_backend(lb, backends):
    a, b = backends("A"), backends("B")
    port = start(lb, [a], balance="least_conn")
    held = [Held(port) for _ in range(2)]
    try:
        edit(lb, lambda d: d["upstreams"]["netty_pool"]["servers"].append(b.address))
        diff, apply, status = ok(run(blocks("Add a backend")[0], lb.inventory.parent))
        assert f"+        server {b.address};" in diff.stdout
        assert "applied and reloaded" in apply.stdout and b.address in status.stdout
        # the new generation counts from zero: new long connections spread over A and B
        fresh = [Held(port) for _ in range(4)]
        held += fresh
        assert Counter(h.name for h in fresh) == {"A": 2, "B": 2}
        assert a.wait_connections(4) and b.wait_connections(2)  # the two from before stay on A
        assert all(h.echo() == b"ping\n" for h in held)  # and work
    finally:
        for h in held:
            h.close()


@pytest.mark.integration
def test_drain_and_remove_a_backend(lb, backends):
    a, b = backends("A"), backends("B")
    port = start(lb, [a, b], balance="least_conn")
    held = [Held(port) for _ in range(4)]
    try:
        drain_block, remove_block = blocks("Drain and remove a backend")
        (line,) = drain_block
        proc = subprocess.Popen(["bash", "-c", line], cwd=lb.inventory.parent, env=env(SERVER=b.address),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        for err_line in proc.stderr:  # the reload is done once it waits for connections
            if "waiting:" in err_line:
                break
        assert "down: true" in lb.inventory.read_text()
        assert who(port) == "A"
        for h in held:
            if h.name == "B":
                h.close()
        out, _ = proc.communicate(timeout=60)
        proc.stderr.close()
        assert proc.returncode == 0 and f"no connection to {b.address} remains" in out
        edit(lb, lambda d: d["upstreams"]["netty_pool"]["servers"].pop(1))
        ok(run(remove_block, lb.inventory.parent))
        assert b.address not in lb.inventory.read_text()
        assert {who(port) for _ in range(3)} == {"A"}
    finally:
        for h in held:
            h.close()


@pytest.mark.integration
def test_scale_out_a_long_connection_pool(lb, backends):
    a, b = backends("A"), backends("B")
    port = start(lb, [a, b], balance="least_conn")
    devices = Devices(port, 40)
    try:
        devices.wait(lambda d: d.counts() == {"A": 20, "B": 20}, 20, "40 devices on A and B")
        c = backends("C")
        edit(lb, lambda d: d["upstreams"]["netty_pool"]["servers"].append(c.address))
        apply, before, plan, rebalance, after = ok(run(blocks("Scale out a long-connection pool")[0],
                                                       lb.inventory.parent))
        assert f"{c.address}" in before.stdout and "share 13.33" in before.stdout
        assert "minimum: 12 connection(s) must move" in plan.stdout   # C lacks 12 below 13.33 - 10%
        assert "rebalanced netty_pool" in rebalance.stdout
        devices.wait(lambda d: d.connected() == 40, 10, "every device back")
        assert all(abs(n - 40 / 3) <= 2 for n in devices.counts().values()), devices.counts()
        assert devices.resets == 0 and 12 <= devices.eofs <= 1.15 * 12 + 1
        assert "drift       no" in after.stdout and "(rebalance)" not in after.stdout   # the normal config again
    finally:
        devices.close()


@pytest.mark.integration
def test_rebalance_after_scale_out(lb, backends):
    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address], balance="least_conn")
    lb.write({"netty_pool": g}, nginx={"worker_shutdown_timeout": "1s"})
    ok(run(["nginxctl apply --reload"], lb.inventory.parent))
    held = [Held(port) for _ in range(4)]
    assert {h.name for h in held} == {"A"}
    edit(lb, lambda d: d["upstreams"]["netty_pool"]["servers"].append(b.address))
    ok(run(blocks("Rebalance long connections after a scale-out")[0], lb.inventory.parent))
    for h in held:  # the old workers cut them after the timeout: the clients see EOF
        h.sock.settimeout(30)
        assert h.sock.recv(16) == b""
        h.close()
    assert a.wait_connections(0)
    again = [Held(port) for _ in range(4)]
    try:
        assert Counter(h.name for h in again) == {"A": 2, "B": 2}
    finally:
        for h in again:
            h.close()


@pytest.mark.integration
def test_choose_a_balancing_method(lb, backends):
    a, b = backends("A"), backends("B")
    port = start(lb, [a, b])
    least_conn, hashing = blocks("Choose a balancing method")
    edit(lb, lambda d: d["upstreams"]["netty_pool"].update(balance="least_conn"))
    ok(run(least_conn, lb.inventory.parent))
    held = [Held(port) for _ in range(2)]
    try:
        for h in held:
            if h.name == "B":
                h.close()
        assert b.wait_connections(0)
        assert [who(port) for _ in range(3)] == ["B"] * 3
    finally:
        for h in held:
            h.close()

    edit(lb, lambda d: d["upstreams"]["netty_pool"].update(balance="hash", hash_key="$remote_addr", consistent=True))
    ok(run(hashing, lb.inventory.parent))
    clients = [f"127.0.0.{i}" for i in range(2, 42)]  # 40 client addresses, each a socket bound to it
    first = {src: who(port, src) for src in clients}
    assert all(who(port, src) == first[src] for _ in range(3) for src in clients)  # each client sticks
    assert set(first.values()) == {"A", "B"}  # and the clients spread over the servers
    c = backends("C")
    edit(lb, lambda d: d["upstreams"]["netty_pool"]["servers"].append(c.address))
    ok(run(hashing, lb.inventory.parent))
    after = {src: who(port, src) for src in clients}
    moved = [src for src in clients if after[src] != first[src]]
    assert {after[src] for src in moved} == {"C"}  # consistent: a client moves only onto the new server
    # exactly the clients whose key the new ring maps to C (C's share of the ring varies with its port:
    # about a third on average, more or less for a given port), none other
    before_ring = Ring.build([(x.address, 1, False) for x in (a, b)])
    after_ring = Ring.build([(x.address, 1, False) for x in (a, b, c)])
    predicted = [src for src in clients if before_ring.lookup(src.encode()) != after_ring.lookup(src.encode())]
    assert moved == predicted and len(moved) < len(clients)


@pytest.mark.integration
def test_set_worker_shutdown_timeout(lb, backends):
    a = backends("A")
    port = start(lb, [a])
    before = Held(port)  # started under workers without a timeout
    try:
        edit(lb, lambda d: d["nginx"].update(worker_shutdown_timeout="1s"))
        ok(run(blocks("Set worker_shutdown_timeout")[0], lb.inventory.parent))
        after = Held(port)  # served by workers started with the timeout
        edit(lb, lambda d: d["upstreams"]["netty_pool"].update(proxy_timeout="2h"))
        apply, status = ok(run(blocks("Set worker_shutdown_timeout")[0], lb.inventory.parent))
        assert "cut after worker_shutdown_timeout 1s" in status.stdout
        after.sock.settimeout(30)
        assert after.sock.recv(16) == b""  # cut by the timeout it started with
        after.close()
        assert before.echo() == b"ping\n"  # never cut by surprise
    finally:
        before.close()


@pytest.mark.integration
def test_keep_generations_bounded_under_churn(lb, backends):
    a, b = backends("A"), backends("B")
    port = start(lb, [a])
    apply_now = [sys.executable, "-m", "nginxctl", "apply", "--reload", "-q", "--max-generations", "50"]
    oldest = [Held(port) for _ in range(3)]
    newer: list[Held] = []
    try:
        edit(lb, lambda d: d["upstreams"].update(x={"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}))
        assert subprocess.run(apply_now, cwd=lb.inventory.parent, env=env()).returncode == 0
        newer.append(Held(port))
        edit(lb, lambda d: d["upstreams"].update(y={"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}))
        assert subprocess.run(apply_now, cwd=lb.inventory.parent, env=env()).returncode == 0
        # two generations linger (3 and 1 connections); the change: A replaced by B
        edit(lb, lambda d: d["upstreams"]["netty_pool"].update(servers=[b.address]))
        preview, applied, status = ok(run(blocks("Keep generations bounded under churn")[0], lb.inventory.parent))
        assert "a reload now would be refused: 2 old generation(s) linger" in preview.stdout
        assert "retiring the oldest generation" in applied.stderr
        for held in oldest:
            held.sock.settimeout(10)
            assert held.sock.recv(16) == b""             # an orderly close
        assert newer[0].echo() == b"ping\n"              # the newer generation keeps its connection
        assert who(port) == "B"
        assert "lingering generation 1: 1 old worker(s)" in status.stdout, status.stdout  # the one with a client
        assert "1 connection(s)" in status.stdout
        assert "lingering generation 2" not in status.stdout

        line = blocks("Keep generations bounded under churn")[1][0]
        watch = subprocess.Popen(["bash", "-c", f"exec {line} --log-format json"], cwd=lb.inventory.parent,
                                 env=env(METRICS_PORT=str(free_port())), stderr=subprocess.PIPE, text=True)
        try:
            assert watch.stderr is not None
            first = json.loads(watch.stderr.readline())
            assert first["event"] == "start" and first["retire_rate"] == 20 and first["max_generations"] == 16
            assert first["max_lingering_memory"] == 512 * 1024 * 1024
        finally:
            watch.terminate()
            watch.wait(30)
            if watch.stderr is not None:
                watch.stderr.close()
    finally:
        for held in oldest + newer:
            held.close()


@pytest.mark.integration
def test_size_capacity(lb, backends):
    a = backends("A")
    port, g = lb.group([a.address])
    lb.write({"netty_pool": g}, nginx={"worker_processes": 1, "worker_connections": 64})
    ok(run(["nginxctl apply --reload"], lb.inventory.parent))
    naive = []
    try:
        for _ in range(60):
            h = Held(port)
            naive.append(h)
            if h.name != "A":
                break
        assert sum(h.name == "A" for h in naive) < 32  # 64 worker connections: under 32 proxied
    finally:
        for h in naive:
            h.close()
    assert a.wait_connections(0)
    lb.write({"netty_pool": g}, nginx={"worker_processes": 1, "max_connections": 100})
    render, validate, apply = ok(run(blocks("Size capacity")[0], lb.inventory.parent, CONTAINER=lb.name))
    assert "worker_connections 301;" in render.stdout  # 2 x 100 x 1.5, plus the listening socket
    assert validate.stdout.startswith("ok:"), validate.stdout
    held = [Held(port) for _ in range(100)]
    try:
        assert Counter(h.name for h in held) == {"A": 100}
        assert all(h.echo() == b"ping\n" for h in held)
    finally:
        for h in held:
            h.close()


@pytest.mark.integration
def test_ha_pair(lb_factory, backends):
    a = backends("A")
    lb1, lb2 = lb_factory(), lb_factory()
    port, g = lb1.group([a.address], reuseport=True)
    lb1.write({"netty_pool": g})
    loop, status1, status2 = ok(run(blocks("An HA pair of load balancers")[0], lb1.inventory.parent,
                                    LB1=lb1.name, LB2=lb2.name))
    assert [yaml.safe_load(s.stdout)["drift"] for s in (status1, status2)] == [False, False]
    assert who(port) == "A"
    lb1.container.remove(force=True)  # one load balancer dies: the other keeps serving
    assert [who(port) for _ in range(5)] == ["A"] * 5


def _wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """Poll `predicate` (a check on real state) until it is true; never a bare sleep."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.2)


@pytest.mark.integration
def test_run_the_controller_as_a_service(lb, backends):
    from helpers import free_port

    a = backends("A")
    port = start(lb, [a])
    metrics = f"127.0.0.1:{free_port()}"
    unit = (Path(__file__).parent.parent / "deploy" / "systemd" / "nginxctl-watch.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == ["watch", "--metrics", "127.0.0.1:9145", "--log-format", "json"]
    assert "install -m 0644 deploy/systemd/nginxctl-watch.service /etc/systemd/system/" in RUNBOOK
    folder = lb.inventory.parent
    started, stop = blocks("Run the controller as a service")
    try:
        launch, healthz, reloads = ok(run(started, folder, METRICS=metrics))
        assert healthz.stdout == "ok\n"
        assert reloads.stdout.startswith('nginxctl_reloads_total{result="ok"}')
        second = subprocess.run([sys.executable, "-m", "nginxctl", "watch"], cwd=folder, env=env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 3 and "another nginxctl watch already controls" in second.stderr
        assert who(port) == "A"
    finally:
        pid = int((folder / "watch.pid").read_text())
        ok(run(stop, folder))
        _wait_for(lambda: _gone(pid))
    log = (folder / "watch.log").read_text().splitlines()
    events = [yaml.safe_load(line)["event"] for line in log]
    assert events[0] == "start" and events[-1] == "stop", events
    assert "reload" in events or "in-sync" in events, events


def _answers(port: int) -> str | None:
    try:
        return who(port)
    except OSError:
        return None


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.integration
def test_add_a_backend_by_registering_it(lb, backends, etcd):
    import json

    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address])
    g["discover"] = {"etcd": "/services/netty_pool/"}
    lb.write({"netty_pool": g}, discovery={"etcd": {"endpoints": [etcd.endpoint]}})
    folder = lb.inventory.parent
    watcher = subprocess.Popen([sys.executable, "-m", "nginxctl", "watch", "--quiet-period", "300ms"], cwd=folder,
                               env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _answers(port) == "A")
        register, listed = ok(run(blocks("Add a backend by registering it")[0], folder, ETCD=etcd.endpoint,
                                  SERVER=b.address))
        assert listed.stdout.splitlines() == [f"/services/netty_pool/{b.address}", b.address]

        def joined() -> bool:
            status = json.loads(subprocess.run([sys.executable, "-m", "nginxctl", "status", "-f", "json"], cwd=folder,
                                               env=env(), capture_output=True, text=True).stdout)
            servers = [s["address"] for s in status["groups"][0]["servers"]]
            return b.address in servers and status["reload_pending"] is False and status["drift"] is False

        _wait_for(joined)
        assert {who(port) for _ in range(6)} == {"A", "B"}
        ok(run(blocks("Add a backend by registering it")[1], folder, ETCD=etcd.endpoint, SERVER=b.address))
        _wait_for(lambda: {who(port) for _ in range(4)} == {"A"})
    finally:
        watcher.terminate()
        assert watcher.wait(30) == 0


@pytest.mark.integration
def test_health_check_a_pool(lb):
    import json

    from helpers import Pong, free_port

    a, b = Pong(free_port(), "A"), Pong(free_port(), "B")
    try:
        snippet = RUNBOOK.split("\n## Health-check a pool\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
        health = yaml.safe_load(snippet)["health_check"]
        assert health == {"interval": "2s", "timeout": "1s", "fails": 3, "passes": 2, "send": "PING\r\n",
                          "expect": "PONG"}
        port, g = lb.group([f"127.0.0.1:{a.server_address[1]}", f"127.0.0.1:{b.server_address[1]}"],
                           health_check=health)
        lb.write({"netty_pool": g})
        folder = lb.inventory.parent
        watcher = subprocess.Popen([sys.executable, "-m", "nginxctl", "watch", "--quiet-period", "200ms"],
                                   cwd=folder, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: _answers(port) is not None)
            validate, status = ok(run(blocks("Health-check a pool")[0], folder))
            assert validate.stdout.startswith("ok:")
            b.hang.set()  # B's event loop hangs: it accepts, never answers

            def taken_out() -> bool:
                st = json.loads(subprocess.run([sys.executable, "-m", "nginxctl", "status", "-f", "json"], cwd=folder,
                                               env=env(), capture_output=True, text=True).stdout)
                rows = (st.get("health") or {}).get("servers", [])
                return any(r["state"] == "down" and r["rendered_down"] for r in rows) and not st["reload_pending"]

            _wait_for(taken_out, timeout=2 * 3 + 1 + 20)
            text = ok(run(["nginxctl status"], folder))[0].stdout
            assert f"health      netty_pool/127.0.0.1:{b.server_address[1]} down since" in text
            assert {_answers(port) for _ in range(6)} == {"A"}
        finally:
            b.release.set()
            watcher.terminate()
            assert watcher.wait(30) == 0
    finally:
        a.close()
        b.close()


@pytest.mark.integration
def test_roll_a_change_across_an_ha_pair(lb, backends, docker_client):
    import json
    import uuid

    a = backends("A")
    snippet = RUNBOOK.split("\n## Roll a change across an HA pair\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    names = [t["name"] for t in yaml.safe_load(snippet)["targets"]]
    assert names == ["lb1", "lb2"]
    lb2 = docker_client.containers.run("nginxctl/nginx:bare", name=f"nginxctl-test-{uuid.uuid4().hex[:10]}",
                                       detach=True, network_mode="none", labels={"nginxctl.test": "1"})
    try:
        port, g = lb.group([a.address])
        data = {"nginx": {"worker_processes": 1}, "upstreams": {"netty_pool": g},
                "targets": [{"name": "lb1", "container": lb.name}, {"name": "lb2", "container": lb2.name}]}
        lb.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        apply, status = ok(run(blocks("Roll a change across an HA pair")[0], lb.inventory.parent))
        assert "lb1: applied and reloaded" in apply.stdout and "lb2: applied and reloaded" in apply.stdout
        assert [(t["name"], t["drift"]) for t in json.loads(status.stdout)["targets"]] == \
            [("lb1", False), ("lb2", False)]
        assert who(port) == "A"
    finally:
        lb2.remove(force=True)


@pytest.mark.integration
def test_change_a_fleet_behind_a_virtual_ip(docker_client, tmp_path):
    from ha_net import VIP, inventory, network, wait_for

    apply_and_history, rollback = blocks("Change a fleet behind a virtual IP")
    with network(docker_client) as net:
        inventory(tmp_path, net)
        ok(run(apply_and_history[:1], tmp_path))
        wait_for("the VIP on lb1", lambda: net.holders() == ["lb1"], net=net)
        inventory(tmp_path, net, pool="proxy_connect_timeout: 2s")   # the edit
        applied, history = ok(run(apply_and_history, tmp_path))
        assert (f"ha: lb1 holds the virtual IP {VIP}: changing lb2 first (the canary is a standby), lb1 last"
                in applied.stderr)
        assert applied.stdout.index("lb2: applied and reloaded") < applied.stdout.index("lb1: applied and reloaded")
        assert f"{net.name('lb2')}-keepalived: keepalived unchanged" in applied.stderr
        entries = {t["name"]: t["entries"] for t in json.loads(history.stdout)["targets"]}
        assert all(e["keepalived_sha256"] for name in ("lb1", "lb2") for e in entries[name][:2])
        [rolled] = ok(run(rollback, tmp_path))
        assert rolled.stdout.index(f"{net.name('lb2')} runs history entry") < \
            rolled.stdout.index(f"{net.name('lb1')} runs history entry")
        assert net.holders() == ["lb1"]


@pytest.mark.integration
def test_make_the_pair_highly_available(docker_client, tmp_path):
    from ha_net import inventory, network, wait_for

    [block] = blocks("Make the pair highly available")
    with network(docker_client) as net:
        inventory(tmp_path, net)   # the inventory of the section, with this network's names
        validated, rendered, applied, status = ok(run(block, tmp_path))
        assert "keepalived" in validated.stdout + validated.stderr
        assert "vrrp_instance" in rendered.stdout and "priority 200" in rendered.stdout
        assert f"{net.name('lb1')}-keepalived: keepalived created" in applied.stderr
        assert all(t["drift"] is False for t in json.loads(status.stdout)["targets"])
        wait_for("the VIP on lb1", lambda: net.holders() == ["lb1"], net=net)
        wait_for("a connection through the VIP", lambda: net.connect() == "backend")
        [again] = ok(run(block[-1:], tmp_path))   # status, once keepalived has settled: who holds it, truly
        assert json.loads(again.stdout)["ha"]["holders"] == ["lb1"] == net.holders()
        assert json.loads(again.stdout)["ha"]["targets"] == {"lb1": "MASTER", "lb2": "BACKUP"}


@pytest.mark.integration
def test_fail_over_by_hand(docker_client, tmp_path):
    from ha_net import inventory, network, wait_for

    hand_over, bring_back = blocks("Fail over by hand (maintenance on the master)")
    with network(docker_client) as net:
        inventory(tmp_path, net)
        ok(run(["nginxctl apply --reload"], tmp_path))
        wait_for("the VIP on lb1", lambda: net.holders() == ["lb1"], net=net)
        master = net.name("lb1")
        before, _ = ok(run(hand_over, tmp_path, MASTER=master))
        assert json.loads(before.stdout)["ha"]["holders"] == ["lb1"]   # status named the master to hand over
        wait_for("the VIP on lb2", lambda: net.holders() == ["lb2"], net=net)
        wait_for("a connection through the VIP on lb2", lambda: net.connect() == "backend")
        since = int(time.time()) - 1
        _, after = ok(run(bring_back, tmp_path, MASTER=master))
        assert json.loads(after.stdout)["ha"]["holders"] == ["lb2"]
        companion = docker_client.containers.get(f"{master}-keepalived")
        wait_for("lb1's keepalived back in BACKUP",
                 lambda: b"Entering BACKUP STATE" in companion.logs(since=since), net=net)
        assert net.holders() == ["lb2"]   # nopreempt: the address stays where it is
        assert net.connect() == "backend"
