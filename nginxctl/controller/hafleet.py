"""`watch` over a fleet with `ha:` (a virtual IP the load balancers pass between them).

Standby first: a change goes to the targets that do not hold the virtual IP first, its holder last (read from
their network namespaces, `nginx.vip`), so the load balancer that carries the traffic changes only once the new
config has run on another.

Maintenance of one member: a target that cannot be reached (its container stopped, its engine away) does not
hold the others back, as it does without `ha:` (there a fleet changes whole or not at all). The reachable
members, the holder of the virtual IP among them, are kept in step, health decisions included, and the one away
is said once; when it is back it is behind, so the next pass gives it the desired config (level-triggered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import nginx
from ..fleet import Member, allow_vip_listen, fleet_targets, standby_first
from ..inventory import Inventory
from ..inventory.model import HA
from ..nginx import vip
from .attach import hold, reach
from .log import DecisionLog, Logged
from .model import WatchOptions

Holders = Callable[[list[Member], HA], list[str]]


class HAFleet:
    """The members one watch reaches and holds, and the order it changes them in."""

    def __init__(self, log: DecisionLog, holders: Holders = vip.holders) -> None:
        self.log = log
        self.holders = holders
        self.away: dict[str, str] = {}            # members not reached at the last attach: why
        self.containers: set[str] = set()         # every member's container (their Docker events wake the loop)
        self.returned: frozenset[str] = frozenset()   # back since the last pass: behind, not drifted
        self.held: set[str] = set()
        self.said: str | None = None              # the last order said

    def reach(self, options: WatchOptions, inv: Inventory, client: Any, connect: Callable[[str | None], Any]) \
            -> list[Member]:
        """The members reached now: every one, or (with `ha:`) the reachable ones, the others said once. Raises
        EnvironmentProblem (without `ha:` naming an unreachable target; with it, when none can be reached)."""
        if inv.ha is None or not inv.targets or options.container is not None:
            return reach(options, inv, client, connect)
        self.containers = {t.container for t in fleet_targets(inv, options.targets) if t.container}
        away: dict[str, str] = {}
        members = reach(options, inv, client, connect, away)
        back = sorted(set(self.away) - set(away))
        self.returned |= frozenset(back)
        for name in back:
            self.log(Logged.MEMBER, f"{name} is reachable again: it is behind, and this pass gives it the desired "
                     "config",
                     target=name, state="back")
        gone = {name: why for name, why in away.items() if name not in self.away}
        if gone:
            self._say_away(gone, members, inv.ha)
        self.away = away
        return members

    def _say_away(self, gone: dict[str, str], members: list[Member], ha: HA) -> None:
        holding = self.holders(members, ha)
        kept = ", ".join(f"{m.name} (it holds the virtual IP {ha.address})" if m.name in holding else m.name
                         for m in members)
        unseen = "" if holding else f"; no reachable target is seen holding the virtual IP {ha.address}"
        for name, why in gone.items():
            self.log(Logged.MEMBER, f"{name} is not reachable ({why}): the watch keeps {kept} in step without it, "
                     f"health decisions included{unseen}; {name} gets the desired config when it is back", target=name,
                     state="unreachable", kept=[m.name for m in members], holder=holding or None, level="warning")

    def hold(self, members: list[Member], owner: str | None) -> list[nginx.TargetLock]:
        """The watch lock of each member not held yet (all at start; with `ha:`, one away at start when it comes).
        Raises LockBusy."""
        locks = hold([m for m in members if m.name not in self.held], owner)
        self.held |= {m.name for m in members}
        return locks

    def order(self, members: list[Member], inv: Inventory) -> list[Member]:
        """The members in rollout order: with `ha:`, the standbys first and the holder of the virtual IP last
        (said when it changes); each allowed to bind the virtual IP first when a group listens on it. Raises
        EnvironmentProblem (a namespace that cannot be entered)."""
        for note in allow_vip_listen(inv, members):
            self.log(Logged.KEEPALIVED, note)
        if inv.ha is None or len(members) < 2:
            return members
        ordered, why = standby_first(members, self.holders(members, inv.ha), inv.ha.address)
        if why != self.said:
            self.said = why
            self.log(Logged.ORDER, why.removeprefix("ha: "), targets=[m.name for m in ordered])
        return ordered

    def take_returned(self) -> frozenset[str]:
        """The members back since the last pass (their first pass does not call them drifted), once."""
        returned, self.returned = self.returned, frozenset()
        return returned
