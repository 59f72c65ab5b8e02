"""`nginxctl_vip_holder{vip,target}` and the `vip` line for `watch`, off the loop (`ha:` only).

A thread of its own reads the virtual IP off every target of the fleet (`nginx.vip.read_vip`: the namespaces'
addresses and each keepalived's state) every advert interval (`ha.advert_interval`, 1 s by default), sets the
gauge, and logs a `vip` line when the holders change: from whom to whom, a warning when none or several hold
it. It never runs on a reconcile pass and never starts a container (a remote target whose keepalived is down
cannot be read: it has no series, and the line names it). It follows the inventory the loop last loaded: an
`ha:` added or removed while watching is read from the next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..inventory import Inventory
from ..nginx.vip import read_vip
from ..vipview import VipView, moved
from .log import DecisionLog, Logged
from .metrics import Metrics
from .reader import Reader

if TYPE_CHECKING:
    import docker

IDLE = 5.0   # seconds between looks at an inventory without ha:


class VipWatch(Reader):
    """The reader thread of the holder gauge and the `vip` line. `inventory()` gives the loop's last good one."""

    name = "nginxctl-vip"

    def __init__(self, metrics: Metrics, log: DecisionLog, connect: Callable[[str | None], docker.DockerClient],
                 inventory: Callable[[], Inventory | None]) -> None:
        super().__init__(first=0.0, retry=IDLE)
        self.metrics = metrics
        self.log = log
        self.connect = connect
        self.inventory = inventory
        self.last: VipView | None = None
        self.clients: dict[str | None, Any] = {}

    def closed(self) -> None:
        for client in self.clients.values():
            client.close()

    def _client(self, host: str | None) -> Any:
        if host not in self.clients:
            self.clients[host] = self.connect(host)   # EnvironmentProblem: that target is down, asked again next turn
        return self.clients[host]

    def read_once(self) -> float:
        """Read the virtual IP, set the gauge, say a move; the seconds until the next read."""
        inv = self.inventory()
        if inv is None or inv.ha is None:
            if self.last is not None:
                self.metrics.vip_holder.clear()
                self.last = None
            return IDLE
        view = read_vip(self._client, inv)
        self.metrics.set_vip(view.vip, {m.name: m.holds for m in view.members})
        if moved(self.last, view):
            self._say(self.last, view)
        self.last = view
        return float(max(1, inv.ha.advert_seconds))

    def _say(self, before: VipView | None, after: VipView) -> None:
        was, now = (before.holders if before is not None else None), after.holders
        where = ", ".join(now) or "no target"
        if before is None:
            message = f"the virtual IP {after.vip} is on {where}"
        elif was == now:   # who can be read changed, not who holds it
            message = f"the virtual IP {after.vip} is still on {where}" if now else \
                f"the virtual IP {after.vip} is still on no target"
        elif not now:
            message = f"the virtual IP {after.vip} left {', '.join(was or []) or 'no target'}: no target holds it"
        elif was and set(was) < set(now):
            message = f"the virtual IP {after.vip} is now on {where} too (it stayed on {', '.join(was)})"
        else:
            message = f"the virtual IP {after.vip} moved from {', '.join(was or []) or 'no target'} to {where}"
        if after.error is not None:
            message += f" ({after.error})"
        fields: dict[str, Any] = {"from": was, "to": now, "states": after.states()}
        if after.unreadable:
            fields["unreadable"] = after.unreadable
        if after.split_brain:
            fields["split_brain"] = True
        if after.error is not None:
            fields["level"] = "warning"
        self.log(Logged.VIP, message, **fields)
