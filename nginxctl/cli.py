"""The command line: each command loads, calls one core function, and prints.

Errors from the core (`errors.NginxctlError`) become one message on stderr and the class's exit
code; `--debug` shows the traceback as well.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from . import __version__
from .errors import ConfigRejected, InventoryError, Location, NginxctlError, Problem, UsageError
from .inventory import Inventory, Target, json_schema, parse_inventory

app = typer.Typer(
    name="nginxctl", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="nginx as a TCP/UDP (L4) load balancer, from one inventory file.\n\n"
         "Exit codes: 0 success; 1 nginx rejected the config, diff found changes, or drain --wait timed out; 2 usage or "
         "inventory error; 3 environment error (Docker, image, container); 4 apply or reload failed "
         "and the previous config is running.")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_debug = False


class Format(str, Enum):
    text = "text"
    json = "json"


InventoryOpt = Annotated[Path, typer.Option("--inventory", "-i", help="Inventory file.",
                                            envvar="NGINXCTL_INVENTORY")]
ContainerOpt = Annotated[Optional[str], typer.Option(
    "--container", "-c", help="The nginx container (default: the inventory's target.container).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="text for people, json for scripts.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")]
TemplatesOpt = Annotated[Optional[Path], typer.Option(
    "--templates", "-t", help="Folder of templates that override the shipped ones.", file_okay=False)]
StreamOnlyOpt = Annotated[Optional[bool], typer.Option(
    "--stream-only/--full-config", help="Deploy only the stream {} block (for an nginx.conf that "
    "includes it) or the whole nginx.conf (default).")]
ConfigPathOpt = Annotated[Optional[str], typer.Option(
    "--config-path", help="The file nginxctl owns in the container (default /etc/nginx/nginx.conf).")]

GroupArg = Annotated[str, typer.Argument(help="The upstream group.")]
ServerArg = Annotated[str, typer.Argument(help="The server's address as in the inventory, e.g. 10.0.0.5:6666.")]
ChangeLockOpt = Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait while another nginxctl "
                                              "changes the target (default: fail at once).")]

F = TypeVar("F", bound=Callable[..., Any])


def handled(func: F) -> F:
    """Turn nginxctl's errors into a message and an exit code, for every command."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NginxctlError as exc:
            if _debug:
                err.print_exception()
            if isinstance(exc, InventoryError):
                for problem in exc.problems:
                    print(problem, file=sys.stderr)
                print(f"error: {len(exc.problems)} problem(s) in the inventory; nothing was written",
                      file=sys.stderr)
            else:
                for i, line in enumerate(str(exc).splitlines()):
                    print(("error: " if i == 0 else "  ") + line, file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _: None
    return lambda message: err.print(f"[dim]· {message}[/]")


def load(path: Path) -> Inventory:
    """Read and validate the inventory file. Raises InventoryError (exit 2)."""
    return parse_inventory(_read(path), str(path))


def _read(path: Path) -> str:
    name = str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError([Problem(Location(name), "", "inventory file not found: create it (see the "
                                      "README) or pass -i PATH")]) from None
    except IsADirectoryError:
        raise InventoryError([Problem(Location(name), "", "is a folder, not an inventory file")]) from None
    except UnicodeDecodeError as exc:
        raise InventoryError([Problem(Location(name), "", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise InventoryError([Problem(Location(name), "", f"cannot read: {exc.strerror}")]) from None


def _env(inv: Inventory, inventory_path: Path, templates: Path | None):  # type: ignore[no-untyped-def]
    from .render import template_env

    if templates is None and inv.templates:
        templates = (inventory_path.parent / inv.templates)
    return template_env(templates)


def _render(inv: Inventory, inventory_path: Path, templates: Path | None, *, full: bool,
            modules: tuple[str, ...] = ()) -> str:
    from .render import render

    return render(inv, _env(inv, inventory_path, templates), full=full, modules=modules)


def _notes(inv: Inventory, quiet: bool) -> None:
    if not quiet:
        for note in inv.nginx.notes:
            err.print(f"[yellow]note:[/] {note}")


def _version(value: bool) -> None:
    if value:
        print(f"nginxctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    global _debug
    _debug = debug


@app.command()
@handled
def render(
    inventory: InventoryOpt = Path("inventory.yaml"),
    full: Annotated[bool, typer.Option("--full", help="A whole nginx.conf (main, events, stream).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to FILE (atomically) "
                                                   "instead of stdout.", dir_okay=False)] = None,
    templates: TemplatesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Print the nginx stream {} block (or with --full a whole nginx.conf) for the inventory."""
    from .files import write_atomic

    inv = load(inventory)
    text = _render(inv, inventory, templates, full=full)
    _notes(inv, quiet)
    if output is None:
        sys.stdout.write(text)
        return
    write_atomic(output, text)
    if not quiet:
        err.print(f"wrote {output}")


@app.command()
@handled
def schema() -> None:
    """Print the inventory's JSON Schema (for yaml-language-server and other editors)."""
    print(json.dumps(json_schema(), indent=2))


def _client(inv: Inventory | None):  # type: ignore[no-untyped-def]
    from .nginx import connect

    return connect(inv.target.docker_host if inv else None)


def _container_name(inv: Inventory | None, container: str | None) -> str:
    name = container or (inv.target.container if inv else None)
    if not name:
        raise UsageError("no container: pass --container NAME or set target.container in the inventory")
    return name


@app.command()
@handled
def validate(
    inventory: InventoryOpt = Path("inventory.yaml"),
    image: Annotated[Optional[str], typer.Option("--image", help="nginx image to test with (default: "
                     "nginx.image, else the --container's image, else $NGINXCTL_IMAGE or nginx:stable).")] = None,
    container: Annotated[Optional[str], typer.Option("--container", "-c", help="Test as this running "
                         "container would: its image and its network (names resolve as it resolves them).")] = None,
    resolve: Annotated[bool, typer.Option("--resolve", help="Resolve upstream host names for real (host "
                       "network) instead of mapping them to a placeholder.")] = False,
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Run nginx -t on the rendered config in a throwaway, locked-down container."""
    from . import nginx
    from .trace import trace

    progress = _progress(quiet or fmt is Format.json)
    inv = load(inventory)
    client = _client(inv)
    network = "host" if resolve else "none"
    live = None
    if container:
        live = nginx.LiveNginx.attach(client, container)
        network = live.network_mode
    chosen = image or inv.nginx.image or (live.image if live else None) \
        or os.environ.get("NGINXCTL_IMAGE") or nginx.DEFAULT_IMAGE
    chosen = nginx.ensure_image(client, chosen, progress)
    progress(f"inspecting nginx in {chosen}")
    build = nginx.image_build(client, chosen)
    modules = _stream_module(inv, build)
    text = _render(inv, inventory, templates, full=True, modules=modules)
    names = sorted({s.address.host for g in inv.upstreams for s in g.servers if s.address.is_name
                    and s.address.host} | {a.host for g in inv.upstreams for a in g.listen
                                           if a.is_name and a.host})
    placeholders = {} if (live or resolve) else {n: nginx.PLACEHOLDER_IP for n in names if n != "localhost"}
    progress(f"nginx -t in a throwaway {chosen} container")
    zones = sum(g.zone_size.bytes for g in inv.upstreams if g.zone_size)
    result = nginx.test_config(client, chosen, text, network=network, hosts=placeholders, shared_memory=zones)
    located = trace(result.output, text, inv)
    report = {"ok": result.exit_code == 0, "image": chosen, "nginx_version": build.version,
              "stream_module_loaded": list(modules), "unchecked_names": sorted(placeholders),
              "network": "container" if live else network, "inventory_sha256": inv.digest,
              "output": result.output.strip(), "errors": located, "exit_code": 0 if result.exit_code == 0 else 1}
    if fmt is Format.json:
        print(json.dumps(report, indent=2))
        if result.exit_code != 0:
            raise typer.Exit(1)
        return
    if result.exit_code != 0:
        raise ConfigRejected(result, located)
    _notes(inv, quiet)
    if placeholders and not quiet:
        err.print(f"[yellow]note:[/] not resolved (mapped to a placeholder): {', '.join(sorted(placeholders))}; "
                  "use --resolve or --container to check them")
    print(f"ok: nginx {build.version} ({chosen}) accepts the config for {inventory} "
          f"({len(inv.upstreams)} group(s))")


def _loads_stream(inv: Inventory) -> bool:
    return any(m.endswith("ngx_stream_module.so") for m in inv.nginx.load_modules)


def _stream_module(inv: Inventory, build: Any) -> tuple[str, ...]:
    return (build.stream_module,) if build.dynamic_stream and not _loads_stream(inv) else ()


def _deployer(inv: Inventory | None, container: str | None, *, quiet: bool, stream_only: bool | None = None,
              config_path: str | None = None, **kwargs: Any) -> Any:
    """The Deployer for the target: --container or the inventory's target; flags win over the inventory."""
    from .apply import Deployer
    from .nginx import LiveNginx

    live = LiveNginx.attach(_client(inv), _container_name(inv, container))
    target = inv.target if inv else Target()
    return Deployer(live, config_path=config_path or target.config_path,
                    stream_only=target.stream_only if stream_only is None else stream_only,
                    progress=_progress(quiet), **kwargs)


def _optional_inventory(inventory: Path, container: str | None) -> Inventory | None:
    """history and rollback need no inventory when --container names the target."""
    return load(inventory) if container is None or inventory.exists() else None


def _render_for(inv: Inventory, inventory: Path, deployer: Any, templates: Path | None) -> str:
    modules: tuple[str, ...] = ()
    if not deployer.stream_only and not _loads_stream(inv):
        modules = _stream_module(inv, deployer.live.build())
    return _render(inv, inventory, templates, full=not deployer.stream_only, modules=modules)


def _print_diff(diff: str) -> None:
    if diff:
        out.print(diff, end="", markup=False)


@app.command()
@handled
def apply(
    inventory: InventoryOpt = Path("inventory.yaml"),
    container: ContainerOpt = None,
    reload: Annotated[bool, typer.Option("--reload", help="Reload nginx and verify the new config runs.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff; change nothing.")] = False,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="Refuse to reload while "
                               "this many old worker generations are still shutting down.")] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for old generations to drain instead of "
                    "refusing.")] = False,
    wait_timeout: Annotated[float, typer.Option("--wait-timeout", help="Seconds --wait waits.")] = 600.0,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait while another "
                            "nginxctl changes the same target.")] = 30.0,
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Render, diff, test, install and (with --reload) reload and verify, restoring on failure."""
    inv = load(inventory)
    deployer = _deployer(inv, container, quiet=quiet or fmt is Format.json, stream_only=stream_only,
                         config_path=config_path, max_generations=max_generations,
                         wait_generations=wait_timeout if wait else None, lock_wait=lock_timeout)
    rendered = _render_for(inv, inventory, deployer, templates)
    outcome = deployer.apply(rendered, reload=reload, dry_run=dry_run)
    if fmt is Format.json:
        print(json.dumps({"changed": outcome.changed, "reloaded": outcome.reloaded, "dry_run": dry_run,
                          "previous_sha256": outcome.previous_hash, "new_sha256": outcome.new_hash,
                          "diff": outcome.diff, "messages": outcome.messages}, indent=2))
        return
    if not quiet:
        _print_diff(outcome.diff)
        for message in outcome.messages:
            err.print(f"· {message}")
    if dry_run:
        print("dry run: " + ("changes shown above; nothing changed" if outcome.changed else "no changes"))
    elif outcome.reloaded:
        r = outcome.reload
        gen = f" (workers {sorted(r.old_workers)} -> {sorted(r.new_workers)})" if r else ""
        print(f"applied and reloaded: nginx in {deployer.live.name} runs config sha256:{outcome.new_hash[:12]}{gen}")
    elif outcome.changed:
        print(f"installed config sha256:{outcome.new_hash[:12]} in {deployer.live.name}; not reloaded "
              "(use --reload)")
    else:
        print(f"no changes: {deployer.live.name} already has this config; nothing done")


@app.command()
@handled
def diff(
    inventory: InventoryOpt = Path("inventory.yaml"),
    container: ContainerOpt = None,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    templates: TemplatesOpt = None,
) -> None:
    """Show what apply would change. Exit 0: no difference; 1: differences."""
    inv = load(inventory)
    deployer = _deployer(inv, container, quiet=True, stream_only=stream_only, config_path=config_path)
    text = deployer.diff(_render_for(inv, inventory, deployer, templates))
    _print_diff(text)
    if text:
        raise typer.Exit(1)


@app.command()
@handled
def status(
    inventory: InventoryOpt = Path("inventory.yaml"),
    container: ContainerOpt = None,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """nginx version, processes, lingering generations, deployed vs inventory config, drift."""
    from .apply import _shutdown_timeout_of, reload_state, sha

    inv = load(inventory)
    deployer = _deployer(inv, container, quiet=True, stream_only=stream_only, config_path=config_path)
    live = deployer.live
    rendered = _render_for(inv, inventory, deployer, templates)
    deployed = deployer.deployed()
    state = reload_state(live, _shutdown_timeout_of(deployed))
    version = live.exec(["-v"]).output.strip().rsplit("/", 1)[-1]
    history_state = deployer.history.state()
    report = {
        "container": live.name, "nginx_version": version,
        "master_pid": state.processes.master.pid if state.processes.master else None,
        "worker_pids": sorted(state.processes.worker_pids),
        "lingering_generations": [{"pids": g.pids, "connections": g.connections} for g in state.generations],
        "client_connections": state.workers_connections,
        "worker_shutdown_timeout": state.shutdown_timeout,
        "config_path": deployer.config_path,
        "deployed_sha256": sha(deployed) if deployed is not None else None,
        "inventory_config_sha256": sha(rendered), "inventory_sha256": inv.digest,
        "drift": deployed != rendered,
        "last_apply": history_state.get("phase", "none"),
        "groups": [{"name": g.name, "protocol": g.protocol, "balance": g.balance,
                    "listen": [a.text for a in g.listen],
                    "servers": [{"address": s.address.text, "flags": s.params} for s in g.servers]}
                   for g in inv.upstreams],
    }
    if fmt is Format.json:
        print(json.dumps(report, indent=2))
        return
    print(f"container   {live.name}  nginx {version}")
    print(f"master      {report['master_pid']}  workers {', '.join(map(str, report['worker_pids'])) or '-'}")
    for line in state.summary():
        print(f"            {line}")
    dep = report["deployed_sha256"]
    print(f"deployed    {dep[:12] if dep else 'none'}  {deployer.config_path}")
    print(f"inventory   {str(report['inventory_config_sha256'])[:12]}  {inventory}")
    print(f"drift       {'yes (nginxctl diff shows it)' if report['drift'] else 'no'}")
    if report["last_apply"] not in ("done", "none"):
        print(f"last apply  unfinished ({report['last_apply']}): the next apply --reload completes it")
    for g in inv.upstreams:
        print(f"\n{g.name}  {g.protocol} {' '.join(a.text for a in g.listen)}  {g.balance}")
        for s in g.servers:
            print(f"  {s.address.text}  {' '.join(s.params)}".rstrip())


@app.command()
@handled
def history(
    container: ContainerOpt = None,
    inventory: InventoryOpt = Path("inventory.yaml"),
    config_path: ConfigPathOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """The configs the target has run, newest first."""
    deployer = _deployer(_optional_inventory(inventory, container), container, quiet=True,
                         config_path=config_path)
    entries = deployer.history.entries()
    current = deployer.deployed()
    from .apply import sha

    rows = [{"id": e.id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.time)), "sha256": e.hash,
             "current": current is not None and e.hash == sha(current)} for e in entries]
    if fmt is Format.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no history on {deployer.live.name} yet (apply records it)")
    for row in rows:
        print(f"{row['id']:>4}  {row['time']}  {str(row['sha256'])[:12]}{'  current' if row['current'] else ''}")


@app.command()
@handled
def rollback(
    container: ContainerOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="History id (see nginxctl history); default: "
                  "the config before the current one.")] = None,
    inventory: InventoryOpt = Path("inventory.yaml"),
    config_path: ConfigPathOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Re-apply an earlier config from the target's history: tested, reloaded, verified."""
    deployer = _deployer(_optional_inventory(inventory, container), container, quiet=quiet,
                         config_path=config_path)
    entry, outcome = deployer.rollback(to)
    if not quiet:
        _print_diff(outcome.diff)
    state = "rolled back and reloaded" if outcome.reloaded else "already running"
    print(f"{state}: {deployer.live.name} runs history entry {entry.id} (sha256:{entry.hash[:12]})")


def _change_server(group: str, server: str, *, down: bool, inventory: Path, container: str | None,
                   force: bool, lock_timeout: float, quiet: bool, templates: Path | None) -> Any:
    """Edit the inventory (down: true / removed), then apply and reload it, under the target's lock.
    The inventory file is restored when the apply does not succeed."""
    from .edit import set_down
    from .files import write_atomic

    original = _read(inventory)
    parse_inventory(original, str(inventory))  # a broken inventory is reported as it is, before any edit
    edit = set_down(original, group, server, down, force=force)
    new_inv = parse_inventory(edit.text, str(inventory))
    deployer = _deployer(new_inv, container, quiet=quiet, lock_wait=lock_timeout)
    with deployer.locked():
        if edit.changed:
            write_atomic(inventory, edit.text, expect=original)
        try:
            outcome = deployer.apply(_render_for(new_inv, inventory, deployer, templates), reload=True)
        except NginxctlError:
            if edit.changed:
                write_atomic(inventory, original, expect=edit.text)
                print(f"{inventory} restored", file=sys.stderr)
            raise
    verb = "drained" if down else "undrained"
    state = "reloaded" if outcome.reloaded else "nginx already runs this config"
    print(f"{verb} {edit.address} in '{group}': inventory {'updated' if edit.changed else 'unchanged'}, {state}")
    return deployer, edit


@app.command()
@handled
def drain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = Path("inventory.yaml"),
    container: ContainerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until no connection to the server remains.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits (30s, 10m, 1h).")] = "10m",
    force: Annotated[bool, typer.Option("--force", help="Drain even the last server taking new connections "
                     "(a backup takes over).")] = False,
    lock_timeout: ChangeLockOpt = 0.0,
    templates: TemplatesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Mark a server down in the inventory (comments kept), apply and reload, and wait for its connections
    to close. Exit 1 when --wait times out with connections left."""
    from .apply import server_connections
    from .inventory.grammar import Invalid, parse_duration, parse_server_address

    try:
        limit = parse_duration(timeout).ms / 1000
    except Invalid as exc:
        raise UsageError(f"--timeout: {exc}") from None
    deployer, edit = _change_server(group, server, down=True, inventory=inventory, container=container,
                                    force=force, lock_timeout=lock_timeout, quiet=quiet, templates=templates)
    address = parse_server_address(edit.address)
    if address.kind == "unix":
        print("connections over unix sockets cannot be counted from here; not waiting")
        return
    assert address.host is not None and address.port is not None
    deadline = time.monotonic() + limit
    progress = _progress(quiet)
    while True:
        held = server_connections(deployer.live, address.host, address.port)
        if held is None:
            print("connections cannot be counted from here (remote Docker engine); not waiting")
            return
        total = sum(held.values())
        if total == 0:
            print(f"no connection to {edit.address} remains")
            return
        who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(held.items()))
        if not wait or time.monotonic() >= deadline:
            print(f"{total} connection(s) to {edit.address} remain ({who})")
            if wait:
                print(f"error: still {total} after {timeout}; they close when their clients leave, or set "
                      "worker_shutdown_timeout to bound it", file=sys.stderr)
                raise typer.Exit(1)
            return
        progress(f"waiting: {total} connection(s) to {edit.address} ({who})")
        time.sleep(1.0)


@app.command()
@handled
def undrain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = Path("inventory.yaml"),
    container: ContainerOpt = None,
    lock_timeout: ChangeLockOpt = 0.0,
    templates: TemplatesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Put a drained server back: remove its down flag in the inventory, apply and reload."""
    _change_server(group, server, down=False, inventory=inventory, container=container, force=False,
                   lock_timeout=lock_timeout, quiet=quiet, templates=templates)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

