"""Generations that never stall: `apply --retire-rate` and `watch` retire the oldest lingering generation (its
connections closed at a pace, clients see EOF), the limits by count and by memory, and `--retire-rate 0` kept
loud. Real nginx, real held connections on 127.0.0.1."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nginxctl.nginx import LiveNginx
from nginxctl.observe import reload_state

from helpers import TIMEOUT, Held, cli, free_port, wait_for

QUIET = ["--quiet-period", "300ms", "--max-wait", "3s"]


def apply(lb: Any, *extra: str) -> Any:
    return cli("apply", "-i", str(lb.inventory), "--reload", *extra)


def generations(lb: Any) -> list[Any]:
    return reload_state(LiveNginx.attach(lb.client, lb.name), None).generations


def closed(held: Held, timeout: float = 15.0) -> bool:
    """The held connection ends in an orderly EOF (not a reset) within `timeout`."""
    held.sock.settimeout(timeout)
    try:
        return held.sock.recv(16) == b""
    except ConnectionResetError:
        return False


def listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            return bool(s.recv(16))
    except OSError:
        return False


@contextlib.contextmanager
def lingering(lb: Any, group: dict[str, Any], per_generation: list[int]) -> Iterator[tuple[list[list[Held]],
                                                                                        dict[str, Any]]]:
    """Make one old generation per entry, each holding that many connections (oldest first); yields the held
    connections per generation and the groups written so far, and closes every held connection at the end."""
    groups: dict[str, Any] = {"pool": group}
    lb.write(groups)
    assert apply(lb, "--max-generations", "50").returncode == 0
    port = int(group["listen"].rsplit(":", 1)[1])
    held: list[list[Held]] = []
    try:
        for i, count in enumerate(per_generation):
            held.append([Held(port) for _ in range(count)])
            groups[f"extra{i}"] = {"listen": f"127.0.0.1:{free_port()}", "servers": group["servers"]}
            lb.write(groups)
            result = apply(lb, "--max-generations", "50")
            assert result.returncode == 0, result.stderr
        yield held, groups
    finally:
        for h in (h for generation in held for h in generation):
            h.close()


def one_more(lb: Any, groups: dict[str, Any], address: str, name: str = "more") -> int:
    """Another group (a change that needs a reload) written to the inventory; returns its listen port."""
    port = free_port()
    groups[name] = {"listen": f"127.0.0.1:{port}", "servers": [address]}
    lb.write(groups)
    return port


def test_apply_refuses_past_the_limit_saying_retire_rate_exists_then_retires_the_oldest(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    with lingering(lb, group, [3, 2]) as (held, groups):
        assert [g.connections for g in generations(lb)] == [3, 2]
        third = one_more(lb, groups, a.address, "third")
        refused = apply(lb, "--max-generations", "2")
        assert refused.returncode == 4, refused.stderr
        assert "refused: 2 old worker generation(s) still shutting down (--max-generations 2)" in refused.stderr
        assert "--retire-rate" in refused.stderr and "nothing changed" in refused.stderr
        assert not listens(third)

        done = apply(lb, "--max-generations", "2", "--retire-rate", "50/s")
        assert done.returncode == 0, done.stderr
        assert "retiring the oldest generation" in done.stderr
        assert all(closed(h) for h in held[0])                        # the oldest's clients: an orderly EOF
        assert all(h.echo() == b"ping\n" for h in held[1])            # the newer generation's stay
        assert listens(third)                                         # then it reloaded
        assert [g.connections for g in generations(lb)] == [2]


def test_the_memory_limit_triggers_too(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    with lingering(lb, group, [2]) as (held, groups):
        one_more(lb, groups, a.address)
        # an old generation of 2 idle workers costs a few MiB: 1 MiB is less than the current workers alone
        refused = apply(lb, "--max-generations", "50", "--max-lingering-memory", "1m")
        assert refused.returncode == 4, refused.stderr
        assert "--max-lingering-memory 1 MiB" in refused.stderr and "--retire-rate" in refused.stderr
        done = apply(lb, "--max-generations", "50", "--max-lingering-memory", "1m", "--retire-rate", "20")
        assert done.returncode == 0, done.stderr
        assert all(closed(h) for h in held[0])
        assert generations(lb) == []


def test_retire_progress_counts_closed_and_left_that_add_up_to_the_start(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    with lingering(lb, group, [30]) as (held, groups):
        one_more(lb, groups, a.address)
        done = apply(lb, "--max-generations", "1", "--retire-rate", "4")   # 30 at 4/s: a line at 5 s, then the end
        assert done.returncode == 0, done.stderr
        counts = [(int(m.group(1)), int(m.group(2))) for m in
                  re.finditer(r"(\d+) connection\(s\) closed \(EOF\), (\d+) left", done.stderr)]
        assert len(counts) >= 2, done.stderr        # progress while it ran, and the last line
        assert all(c + left <= 30 for c, left in counts), counts   # a connection is closed or left, not both
        assert counts[-1] == (30, 0), counts


def test_watch_retires_by_default_and_applies_within_the_bound(lb, backends, watches):
    a, b = backends("A"), backends("B")
    _, group = lb.group([a.address])
    inv: Path = lb.inventory
    with lingering(lb, group, [5, 1]) as (held, groups):
        w = watches(inv, *QUIET, "--max-generations", "2")     # 2 linger: the next reload must retire one
        w.wait(lambda e: e["event"] in ("in-sync", "reload"))
        group["servers"] = [b.address]
        lb.write(groups)
        retire = w.wait(lambda e: e["event"] == "retire")
        assert retire["connections"] == 5 and retire["rate"] == 20
        reload = w.reload(timeout=5 / 20 + 15)
        assert reload["removed"] == [f"pool/{a.address}"]
        assert all(closed(h, 1) for h in held[0])
        assert held[1][0].echo() == b"ping\n"
        m = w.metrics()
        assert m[("nginxctl_retired_connections_total", (("close", "eof"),))] == 5
        assert m[("nginxctl_lingering_generations", ())] <= 2
        assert m[("nginxctl_pending_seconds", ())] == 0


def test_retire_rate_0_holds_the_change_loudly_and_status_says_it(lb, backends, watches):
    a, b = backends("A"), backends("B")
    _, group = lb.group([a.address])
    with lingering(lb, group, [2]) as (held, groups):
        w = watches(lb.inventory, *QUIET, "--max-generations", "1", "--retire-rate", "0")
        w.wait(lambda e: e["event"] in ("in-sync", "reload"))
        group["servers"] = [b.address]
        lb.write(groups)
        said = w.wait(lambda e: e["event"] == "wait" and "generation" in e["message"])
        assert said["connections"] == 2 and said["generation_pids"] and "waited" in said
        assert "--retire-rate 0" in said["message"]
        wait_for(lambda: w.metrics()[("nginxctl_pending_seconds", ())] >= 1, 10, "pending_seconds never grew")
        m = w.metrics()
        assert m[("nginxctl_lingering_generations", ())] == 1
        assert m[("nginxctl_lingering_memory_bytes", ())] > 0
        status = cli("status", "-i", str(lb.inventory))
        assert "2 connection(s)" in status.stdout and "--retire-rate 0" in status.stdout, status.stdout
        assert all(h.echo() == b"ping\n" for h in held[0])       # nothing was cut
    w.reload(timeout=30)   # they left on their own: applied


def test_a_health_take_out_is_not_held_behind_a_retirement(lb, backends, pongs, watches):
    a = backends("A")
    p, q = pongs("P"), pongs("Q")
    _, group = lb.group([a.address])
    with lingering(lb, group, [30]) as (held, groups):
        check = {"interval": "300ms", "timeout": "200ms", "fails": 2, "passes": 1, "send": "PING\r\n",
                 "expect": "PONG"}
        health_port = free_port()
        groups["checked"] = {"listen": f"127.0.0.1:{health_port}", "servers": [f"127.0.0.1:{p.server_address[1]}",
                             f"127.0.0.1:{q.server_address[1]}"], "health_check": check}
        lb.write(groups)
        # 1 linger: the first reload retires the oldest, 30 connections at 2/s: 15 s
        w = watches(lb.inventory, *QUIET, "--max-generations", "1", "--retire-rate", "2")
        w.wait(lambda e: e["event"] == "retire" and "connections" in e)
        p.hang.set()
        taken = w.wait(lambda e: e["event"] == "reload" and e.get("result") == "ok"
                       and e.get("health_down"), timeout=10)
        assert taken["health_down"] == [f"checked/127.0.0.1:{p.server_address[1]}"]
        assert w.metrics()[("nginxctl_retiring", ())] == 1           # the retirement goes on meanwhile
