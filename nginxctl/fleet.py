"""Several load balancers serving one inventory (`targets:`): reach them all, test everywhere, then change
them one at a time (the first is the canary), and put every changed one back when one fails.

`open_fleet` finds an unreachable target before anything changes (EnvironmentProblem naming it).
`rollout` raises FleetFailure (exit 4: every target runs its previous config again, verified; exit 5: a
put-back failed too, or a target died mid-change) naming the target that failed and those put back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .apply import Deployer, Outcome
from .errors import (
    ConfigRejected,
    EnvironmentProblem,
    FleetFailure,
    NginxctlError,
    RestoreFailed,
    UsageError,
)
from .inventory import Inventory
from .inventory.model import NamedTarget, Target
from .nginx import LiveNginx

Progress = Callable[[str], None]


@dataclass
class Member:
    name: str
    deployer: Deployer


def fleet_targets(inv: Inventory | None, names: list[str] | None) -> list[NamedTarget]:
    """The inventory's targets (a single `target:` is a fleet of one), limited to `names`. Raises UsageError."""
    if inv is None:
        return []
    every = list(inv.targets) or [NamedTarget(**vars(inv.target), name=inv.target.container or "target")]
    if not names:
        return every
    known = {t.name: t for t in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--targets: no target {', '.join(unknown)} in the inventory (targets: "
                         f"{', '.join(known) or 'none'})")
    return [known[n] for n in dict.fromkeys(names)]


def open_fleet(targets: list[Target], connect: Callable[[str | None], Any], make: Callable[[LiveNginx, Target],
               Deployer], names: list[str]) -> list[Member]:
    """Reach every target (one client per engine) before anything changes. Raises EnvironmentProblem naming
    the first target that cannot be reached."""
    clients: dict[str | None, Any] = {}
    members = []
    for target, name in zip(targets, names, strict=True):
        try:
            if target.docker_host not in clients:
                clients[target.docker_host] = connect(target.docker_host)
            live = LiveNginx.attach(clients[target.docker_host], target.container or "")
        except EnvironmentProblem as exc:
            changed = "no target changed" + ("" if len(targets) == 1 else
                                             "; use --targets to change the reachable ones on purpose")
            raise EnvironmentProblem(f"target {name} is not reachable: {exc}", changed) from None
        members.append(Member(name, make(live, target)))
    return members


@dataclass
class FleetOutcome:
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)


def rollout(members: list[Member], rendered: dict[str, str], *, reload: bool, dry_run: bool,
            progress: Progress) -> FleetOutcome:
    """Test the config in every target, then apply to one target at a time, putting back every changed
    target when one fails. Raises ConfigRejected (a target's nginx refused it: nothing installed anywhere),
    FleetFailure, and for a fleet of one exactly what `Deployer.apply` raises."""
    result = FleetOutcome()
    if len(members) == 1 or dry_run:
        for m in members:
            result.outcomes.append((m.name, m.deployer.apply(rendered[m.name], reload=reload, dry_run=dry_run)))
        return result
    for m in members:
        progress(f"{m.name}: testing the new config with its nginx")
        try:
            m.deployer.precheck(rendered[m.name])
        except ConfigRejected as exc:
            raise exc.on(m.name) from None
    previous: dict[str, str | None] = {}
    changed: list[Member] = []
    for m in members:
        progress(f"{m.name}: applying" + (" (the canary)" if not changed else ""))
        previous[m.name] = m.deployer.deployed()
        try:
            outcome = m.deployer.apply(rendered[m.name], reload=reload)
        except NginxctlError as exc:
            uncertain = isinstance(exc, (RestoreFailed, EnvironmentProblem))
            put_back, failed = _put_back(changed, previous, reload, progress)
            raise FleetFailure(m.name, exc, put_back, failed, uncertain) from None
        result.outcomes.append((m.name, outcome))
        if outcome.changed or outcome.reloaded:
            changed.append(m)
    return result


def _put_back(changed: list[Member], previous: dict[str, str | None], reload: bool,
              progress: Progress) -> tuple[list[str], list[str]]:
    done, failed = [], []
    for m in reversed(changed):
        before = previous.get(m.name)
        if before is None:
            failed.append(f"{m.name} (it had no config before)")
            continue
        progress(f"{m.name}: putting back its previous config")
        try:
            m.deployer.apply(before, reload=reload)
            done.append(m.name)
        except NginxctlError as exc:
            failed.append(f"{m.name} ({str(exc).splitlines()[0]})")
    return done, failed
