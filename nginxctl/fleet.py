"""Several load balancers serving one inventory (`targets:`): reach them all, test everywhere, then change
them one at a time (the first is the canary), and put every changed one back when one fails.

`open_fleet` finds an unreachable target before anything changes (EnvironmentProblem naming it).
`rollout` raises FleetFailure (exit 4: every target runs its previous config again, verified; exit 5: a
put-back failed too, or a target died mid-change) naming the target that failed and those put back.
With `ha:`, `standby_first` orders the rollout: the targets that do not hold the virtual IP first (the canary
is a standby), its holder last, and each target's keepalived.conf goes in with its nginx config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
from .netns import nonlocal_bind
from .nginx import LiveNginx

Progress = Callable[[str], None]


@dataclass
class Member:
    name: str
    deployer: Deployer

    @property
    def live(self) -> LiveNginx:
        return self.deployer.live


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
               Deployer], names: list[str], away: dict[str, str] | None = None) -> list[Member]:
    """Reach every target (one client per engine) before anything changes. Raises EnvironmentProblem naming
    the first target that cannot be reached; with `away` (the controller over a fleet with `ha:`), each one that
    cannot be reached is put there (name: why) instead, and only a fleet with none reachable raises."""
    clients: dict[str | None, Any] = {}
    members = []
    for target, name in zip(targets, names, strict=True):
        try:
            if target.docker_host not in clients:
                clients[target.docker_host] = connect(target.docker_host)
            live = LiveNginx.attach(clients[target.docker_host], target.container or "")
        except EnvironmentProblem as exc:
            if away is not None:
                away[name] = exc.cause.splitlines()[0]
                continue
            changed = "no target changed" + ("" if len(targets) == 1 else
                                             "; use --targets to change the reachable ones on purpose")
            raise EnvironmentProblem(f"target {name} is not reachable: {exc}", changed) from None
        members.append(Member(name, make(live, target)))
    if away and not members:
        raise EnvironmentProblem("no target of the fleet can be reached: " +
                                 "; ".join(f"{name}: {why}" for name, why in away.items()), "no target changed")
    return members


def standby_first(members: list[Member], holding: list[str], vip: str) -> tuple[list[Member], str]:
    """With `ha:`, the rollout order: the targets that do not hold the virtual IP `vip` first, in their order
    (the canary is a standby), its holder last, so the load balancer carrying the traffic changes only once
    the new config has run elsewhere. No holder seen: the inventory order. Returns the order and why."""
    held = [m for m in members if m.name in holding]
    if not held:
        return members, (f"ha: no target is seen holding the virtual IP {vip} (none holds it yet, or it cannot be "
                         "read): changing them in the inventory order")
    standbys = [m for m in members if m.name not in holding]
    who = ", ".join(m.name for m in held)
    if not standbys:
        return members, f"ha: {who} hold{'s' if len(held) == 1 else ''} the virtual IP {vip}, and no standby is changed"
    return standbys + held, (f"ha: {who} hold{'s' if len(held) == 1 else ''} the virtual IP {vip}: changing "
                             f"{', '.join(m.name for m in standbys)} first (the canary is a standby), {who} last")


@dataclass
class FleetOutcome:
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)


def rollout(members: list[Member], rendered: dict[str, str], *, reload: bool, dry_run: bool,
            progress: Progress, keepalived: Mapping[str, str] | None = None) -> FleetOutcome:
    """Test the config in every target, then apply to one target at a time, in the members' order, putting back
    every changed target when one fails. `keepalived`: each target's keepalived.conf (`ha:`), installed with its
    config. Raises ConfigRejected (a target's nginx refused it: nothing installed anywhere), FleetFailure, and
    for a fleet of one exactly what `Deployer.apply` raises."""
    result = FleetOutcome()
    beside = keepalived or {}
    if len(members) == 1 or dry_run:
        for m in members:
            result.outcomes.append((m.name, _apply(m.deployer, rendered[m.name], reload=reload, dry_run=dry_run,
                                                   keepalived=beside.get(m.name))))
        return result
    for m in members:
        progress(f"{m.name}: testing the new config with its nginx")
        try:
            m.deployer.precheck(rendered[m.name])
        except ConfigRejected as exc:
            raise exc.on(m.name) from None
    previous: dict[str, tuple[str | None, str | None]] = {}
    changed: list[Member] = []
    for m in members:
        progress(f"{m.name}: applying" + (" (the canary)" if not changed else ""))
        previous[m.name] = (m.deployer.deployed(), m.deployer.keepalived_conf() if m.name in beside else None)
        try:
            outcome = _apply(m.deployer, rendered[m.name], reload=reload, keepalived=beside.get(m.name))
        except NginxctlError as exc:
            uncertain = isinstance(exc, (RestoreFailed, EnvironmentProblem))
            put_back, failed = _put_back(changed, previous, reload, progress)
            raise FleetFailure(m.name, exc, put_back, failed, uncertain) from None
        result.outcomes.append((m.name, outcome))
        if outcome.changed or outcome.reloaded or outcome.keepalived_changed:
            changed.append(m)
    return result


def _put_back(changed: list[Member], previous: dict[str, tuple[str | None, str | None]], reload: bool,
              progress: Progress) -> tuple[list[str], list[str]]:
    done, failed = [], []
    for m in reversed(changed):
        before, keepalived = previous.get(m.name, (None, None))
        if before is None:
            failed.append(f"{m.name} (it had no config before)")
            continue
        progress(f"{m.name}: putting back its previous config")
        try:
            _apply(m.deployer, before, reload=reload, keepalived=keepalived)
            done.append(m.name)
        except NginxctlError as exc:
            failed.append(f"{m.name} ({str(exc).splitlines()[0]})")
    return done, failed


def _apply(deployer: Deployer, text: str, *, reload: bool, dry_run: bool = False, keepalived: str | None = None) \
        -> Outcome:
    """`Deployer.apply`, given a keepalived.conf only when there is one (`ha:`)."""
    if keepalived is None:
        return deployer.apply(text, reload=reload, dry_run=dry_run)
    return deployer.apply(text, reload=reload, dry_run=dry_run, keepalived=keepalived)


def allow_vip_listen(inv: Inventory, members: list[Member]) -> list[str]:
    """With a group listening on the virtual IP itself, let every target's nginx bind it before it holds it
    (ip_nonlocal_bind in its namespace, set from this host). Returns notes: what was set, and for a target whose
    namespace cannot be entered from here (a remote engine) what to make sure of (its reload fails otherwise: the
    standby goes first and is put back). Raises EnvironmentProblem when a local namespace cannot be entered."""
    if inv.ha is None or not inv.ha.nonlocal_bind:
        return []
    sysctl = f"net.{'ipv4' if inv.ha.family == 'inet' else 'ipv6'}.ip_nonlocal_bind"
    notes = []
    for m in members:
        pid = m.deployer.live.main_pid
        if m.deployer.live.root is None or pid is None:
            notes.append(f"{m.name}: a group listens on the virtual IP {inv.ha.address}: its container must have "
                         f"been created with --sysctl {sysctl}=1 (nginxctl cannot set it through a remote engine)")
            continue
        try:
            if nonlocal_bind(pid, inv.ha.family):
                notes.append(f"{m.name}: {sysctl}=1 in its network namespace (a group listens on the virtual IP "
                             f"{inv.ha.address}, which a standby does not hold); a restarted container starts "
                             f"without it and nginx cannot bind: create it with --sysctl {sysctl}=1")
        except EnvironmentProblem as exc:
            raise EnvironmentProblem(f"{m.name}: cannot set {sysctl} in its network namespace "
                                     f"({str(exc).splitlines()[0]}); a group listens on the virtual IP "
                                     f"{inv.ha.address}; nothing changed",
                                     f"create the target container with --sysctl {sysctl}=1, or run nginxctl on "
                                     "the engine's host as root") from None
    return notes
