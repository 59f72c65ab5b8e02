"""`nginxctl status` of a fleet with `ha:`: the virtual IP's block (who holds it, each keepalived's state), read
from every target of the fleet, above the targets' own reports.

The block covers all of `targets:` whatever --targets says: a split brain is between targets, and a status of
one of them must still show it. A target that cannot be read is `down` with the reason; the exit code stays
what the targets' reports make it (0, or 3 for a target that cannot be reached): a split brain or no holder is
said in the report (`WARNING` line, `split_brain`, `error`), and paged on by the alerts of `watch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import EnvironmentProblem
from .nginx.vip import read_vip
from .reports import Many
from .targets import Connect, Opened
from .vipview import VipView


@dataclass
class FleetStatus(Many):
    """`status` of a fleet, with the virtual IP's block when the inventory has `ha:`."""

    vip: VipView | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.vip is not None:
            out["ha"] = self.vip.to_dict()
        return out

    def lines(self, with_diffs: bool = False) -> list[str]:
        head = [*self.vip.lines(), ""] if self.vip is not None else []
        return head + super().lines(with_diffs)


def with_vip(report: Many, opened: Opened, connect: Connect, container: str | None) -> Many:
    """`report` with the virtual IP read now, when the inventory has `ha:` (and no --container narrows the
    command to one container)."""
    vip = _read(opened, connect, container)
    return report if vip is None else FleetStatus(report.names, report.reports, report.unreachable, vip)


class NoTargetReached(EnvironmentProblem):
    """No target of a fleet with `ha:` can be reached: the error (exit 3), with the virtual IP's block still
    given (JSON: `ha`; text: its lines before the error): every nginx paused or gone is when it matters most."""

    def __init__(self, exc: EnvironmentProblem, vip: VipView) -> None:
        super().__init__(exc.cause, exc.hint)
        self.vip = vip
        self.report = {"ha": vip.to_dict()}

    def stdout_lines(self) -> list[str]:
        return self.vip.lines()


def with_vip_error(exc: EnvironmentProblem, opened: Opened, connect: Connect,
                   container: str | None) -> EnvironmentProblem:
    """`exc` (no target reached), with the virtual IP read now when the inventory has `ha:`."""
    vip = _read(opened, connect, container)
    return exc if vip is None else NoTargetReached(exc, vip)


def _read(opened: Opened, connect: Connect, container: str | None) -> VipView | None:
    inv = opened.inventory
    if inv is None or inv.ha is None or container is not None:
        return None
    clients: dict[str | None, Any] = {inv.target.docker_host: opened.client}
    made = []

    def client(host: str | None) -> Any:
        if host not in clients:
            clients[host] = connect(host)
            made.append(clients[host])
        return clients[host]

    try:
        return read_vip(client, inv, throwaway=True)
    finally:
        for c in made:
            c.close()
