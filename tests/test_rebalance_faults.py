"""`nginxctl rebalance` when the world moves under it: a fleet (--targets), the server the moves go to removed
mid-run, a first overlay refused by lingering generations, a watch started mid-run; and the progress bar a
person sees on a terminal. Each ends in a clear outcome, and no connection outside the plan is closed."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import Devices, cli, free_port, wait_for, write_inventory

pytestmark = pytest.mark.integration


def _apply(inventory: Path) -> None:
    result = cli("apply", "--reload", "-q", "-i", str(inventory))
    assert result.returncode == 0, result.stderr


def _rebalance(inventory: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("rebalance", "pool", "-i", str(inventory), "--format", "json", *args)
    return result.returncode, json.loads(result.stdout)


def _status(inventory: Path) -> dict[str, Any]:
    return json.loads(cli("status", "-i", str(inventory), "--format", "json").stdout)


def _spawn(inventory: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nginxctl", "rebalance", "pool", "-i", str(inventory),
                             "--format", "json", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd="/")


def _finish(proc: subprocess.Popen[str] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _scaled_out(lb: Any, backends: Any, per_server: int) -> tuple[Devices, tuple[Any, Any, Any], dict[str, Any]]:
    """A and B holding `per_server` reconnecting clients each, then C added and reloaded."""
    a, b, c = backends("A"), backends("B"), backends("C")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    _apply(lb.inventory)
    devices = Devices(port, 2 * per_server)
    try:
        devices.wait(lambda d: d.counts() == {"A": per_server, "B": per_server}, 20, "clients spread over A and B")
        group["servers"].append(c.address)
        lb.write({"pool": group})
        _apply(lb.inventory)
    except BaseException:
        devices.close()
        raise
    return devices, (a, b, c), group


def _moving(lb: Any, devices: Devices) -> subprocess.Popen[str]:
    """A slow rebalance (2/s) that has moved its first connection."""
    proc = _spawn(lb.inventory, "--rate", "2")
    wait_for(lambda: devices.eofs > 0, 30, "the rebalance moves a first connection")
    return proc


def test_a_fleet_rebalances_the_targets_it_is_given(lb, isolated, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    lb2 = isolated()   # a second load balancer in a namespace of its own: it holds no client
    port = free_port()

    def write(servers: list[str]) -> None:
        write_inventory(lb.inventory, {
            "nginx": {"worker_processes": 1},
            "targets": [{"name": "lb1", "container": lb.name}, {"name": "lb2", "container": lb2.name}],
            "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "servers": servers}}})

    write([a.address, b.address])
    _apply(lb.inventory)
    devices = Devices(port, 60)
    try:
        devices.wait(lambda d: d.counts() == {"A": 30, "B": 30}, 20, "clients spread over A and B")
        write([a.address, b.address, c.address])
        _apply(lb.inventory)
        code, report = _rebalance(lb.inventory, "--targets", "lb2", "--rate", "100")
        assert code == 0, report
        assert [t["name"] for t in report["targets"]] == ["lb2"] and report["targets"][0]["moved"] == 0
        assert devices.eofs == 0   # lb1 was not chosen: none of its connections closed
        code, report = _rebalance(lb.inventory, "--rate", "100", "--timeout", "60s")   # the whole fleet
        assert code == 0, report
        by_name = {t["name"]: t for t in report["targets"]}
        assert by_name["lb2"]["moved"] == 0 and by_name["lb2"]["before"] == {a.address: 0, b.address: 0,
                                                                              c.address: 0}
        lb1 = by_name["lb1"]
        assert lb1["minimum"] == 18 and 0 < lb1["moved"] <= 1.15 * 18, lb1   # shares 20: C lacks 18
        assert all(abs(n - 20) <= 2 for n in lb1["after"].values()), lb1
        assert devices.eofs == lb1["moved"] and devices.resets == 0
    finally:
        devices.close()


def test_the_server_the_moves_go_to_removed_mid_run_stops_it(lb, backends):
    devices, (a, b, c), group = _scaled_out(lb, backends, 30)
    proc = None
    try:
        proc = _moving(lb, devices)
        group["servers"].remove(c.address)   # C goes away: the plan it was moving for no longer holds
        lb.write({"pool": group})
        _apply(lb.inventory)
        moved_then = devices.eofs
        out, _ = proc.communicate(timeout=60)
        report = json.loads(out)
        assert proc.returncode == 3 and "changed while rebalancing" in report["errors"][0]["message"], report
        assert devices.eofs <= moved_then + 2   # stopped at its next count, nothing more closed for a gone plan
        devices.wait(lambda d: d.connected() == 60, 20, "every client connected")
        status = _status(lb.inventory)
        assert status["overlay"] is None and status["drift"] is False   # the applied config runs, C not in it
        servers = {s["address"]: s for s in status["groups"][0]["servers"]}
        assert {x for x, s in servers.items() if s["state"] != "removed"} == {a.address, b.address}
        # the clients moved to C before it went stay there (on the old generation) and are reported as such
        on_c = devices.counts().get("C", 0)
        assert 0 < on_c <= devices.eofs and servers[c.address]["state"] == "removed", servers
        assert servers[c.address]["connections"] == on_c and devices.resets == 0
    finally:
        _finish(proc)
        devices.close()


def test_a_first_overlay_refused_by_lingering_generations_changes_nothing(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    _apply(lb.inventory)
    held: list[Devices] = []
    try:
        for i in range(3):   # a generation pinned by its clients after each of 3 reloads
            held.append(Devices(port, 4))
            held[-1].wait(lambda d: d.connected() == 4, 20, "4 clients held")
            group["proxy_timeout"] = f"{10 + i}m"
            lb.write({"pool": group})
            _apply(lb.inventory)
        group["servers"].append(c.address)
        lb.write({"pool": group})
        result = cli("apply", "--reload", "-i", str(lb.inventory), "--max-generations", "10")
        assert result.returncode == 0, result.stderr
        before = _status(lb.inventory)
        assert len(before["lingering_generations"]) >= 3, before["lingering_generations"]
        code, report = _rebalance(lb.inventory, "--rate", "100")
        assert code == 4, report   # the overlay is a reload like any other: refused past the limit
        message = report["errors"][0]["message"]
        assert "still shutting down" in message and "Add --retire-rate 20/s" in message, message
        assert sum(d.eofs + d.resets for d in held) == 0   # nothing closed
        status = _status(lb.inventory)
        assert status["overlay"] is None and status["drift"] is False
        assert status["loaded"] == before["loaded"] and status["worker_pids"] == before["worker_pids"]   # no reload
        # the advice works: the oldest generation retired first (its 4 clients closed, in order), then the moves
        code, report = _rebalance(lb.inventory, "--rate", "100", "--retire-rate", "100/s", "--timeout", "60s")
        assert code == 0, report
        assert held[0].eofs >= 4 and sum(d.resets for d in held) == 0   # all 4 of the oldest, maybe a move too
        assert _status(lb.inventory)["overlay"] is None
    finally:
        for fleet in held:
            fleet.close()


def test_a_watch_started_mid_run_takes_the_target_over(lb, backends, watches):
    devices, (a, b, c), group = _scaled_out(lb, backends, 30)
    proc = None
    try:
        proc = _moving(lb, devices)
        watch = watches(lb.inventory)
        out, _ = proc.communicate(timeout=60)
        report = json.loads(out)
        assert proc.returncode == 3 and "controlled by nginxctl watch" in report["errors"][0]["message"], report
        moved_then = devices.eofs
        # the watch owns the target now: its desired config (every server up) runs, no overlay, no drift
        wait_for(lambda: (s := _status(lb.inventory))["overlay"] is None and s["drift"] is False
                 and all(x["state"] == "up" for x in s["groups"][0]["servers"]), 30, "the watch's config runs")
        watch.stop()
        assert devices.eofs <= moved_then + 2 and devices.resets == 0
    finally:
        _finish(proc)
        devices.close()


def test_a_terminal_sees_a_progress_bar(lb, backends):
    devices, _, _ = _scaled_out(lb, backends, 20)
    try:
        # stderr on a pseudo-terminal, as a person runs it; stdout (the report) on a pipe
        primary, secondary = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "rebalance", "pool", "-i", str(lb.inventory),
                                 "--rate", "20"], stdout=subprocess.PIPE, stderr=secondary, text=True, cwd="/",
                                env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
        os.close(secondary)
        seen = b""
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 1.0)
                if ready:
                    try:
                        seen += os.read(primary, 65536)
                    except OSError:
                        break
            out, _ = proc.communicate(timeout=30)
        finally:
            os.close(primary)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))   # colours and cursor
        assert proc.returncode == 0, screen
        assert "moving" in screen and re.search(r"\b\d+/\d+\b", screen), screen   # the bar: moved / to move
        assert "moved " not in screen   # the plain lines are for pipes, not terminals
        assert "connection(s) moved" in out or "moved" in out, out
        assert devices.resets == 0
    finally:
        devices.close()


def test_an_overlay_never_enters_the_history(lb, backends):
    """An apply while a rebalance's overlay runs keeps the overlay out of the history: `rollback` can never
    return to a config with servers closed for a run that is over."""
    devices, (a, b, c), group = _scaled_out(lb, backends, 20)
    proc = None
    try:
        proc = _moving(lb, devices)
        during = _status(lb.inventory)
        assert during["overlay"] is not None
        assert cli("diff", "-i", str(lb.inventory)).returncode == 0   # the overlay is no difference, as in status
        group["proxy_timeout"] = "2h"
        lb.write({"pool": group})
        _apply(lb.inventory)   # replaces the overlay's file: the file it replaces is not history
        proc.communicate(timeout=60)
        history = json.loads(cli("history", "-i", str(lb.inventory), "--format", "json").stdout)
        assert during["loaded"] not in {e["sha256"] for e in history["entries"]}, (during["loaded"], history)
        assert len(history["entries"]) == 4   # the image's own config, the two applied before, the last one
    finally:
        _finish(proc)
        devices.close()
