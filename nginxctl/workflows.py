"""The library under every command: one function per workflow, each returning a report.

A CLI command (or the controller, or a script) calls one of these and prints the report: text with
`lines()`, JSON with `to_dict()`. They raise the errors of `errors`, never exit. Docker is reached
through `connect` (a parameter, so callers choose the engine), and the inventory through `read_inventory`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from . import nginx
from .apply import Deployer, Outcome
from .capacity import Machine
from .clock import poll_until
from .errors import (
    ApplyFailure,
    ConfigRejected,
    DrainCancelled,
    DrainTimeout,
    EnvironmentProblem,
    Interrupted,
    InventoryError,
    Journal,
    Location,
    NginxctlError,
    Problem,
    UsageError,
)
from .fleet import Member
from .history import sha
from .inventory import Inventory, Target, parse_inventory
from .nginxtext import Build, parse_version, shutdown_timeout_of
from .observe import reload_state, server_connections

Progress = Callable[[str], None]
Connect = Callable[[str | None], docker.DockerClient]
DEFAULT_INVENTORY = Path("inventory.yaml")


def _quiet(_: str) -> None:
    return None


# -- the inventory -------------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """The inventory file's text. Raises InventoryError (exit 2) for a missing or unreadable file."""
    name = str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "inventory file not found: create it (see the README) or pass -i PATH"
    except IsADirectoryError:
        problem = "is a folder, not an inventory file"
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason})"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
    raise InventoryError([Problem(Location(name), "", problem)])


def read_inventory(path: Path, machine: Machine | None = None) -> Inventory:
    """Read and validate the inventory file; `machine` is where nginx runs (capacity is checked
    against it). Raises InventoryError (exit 2)."""
    return parse_inventory(read_text(path), str(path), machine=machine)


def optional_inventory(path: Path | None, container: str | None) -> Path | None:
    """The inventory a target command uses: `path` when given, else ./inventory.yaml, which may be
    missing when --container names the target (status, history and rollback need no inventory)."""
    if path is not None:
        return path
    if container and not DEFAULT_INVENTORY.exists():
        return None
    return DEFAULT_INVENTORY


def container_name(inv: Inventory | None, container: str | None) -> str:
    """--container, else the inventory's target.container. Raises UsageError."""
    if container is not None and not container.strip():
        raise UsageError("--container is empty: name a container (an unset shell variable?); nothing was done")
    name = container or (inv.target.container if inv else None)
    if not name:
        raise UsageError("no container: pass --container NAME or set target.container in the inventory")
    return name


@dataclass
class Opened:
    """An inventory checked against the machine of the Docker engine it targets, and that engine
    (closed when the `with` block ends)."""

    inventory: Inventory | None
    path: Path | None
    client: docker.DockerClient
    notes: list[str] = field(default_factory=list)   # what discovery saw (one snapshot)

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
    text = read_text(path)
    first = parse_inventory(text, str(path))
    client = connect(first.target.docker_host)
    try:
        inv = parse_inventory(text, str(path), machine=nginx.engine_machine(client))
        inv, notes = with_discovered(inv, connect, strict)
        return Opened(inv, path, client, notes)
    except BaseException:
        client.close()
        raise


# -- render ----------------------------------------------------------------------------------------------

def render_config(inv: Inventory, templates: Path | None = None, *, full: bool,
                  modules: tuple[str, ...] = (), base: Path | None = None) -> str:
    """The rendered config; `templates` (else the inventory's `templates:`, relative to `base`, the
    inventory's folder) overrides the shipped templates. Raises TemplateError."""
    from .render import render, template_env

    if templates is None and inv.templates:
        templates = (base if base is not None else Path(inv.source).parent) / inv.templates
    return render(inv, template_env(templates), full=full, modules=modules)


@dataclass
class RenderReport:
    text: str
    notes: list[str]
    written: Path | None


def render_inventory(path: Path, *, full: bool, output: Path | None = None, templates: Path | None = None) -> \
        RenderReport:
    """Render the inventory (capacity checked against this machine); with `output`, write it atomically.
    Raises InventoryError, TemplateError, UsageError (the output cannot be written)."""
    from .files import write_atomic
    from .host import local_machine

    inv = read_inventory(path, machine=local_machine())
    inv, discovered = with_discovered(inv, nginx.connect)
    text = render_config(inv, templates, full=full, base=path.parent)
    if output is not None:
        write_atomic(output, text)
    return RenderReport(text, list(inv.nginx.notes) + discovered, output)


def with_discovered(inv: Inventory, connect: Connect | None, strict: bool = False) -> tuple[Inventory, list[str]]:
    """The inventory with its discovering groups' backends as the sources show them now (one snapshot),
    and notes saying so. Groups that discover nothing are untouched. `strict` (commands that change a
    target): a source that cannot be reached is an EnvironmentProblem, not a group emptied."""
    if not any(g.discover for g in inv.upstreams):
        return inv, []
    from .controller.merge import merge
    from .controller.sources import snapshots_now

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


def _loads_stream(inv: Inventory) -> bool:
    return any(m.endswith("ngx_stream_module.so") for m in inv.nginx.load_modules)


def _stream_module(inv: Inventory, build: Build) -> tuple[str, ...]:
    return (build.stream_module,) if build.dynamic_stream and not _loads_stream(inv) else ()


# -- validate --------------------------------------------------------------------------------------------

@dataclass
class ValidateReport:
    ok: bool
    image: str
    nginx_version: str
    modules: list[str]
    unchecked_names: list[str]
    network: str
    inventory: Inventory
    output: str
    located: list[str]
    groups: int
    discovered: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "image": self.image, "nginx_version": self.nginx_version,
                "stream_module_loaded": self.modules, "unchecked_names": self.unchecked_names,
                "network": self.network, "inventory_sha256": self.inventory.digest, "output": self.output,
                "errors": self.located, "notes": list(self.inventory.nginx.notes) + self.discovered}


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
             progress: Progress = _quiet) -> ValidateReport:
    """`nginx -t` of the full rendered config in a throwaway, locked-down container.
    Returns the report (ok or not); raises InventoryError, TemplateError, EnvironmentProblem."""
    from .trace import trace

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
        modules = _stream_module(inv, build)
        text = render_config(inv, templates, full=True, modules=modules, base=path.parent)
        names = sorted({s.address.host for g in inv.upstreams for s in g.servers
                        if s.address.is_name and s.address.host})
        placeholders = {} if (live or resolve) else {n: nginx.PLACEHOLDER_IP for n in names if n != "localhost"}
        progress(f"nginx -t in a throwaway {chosen} container")
        zones = sum(g.zone_size.bytes for g in inv.upstreams if g.zone_size)
        result = nginx.test_config(client, chosen, text, network=network, hosts=placeholders, shared_memory=zones)
        return ValidateReport(result.exit_code == 0, chosen, build.version, list(modules), sorted(placeholders),
                              "container" if live else network, inv, result.output.strip(),
                              trace(result.output, text, inv), len(inv.upstreams), discovered)


# -- targets: apply, diff, status, history, rollback --------------------------------------------------------

def open_target(opened: Opened, container: str | None, *, stream_only: bool | None = None,
                config_path: str | None = None, progress: Progress = _quiet, **kwargs: Any) -> Deployer:
    """The Deployer for the target: --container or the inventory's target; flags win over the inventory.
    Raises UsageError, EnvironmentProblem."""
    inv = opened.inventory
    if config_path is not None:
        from .inventory.grammar import Invalid, check_path

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
                 stream_only: bool | None = None, config_path: str | None = None, progress: Progress = _quiet,
                 **kwargs: Any) -> list[Member]:
    """The targets a command acts on: --container (one), else the inventory's `targets:` (a fleet, limited
    by --targets) or its `target:`. Every one is reached before anything changes. Raises UsageError,
    EnvironmentProblem naming the unreachable target."""
    from .fleet import Member, fleet_targets, open_fleet

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


def render_for(inv: Inventory, deployer: Deployer, templates: Path | None, base: Path | None = None) -> str:
    """What the target should run: the stream block for a stream-only target, else a whole nginx.conf
    (with the stream module loaded when the target's nginx builds it as a dynamic module)."""
    modules: tuple[str, ...] = ()
    if not deployer.stream_only and not _loads_stream(inv):
        modules = _stream_module(inv, deployer.live.build())
    return render_config(inv, templates, full=not deployer.stream_only, modules=modules, base=base)


@contextlib.contextmanager
def _reporting(inv: Inventory | None, rendered: str | None, journal: Journal) -> Iterator[None]:
    """Trace an nginx rejection back to the inventory; turn Ctrl-C into a report of what was done."""
    from .trace import trace

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
    import re

    out = []
    for address in dict.fromkeys(re.findall(r"bind\(\) to (\S+) failed", "\n".join(details))):
        for group in inv.upstreams:
            if any(a.text == address or (a.port is not None and address.endswith(f":{a.port}")
                                         and a.host in (None, "*", "0.0.0.0")) for a in group.listen):
                where = inv.positions.locate(("upstreams", group.name, "listen")) if inv.positions else inv.source
                out.append(f"{where}: upstreams.{group.name}.listen: {address} is held by another process on the "
                           "target: free it or listen elsewhere")
    return out


@dataclass
class ApplyReport:
    outcome: Outcome
    dry_run: bool
    notes: list[str] = field(default_factory=list)

    @property
    def diff(self) -> str:
        return self.outcome.diff

    def to_dict(self) -> dict[str, Any]:
        o = self.outcome
        data: dict[str, Any] = {
            "target": o.target, "changed": o.changed, "reloaded": o.reloaded, "dry_run": self.dry_run,
            "previous_sha256": o.previous_hash, "new_sha256": o.new_hash, "loaded_before": o.loaded_before,
            "diff": o.diff, "messages": o.messages, "notes": self.notes}
        if o.reload:
            data["workers"] = {"old": sorted(o.reload.old_workers), "new": sorted(o.reload.new_workers)}
        if o.generations is not None:
            data["before_reload"] = o.generations.to_dict()
        if o.preview is not None:
            data["reload_preview"] = o.preview.to_dict()
        return data

    def lines(self) -> list[str]:
        o = self.outcome
        if self.dry_run:
            out = ["dry run: " + ("changes shown above; nothing changed" if o.changed else "no changes to the file")]
            if not o.changed and o.loaded_before != o.new_hash:
                out.append(f"dry run: nginx in {o.target} has not loaded this config yet: a reload would load it")
            return out + (o.preview.lines() if o.preview else [])
        if o.reloaded and o.reload:
            return [f"applied and reloaded: nginx in {o.target} runs config sha256:{o.new_hash[:12]} (workers "
                    f"{sorted(o.reload.old_workers)} -> {sorted(o.reload.new_workers)})"]
        if o.changed:
            return [f"installed config sha256:{o.new_hash[:12]} in {o.target}; not reloaded: nginx still runs the "
                    "previous config (use --reload)"]
        if o.loaded_before != o.new_hash:
            return [f"{o.target} has this config installed but nginx has not loaded it: use --reload"]
        return [f"no changes: {o.target} already runs this config; nothing done"]


@dataclass
class FleetReport:
    """`apply` on a fleet: one report per target, in rollout order."""

    names: list[str]
    reports: list[ApplyReport]
    notes: list[str]

    @property
    def diff(self) -> str:
        return "".join(r.outcome.diff for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": [{"name": n, **r.to_dict()} for n, r in zip(self.names, self.reports, strict=True)],
                "notes": self.notes}

    def lines(self, with_diffs: bool = False) -> list[str]:
        out: list[str] = []
        for n, r in zip(self.names, self.reports, strict=True):
            if with_diffs and r.outcome.diff:
                out += [f"== {n}", *r.outcome.diff.rstrip("\n").split("\n")]
            out += [f"{n}: {line}" for line in r.lines()]
        return out


def apply_inventory(path: Path, *, connect: Connect, container: str | None = None, reload: bool = False,
                    dry_run: bool = False, stream_only: bool | None = None, config_path: str | None = None,
                    max_generations: int | None = 3, wait: float | None = None, lock_wait: float = 30.0,
                    templates: Path | None = None, targets: list[str] | None = None,
                    progress: Progress = _quiet) -> ApplyReport | FleetReport:
    """Render, diff, test with the target's nginx, keep history, install, and with `reload` reload and verify,
    restoring on failure. Raises what `Deployer.apply` raises, located to the inventory, and Interrupted."""
    from .fleet import rollout

    with open_engine(path, connect, container, strict=not dry_run) as opened:
        inv = opened.inventory
        assert inv is not None
        members = open_members(opened, container, targets, connect, stream_only=stream_only,
                               config_path=config_path, progress=progress, max_generations=max_generations,
                               wait_generations=wait, lock_wait=lock_wait)
        rendered = {m.name: render_for(inv, m.deployer, templates, path.parent) for m in members}
        journal = members[0].deployer.journal
        journal.plan("install the new config", "reload and verify")
        with _reporting(inv, rendered[members[0].name], journal):
            result = rollout(members, rendered, reload=reload, dry_run=dry_run, progress=progress)
        notes = list(inv.nginx.notes) + opened.notes
        if any(m.deployer.stream_only for m in members) and inv.positions is not None and any(
                key[:1] == ("nginx",) for key in inv.positions.keys):
            notes.append("nginx: settings are not deployed with --stream-only (only the stream {} block is): set "
                         "them in the nginx.conf that includes it")
        reports = [ApplyReport(outcome, dry_run, notes) for _, outcome in result.outcomes]
        if len(members) == 1 and not inv.targets:
            return reports[0]
        return FleetReport([name for name, _ in result.outcomes], reports, notes)


@dataclass
class DiffReport:
    target: str
    diff: str
    deployed: str | None
    rendered: str
    loaded: str | None

    @property
    def pending(self) -> bool:
        """The installed file is not what nginx runs: a reload would change what runs."""
        return self.loaded != self.deployed

    @property
    def differs(self) -> bool:
        """nginx does not run the inventory's config: the file differs, or it is not loaded yet."""
        return bool(self.diff) or self.loaded != self.rendered

    def to_dict(self) -> dict[str, Any]:
        data = {"target": self.target, "differs": self.differs, "diff": self.diff, "deployed_sha256": self.deployed,
                "inventory_config_sha256": self.rendered, "loaded": self.loaded, "reload_pending": self.pending}
        if self.differs:
            what = "the deployed file differs from the inventory" if self.diff else \
                "the file matches the inventory but nginx has not loaded it"
            data["errors"] = [{"type": "Differences", "message": what}]
        return data

    def lines(self) -> list[str]:
        if self.diff or self.loaded == self.rendered:
            return []
        loaded = f"sha256:{self.loaded[:12]}" if self.loaded else "an unknown config"
        return [f"# {self.target}: the file matches the inventory, but nginx runs {loaded}: a reload is pending "
                "(nginxctl apply --reload)"]


def diff_inventory(path: Path, *, connect: Connect, container: str | None = None, stream_only: bool | None = None,
                   config_path: str | None = None, templates: Path | None = None,
                   targets: list[str] | None = None) -> DiffReport | Many:
    """What apply would change, against both the file and what nginx has loaded (per target of a fleet)."""
    with open_engine(path, connect, container) as opened:
        assert opened.inventory is not None
        reports = []
        members = open_members(opened, container, targets, connect, stream_only=stream_only, config_path=config_path)
        for m in members:
            rendered = render_for(_with_health(opened.inventory, _health_report(m.deployer, opened.inventory)),
                                  m.deployer, templates, path.parent)
            deployed = m.deployer.deployed()
            reports.append(DiffReport(m.deployer.live.name, m.deployer.diff(rendered),
                                      sha(deployed) if deployed is not None else None, sha(rendered),
                                      m.deployer.loaded()))
        return _one_or_many(opened, members, reports)


@dataclass
class Many:
    """A command's reports for each target of a fleet."""

    names: list[str]
    reports: list[Any]

    @property
    def differs(self) -> bool:
        return any(r.differs for r in self.reports)

    @property
    def diff(self) -> str:
        return "".join(getattr(r, "diff", "") for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        items = []
        for name, report in zip(self.names, self.reports, strict=True):
            data = report.to_dict()
            items.append({"name": name, **(data if isinstance(data, dict) else {"entries": data})})
        return {"targets": items}

    def lines(self, with_diffs: bool = False) -> list[str]:
        """Each target's lines under its name (`with_diffs`: its diff too, under the same header)."""
        out: list[str] = []
        for name, report in zip(self.names, self.reports, strict=True):
            out.append(f"== {name}")
            diff = str(getattr(report, "diff", "") or "")
            if with_diffs and diff:
                out += diff.rstrip("\n").split("\n")
            out += report.lines()
        return out


def _one_or_many(opened: Opened, members: list[Member], reports: list[Any]) -> Any:
    if len(members) == 1 and (opened.inventory is None or not opened.inventory.targets):
        return reports[0]
    return Many([m.name for m in members], reports)


@dataclass
class StatusReport:
    data: dict[str, Any]
    summary: list[str]
    inventory: Inventory | None

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def lines(self) -> list[str]:
        d = self.data
        out = [f"container   {d['container']}  nginx {d['nginx_version']}",
               f"master      {d['master_pid']}  workers {', '.join(map(str, d['worker_pids'])) or '-'}"]
        out += [f"            {line}" for line in self.summary]
        dep, loaded = d["deployed_sha256"], d["loaded"]
        out.append(f"deployed    {dep[:12] if dep else 'none'}  {d['config_path']}")
        out.append(f"loaded      {loaded[:12] if loaded else 'unknown'}"
                   + ("  (the installed file is not loaded yet: nginxctl apply --reload)"
                      if loaded != dep and dep else ""))
        if self.inventory is not None:
            out.append(f"inventory   {str(d['inventory_config_sha256'])[:12]}  {d['inventory_path']}")
            out.append(f"drift       {'yes (nginxctl diff shows it)' if d['drift'] else 'no'}")
            out.append(f"reload      {'pending' if d['reload_pending'] else 'not pending'}")
        health = d.get("health") or {}
        if health and health.get("stale"):
            out.append(f"health      as last published by watch (pid {health.get('watch_pid')}), which no longer "
                       "runs: nothing checks the servers now")
        for row in health.get("servers", []):
            if row.get("state") == "down":
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["since"])) if row.get("since") else "?"
                rendered = "rendered down" if row.get("rendered_down") else "kept in (every primary fails)"
                out.append(f"health      {row['group']}/{row['address']} down since {since}: {row.get('last_error')}"
                           f" ({rendered})")
        if health and not any(r.get("state") == "down" for r in health.get("servers", [])):
            out.append(f"health      {len(health.get('servers', []))} server(s) checked by watch (pid "
                       f"{health.get('watch_pid')}), all passing")
        if d["last_apply"] not in ("done", "none") and d["reload_pending"]:
            out.append(f"last apply  unfinished ({d['last_apply']}): the next apply --reload completes it")
        for g in d.get("groups", []):
            out.append(f"\n{g['name']}  {g['protocol']} {' '.join(g['listen'])}  {g['balance']}")
            out += [f"  {s['address']}  {' '.join(s['flags'])}".rstrip() for s in g["servers"]]
        return out


def _health_report(deployer: Deployer, inv: Inventory | None) -> dict[str, Any] | None:
    """What `nginxctl watch` last published about its health checks of this target (None: never ran),
    marked `stale` when that watch no longer runs, and limited to the inventory's groups."""
    import json

    from .host import process_alive

    raw = deployer.live.read_file(f"{deployer.history.dir}/health.json")
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    alive: bool | None = False
    if not data.get("stopped"):
        alive = process_alive(data.get("watch") or {})
        if alive is None:  # the watch runs out of sight (in a container, say): alive while it beats
            try:
                alive = time.time() - float(data["updated"]) < 3 * float(data["heartbeat_seconds"])
            except (KeyError, TypeError, ValueError):
                alive = False
    data["stale"] = not alive
    if inv is not None:
        groups = {g.name for g in inv.upstreams}
        data["servers"] = [r for r in data.get("servers", []) if r.get("group") in groups]
    return data


def _with_health(inv: Inventory, health: dict[str, Any] | None) -> Inventory:
    """The inventory as a running watch renders it: the servers its health checks took out are down."""
    from dataclasses import replace

    if not health or health.get("stale"):
        return inv
    down = {(r["group"], r["address"]) for r in health.get("servers", []) if r.get("rendered_down")}
    if not down:
        return inv
    groups = tuple(replace(g, servers=tuple(replace(s, down=True) if (g.name, s.address.text) in down else s
                                            for s in g.servers)) for g in inv.upstreams)
    return replace(inv, upstreams=groups)


def target_status(path: Path | None, *, connect: Connect, container: str | None = None,
                  stream_only: bool | None = None, config_path: str | None = None,
                  templates: Path | None = None, targets: list[str] | None = None) -> StatusReport | Many:
    """nginx version, processes, lingering generations, deployed vs loaded vs inventory (per target of a
    fleet). Without an inventory (`path` None), what the target runs."""
    with open_engine(path, connect, container) as opened:
        members = open_members(opened, container, targets, connect, stream_only=stream_only, config_path=config_path)
        return _one_or_many(opened, members, [_status(opened, m.deployer, templates) for m in members])


def _status(opened: Opened, deployer: Deployer, templates: Path | None) -> StatusReport:
    inv = opened.inventory
    live = deployer.live
    deployed = deployer.deployed()
    state = reload_state(live, shutdown_timeout_of(deployed))
    loaded = deployer.loaded()
    data: dict[str, Any] = {
        "container": live.name, "nginx_version": parse_version(live.exec(["-v"]).output),
        "master_pid": state.processes.master.pid if state.processes.master else None,
        "worker_pids": sorted(state.processes.worker_pids), **state.to_dict(),
        "config_path": deployer.config_path,
        "deployed_sha256": sha(deployed) if deployed is not None else None,
        "loaded": loaded, "last_apply": deployer.history.last_phase(),
        "health": _health_report(deployer, inv)}
    if inv is not None:
        rendered = render_for(_with_health(inv, data["health"]), deployer, templates,
                              opened.path.parent if opened.path else None)
        data.update({"inventory_path": str(opened.path), "inventory_config_sha256": sha(rendered),
                     "inventory_sha256": inv.digest,
                     "drift": deployed != rendered,
                     "reload_pending": deployed is not None and loaded != sha(deployed),
                     "groups": [{"name": g.name, "protocol": g.protocol, "balance": g.balance,
                                 "listen": [a.text for a in g.listen],
                                 "servers": [{"address": s.address.text, "flags": s.params} for s in g.servers]}
                                for g in inv.upstreams]})
    else:
        data.update({"inventory_config_sha256": None, "inventory_sha256": None, "drift": None,
                     "reload_pending": deployed is not None and loaded != sha(deployed)})
    return StatusReport(data, state.summary(), inv)


@dataclass
class HistoryReport:
    target: str
    rows: list[dict[str, Any]]

    def to_dict(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.rows

    def lines(self) -> list[str]:
        if not self.rows:
            return [f"no history on {self.target} yet (apply records it)"]
        return [f"{r['id']:>4}  {r['time']}  {str(r['sha256'])[:12]}{'  current' if r['current'] else ''}"
                for r in self.rows]


def target_history(path: Path | None, *, connect: Connect, container: str | None = None,
                   config_path: str | None = None, targets: list[str] | None = None) -> HistoryReport | Many:
    """The configs the target has run, newest first; the one nginx runs is marked current (per target)."""
    with open_engine(path, connect, container) as opened:
        members = open_members(opened, container, targets, connect, config_path=config_path)
        reports = []
        for m in members:
            rows = [{"id": e.id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.time)), "sha256": e.hash,
                     "current": current} for e, current in m.deployer.history_rows()]
            reports.append(HistoryReport(m.deployer.live.name, rows))
        return _one_or_many(opened, members, reports)


@dataclass
class RollbackReport:
    target: str
    entry_id: int
    entry_hash: str
    outcome: Outcome

    @property
    def diff(self) -> str:
        return self.outcome.diff

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "entry": self.entry_id, "sha256": self.entry_hash,
                "reloaded": self.outcome.reloaded, "diff": self.outcome.diff}

    def lines(self) -> list[str]:
        state = "rolled back and reloaded" if self.outcome.reloaded else "already running"
        return [f"{state}: {self.target} runs history entry {self.entry_id} (sha256:{self.entry_hash[:12]})"]


def rollback(path: Path | None, *, connect: Connect, container: str | None = None, to: int | None = None,
             config_path: str | None = None, lock_wait: float = 30.0, targets: list[str] | None = None,
             progress: Progress = _quiet) -> RollbackReport | Many:
    """Re-apply an earlier config from the target's history: tested, reloaded, verified; for a fleet, each
    target to its own earlier config, one at a time, stopping at the first that fails."""
    with open_engine(path, connect, container) as opened:
        members = open_members(opened, container, targets, connect, config_path=config_path, progress=progress,
                               lock_wait=lock_wait)
        if to is not None and len(members) > 1:
            raise UsageError("--to names one target's history entry: add --targets NAME (or --container)")
        reports = []
        for m in members:
            m.deployer.journal.plan("install the earlier config", "reload and verify")
            with _reporting(None, None, m.deployer.journal):
                entry, outcome = m.deployer.rollback(to)
            reports.append(RollbackReport(m.deployer.live.name, entry.id, entry.hash, outcome))
        return _one_or_many(opened, members, reports)


# -- drain / undrain ---------------------------------------------------------------------------------------------

@dataclass
class DrainReport:
    target: str
    group: str
    address: str
    down: bool
    inventory_changed: bool
    outcome: Outcome
    remaining: dict[int, int] | None = None  # worker pid -> connections still open to the server
    counted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "group": self.group, "server": self.address, "down": self.down,
                "inventory_changed": self.inventory_changed, "reloaded": self.outcome.reloaded,
                "remaining_connections": None if self.remaining is None else sum(self.remaining.values()),
                "holders": None if self.remaining is None else {str(k): v for k, v in self.remaining.items()}}

    def lines(self) -> list[str]:
        verb = "drained" if self.down else "undrained"
        state = "reloaded" if self.outcome.reloaded else "nginx already runs this config"
        out = [f"{verb} {self.address} in '{self.group}': inventory "
               f"{'updated' if self.inventory_changed else 'unchanged'}, {state}"]
        if not self.down:
            return out
        if not self.counted:
            out.append("connections cannot be counted from here (a unix socket, or a remote Docker engine)")
        elif not self.remaining:
            out.append(f"no connection to {self.address} remains")
        else:
            who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(self.remaining.items()))
            out.append(f"{sum(self.remaining.values())} connection(s) to {self.address} remain ({who})")
        return out


def change_server(path: Path, group: str, server: str, *, down: bool, connect: Connect,
                  container: str | None = None, force: bool = False, lock_wait: float = 30.0,
                  templates: Path | None = None, progress: Progress = _quiet) -> tuple[DrainReport, Deployer]:
    """Edit the inventory (`down: true` set or removed), then apply and reload it, under the target's lock.
    The inventory file is put back when the apply does not succeed or is interrupted before it changed
    the target. Raises UsageError, InventoryError, and what apply raises."""
    from .edit import set_down

    if container is not None:
        container_name(None, container)
    original = read_text(path)
    parse_inventory(original, str(path))  # a broken inventory is reported as it is, before any edit
    edit = set_down(original, group, server, down, force=force)
    first = parse_inventory(edit.text, str(path))
    client = connect(first.target.docker_host)
    try:
        return _change_server(path, original, edit, client, container=container, group=group, down=down,
                              lock_wait=lock_wait, templates=templates, progress=progress)
    except BaseException:
        client.close()
        raise


def _change_server(path: Path, original: str, edit: Any, client: docker.DockerClient, *, container: str | None,
                   group: str, down: bool, lock_wait: float, templates: Path | None,
                   progress: Progress) -> tuple[DrainReport, Deployer]:
    from .files import write_atomic

    inv = parse_inventory(edit.text, str(path), machine=nginx.engine_machine(client))
    inv, notes = with_discovered(inv, lambda host: nginx.connect(host), strict=True)
    for note in notes:
        progress(note)
    deployer = open_target(Opened(inv, path, client), container, progress=progress, lock_wait=lock_wait)
    flag = "`down: true` written" if down else "`down` removed"
    deployer.journal.plan(f"{flag} in {path}", "install the new config", "reload and verify")
    rendered = render_for(inv, deployer, templates, path.parent)
    with deployer.locked():
        written = False
        try:
            with _reporting(inv, rendered, deployer.journal):
                if edit.changed:
                    write_atomic(path, edit.text, expect=original)
                    written = True
                    deployer.journal.did(f"{flag} in {path}")
                outcome = deployer.apply(rendered, reload=True)
        except Interrupted:
            # Interrupted before the target changed: the inventory goes back, so it says what runs.
            if written and not any("installed" in d for d in deployer.journal.done):
                write_atomic(path, original, expect=edit.text)
                deployer.journal.did(f"{path} put back as it was")
                raise deployer.journal.interrupted() from None
            raise
        except NginxctlError:
            if written:
                write_atomic(path, original, expect=edit.text)
                progress(f"{path} restored")
            raise
    report = DrainReport(deployer.live.name, group, edit.address, down, edit.changed, outcome)
    return report, deployer


def drain(path: Path, group: str, server: str, *, connect: Connect, container: str | None = None,
          wait: float | None = None, force: bool = False, lock_wait: float = 30.0, templates: Path | None = None,
          progress: Progress = _quiet) -> DrainReport:
    """Mark a server down in the inventory, apply and reload, then count (with `wait`, wait until none
    remain) the connections still open to it. Raises DrainTimeout when `wait` runs out, and what
    `change_server` raises."""
    report, deployer = change_server(path, group, server, down=True, connect=connect, container=container,
                                     force=force, lock_wait=lock_wait, templates=templates, progress=progress)
    with contextlib.closing(deployer.live.client):
        return _wait_drained(report, deployer, wait, progress)


def _wait_drained(report: DrainReport, deployer: Deployer, wait: float | None, progress: Progress) -> DrainReport:
    from .inventory.grammar import parse_server_address

    group = report.group
    address = parse_server_address(report.address)
    if address.kind == "unix":
        report.counted = False
        return report
    assert address.host is not None and address.port is not None
    host, port = address.host, address.port

    def check() -> tuple[bool, dict[int, int] | None]:
        if not _still_down(deployer, report.address):
            raise DrainCancelled(f"stopped waiting: {report.address} is no longer drained on {deployer.live.name} "
                             "(undrained or changed by another command meanwhile)")
        held = server_connections(deployer.live, host, port)
        return held is None or not held, held

    said: list[int] = []

    def waiting(held: dict[int, int] | None) -> None:
        total = sum((held or {}).values())
        if said and said[-1] == total:
            return  # say it when the count changes, not every half second
        said.append(total)
        who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted((held or {}).items()))
        progress(f"waiting: {total} connection(s) to {report.address} ({who})")

    try:
        polled = poll_until(check, wait or 0.0, interval=0.5, on_wait=waiting)
    except KeyboardInterrupt:
        raise Interrupted([f"{report.address} drained in '{group}' (inventory and nginx)"],
                          ["waiting for its connections to close"]) from None
    report.remaining = polled.value
    report.counted = polled.value is not None
    if wait is not None and not polled.done and polled.value:
        raise DrainTimeout(report.address, sum(polled.value.values()), f"{wait:g}s", polled.value)
    return report


def _still_down(deployer: Deployer, address: str) -> bool:
    """Whether the target's config still has `server ADDRESS ... down;` (someone may undrain meanwhile)."""
    import re

    text = deployer.deployed() or ""
    return re.search(rf"^\s*server\s+{re.escape(address)}(\s[^;]*)?\sdown;", text, re.M) is not None


def undrain(path: Path, group: str, server: str, *, connect: Connect, container: str | None = None,
            lock_wait: float = 30.0, templates: Path | None = None, progress: Progress = _quiet) -> DrainReport:
    """Put a drained server back: remove its `down` in the inventory, apply and reload."""
    report, deployer = change_server(path, group, server, down=False, connect=connect, container=container,
                                     lock_wait=lock_wait, templates=templates, progress=progress)
    deployer.live.client.close()
    return report
