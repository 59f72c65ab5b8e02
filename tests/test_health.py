"""Active health checks (`nginxctl watch`): the pure tracker, real probes against real sockets, the inventory
rules, and a watcher taking a hung backend out of a real nginx and putting it back."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from nginxctl.controller.health import Tracker, probe
from nginxctl.inventory.grammar import parse_duration
from nginxctl.inventory.model import HealthCheck

from helpers import TIMEOUT, Pong, Watch, cli, free_port, read_line

CHECK = HealthCheck(parse_duration("2s"), parse_duration("1s"), fails=3, passes=2)


def test_a_server_goes_down_after_fails_in_a_row_and_back_after_passes():
    t, key = Tracker(), ("pool", "127.0.0.1:1")
    assert [t.record(key, False, CHECK, 1.0, "refused") for _ in range(3)] == [False, False, True]
    assert t.down() == {key} and t.servers[key].since == 1.0 and t.servers[key].last_error == "refused"
    assert [t.record(key, True, CHECK, 2.0) for _ in range(2)] == [False, True]
    assert t.down() == frozenset() and t.servers[key].since is None


def test_a_pass_between_fails_starts_the_count_again():
    t, key = Tracker(), ("pool", "127.0.0.1:1")
    for ok in (False, False, True, False, False):
        assert not t.record(key, ok, CHECK, 1.0)
    assert t.down() == frozenset()
    assert t.record(key, False, CHECK, 1.0)


def test_probes_against_real_sockets(pongs):
    p = pongs()
    address = f"127.0.0.1:{p.server_address[1]}"
    ping = HealthCheck(parse_duration("2s"), parse_duration("300ms"), send="PING\r\n", expect="PONG")
    assert probe(address, CHECK) is None
    assert probe(address, ping) is None
    p.hang.set()
    assert probe(address, ping) == "no reply within 300ms"
    assert probe(address, CHECK) is None  # a hung server still accepts: only send/expect finds it
    assert probe(f"127.0.0.1:{free_port()}", CHECK) == "Connection refused"
    assert "cannot check" in (probe("nonsense", CHECK) or "")


def test_udp_probe(pongs):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]

        def answer() -> None:
            data, peer = udp.recvfrom(64)
            udp.sendto(b"PONG " + data, peer)

        threading.Thread(target=answer, daemon=True).start()
        check = HealthCheck(parse_duration("2s"), parse_duration("1s"), send="PING", expect="PONG")
        assert probe(f"127.0.0.1:{port}", check, udp=True) is None
        assert probe(f"127.0.0.1:{port}", check, udp=True) == "no reply within 1s"  # nobody answers now


@pytest.mark.parametrize("health, where, message", [
    ("{interval: 1s, timeout: 1s}", "health_check.timeout", "timeout (1s) must be shorter than interval (1s)"),
    ("{fails: 0}", "health_check.fails", "expected an integer >= 1 and <= 100, got 0"),
    ("{expect: PONG}", "health_check.expect", "expect needs send"),
    ("{interval: 50ms, timeout: 10ms}", "health_check.interval", "at least 100ms"),
    ("{send: ''}", "health_check.send", "text of 1 to 1024 bytes"),
    ("{timeout: 5s}", "health_check.timeout", "timeout (5s) must be shorter than interval (2s)"),
    ("{interval: 1 s}", "health_check.interval", "expected a duration"),
    ("{interval: null}", "health_check.interval", "expected a duration"),
    ("{timeout: -1s}", "health_check.timeout", "expected a duration"),
    ("{timeout: 0}", "health_check.timeout", "expected a timeout of at least 10ms, got 0s"),
])
def test_impossible_health_check_values_exit_2_located(tmp_path, health, where, message):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(f"upstreams:\n  pool:\n    listen: 7000\n    servers: [127.0.0.1:1]\n    health_check: {health}\n")
    result = cli("render", "-i", str(inv))
    assert result.returncode == 2, result.stderr
    assert f"{inv}:5:" in result.stderr and f"upstreams.pool.{where}: " in result.stderr and message in result.stderr


def test_a_udp_group_needs_send_and_expect(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("upstreams:\n  dns: {listen: 53, protocol: udp, servers: [127.0.0.1:1], health_check: {}}\n")
    result = cli("render", "-i", str(inv))
    assert result.returncode == 2 and "a udp group is checked only with send and expect" in result.stderr


def test_health_check_in_defaults_applies_to_every_group(tmp_path):
    from nginxctl.inventory import parse_inventory

    inv = parse_inventory("defaults: {health_check: {interval: 3s, fails: 2}}\nupstreams:\n"
                          "  a: {listen: 1, servers: [127.0.0.1:1]}\n  b: {listen: 2, servers: [127.0.0.1:2]}\n", "x")
    assert [(g.health_check.interval.text, g.health_check.fails) for g in inv.upstreams] == [("3s", 2), ("3s", 2)]


# -- with the controller, real nginx -----------------------------------------------------------------------------

def watch(inventory: Path, *args: str) -> tuple[subprocess.Popen[str], list[dict[str, Any]], threading.Event]:
    """The shared watch harness (helpers.Watch), seen as its process, its events so far and a change signal."""
    w = Watch(inventory, *args)
    return w.proc, w.all, w.changed


def pool(lb: Any, port: int, health: dict[str, Any], *servers: Pong) -> None:
    """The inventory: one group on `port` with `health` over `servers`, for the `lb` target."""
    lb.inventory.write_text(yaml.safe_dump({
        "target": {"container": lb.name}, "nginx": {"worker_processes": 1},
        "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "health_check": health,
                               "servers": [f"127.0.0.1:{s.server_address[1]}" for s in servers]}}}))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_event(events: list[dict[str, Any]], changed: threading.Event, predicate: Any, start: int = 0,
               timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        for i in range(start, len(events)):
            if predicate(events[i]):
                return i, events[i]
        assert time.monotonic() < deadline, events[-10:]
        changed.clear()
        changed.wait(0.5)


def answers(port: int) -> set[str | None]:
    out: set[str | None] = set()
    for _ in range(6):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
                out.add(read_line(s) or None)
        except OSError:
            out.add(None)
    return out


@pytest.mark.integration
def test_a_hung_backend_is_taken_out_within_interval_times_fails_and_put_back_after_passes(lb, pongs):
    a, b = pongs("A"), pongs("B")
    port = free_port()
    health = {"interval": "500ms", "timeout": "300ms", "fails": 2, "passes": 2, "send": "PING\r\n", "expect": "PONG"}
    pool(lb, port, health, a, b)
    proc, events, changed = watch(lb.inventory, "--quiet-period", "200ms", "--max-wait", "2s")
    try:
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok")
        assert answers(port) == {"A", "B"}
        hung_at = time.monotonic()
        b.hang.set()
        i, event = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        out_after = time.monotonic() - hung_at
        assert out_after <= 0.5 * 2 + 0.3 + 2.0 + 1.5, out_after  # interval x fails (+ timeout) + one reload
        assert answers(port) == {"A"}
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        down = [r for r in status["health"]["servers"] if r["state"] == "down"]
        assert [(r["address"], r["rendered_down"]) for r in down] == [(f"127.0.0.1:{b.server_address[1]}", True)]
        assert status["health"]["stale"] is False and status["drift"] is False  # a health decision is not drift
        assert cli("diff", "-i", str(lb.inventory)).returncode == 0
        assert down[0]["last_error"] == "no reply within 300ms"
        b.hang.clear()
        b.release.set()
        wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert answers(port) == {"A", "B"}
        b.hang.set()
        wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("health_down"), i + 1)
    finally:
        stop(proc)
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["health"]["stale"] is True  # the watch stopped: nothing checks any more
    assert "which no longer runs: nothing checks the servers now" in cli("status", "-i", str(lb.inventory)).stdout


@pytest.mark.integration
def test_all_backends_failing_leaves_them_in_and_says_so(lb, pongs):
    a, b = pongs("A"), pongs("B")
    port = free_port()
    health = {"interval": "300ms", "timeout": "200ms", "fails": 2, "passes": 1, "send": "PING\r\n", "expect": "PONG"}
    pool(lb, port, health, a, b)
    metrics = free_port()
    proc, events, changed = watch(lb.inventory, "--quiet-period", "200ms", "--max-wait", "1s",
                                  "--metrics", f"127.0.0.1:{metrics}")
    try:
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok")
        a.hang.set()
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        b.hang.set()
        _, loud = wait_event(events, changed, lambda e: e["event"] == "health" and "ALL" in e["message"], i + 1)
        assert "primary server(s) of 'pool' fail their health checks: keeping them all in" in loud["message"]
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        conf = lb.container.exec_run(["/usr/sbin/nginx", "-T"]).output.decode()
        assert " down;" not in conf.split("upstream pool", 1)[1].split("}", 1)[0]  # both rendered up
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert 'nginxctl_group_all_failing{group="pool"} 1.0' in text
        assert 'nginxctl_health_checks_total{group="pool",result="fail"' in text
    finally:
        a.release.set()
        b.release.set()
        stop(proc)


def metric(port: int, name: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def reloads_in_nginx_log(lb: Any, since: float) -> int:
    log = lb.container.logs(stdout=False, stderr=True, since=since).decode()
    return sum(1 for line in log.splitlines() if line.endswith("reconfiguring") and "signal" not in line)


@pytest.mark.integration
def test_checks_cost_no_reload_while_nothing_changes_and_a_flapping_server_is_damped(lb, pongs):
    a, b = pongs("A"), pongs("B")
    port = free_port()
    health = {"interval": "200ms", "timeout": "100ms", "fails": 1, "passes": 1, "send": "PING\r\n", "expect": "PONG"}
    pool(lb, port, health, a, b)
    metrics = free_port()
    proc, events, changed = watch(lb.inventory, "--quiet-period", "100ms", "--max-wait", "2s",
                                  "--metrics", f"127.0.0.1:{metrics}")
    try:
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok")
        since = time.time()
        deadline = time.monotonic() + 30
        while metric(metrics, "nginxctl_health_checks_total") < 20:  # 10 rounds of checks, all passing
            assert time.monotonic() < deadline
            changed.wait(0.2)
        assert reloads_in_nginx_log(lb, since) == 0
        b.hang.set()  # B fails: out at the next pass
        i, out = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        b.hang.clear()
        b.release.set()  # and at once back: a flap, within --max-wait of the last health reload
        i, back = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert back["added"] == [] and back["removed"] == []  # the same servers, B no longer rendered down
        # undamped, B would be back a check and a quiet period later (~0.3 s); damped, a --max-wait (2 s) after
        # the last health reload (give or take the two passes' own durations)
        assert back["time"] - out["time"] >= 1.5, (out, back)
        assert answers(port) == {"A", "B"}
    finally:
        a.release.set()
        b.release.set()
        stop(proc)


def test_a_slow_answer_passes_within_the_timeout_and_fails_beyond_it():
    import socket as s_

    with s_.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer(delay: float) -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                threading.Event().wait(delay)  # the backend's own slowness, the thing under test
                conn.sendall(b"PONG\r\n")

        check = HealthCheck(parse_duration("2s"), parse_duration("400ms"), send="PING\r\n", expect="PONG")
        for delay, expected in ((0.05, None), (0.8, "no reply within 400ms")):
            t = threading.Thread(target=answer, args=(delay,), daemon=True)
            t.start()
            assert probe(f"127.0.0.1:{port}", check) == expected
            t.join(5)


def test_a_backend_that_resets_fails_the_check():
    import socket as s_
    import struct

    with s_.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def reset() -> None:
            conn, _ = server.accept()
            conn.setsockopt(s_.SOL_SOCKET, s_.SO_LINGER, struct.pack("ii", 1, 0))
            conn.recv(64)
            conn.close()  # RST, not FIN

        t = threading.Thread(target=reset, daemon=True)
        t.start()
        check = HealthCheck(parse_duration("2s"), parse_duration("1s"), send="PING\r\n", expect="PONG")
        result = probe(f"127.0.0.1:{port}", check)
        t.join(5)
        assert result in ("Connection reset by peer", "closed before sending 'PONG'"), result


@pytest.mark.integration
def test_discovered_servers_are_checked_like_static_ones(lb, pongs, etcd):
    a, b = pongs("A"), pongs("B")
    port = free_port()
    health = {"interval": "300ms", "timeout": "200ms", "fails": 2, "passes": 1, "send": "PING\r\n", "expect": "PONG"}
    b_address = f"127.0.0.1:{b.server_address[1]}"
    etcd.client().put(f"/pool/{b_address}", b_address)
    lb.inventory.write_text(yaml.safe_dump({
        "target": {"container": lb.name}, "nginx": {"worker_processes": 1},
        "discovery": {"etcd": {"endpoints": [etcd.endpoint]}},
        "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "health_check": health, "discover": {"etcd": "/pool/"},
                               "servers": [f"127.0.0.1:{a.server_address[1]}"]}}}))
    proc, events, changed = watch(lb.inventory, "--quiet-period", "200ms", "--max-wait", "1s")
    try:
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok")
        assert answers(port) == {"A", "B"}
        b.hang.set()
        wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert answers(port) == {"A"}
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert [(r["address"], r["state"]) for r in status["health"]["servers"] if r["state"] == "down"] == \
            [(b_address, "down")]
    finally:
        b.release.set()
        stop(proc)
