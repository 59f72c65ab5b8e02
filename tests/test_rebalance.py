"""`nginxctl rebalance`: paced moves to the fair shares against real nginx and a reconnecting client fleet;
consistent hash moves exactly the misplaced; bad input, the one-owner rule, clients that do not come back."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from nginxctl.cli import app
from nginxctl.hashring import Ring
from typer.testing import CliRunner

from helpers import Devices, cli, wait_for, write_inventory


def _apply(lb) -> None:  # type: ignore[no-untyped-def]
    result = cli("apply", "--reload", "-q", "-i", str(lb.inventory))
    assert result.returncode == 0, result.stderr


def _rebalance(lb, *args: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    result = cli("rebalance", "pool", "-i", str(lb.inventory), "--format", "json", *args)
    return result.returncode, json.loads(result.stdout)


def _scaled_out(lb, backends, per_server: int, **group):  # type: ignore[no-untyped-def]
    """A and B holding `per_server` reconnecting clients each, then C added and reloaded."""
    a, b, c = backends("A"), backends("B"), backends("C")
    port, g = lb.group([a.address, b.address], **group)
    lb.write({"pool": g})
    _apply(lb)
    devices = Devices(port, 2 * per_server)
    devices.wait(lambda d: d.counts() == {"A": per_server, "B": per_server}, 20, "clients spread over A and B")
    g["servers"].append(c.address)
    lb.write({"pool": g})
    _apply(lb)
    return devices, (a, b, c)


@pytest.mark.integration
@pytest.mark.parametrize("balance", ["round_robin", "least_conn"])
def test_a_scale_out_converges_within_tolerance_closing_near_the_minimum(lb, backends, balance):
    devices, (a, b, c) = _scaled_out(lb, backends, 60, balance=balance)
    try:
        code, report = _rebalance(lb, "--rate", "100/s", "--tolerance", "10%", "--timeout", "60s")
        assert code == 0, report
        # 120 held, shares 40: A and B hold 16 each above 44, C lacks 36 below 36: the minimum is 36
        assert report["minimum"] == 36 and report["before"] == {a.address: 60, b.address: 60, c.address: 0}
        assert report["moved"] <= 1.15 * report["minimum"], report
        assert all(abs(n - 40) <= 4 for n in report["after"].values()), report
        devices.wait(lambda d: d.connected() == 120, 10, "every client back")
        assert all(abs(n - 40) <= 4 for n in devices.counts().values()), devices.counts()
        assert devices.resets == 0 and devices.eofs == report["moved"]   # an orderly close, and only those
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["overlay"] is None and status["drift"] is False   # the normal config runs again
        assert all(s["state"] == "up" for g in status["groups"] for s in g["servers"])
    finally:
        devices.close()



@pytest.mark.integration
def test_two_servers_added_with_weights_each_receives_its_share(lb, backends):
    devices, (a, b, c) = _scaled_out(lb, backends, 60)
    try:
        d = backends("D")
        data = yaml.safe_load(lb.inventory.read_text())
        data["upstreams"]["pool"]["servers"] = [a.address, b.address, {"address": c.address, "weight": 2}, d.address]
        write_inventory(lb.inventory, data)
        _apply(lb)
        code, report = _rebalance(lb, "--rate", "100", "--timeout", "60s")
        assert code == 0, report
        # 120 held, weights 1:1:2:1: shares 24, 24, 48, 24; A and B hold 34 each above 26: the minimum is 68
        assert report["minimum"] == 68 and report["moved"] <= 1.15 * 68, report
        shares = {a.address: 24, b.address: 24, c.address: 48, d.address: 24}
        assert all(abs(report["after"][s] - share) <= max(0.1 * share, 1) for s, share in shares.items()), report
        assert devices.resets == 0
    finally:
        devices.close()


@pytest.mark.integration
def test_old_generations_and_idle_connections_go_first(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, g = lb.group([a.address, b.address])
    lb.write({"pool": g})
    _apply(lb)
    busy = Devices(port, 20, heartbeat=0.05)   # talking all the time
    idle = Devices(port, 40)
    new = None
    try:
        busy.wait(lambda d: d.counts() == {"A": 10, "B": 10}, 20, "busy clients on A and B")
        idle.wait(lambda d: d.counts() == {"A": 20, "B": 20}, 20, "idle clients on A and B")
        g["servers"].append(c.address)
        lb.write({"pool": g})
        _apply(lb)   # the 60 are on the old generation now
        new = Devices(port, 9)   # on the current one, 3 per server
        new.wait(lambda d: d.counts() == {"A": 3, "B": 3, "C": 3}, 20, "new clients on A, B and C")
        code, report = _rebalance(lb, "--rate", "100", "--timeout", "60s")
        assert code == 0, report
        # 69 held, shares 23: A and B hold 8 each above 25, C lacks 18 below 21: 9 close on each of A and B
        assert report["minimum"] == 18 and report["moved"] <= 1.15 * 18, report
        assert idle.eofs == report["moved"] and busy.eofs == 0 and new.eofs == 0
    finally:
        for fleet in (busy, idle, new):
            if fleet is not None:
                fleet.close()

@pytest.mark.integration
def test_dry_run_prints_the_plan_and_closes_nothing(lb, backends):
    devices, (a, b, c) = _scaled_out(lb, backends, 30)
    try:
        result = cli("rebalance", "pool", "-i", str(lb.inventory), "--dry-run")
        assert result.returncode == 0, result.stderr
        assert "minimum: 18 connection(s) must move" in result.stdout   # shares 20: C lacks 18 below 18
        rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:5]}
        assert rows == {a.address: ["30", "20.0", "9"], b.address: ["30", "20.0", "9"], c.address: ["0", "20.0", "0"]}
        code, report = _rebalance(lb, "--dry-run")
        assert code == 0 and report["moved"] == 0 and report["minimum"] == 18 and report["dry_run"] is True
        assert report["before"] == report["after"] == {a.address: 30, b.address: 30, c.address: 0}
        assert devices.eofs == devices.resets == 0 and devices.counts() == {"A": 30, "B": 30}
    finally:
        devices.close()


@pytest.mark.integration
def test_consistent_hash_moves_exactly_the_misplaced(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, g = lb.group([a.address, b.address], balance="hash", hash_key="$remote_addr", consistent=True)
    lb.write({"pool": g})
    _apply(lb)
    sources = [f"127.0.0.{i}" for i in range(2, 82)]   # 80 clients, one address each
    devices = Devices(port, len(sources), sources=sources)
    try:
        devices.wait(lambda d: d.connected() == len(sources), 20, "every client connected")
        names = {a.address: "A", b.address: "B", c.address: "C"}
        before_ring = Ring.build([(a.address, 1, False), (b.address, 1, False)])
        after_ring = Ring.build([(x.address, 1, False) for x in (a, b, c)])
        assert all(devices.names[i] == names[str(before_ring.lookup(src.encode()))] for i, src in enumerate(sources))
        g["servers"].append(c.address)
        lb.write({"pool": g})
        _apply(lb)
        predicted = [src for src in sources if before_ring.lookup(src.encode()) != after_ring.lookup(src.encode())]
        assert 0 < len(predicted) < len(sources)
        code, report = _rebalance(lb, "--rate", "200", "--timeout", "60s")
        assert code == 0, report
        assert report["minimum"] == report["moved"] == len(predicted), (report["notes"], report["plan"])
        assert report["method"] == "hash consistent" and report["reloads"] == 0   # the ring steers: no overlay
        assert sum(report["after"].values()) == len(sources)   # counted once the moved clients are back
        devices.wait(lambda d: d.connected() == len(sources), 10, "every client back")
        assert devices.eofs == len(predicted) and devices.resets == 0
        # every held connection is where a new one with the same key goes
        assert all(devices.names[i] == names[str(after_ring.lookup(src.encode()))] for i, src in enumerate(sources))
        code, again = _rebalance(lb)
        assert code == 0 and again["moved"] == again["minimum"] == 0
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert all(s["fair_share"] is None for s in status["groups"][0]["servers"])   # keys, not shares
    finally:
        devices.close()


@pytest.mark.integration
def test_refused_while_a_watch_controls_the_target(lb, backends, watches):
    a, b = backends("A"), backends("B")
    _, g = lb.group([a.address, b.address])
    lb.write({"pool": g})
    watch = watches(lb.inventory)
    watch.reload()
    code, report = _rebalance(lb)
    assert code == 3, report
    assert "controlled by nginxctl watch" in report["errors"][0]["message"]
    said = cli("rebalance", "pool", "-i", str(lb.inventory)).stderr
    assert "rebalance: {rate: 20/s" in said and "stop the watch, rebalance" in said, said   # what to do instead
    assert _rebalance(lb, "--dry-run")[0] == 0   # a dry run changes nothing: never refused


@pytest.mark.integration
def test_clients_that_cannot_reconnect_stop_the_closing_and_time_out(lb, backends):
    devices, (a, b, c) = _scaled_out(lb, backends, 30)
    try:
        c.stop()   # the new server refuses: every moved client fails to come back
        code, report = _rebalance(lb, "--rate", "10/s", "--timeout", "4s")
        assert code == 1, report
        assert "not reconnecting" in report["errors"][0]["message"]
        assert 0 < report["moved"] <= 10   # one window of closes that never came back, then no more
        devices.wait(lambda d: d.connected() == 60, 20, "the overlay removed, the clients reach A and B again")
        assert devices.eofs == report["moved"] and devices.resets == 0
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["overlay"] is None and status["drift"] is False
    finally:
        devices.close()


@pytest.mark.integration
def test_ctrl_c_removes_the_overlay_and_says_how_many_moved(lb, backends):
    devices, (a, b, c) = _scaled_out(lb, backends, 30)
    proc: subprocess.Popen[str] | None = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "rebalance", "pool", "-i", str(lb.inventory),
                                 "--rate", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        lines: queue.Queue[str] = queue.Queue()
        said: list[str] = []

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)
            lines.put("")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while not said or not said[-1].startswith("moved "):   # plain progress lines off a terminal
            said.append(lines.get(timeout=30))
            assert said[-1], f"rebalance ended before moving one: {said}"
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["overlay"]["down"] == sorted([a.address, b.address]) and status["drift"] is False
        servers = {s["address"]: s for s in status["groups"][0]["servers"]}
        assert servers[a.address]["reason"] == "rebalance" and servers[c.address]["state"] == "up"
        # the overlaid servers keep their share while the run closes them for now: 60 held, 20 each
        assert all(servers[x.address]["fair_share"] == pytest.approx(20, abs=1) for x in (a, b, c)), servers
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        reader.join(10)
        err = "".join(said) + "".join(lines.get() for _ in range(lines.qsize()))
        assert "connection(s) moved" in err and "the overlay removed" in err, err
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["overlay"] is None and status["drift"] is False
        assert all(s["state"] == "up" for s in status["groups"][0]["servers"])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr) if proc is not None else ():
            if stream is not None:
                stream.close()
        devices.close()



@pytest.mark.integration
def test_an_apply_during_a_rebalance_is_left_in_place(lb, backends):
    devices, (a, b, c) = _scaled_out(lb, backends, 30)
    proc: subprocess.Popen[str] | None = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "rebalance", "pool", "-i", str(lb.inventory),
                                 "--rate", "2", "--format", "json"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd="/")
        wait_for(lambda: devices.eofs > 0, 30, "the rebalance moves a first connection")
        data = yaml.safe_load(lb.inventory.read_text())
        data["upstreams"]["pool"]["proxy_timeout"] = "2h"   # another change, applied by hand meanwhile
        write_inventory(lb.inventory, data)
        _apply(lb)
        moved_then = devices.eofs
        out, _ = proc.communicate(timeout=60)
        report = json.loads(out)
        assert proc.returncode == 3 and "changed while rebalancing" in report["errors"][0]["message"], report
        assert devices.eofs <= moved_then + 2   # it stops at its next count (every 0.5 s), not at its plan's end
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["drift"] is False and status["overlay"] is None   # the applied config runs, not put back
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        devices.close()

def test_bad_input_exit_codes(tmp_path: Path):
    inventory = write_inventory(tmp_path / "inventory.yaml", {
        "target": {"container": "nginxctl-test-absent"},
        "upstreams": {
            "pool": {"listen": "127.0.0.1:7100", "servers": ["127.0.0.1:7101", "127.0.0.1:7102"]},
            "dns": {"listen": "127.0.0.1:7153", "protocol": "udp", "servers": ["127.0.0.1:7154"]},
            "plain": {"listen": "127.0.0.1:7200", "balance": "hash", "hash_key": "$remote_addr",
                      "servers": ["127.0.0.1:7201"]},
            "binary": {"listen": "127.0.0.1:7300", "balance": "hash", "hash_key": "$binary_remote_addr",
                       "consistent": True, "servers": ["127.0.0.1:7301"]}}})

    def run(*args: str) -> tuple[int, str]:  # in-process: the command line's own checks, no start-up each time
        result = CliRunner().invoke(app, ["rebalance", *args, "-i", str(inventory), "--format", "json"])
        return result.exit_code, json.loads(result.stdout)["errors"][0]["message"]

    for rate in ("0", "-5", "0/s", "fast"):
        assert run("pool", "--rate", rate)[0] == 2, rate
    for tolerance in ("101", "-1", "150%", "some"):
        assert run("pool", "--tolerance", tolerance)[0] == 2, tolerance
    code, message = run("pol")
    assert code == 2 and "did you mean 'pool'" in message
    code, message = run("dns")
    assert code == 2 and "UDP" in message
    code, message = run("plain")
    assert code == 2 and "plain hash" in message and "consistent" in message
    code, message = run("binary")
    assert code == 2 and "$binary_remote_addr" in message


@pytest.mark.integration
def test_a_group_of_one_server_has_nothing_to_do(lb, backends):
    a = backends("A")
    _, g = lb.group([a.address])
    lb.write({"pool": g})
    _apply(lb)
    code, report = _rebalance(lb)
    assert code == 0 and report["moved"] == 0 and "nothing to rebalance" in report["notes"][0]
