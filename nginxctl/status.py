"""`nginxctl status` and `nginxctl diff`: what nginx runs, and what is wanted that it does not run yet.

The servers listed are those of the config nginx has *loaded* (see `view`), never the ones nginxctl would
render. What is wanted comes from the running watch when one controls the target (its published desired
config: health decisions and discovered backends included, never drift), else from the inventory and the
discovery sources this command can reach now (a source it cannot reach is named in `notes`, and the groups
that discover from it are left out of `pending`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .apply import Deployer
from .desired import render_for
from .errors import EnvironmentProblem
from .failures import failure_rows, read_failures
from .history import sha
from .inventory import Inventory
from .nginxtext import LoadedGroup, parse_groups, shutdown_timeout_of, with_servers_down
from .observe import reload_state
from .pool import Pool, ServerPool, memory_bytes, read_pool
from .published import Published, WatchState
from .reports import DiffReport, Many, StatusReport
from .share import fair_shares
from .targets import Connect, Opened, open_engine, reachable_members
from .view import ServerView, pending, servers_view
from .vipstatus import with_vip, with_vip_error


@dataclass
class Desired:
    """What the target should run, and who says so."""

    text: str | None
    by: str                                   # watch | inventory | none
    watch: WatchState | None = None
    unknown_groups: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    health: dict[str, Any] | None = None


def _with_health(inv: Inventory, health: dict[str, Any] | None) -> Inventory:
    """The inventory as a running watch renders it: the servers its health checks took out are down."""
    if not health or health.get("stale"):
        return inv
    down = {(r["group"], r["address"]) for r in health.get("servers", []) if r.get("rendered_down")}
    if not down:
        return inv
    groups = tuple(replace(g, servers=tuple(replace(s, down=True) if (g.name, s.address.text) in down else s
                                            for s in g.servers)) for g in inv.upstreams)
    return replace(inv, upstreams=groups)


def desired_config(opened: Opened, deployer: Deployer, templates: Path | None) -> Desired:
    """What the target should run: the live watch's published desired config, else the inventory rendered
    with what the sources show now and the published health decisions (when their watch still runs)."""
    published = Published(deployer.live, deployer.history.base)
    inv = opened.inventory
    health = published.health()
    if health is not None and inv is not None:
        groups = {g.name for g in inv.upstreams}
        health["servers"] = [r for r in health.get("servers", []) if r.get("group") in groups]
    watch = published.live_watch()
    if watch is not None:
        text = published.desired(watch)
        notes = [f"what is wanted is what nginxctl watch ({watch.describe()}) wants"]
        if watch.unreachable:
            notes.append(f"the watch cannot reach {', '.join(watch.unreachable)}: it keeps their last backends")
        if text is not None:
            return Desired(text, "watch", watch, set(), notes, health)
        notes.append("the watch has not published its desired config yet: rendering the inventory instead")
    else:
        notes = []
    if inv is None:
        return Desired(None, "none", watch, set(), notes, health)
    text = render_for(_with_health(inv, health), deployer, templates, opened.path.parent if opened.path else None)
    notes += [n for n in opened.notes if ": not reachable" in n]
    if opened.unknown_groups:
        notes.append(f"what {', '.join(sorted(opened.unknown_groups))} should run cannot be known now (discovery "
                     "not reachable): those groups are shown as nginx runs them and left out of pending")
    return Desired(text, "inventory", watch, set(opened.unknown_groups), notes, health)


def _group_rows(views: dict[str, list[ServerView]], groups: dict[str, LoadedGroup],
                pool: Pool | None) -> list[dict[str, Any]]:
    """The groups as nginx runs them (balancing and listens from the loaded config, not the inventory), each
    server with the connections nginx holds to it and its fair share."""
    rows = []
    for name, servers in views.items():
        g = groups.get(name)
        held = {s.address: s for s in pool.group(name)} if pool is not None else {}
        items = [{**s.to_dict(), **_connections(held.get(s.address))} for s in servers]
        # a server the loaded config no longer has, still held by old workers
        items += [{"address": p.address, "state": "removed", "reason": None, "flags": [], **_connections(p)}
                  for p in held.values() if p.state == "removed" and p.connections]
        # a server a rebalance closed for now (its overlay) keeps its share; a hash group's connections follow their
        # keys, not shares
        moving = {s.address for s in servers if s.reason == "rebalance"}
        weights = {p.address: p.weight for p in held.values()
                   if p.countable and (p.state == "up" or p.address in moving)}
        hashed = g is not None and g.balance == "hash"
        shares = fair_shares({a: held[a].connections for a in weights}, weights) if weights and not hashed else {}
        for item in items:
            item["fair_share"] = round(shares[item["address"]], 2) if item["address"] in shares else None
        rows.append({"name": name, "protocol": g.protocol if g else None, "balance": g.balance if g else None,
                     "listen": list(g.listen) if g else [], "servers": items})
    return rows


def _connections(server: ServerPool | None) -> dict[str, int | None]:
    """A server's connections as status shows them (None: not counted, a unix: or UDP server, or no pool)."""
    if server is None or not server.countable:
        return {"connections": None, "old_generation_connections": None}
    return {"connections": server.connections, "old_generation_connections": server.old_connections}


def _pool(deployer: Deployer, loaded_text: str | None, inv: Inventory | None, notes: list[str]) -> Pool | None:
    """The connections per server and generation (sock_diag), or None with a note saying why not."""
    if loaded_text is None:
        return None
    try:
        udp = [g.name for g in inv.upstreams if g.protocol == "udp"] if inv is not None else []
        return read_pool(deployer.live, loaded_text, history=deployer.history, udp_groups=udp)
    except EnvironmentProblem as exc:
        notes.append(f"connections per server unknown: {exc}")
        return None


def _with_overlay(want: Any, published: Published) -> tuple[dict[str, Any] | None, set[tuple[str, str]]]:
    """A running rebalance's overlay is runtime state, like health decisions: what is wanted includes it (never
    drift, in `status` and `diff` alike), and a note says who holds it. Returns (the overlay, its servers)."""
    overlay = published.overlay()
    overlaid = {(overlay["group"], a) for a in overlay.get("down", [])} \
        if overlay is not None and not overlay["stale"] else set()
    if overlaid and want.text is not None and overlay is not None:
        want.text = with_servers_down(want.text, overlay["group"], {a for _, a in overlaid})
        want.notes.append(f"nginxctl {overlay.get('by', 'rebalance')} (pid {overlay.get('pid')}) moves connections of "
                          f"{overlay['group']}: "
                          f"{', '.join(sorted(a for _, a in overlaid))} take no new connection until it ends")
    elif overlay is not None:
        want.notes.append(f"a rebalance of {overlay['group']} stopped without removing its overlay: if nginx still "
                          "runs it (drift below), `nginxctl apply --reload` puts the normal config back")
    return overlay, overlaid


def _status(opened: Opened, deployer: Deployer, templates: Path | None) -> StatusReport:
    inv = opened.inventory
    live = deployer.live
    deployed = deployer.deployed()
    loaded, loaded_text = deployer.loaded_config()
    want = desired_config(opened, deployer, templates)
    pool = _pool(deployer, loaded_text, inv, want.notes)
    state = reload_state(live, shutdown_timeout_of(deployed), counts=pool.clients_per_pid if pool else None,
                         processes=pool.processes if pool else None, memory=memory_bytes)
    health = want.health
    health_down = {(r["group"], r["address"]) for r in (health or {}).get("servers", []) if r.get("rendered_down")}
    if state.processes.master is None:
        raise EnvironmentProblem(f"no nginx master process runs in {live.name}",
                                 "is the container's command nginx? (`docker top` shows what runs in it)")
    published = Published(live, deployer.history.base)
    overlay, overlaid = _with_overlay(want, published)
    views = servers_view(loaded_text, health_down=health_down, drained=published.drained(),
                         overlay=overlaid) if loaded_text else None
    groups = parse_groups(loaded_text) if loaded_text else {}
    failed = [] if not views else failure_rows(views, groups, pool, read_failures(live, loaded_text, want.notes),
                                               want.notes)
    data: dict[str, Any] = {
        "container": live.name, "nginx_version": live.build().version,   # what `nginx -v` says, read once with -V
        "master_pid": state.processes.master.pid if state.processes.master else None,
        "worker_pids": sorted(state.processes.worker_pids), **state.to_dict(),
        "config_path": deployer.config_path,
        "deployed_sha256": sha(deployed) if deployed is not None else None,
        "loaded": loaded, "last_apply": deployer.history.last_phase(), "health": health,
        # unknown (None) when what nginx runs cannot be identified: neither "pending" nor "not pending" is true
        "reload_pending": None if loaded is None else deployed is not None and loaded != sha(deployed),
        "groups": _group_rows(views, groups, pool) if views is not None and loaded_text else None,
        "recent_failures": failed,
        "overlay": overlay, "pool_seconds": round(pool.seconds, 3) if pool else None,
        "wanted_by": want.by, "notes": want.notes,
        "watch": None if want.watch is None else {
            "pid": want.watch.pid, "host": want.watch.host, "inventory": want.watch.inventory,
            "updated": want.watch.updated, "held": want.watch.held, "held_since": want.watch.held_since,
            "unreachable": want.watch.unreachable},
        "inventory_path": str(opened.path) if opened.path else None,
        "inventory_sha256": inv.digest if inv is not None else None,
        "inventory_config_sha256": sha(want.text) if want.text is not None else None,
        "pending": None, "drift": None}
    if want.text is not None:
        change = pending(loaded_text, want.text, unknown_groups=want.unknown_groups) if loaded_text else None
        data["pending"] = change.to_dict() if change is not None else None
        data["drift"] = bool(change) if change is not None else True
    if loaded_text is None:
        data["notes"].append("nginx runs a config nginxctl cannot identify (changed outside nginxctl, or the "
                             "container restarted with a newer file): `nginxctl apply --reload` makes it known")
    return StatusReport(data, state.summary(), inv)


def target_status(path: Path | None, *, connect: Connect, container: str | None = None,
                  stream_only: bool | None = None, config_path: str | None = None,
                  templates: Path | None = None, targets: list[str] | None = None) -> StatusReport | Many:
    """What each target runs: nginx, processes, lingering generations, the loaded config's servers and their
    states, what is pending and why. The targets of a fleet that cannot be reached are named in `unreachable`
    and the others reported (the CLI exits 3). With `ha:`, the virtual IP's holders and keepalived states too."""
    with open_engine(path, connect, container) as opened:
        try:
            members, down = reachable_members(opened, container, targets, connect, stream_only, config_path)
        except EnvironmentProblem as exc:
            raise with_vip_error(exc, opened, connect, container) from None
        reports = [_status(opened, m.deployer, templates) for m in members]
        if len(members) == 1 and not down and (opened.inventory is None or not opened.inventory.targets):
            return reports[0]
        return with_vip(Many([m.name for m in members], reports, down), opened, connect, container)


def diff_inventory(path: Path, *, connect: Connect, container: str | None = None, stream_only: bool | None = None,
                   config_path: str | None = None, templates: Path | None = None,
                   targets: list[str] | None = None) -> DiffReport | Many:
    """What is wanted (the running watch's desired config, else the inventory) against the installed file and
    what nginx has loaded (per target of a fleet)."""
    with open_engine(path, connect, container) as opened:
        assert opened.inventory is not None
        reports = []
        members, down = reachable_members(opened, container, targets, connect, stream_only, config_path)
        for m in members:
            want = desired_config(opened, m.deployer, templates)
            assert want.text is not None
            _with_overlay(want, Published(m.deployer.live, m.deployer.history.base))
            deployed = m.deployer.deployed()
            loaded, loaded_text = m.deployer.loaded_config()
            change = pending(loaded_text, want.text, unknown_groups=want.unknown_groups) \
                if loaded_text is not None else None
            text = m.deployer.diff(want.text)
            if change is not None and not change and want.unknown_groups:
                text = ""  # only groups whose wanted servers cannot be known now differ: nothing to show
            reports.append(DiffReport(m.deployer.live.name, text,
                                      sha(deployed) if deployed is not None else None, sha(want.text), loaded,
                                      change, want.notes, bool(want.unknown_groups)))
        if len(members) == 1 and not down and not opened.inventory.targets:
            return reports[0]
        return Many([m.name for m in members], reports, down)
