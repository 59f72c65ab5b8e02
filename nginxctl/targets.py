"""Opening what a command works on: the inventory file, the Docker engine it names (with the inventory's
capacity checked against that engine's machine), what discovery sees at that moment, and the targets.

Every command that talks to a target starts here; the controller uses the same functions at its start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import nginx
from .apply import Deployer
from .controller.merge import merge
from .controller.sources import snapshots_now
from .errors import (
    EnvironmentProblem,
    UsageError,
)
from .fleet import Member, fleet_targets, open_fleet
from .inventory import Inventory, Target, check_capacity, parse_inventory
from .inventory.grammar import Invalid, check_path
from .inventoryfile import container_name, read_text

if TYPE_CHECKING:
    import docker

Progress = Callable[[str], None]
Connect = Callable[[str | None], "docker.DockerClient"]


def quiet(_: str) -> None:
    return None



# -- the inventory -------------------------------------------------------------------------------------

@dataclass
class Opened:
    """An inventory checked against the machine of the Docker engine it targets, and that engine
    (closed when the `with` block ends)."""

    inventory: Inventory | None
    path: Path | None
    client: docker.DockerClient
    notes: list[str] = field(default_factory=list)   # what discovery saw (one snapshot)
    unknown_groups: set[str] = field(default_factory=set)   # discovering groups whose source was not reachable

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def open_engine(path: Path | None, connect: Connect, container: str | None = None, strict: bool = False) -> Opened:
    """Read the inventory (when `path`), connect to its engine, and check capacity against that engine's
    machine. A `container` given empty is refused first. Raises UsageError, InventoryError, EnvironmentProblem."""
    if container is not None:
        container_name(None, container)
    if path is None:
        return Opened(None, None, connect(None))
    first = parse_inventory(read_text(path), str(path))
    client = connect(first.target.docker_host)
    try:
        inv = check_capacity(first, nginx.engine_machine(client))
        discovering = {g.name: g.discover for g in inv.upstreams if g.discover}
        inv, notes = with_discovered(inv, connect, strict)
        unreachable = {source for source in set(discovering.values())
                       if any(n.startswith(f"discover: {source}: not reachable") for n in notes)}
        return Opened(inv, path, client, notes, {g for g, source in discovering.items() if source in unreachable})
    except BaseException:
        client.close()
        raise


def with_discovered(inv: Inventory, connect: Connect | None, strict: bool = False) -> tuple[Inventory, list[str]]:
    """The inventory with its discovering groups' backends as the sources show them now (one snapshot),
    and notes saying so. Groups that discover nothing are untouched. `strict` (commands that change a
    target): a source that cannot be reached is an EnvironmentProblem, not a group emptied."""
    if not any(g.discover for g in inv.upstreams):
        return inv, []

    docker_host = inv.target.docker_host
    snapshots, notes = snapshots_now(inv, (lambda: connect(docker_host)) if connect is not None else None)
    missing = sorted({g.discover for g in inv.upstreams if g.discover and g.discover not in snapshots})
    if strict and missing:
        groups = ", ".join(g.name for g in inv.upstreams if g.discover in missing)
        raise EnvironmentProblem(f"discovery from {', '.join(missing)} is not reachable: applying now would drop the "
                                 f"servers of {groups} found there; nothing changed",
                                 "apply when it is reachable again (a running `nginxctl watch` keeps them)")
    merged = merge(inv, snapshots)
    notes += [f"discover: {s.source} backend {s.origin} skipped: {s.reason}" for s in merged.skipped]
    return merged.inventory, notes



def open_target(opened: Opened, container: str | None, *, stream_only: bool | None = None,
                config_path: str | None = None, progress: Progress = quiet, **kwargs: Any) -> Deployer:
    """The Deployer for the target: --container or the inventory's target; flags win over the inventory.
    Raises UsageError, EnvironmentProblem."""
    inv = opened.inventory
    if config_path is not None:

        try:
            check_path(config_path, "--config-path: an absolute path")
        except Invalid as exc:
            raise UsageError(str(exc)) from None
    live = nginx.LiveNginx.attach(opened.client, container_name(inv, container))
    target = inv.target if inv else Target()
    return Deployer(live, config_path=config_path or target.config_path,
                    stream_only=target.stream_only if stream_only is None else stream_only,
                    progress=progress, **kwargs)


def open_members(opened: Opened, container: str | None, names: list[str] | None, connect: Connect, *,
                 stream_only: bool | None = None, config_path: str | None = None, progress: Progress = quiet,
                 **kwargs: Any) -> list[Member]:
    """The targets a command acts on: --container (one), else the inventory's `targets:` (a fleet, limited
    by --targets) or its `target:`. Every one is reached before anything changes. Raises UsageError,
    EnvironmentProblem naming the unreachable target."""

    inv = opened.inventory
    if container is not None and names:
        raise UsageError("--targets and --container both name targets: use one of them")
    if container is not None or inv is None or not inv.targets:
        if names and (inv is None or not inv.targets):
            raise UsageError("--targets needs an inventory with targets: (a fleet)")
        one = open_target(opened, container, stream_only=stream_only, config_path=config_path, progress=progress,
                          **kwargs)
        return [Member(one.live.name if container or inv is None else (inv.target.container or one.live.name), one)]
    if config_path is not None:
        raise UsageError("--config-path names one file: with a fleet, set config_path per target in targets:")
    targets = fleet_targets(inv, names)

    def make(live: nginx.LiveNginx, target: Target) -> Deployer:
        return Deployer(live, config_path=target.config_path,
                        stream_only=target.stream_only if stream_only is None else stream_only,
                        progress=progress, **kwargs)

    def reuse(host: str | None) -> Any:
        return opened.client if host == (inv.target.docker_host if inv else None) else connect(host)

    return open_fleet(list(targets), reuse, make, [t.name for t in targets])


def parse_names(text: str | None) -> list[str] | None:
    """`--targets lb1,lb2` as names (None: not given). Raises UsageError when it names nothing."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--targets is empty: name targets, e.g. --targets lb1,lb2")
    return names


def reachable_members(opened: Opened, container: str | None, targets: list[str] | None, connect: Connect,
               stream_only: bool | None, config_path: str | None) -> tuple[list[Member], dict[str, str]]:
    """The members that can be reached, and why the others cannot (a read-only command reports what it can)."""

    inv = opened.inventory
    if container is not None or inv is None or not inv.targets:
        return open_members(opened, container, targets, connect, stream_only=stream_only,
                            config_path=config_path), {}
    members: list[Member] = []
    down: dict[str, str] = {}
    for t in fleet_targets(inv, targets):
        try:
            members += open_members(opened, None, [t.name], connect, stream_only=stream_only, config_path=config_path)
        except EnvironmentProblem as exc:
            down[t.name] = str(exc).splitlines()[0]
    if not members:
        raise EnvironmentProblem("no target of the fleet can be reached: " +
                                 "; ".join(f"{n}: {why}" for n, why in down.items()))
    return members, down
