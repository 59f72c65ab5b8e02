"""The library under every command: one function per workflow, each returning a report.

A CLI command (or the controller, or a script) calls one of these and prints the report: text with
`lines()`, JSON with `to_dict()`. They raise the errors of `errors`, never exit. Docker is reached
through `connect` (a parameter, so callers choose the engine), and the inventory through `read_inventory`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import nginx
from .clock import utc_text
from .desired import keepalived_configs, render_config, render_for, stream_module
from .errors import (
    ApplyFailure,
    ConfigRejected,
    EnvironmentProblem,
    GenerationsLingering,
    Journal,
    KeepalivedRejected,
    RebalanceTimeout,
    Step,
    UsageError,
    WatchOwnsTarget,
)
from .files import write_atomic
from .fleet import Member, allow_vip_listen, fleet_targets, rollout, standby_first
from .host import local_machine
from .inventory import Inventory, check_capacity
from .inventory.model import HA
from .inventoryfile import container_name, read_inventory
from .nginx import vip
from .owner import check_owner
from .rebalance import Options, Rebalancer, check_method
from .rebalance import Step as RebalanceStep
from .reports import (
    ApplyReport,
    FleetReport,
    HistoryReport,
    Many,
    RebalanceReport,
    RenderReport,
    RollbackReport,
    ValidateReport,
    one_or_many,
)
from .targets import Connect, Progress, open_engine, open_members, quiet, reachable_members, with_discovered
from .trace import trace

if TYPE_CHECKING:
    import docker


# -- render ----------------------------------------------------------------------------------------------

def render_inventory(path: Path, *, full: bool, output: Path | None = None, templates: Path | None = None) -> \
        RenderReport:
    """Render the inventory (capacity checked against this machine); with `output`, write it atomically.
    Raises InventoryError, TemplateError, UsageError (the output cannot be written)."""

    inv = check_capacity(read_inventory(path), local_machine())
    inv, discovered = with_discovered(inv, nginx.connect)
    text = render_config(inv, templates, full=full, base=path.parent)
    if output is not None:
        write_atomic(output, text)
    return RenderReport(text, list(inv.nginx.notes) + discovered, output)


def render_keepalived_inventory(path: Path, *, output: Path | None = None, templates: Path | None = None,
                                targets: list[str] | None = None) -> RenderReport:
    """Each target's keepalived.conf (`ha:`), one after the other (each names its target in its first line); with
    `output`, one target's, written atomically. Raises InventoryError, TemplateError, UsageError."""

    inv = read_inventory(path)
    if inv.ha is None:
        raise UsageError(f"{path}: no ha: section, so no target runs keepalived: add ha: {{vip: ..., "
                         "virtual_router_id: ...} (see docs/inventory.md)")
    chosen = fleet_targets(inv, targets)
    if output is not None and len(chosen) != 1:
        raise UsageError("-o writes one keepalived.conf: choose its target with --targets NAME")
    confs = keepalived_configs(inv, chosen, templates, base=path.parent)
    text = "\n".join(confs.values())
    if output is not None:
        write_atomic(output, text)
    return RenderReport(text, [], output)


# -- validate --------------------------------------------------------------------------------------------

def choose_image(client: docker.DockerClient, inv: Inventory, *, image: str | None, live: nginx.LiveNginx | None,
                 pull: bool, progress: Progress) -> str:
    """The image to test with: --image, nginx.image, the --container's image, the image the inventory's
    target runs, $NGINXCTL_IMAGE, else nginx:stable or the local build. Never pulls unless `pull`."""
    chosen = image or inv.nginx.image or (live.image if live else None)
    if chosen is None and inv.target.container:
        with contextlib.suppress(EnvironmentProblem):
            chosen = nginx.LiveNginx.attach(client, inv.target.container).image
    chosen = chosen or os.environ.get("NGINXCTL_IMAGE") or None
    if chosen is None:
        chosen = nginx.DEFAULT_IMAGE
        if not nginx.image_present(client, chosen) and not pull and nginx.image_present(client, nginx.LOCAL_IMAGE):
            progress(f"{chosen} is not present; using the local {nginx.LOCAL_IMAGE}")
            chosen = nginx.LOCAL_IMAGE
    return nginx.ensure_image(client, chosen, pull=pull, progress=progress)


def validate(path: Path, *, connect: Connect, image: str | None = None, container: str | None = None,
             resolve: bool = False, pull: bool = False, templates: Path | None = None,
             progress: Progress = quiet) -> ValidateReport:
    """`nginx -t` of the full rendered config in a throwaway, locked-down container.
    Returns the report (ok or not); raises InventoryError, TemplateError, EnvironmentProblem."""

    with open_engine(path, connect, container) as opened:
        inv, client, discovered = opened.inventory, opened.client, opened.notes
        assert inv is not None
        network = "host" if resolve else "none"
        live = None
        if container is not None:
            live = nginx.LiveNginx.attach(client, container_name(None, container))
            network = live.network_mode
        chosen = choose_image(client, inv, image=image, live=live, pull=pull, progress=progress)
        progress(f"inspecting nginx in {chosen}")
        build = nginx.image_build(client, chosen)
        modules = stream_module(inv, build)
        text = render_config(inv, templates, full=True, modules=modules, base=path.parent)
        names = sorted({s.address.host for g in inv.upstreams for s in g.servers
                        if s.address.is_name and s.address.host})
        placeholders = {} if (live or resolve) else {n: nginx.PLACEHOLDER_IP for n in names if n != "localhost"}
        progress(f"nginx -t in a throwaway {chosen} container")
        zones = sum(g.zone_size.bytes for g in inv.upstreams if g.zone_size)
        result = nginx.test_config(client, chosen, text, network=network, hosts=placeholders, shared_memory=zones)
        checked = _test_keepalived(client, inv, templates, path.parent, progress) if result.exit_code == 0 else []
        return ValidateReport(result.exit_code == 0, chosen, build.version, list(modules), sorted(placeholders),
                              "container" if live else network, inv, result.output.strip(),
                              trace(result.output, text, inv), len(inv.upstreams), discovered, checked)


def _test_keepalived(client: docker.DockerClient, inv: Inventory, templates: Path | None, base: Path,
                     progress: Progress) -> list[str]:
    """With `ha:`, `keepalived --config-test` of each target's keepalived.conf in a throwaway container; the
    targets checked. Raises KeepalivedRejected (the first target whose config keepalived refuses),
    EnvironmentProblem (no keepalived image)."""
    if inv.ha is None:
        return []
    image = inv.ha.image
    if not nginx.image_present(client, image):
        raise EnvironmentProblem(f"image {image} is not present on the Docker engine (ha: keepalived)",
                                 nginx.KEEPALIVED_HINT)
    confs = keepalived_configs(inv, fleet_targets(inv, None), templates, base)
    for name, conf in confs.items():
        progress(f"keepalived --config-test of {name}'s keepalived.conf in a throwaway {image} container")
        result = nginx.test_keepalived_config(client, image, conf, inv.ha.interface)
        if result.exit_code != 0:
            raise KeepalivedRejected(name, result)
    return list(confs)


# -- targets: apply, diff, status, history, rollback --------------------------------------------------------

@contextlib.contextmanager
def reporting(inv: Inventory | None, rendered: str | None, journal: Journal) -> Iterator[None]:
    """Trace an nginx rejection back to the inventory; turn Ctrl-C into a report of what was done."""

    try:
        yield
    except ConfigRejected as exc:
        if inv is not None and rendered is not None:
            raise exc.locate(trace(exc.result.output, rendered, inv)) from None
        raise
    except ApplyFailure as exc:
        if inv is not None:
            exc.details.extend(_bind_failures(exc.details, inv))
        raise
    except KeyboardInterrupt:
        raise journal.interrupted() from None


def _bind_failures(details: list[str], inv: Inventory) -> list[str]:
    """`bind() to ADDR failed` (a port held by another process, found at reload) -> the group's listen."""

    out = []
    for address in dict.fromkeys(re.findall(r"bind\(\) to (\S+) failed", "\n".join(details))):
        for group in inv.upstreams:
            if any(a.text == address or (a.port is not None and address.endswith(f":{a.port}")
                                         and a.host in (None, "*", "0.0.0.0")) for a in group.listen):
                where = inv.positions.locate(("upstreams", group.name, "listen")) if inv.positions else inv.source
                out.append(f"{where}: upstreams.{group.name}.listen: {address} is held by another process on the "
                           "target: free it or listen elsewhere")
    return out


def apply_inventory(path: Path, *, connect: Connect, container: str | None = None, reload: bool = False,
                    dry_run: bool = False, stream_only: bool | None = None, config_path: str | None = None,
                    max_generations: int | None = 3, wait: float | None = None, lock_wait: float = 30.0,
                    templates: Path | None = None, targets: list[str] | None = None, force: bool = False,
                    max_memory: int | None = None, retire_rate: float | None = None,
                    progress: Progress = quiet) -> ApplyReport | FleetReport:
    """Render, diff, test with the target's nginx, keep history, install, and with `reload` reload and verify,
    restoring on failure. Raises what `Deployer.apply` raises, located to the inventory, Interrupted, and
    WatchOwnsTarget (a watch controls a target; `force` changes it anyway)."""

    # A dry run refuses what apply refuses: a discovery source that cannot be reached is exit 3 for both,
    # not a preview that empties its groups.
    with open_engine(path, connect, container, strict=True) as opened:
        inv = opened.inventory
        assert inv is not None
        members = open_members(opened, container, targets, connect, stream_only=stream_only,
                               config_path=config_path, progress=progress, max_generations=max_generations,
                               wait_generations=wait, lock_wait=lock_wait, max_memory=max_memory,
                               retire_rate=retire_rate or None)
        forced = [] if dry_run else check_owner(members, force=force)
        rendered = {m.name: render_for(inv, m.deployer, templates, path.parent) for m in members}
        journal = members[0].deployer.journal
        journal.plan(Step.INSTALL, Step.RELOAD)
        keepalived = _keepalived_plan(inv, members, templates, path.parent) if not dry_run else {}
        notes = list(inv.nginx.notes) + opened.notes + forced
        if not dry_run:
            members = _standby_first(inv, members, progress, notes)
            notes += allow_vip_listen(inv, members)
        with reporting(inv, rendered[members[0].name], journal):
            if dry_run:
                _test_aside(members, rendered, progress)
            result = rollout(members, rendered, reload=reload, dry_run=dry_run, progress=progress,
                             keepalived=keepalived)
        notes += [str(o.companion) for _, o in result.outcomes if o.companion is not None]
        if any(m.deployer.stream_only for m in members) and inv.positions is not None and any(
                key[:1] == ("nginx",) for key in inv.positions.keys):
            notes.append("nginx: settings are not deployed with --stream-only (only the stream {} block is): set "
                         "them in the nginx.conf that includes it")
        reports = [ApplyReport(outcome, dry_run, notes) for _, outcome in result.outcomes]
        if len(members) == 1 and not inv.targets:
            return reports[0]
        return FleetReport([name for name, _ in result.outcomes], reports, notes)


def _test_aside(members: list[Member], rendered: dict[str, str], progress: Progress) -> None:
    """A dry run refuses what apply would refuse: `nginx -t` of each target's config with its own image, in
    a throwaway container on its network, nothing written to the target. Raises ConfigRejected naming it."""
    for m in members:
        live = m.deployer.live
        if m.deployer.stream_only:
            progress(f"{m.name}: a stream-only file cannot be tested alone; apply tests it in place")
            continue
        progress(f"{m.name}: nginx -t with its image, on its network (nothing written to it)")
        result = nginx.test_config(live.client, live.image, rendered[m.name], network=live.network_mode)
        if result.exit_code != 0:
            raise ConfigRejected(result).on(m.name) if len(members) > 1 else ConfigRejected(result)


def _standby_first(inv: Inventory | None, members: list[Member], progress: Progress,
                   notes: list[str] | None = None) -> list[Member]:
    """With `ha:`, the members in rollout order: those not holding the virtual IP first, its holder last (said,
    and noted in the report); the inventory order when no holder is seen."""
    if inv is None or inv.ha is None or len(members) < 2:
        return members
    ordered, why = standby_first(members, vip.holders(members, inv.ha), inv.ha.address)
    progress(why)
    if notes is not None:
        notes.append(why)
    return ordered


def _keepalived_plan(inv: Inventory, members: list[Member], templates: Path | None, base: Path) -> dict[str, str]:
    """With `ha:`, each member's keepalived.conf (each member's Deployer set to make its companion of
    `ha.image`), checked before anything changes (the image on each member's engine, `keepalived --config-test`
    there). Raises TemplateError, EnvironmentProblem, KeepalivedRejected."""
    if inv.ha is None:
        return {}
    names = [m.name for m in members if any(t.name == m.name for t in inv.targets)]
    if not names:
        return {}
    confs = keepalived_configs(inv, fleet_targets(inv, names), templates, base)
    for m in members:
        client = m.deployer.live.client
        if not nginx.image_present(client, inv.ha.image):
            raise EnvironmentProblem(f"{m.name}: image {inv.ha.image} is not present on its Docker engine (ha: "
                                     "keepalived runs beside nginx); nothing changed", nginx.KEEPALIVED_HINT)
        if m.name in confs:
            result = nginx.test_keepalived_config(client, inv.ha.image, confs[m.name], inv.ha.interface)
            if result.exit_code != 0:
                raise KeepalivedRejected(m.name, result)
        m.deployer.keepalived_image = inv.ha.image
    return confs


def target_history(path: Path | None, *, connect: Connect, container: str | None = None,
                   config_path: str | None = None, targets: list[str] | None = None) -> HistoryReport | Many:
    """The configs the target has run, newest first; the one nginx runs is marked current (per target)."""
    with open_engine(path, connect, container) as opened:
        members, down = reachable_members(opened, container, targets, connect, None, config_path)
        reports = []
        for m in members:
            rows = [{"id": e.id, "time": utc_text(e.time), "sha256": e.hash,
                     "keepalived_sha256": e.keepalived, "current": current} for e, current in m.deployer.history_rows()]
            reports.append(HistoryReport(m.deployer.live.name, rows))
        if down:
            return Many([m.name for m in members], reports, down)
        return one_or_many(opened, members, reports)


def rollback(path: Path | None, *, connect: Connect, container: str | None = None, to: int | None = None,
             config_path: str | None = None, lock_wait: float = 30.0, targets: list[str] | None = None,
             force: bool = False, progress: Progress = quiet) -> RollbackReport | Many:
    """Re-apply an earlier config from the target's history: tested, reloaded, verified (with `ha:`, the
    keepalived.conf recorded with it too); for a fleet, each target to its own earlier config, one at a time
    (with `ha:` the holder of the virtual IP last), stopping at the first that fails. Raises WatchOwnsTarget
    when a watch controls a target (`force`: roll back anyway; the watch corrects it at its next resync)."""

    with open_engine(path, connect, container) as opened:
        inv = opened.inventory
        members = open_members(opened, container, targets, connect, config_path=config_path, progress=progress,
                               lock_wait=lock_wait, keepalived_image=inv.ha.image if inv and inv.ha else HA.image)
        for note in check_owner(members, force=force):
            progress(note)
        if to is not None and len(members) > 1:
            raise UsageError("--to names one target's history entry: add --targets NAME (or --container)")
        members = _standby_first(inv, members, progress)
        reports = []
        for m in members:
            m.deployer.journal.plan((Step.INSTALL, "install the earlier config"), Step.RELOAD)
            with reporting(None, None, m.deployer.journal):
                entry, outcome = m.deployer.rollback(to)
            reports.append(RollbackReport(m.deployer.live.name, entry.id, entry.hash, outcome))
        return one_or_many(opened, members, reports)


# -- rebalance -------------------------------------------------------------------------------------------

def rebalance_group(path: Path, group: str, *, connect: Connect, options: Options, container: str | None = None,
                    targets: list[str] | None = None, lock_wait: float = 30.0, progress: Progress = quiet,
                    on_step: RebalanceStep | None = None, max_generations: int = 3,
                    retire_rate: float | None = None) -> RebalanceReport | Many:
    """Move the group's connections until every up primary server is within tolerance of its fair share (or,
    `hash ... consistent`, on the server its key maps to), target by target. Raises UsageError (unknown, UDP
    or plain-hash group, a hash key nginxctl cannot compute), WatchOwnsTarget (a watch controls the target;
    not for a dry run), EnvironmentProblem (the sockets cannot be seen: a remote engine), RebalanceTimeout
    (with its report), Interrupted, and what `Deployer.apply` raises."""

    with open_engine(path, connect, container) as opened:
        inv = opened.inventory
        assert inv is not None
        meta = next((g for g in inv.upstreams if g.name == group), None)
        if meta is None:
            names = [g.name for g in inv.upstreams]
            close = difflib.get_close_matches(group, names, n=1)
            raise UsageError(f"no group {group!r} in {path}" + (f"; did you mean {close[0]!r}?" if close else
                                                                 f" (groups: {', '.join(names)})"))
        check_method(meta, group)
        members = open_members(opened, container, targets, connect, progress=progress, lock_wait=lock_wait,
                               max_generations=max_generations, retire_rate=retire_rate, record_history=False)
        if not options.dry_run:
            try:
                check_owner(members)
            except WatchOwnsTarget as exc:
                raise WatchOwnsTarget(exc.target, exc.watch, None, hint=(
                    "let the watch rebalance the group itself: `rebalance: {rate: 20/s, tolerance: 10%, after: 30s}` "
                    f"on {group} in its inventory (docs/controller.md); or stop the watch, rebalance, and start it "
                    "again (it finds its config running)")) from None
        reports = []
        for m in members:
            try:
                result = Rebalancer(m.deployer, group, meta, options, on_step=on_step or (lambda _: None)).run()
            except RebalanceTimeout as exc:
                report = RebalanceReport(exc.result)
                exc.report, exc.result_lines = report.to_dict(), report.lines()
                raise
            except GenerationsLingering as exc:   # the first overlay's reload: nothing was closed yet
                raise GenerationsLingering(
                    exc.count, exc.limit, exc.details, memory=exc.memory, max_memory=exc.max_memory,
                    reason=exc.reason, generations=exc.generations, excess=exc.excess, target=exc.target,
                    advice="The rebalance steers reconnects with a reload and closed no connection. Add "
                    "--retire-rate 20/s to retire the oldest generation first (its connections closed at that pace, "
                    "idle first; clients see an orderly close), raise --max-generations, or wait for them to "
                    "drain") from None
            reports.append(RebalanceReport(result))
        return one_or_many(opened, members, reports)
