"""Health damping per server (`nginxctl watch`): the pure policy on a fake clock, then a real nginx whose
servers' health decisions are not held back by other servers' reloads nor by reloads for other reasons."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from nginxctl.controller.damping import Decision, decide

from helpers import Pong, free_port
from test_health import answers, stop, wait_event, watch

MAX_WAIT = 10.0
A, B, C = ("pool", "127.0.0.1:1"), ("pool", "127.0.0.1:2"), ("pool", "127.0.0.1:3")
Key = tuple[str, str]


class Loop:
    """What the controller does with a `Decision`, on a fake clock: every pass (whatever its reason) renders
    `decision.down`; a held change schedules a pass at `decision.due`. `reloads` are the health changes."""

    def __init__(self, groups: tuple[frozenset[Key], ...] = ()) -> None:
        self.rendered: frozenset[Key] = frozenset()
        self.changed_at: dict[Key, float] = {}
        self.groups = groups
        self.reloads: list[tuple[float, frozenset[Key], frozenset[Key]]] = []   # (when, taken out, put back)
        self.due: float | None = None

    def decide(self, want: set[Key], now: float) -> Decision[Key]:
        return decide(frozenset(want), self.rendered, self.changed_at, now, MAX_WAIT, self.groups)

    def pass_(self, want: set[Key], now: float) -> Decision[Key]:
        decision = self.decide(want, now)
        if decision.down != self.rendered:
            self.reloads.append((now, decision.down - self.rendered, self.rendered - decision.down))
        self.rendered, self.changed_at, self.due = decision.down, decision.changed_at, decision.due
        return decision


def test_a_failing_server_is_rendered_down_at_once():
    loop = Loop()
    assert loop.pass_({A}, 100.0).down == {A}
    assert loop.reloads == [(100.0, {A}, frozenset())] and loop.due is None


def test_a_second_servers_take_out_is_not_delayed_by_the_firsts_recent_one():
    loop = Loop()
    loop.pass_({A}, 100.0)
    decision = loop.pass_({A, B}, 101.0)  # one second after A's reload
    assert decision.down == {A, B} and decision.held == frozenset() and decision.due is None
    assert [r[0] for r in loop.reloads] == [100.0, 101.0]


def test_passes_for_other_reasons_do_not_reset_any_servers_clock():
    loop = Loop()
    loop.pass_(set(), 100.0)
    for t in (100.5, 101.0, 101.5):   # reloads for inventory edits, discovery...: nothing changes health
        loop.pass_(set(), t)
    assert loop.pass_({B}, 101.6).down == {B}  # B's take-out right after those reloads: at once
    loop.pass_({B}, 115.0)
    loop.pass_({B}, 119.9)  # another reload for another reason, moments before B passes again
    assert loop.pass_(set(), 120.0).down == frozenset()   # B's put-back: at once too
    assert [r[0] for r in loop.reloads] == [101.6, 120.0]


def test_a_put_back_soon_after_its_own_take_out_waits_for_max_wait_after_it():
    loop = Loop()
    loop.pass_({A}, 100.0)
    decision = loop.pass_(set(), 103.0)  # A passes again 3 s later: a flap
    assert decision.down == {A} and decision.held == {A} and decision.due == 110.0
    assert loop.pass_(set(), 109.99).down == {A}
    assert loop.pass_(set(), 110.0).down == frozenset()
    assert loop.reloads[-1] == (110.0, frozenset(), {A})


def test_a_flapping_server_changes_at_most_once_per_max_wait_and_never_holds_another_back():
    loop = Loop()
    t, up, reloads_of_b = 0.0, True, []
    while t < 60.0:   # A flaps every 0.3 s for a minute; B fails at 20 s and passes again at 40 s
        up = not up
        want = ({A} if not up else set()) | ({B} if 20.0 <= t < 40.0 else set())
        loop.pass_(want, t)
        if loop.due is not None and loop.due <= t + 0.3:  # the pass the controller schedules at `due`
            loop.pass_(want, loop.due)
        reloads_of_b += [r[0] for r in loop.reloads if B in r[1] | r[2] and r[0] not in reloads_of_b]
        t = round(t + 0.3, 1)
    a_changes = [when for when, out, back in loop.reloads if A in out | back]
    assert all(b - a >= MAX_WAIT for a, b in zip(a_changes, a_changes[1:], strict=False)), a_changes
    assert len(a_changes) <= 60.0 / MAX_WAIT + 1
    assert reloads_of_b == [20.1, 40.2]   # B's decisions at its first pass after each change, A's flaps or not


def test_a_held_put_back_is_released_when_holding_it_would_take_every_primary_out():
    loop = Loop(groups=(frozenset({A, B}),))
    loop.pass_({A}, 100.0)
    decision = loop.pass_({B}, 101.0)   # A passes again (held: it just went out), B fails
    assert decision.down == {B} and decision.held == frozenset()   # A back at once, not both out
    assert loop.reloads[-1] == (101.0, {B}, {A})


def test_a_held_take_out_keeps_the_server_in():
    loop = Loop()
    loop.pass_({A}, 100.0)
    loop.pass_(set(), 110.0)
    decision = loop.pass_({A}, 111.0)
    assert decision.down == frozenset() and decision.held == {A} and decision.due == 120.0


def test_the_clock_of_a_server_is_forgotten_once_it_holds_nothing():
    loop = Loop()
    loop.pass_({A}, 100.0)
    assert loop.changed_at == {A: 100.0}
    loop.pass_({A, C}, 105.0)
    assert loop.changed_at == {A: 100.0, C: 105.0}
    loop.pass_({A, C}, 112.0)
    assert loop.changed_at == {C: 105.0}


# -- with the controller, real nginx -----------------------------------------------------------------------------

def write_pool(lb: Any, port: int, health: dict[str, Any], servers: list[Pong], connect_timeout: str = "5s") -> None:
    lb.inventory.write_text(yaml.safe_dump({
        "target": {"container": lb.name}, "nginx": {"worker_processes": 1},
        "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "health_check": health,
                               "proxy_connect_timeout": connect_timeout,
                               "servers": [f"127.0.0.1:{s.server_address[1]}" for s in servers]}}}))


def key(p: Pong) -> str:
    return f"pool/127.0.0.1:{p.server_address[1]}"


@pytest.mark.integration
def test_health_decisions_are_not_held_back_by_other_reloads(lb, pongs):
    """Each take-out and put-back lands within interval x fails (or passes) + quiet period + one reload of its
    cause, right after a start, another server's health reload, or an inventory edit's reload. Undamped by
    others, a decision takes ~1.5 s here; held back by the last reload, it would take --max-wait (8 s)."""
    a, b, c, d = pongs("A"), pongs("B"), pongs("C"), pongs("D")
    port = free_port()
    max_wait = 8.0
    health = {"interval": "300ms", "timeout": "200ms", "fails": 2, "passes": 2, "send": "PING\r\n", "expect": "PONG"}
    write_pool(lb, port, health, [a, b, c, d])
    proc, events, changed = watch(lb.inventory, "--quiet-period", "200ms", "--max-wait", f"{max_wait:g}s")

    def reload_(predicate: Any, start: int) -> tuple[int, dict[str, Any]]:
        return wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok"
                          and predicate(e), start)

    try:
        i, started = reload_(lambda e: True, 0)
        a.hang.set()  # right after the start's reload
        hung_a = time.time()
        i, out_a = reload_(lambda e: key(a) in e["health_down"], i + 1)
        b.hang.set()  # right after A's health reload
        hung_b = time.time()
        i, out_b = reload_(lambda e: key(b) in e["health_down"], i + 1)
        assert answers(port) == {"C", "D"}
        # reloads for another reason (an inventory edit each), until A's own damping holds nothing any more
        flip = 0
        while True:
            flip += 1
            write_pool(lb, port, health, [a, b, c, d], connect_timeout="4s" if flip % 2 else "5s")
            i, edit = reload_(lambda e: e["health_down"] == [] and e["health_back"] == [], i + 1)
            if edit["time"] >= max(out_a["time"], out_b["time"]) + max_wait:
                break
        a.hang.clear()
        a.release.set()  # A passes again, and D hangs, right after the edit's reload
        d.hang.set()
        changed_at = time.time()
        i, back_a = reload_(lambda e: key(a) in e["health_back"], i + 1)
        _, out_d = reload_(lambda e: key(d) in e["health_down"], 0)  # the same reload, or one before or after
        assert answers(port) == {"A", "C"}
    finally:
        for p in (a, b, c, d):
            p.release.set()
        stop(proc)
    # an undamped decision: ~1.5 s; one held back by the reload just before: >= max_wait
    for taken, began in ((out_a, hung_a), (out_b, hung_b), (back_a, changed_at), (out_d, changed_at)):
        assert taken["time"] - began < max_wait / 2, (taken, began, started)


@pytest.mark.integration
def test_health_back_names_only_servers_whose_checks_pass_again(lb, pongs):
    a, b = pongs("A"), pongs("B")
    port = free_port()
    health = {"interval": "300ms", "timeout": "200ms", "fails": 2, "passes": 1, "send": "PING\r\n", "expect": "PONG"}
    write_pool(lb, port, health, [a, b])
    proc, events, changed = watch(lb.inventory, "--quiet-period", "200ms", "--max-wait", "1s")
    try:
        i, _ = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok")
        a.hang.set()
        i, out = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert out["health_down"] == [key(a)]
        b.hang.set()  # every primary fails now: A is rendered up again, though its checks still fail
        i, _ = wait_event(events, changed, lambda e: e["event"] == "health" and "ALL" in e["message"], i + 1)
        i, kept = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert kept["health_back"] == [] and kept["health_down"] == []
        b.hang.clear()
        b.release.set()  # B passes again: A, still failing, goes out again (B was never rendered down)
        i, again = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert again["health_down"] == [key(a)] and again["health_back"] == []
        a.hang.clear()
        a.release.set()  # A passes again: the one real put-back
        _, back = wait_event(events, changed, lambda e: e["event"] == "reload" and e.get("result") == "ok", i + 1)
        assert back["health_back"] == [key(a)] and back["health_down"] == []
    finally:
        a.release.set()
        b.release.set()
        stop(proc)
