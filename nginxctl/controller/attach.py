"""The targets one watch controls: reached (one client per engine), each behind a `Deployer` with the watch's
limits, and held with the watch lock (the one-owner rule: a second watch on a target is refused)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import nginx
from ..apply import Deployer
from ..fleet import Member, fleet_targets, open_fleet
from ..inventory import Inventory
from ..inventory.model import Target
from ..inventoryfile import container_name
from .model import WatchOptions


def reach(options: WatchOptions, inv: Inventory, client: Any, connect: Callable[[str | None], Any],
          away: dict[str, str] | None = None) -> list[Member]:
    """The targets: --container, else the inventory's fleet (limited by --targets) or its target. Raises
    EnvironmentProblem naming an unreachable one, UsageError; with `away`, a fleet's unreachable targets are put
    there instead (see `fleet.open_fleet`)."""

    def make(live: nginx.LiveNginx, target: Target) -> Deployer:
        return Deployer(live, config_path=target.config_path, stream_only=target.stream_only,
                        max_generations=options.max_generations, max_memory=options.max_memory, lock_wait=30.0,
                        release_lock_in_background=True, count_connections=False)

    if options.container is not None or not inv.targets:
        name = container_name(inv, options.container)
        return [Member(name, make(nginx.LiveNginx.attach(client, name), inv.target))]
    targets = fleet_targets(inv, options.targets)
    first_host = inv.target.docker_host
    return open_fleet(list(targets), lambda host: client if host == first_host else connect(host), make,
                      [t.name for t in targets], away)


def hold(members: list[Member], owner: str | None) -> list[nginx.TargetLock]:
    """Take the watch lock of every target (none waits: another watch there is an error). Raises LockBusy."""
    locks = []
    try:
        for member in members:
            lock = nginx.TargetLock(member.deployer.live.client, member.deployer.live, wait=0, purpose="watch",
                                    kind="watch", owner=owner)
            lock.__enter__()
            locks.append(lock)
    except BaseException:
        for lock in locks:
            lock.__exit__(None, None, None)
        raise
    return locks
