"""The watch's health decisions: which servers its checks take out or put back, and when.

A server failing its checks is rendered `down`; passing again, it is put back. Never every primary of a group:
when all fail, all stay in (nginx's passive checks still apply) and a `health` line says so loudly. Each change
is damped per server (see `damping`): a flapping server reloads nginx at most once per --max-wait and never
delays another server's decision. The checks themselves run in `health.Checker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..inventory import Inventory
from . import damping
from .health import Checker, CheckTarget
from .log import DecisionLog, Logged
from .merge import Merged, merge
from .metrics import Metrics
from .model import Snapshot

Key = tuple[str, str]   # (group, server address)


class HealthState:
    def __init__(self, max_wait: float, log: DecisionLog, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.max_wait = max_wait
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.checker: Checker | None = None       # set when the watch starts
        self.down: frozenset[Key] = frozenset()   # rendered down now
        self.changed_at: dict[Key, float] = {}    # per server, its last rendered health change
        self.due: float | None = None             # a held change becomes due then
        self.all_failing: set[str] = set()
        self.change: tuple[list[str], list[str]] = ([], [])   # taken out, put back by the last pass
        self.held: frozenset[Key] = frozenset()   # servers whose change waits for their damping (until `due`)
        self.kept_in: set[Key] = set()            # failing, kept in: every primary of their group fails

    @property
    def checking(self) -> bool:
        return self.checker is not None and bool(self.checker.targets)

    def decision(self, inv: Inventory, snapshots: Mapping[str, Snapshot], now: float) -> damping.Decision[Key]:
        assert self.checker is not None
        want = self.effective_down(inv, snapshots, self.checker.down())
        return damping.decide(want, self.down, self.changed_at, now, self.max_wait,
                              [frozenset(p) for p in primaries(merge(inv, dict(snapshots))).values()])

    def changed(self, inv: Inventory, snapshots: Mapping[str, Snapshot], now: float) -> bool:
        """A check changed a server's state: whether the next pass renders something else (then at once, unless
        that server's own last rendered change is less than --max-wait old: `due` says when)."""
        if self.checker is None:
            return False
        decision = self.decision(inv, snapshots, now)
        self.due, self.held = decision.due, decision.held
        return decision.down != self.down

    def render(self, inv: Inventory, snapshots: Mapping[str, Snapshot], now: float) -> None:
        """At each pass: what health checks take out or put back now. `change[1]` names only servers whose
        checks pass again (not those kept in because every primary of their group fails)."""
        if self.checker is None:
            return
        decision = self.decision(inv, snapshots, now)
        before, self.down = self.down, decision.down
        self.changed_at, self.due, self.held = decision.changed_at, decision.due, decision.held
        passing = {k for k, h in self.checker.health().items() if h.up}
        self.change = (sorted(f"{g}/{a}" for g, a in self.down - before),
                       sorted(f"{g}/{a}" for g, a in before - self.down if (g, a) in passing))

    def effective_down(self, inv: Inventory, snapshots: Mapping[str, Snapshot],
                       failing: frozenset[Key]) -> frozenset[Key]:
        """What is rendered down: failing servers, except that a group never loses every primary server to
        its checks (when all fail, all stay in: nginx's passive checks still apply)."""
        keep: set[Key] = set()
        merged = merge(inv, dict(snapshots))
        by_group = primaries(merged)
        for group in merged.inventory.upstreams:
            group_primaries = by_group[group.name]
            all_failing = bool(group_primaries) and all(p in failing for p in group_primaries)
            self.metrics.all_down.labels(group.name).set(1 if all_failing else 0)
            if all_failing:
                keep.update(group_primaries)
                self.kept_in.update(group_primaries)
                if group.name not in self.all_failing:
                    self.all_failing.add(group.name)
                    self.log(Logged.HEALTH, f"ALL {len(group_primaries)} primary server(s) of '{group.name}' fail "
                             "their "
                             "health checks: keeping them all in (nginx's passive checks still apply); check the "
                             "backends and the network between this host and them", group=group.name, level="error")
            else:
                self.kept_in.difference_update(group_primaries)
            if not all_failing and group.name in self.all_failing:
                self.all_failing.discard(group.name)
                self.log(Logged.HEALTH, f"'{group.name}' has a passing primary server again", group=group.name)
        return frozenset(failing - keep)

    def check_targets(self, merged: Merged) -> None:
        """Check every server of the groups with a health_check, static and discovered alike."""
        if self.checker is None:
            return
        targets = [CheckTarget(g.name, s.address.text, g.health_check, g.protocol == "udp")
                   for g in merged.inventory.upstreams if g.health_check is not None
                   for s in g.servers if (g.name, s.address.text) in merged.sources]
        self.metrics.checked([(t.group, t.address) for t in targets])
        self.checker.set_targets(targets)

    def on_check(self, target: Any, ok: bool, error: str | None) -> None:
        self.metrics.health_checks.labels(target.group, target.address, "pass" if ok else "fail").inc()

    def rows(self) -> list[dict[str, Any]]:
        """The published health state, server by server."""
        assert self.checker is not None
        return [{"group": g, "address": a, "state": "up" if h.up else "down", "since": h.since,
                 "last_error": h.last_error, "checks": h.checks, "rendered_down": (g, a) in self.down,
                 "why": self._why((g, a), h.up)}
                for (g, a), h in sorted(self.checker.health().items())]

    def _why(self, key: Key, up: bool) -> str | None:
        """Why the rendered state is not what the checks say (None: it is)."""
        if up == (key not in self.down):
            return None
        if key in self.held and self.due is not None:
            until = time.strftime("%H:%M:%SZ", time.gmtime(time.time() + self.due - self.clock()))
            return f"held by flap damping until {until} (one health reload per --max-wait for a server)"
        if not up and key in self.kept_in:
            return "kept in: every primary of its group fails (nginx's passive checks still apply)"
        return "not rendered yet: the next reload takes it in account"


def primaries(merged: Merged) -> dict[str, list[Key]]:
    """Per group, its primary servers that health checks may take out."""
    return {group.name: [(group.name, s.address.text) for s in group.servers
                         if not s.backup and not s.down and (group.name, s.address.text) in merged.sources]
            for group in merged.inventory.upstreams}
