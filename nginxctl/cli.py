"""The command line: each command loads, calls one `workflows` function, and prints its report.

Errors from the library (`errors.NginxctlError`) become one message on stderr (or one JSON document on
stdout with `--format json`) and the class's exit code; anything else is an internal error (exit 70).
`--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__, workflows
from . import drain as drain_mod
from . import status as status_mod
from .cliopts import (
    ConfigPathOpt,
    ContainerOpt,
    ForceOpt,
    Format,
    FormatOpt,
    GroupArg,
    InventoryOpt,
    LockTimeoutOpt,
    LogFormat,
    QuietOpt,
    ServerArg,
    StreamOnlyOpt,
    TargetsOpt,
    TemplatesOpt,
    duration,
    memory_size,
    rate_per_second,
)
from .cliout import (
    diff_text,
    emit,
    err,
    exit_code,
    flush,
    handled,
    json_ok,
    lines,
    notes,
    print_json,
    progress_lines,
    reader_gone,
    rebalance_progress,
    report_text,
    state,
    wants_json,
)
from .controller.model import WatchOptions
from .controller.service import run_watch
from .errors import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    UsageError,
)
from .inventory import json_schema
from .inventoryfile import DEFAULT_INVENTORY, optional_inventory
from .nginx import connect
from .rebalance import Options, parse_tolerance
from .rebalance import parse_rate as parse_close_rate
from .retireplan import (
    APPLY_MAX_GENERATIONS,
    WATCH_MAX_GENERATIONS,
    WATCH_MAX_LINGERING_MEMORY,
    WATCH_RETIRE_RATE,
    size_text,
)
from .targets import parse_names

app = typer.Typer(
    name="nginxctl", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="nginx as a TCP/UDP (L4) load balancer, from one inventory file.\n\nExit codes: "
         + "; ".join(f"{code} {text.split(':')[0].split(' (')[0]}" for code, text in EXIT_CODES.items()) + ".")



def _connect(docker_host: str | None) -> Any:

    return connect(docker_host)


def _inventory(path: Path | None) -> Path:
    return path if path is not None else DEFAULT_INVENTORY


def _names(targets: str | None) -> list[str] | None:
    return parse_names(targets)


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
    state["debug"] = debug


@app.command()
@handled
def render(
    inventory: InventoryOpt = None, targets: TargetsOpt = None,
    full: Annotated[bool, typer.Option("--full", help="A whole nginx.conf (main, events, stream).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to FILE (atomically; a "
                                                   "read-only FILE is refused) instead of stdout.")] = None,
    templates: TemplatesOpt = None,
    quiet: QuietOpt = False,
    keepalived: Annotated[bool, typer.Option("--keepalived", help="With ha: in the inventory, each target's "
                          "keepalived.conf instead (one after the other; -o needs --targets NAME).")] = False,
) -> None:
    """Print the nginx stream {} block (or with --full a whole nginx.conf) for the inventory."""
    if targets is not None and not keepalived:
        raise UsageError("--targets chooses whose keepalived.conf --keepalived prints; the nginx config is the "
                         "same for every target")
    if keepalived:
        report = workflows.render_keepalived_inventory(_inventory(inventory), output=output, templates=templates,
                                                       targets=_names(targets))
    else:
        report = workflows.render_inventory(_inventory(inventory), full=full, output=output, templates=templates)
    notes(report.notes, quiet)
    if output is None:
        sys.stdout.write(report.text)
    elif not quiet:
        err.print(f"wrote {output}")


@app.command()
@handled
def schema() -> None:
    """Print the inventory's JSON Schema (for yaml-language-server and other editors)."""

    print(json.dumps(json_schema(), indent=2))


@app.command()
@handled
def validate(
    inventory: InventoryOpt = None,
    image: Annotated[Optional[str], typer.Option("--image", help="nginx image to test with (default: nginx.image, "
                     "else the --container's or the target's image, else $NGINXCTL_IMAGE, else nginx:stable or the "
                     "local nginxctl/nginx build). Never pulled unless --pull.")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the image when it is not present.")] = False,
    container: Annotated[Optional[str], typer.Option("--container", "-c", help="Test as this running "
                         "container would: its image and its network (names resolve as it resolves them).")] = None,
    resolve: Annotated[bool, typer.Option("--resolve", help="Resolve upstream host names for real (host "
                       "network) instead of mapping them to a placeholder.")] = False,
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Run nginx -t on the rendered config in a throwaway, locked-down container."""

    report = workflows.validate(_inventory(inventory), connect=_connect, image=image, container=container,
                                resolve=resolve, pull=pull, templates=templates,
                                progress=progress_lines(quiet or fmt is Format.json))
    if not report.ok:
        raise report.rejection()
    if fmt is Format.json:
        json_ok(report.to_dict())
        return
    notes(report.notes(), quiet)
    lines(report.lines(_inventory(inventory)))


@app.command()
@handled
def apply(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    reload: Annotated[bool, typer.Option("--reload", help="Reload nginx and verify the new config runs.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff (with --reload: what a reload would do "
                       "to lingering workers and connections); change nothing.")] = False,
    stream_only: StreamOnlyOpt = None, config_path: ConfigPathOpt = None, templates: TemplatesOpt = None,
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="Refuse to reload while "
                               "this many old worker generations are still shutting down.")] = APPLY_MAX_GENERATIONS,
    max_lingering_memory: Annotated[Optional[int], typer.Option(
        "--max-lingering-memory", parser=memory_size, metavar="SIZE", help="Refuse to reload while the old workers "
        "(and the current ones, which a reload makes old) would hold more memory than this (512m, 1g; default: "
        "none).")] = None,
    retire_rate: Annotated[float, typer.Option(
        "--retire-rate", parser=rate_per_second, metavar="N/s", help="Instead of refusing past a limit, retire the "
        "oldest generation first: close its connections at N per second (idle first; clients see an orderly close and "
        "reconnect), then reload. Default 0: refuse.")] = "0",  # type: ignore[assignment]
    wait: Annotated[bool, typer.Option("--wait", help="Wait for old generations to drain instead of "
                    "refusing.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", "--wait-timeout", parser=duration,
                       help="How long --wait waits (10m, 30s, or seconds).")] = "10m",  # type: ignore[assignment]
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    force: ForceOpt = False,
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Render, diff, test, install and (with --reload) reload and verify, restoring on failure. With a fleet
    (targets: in the inventory): test on every target first, then change one at a time, putting the
    changed ones back when one fails. Refused (exit 3) while `nginxctl watch` controls the target."""
    report = workflows.apply_inventory(
        _inventory(inventory), connect=_connect, container=container, reload=reload, dry_run=dry_run,
        stream_only=stream_only, config_path=config_path, max_generations=max_generations,
        wait=timeout if wait else None, lock_wait=lock_timeout, templates=templates, targets=_names(targets),
        force=force, max_memory=max_lingering_memory, retire_rate=retire_rate or None,
        progress=progress_lines(quiet or fmt is Format.json))
    if fmt is Format.json:
        json_ok(report.to_dict())
        return
    notes(report.notes, quiet)
    report_text(report, quiet)


@app.command()
@handled
def diff(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    stream_only: StreamOnlyOpt = None, config_path: ConfigPathOpt = None, templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Show what apply would change. Exit 0: nginx runs the inventory's config; 1: the file differs, or nginx
    has not loaded it yet (a reload is pending)."""
    report = status_mod.diff_inventory(_inventory(inventory), connect=_connect, container=container,
                                      stream_only=stream_only, config_path=config_path, templates=templates,
                                      targets=_names(targets))
    emit(report, fmt, exit_code(report, EXIT_REJECTED if report.differs else 0), lambda: report_text(report, False))


@app.command()
@handled
def status(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    fmt: FormatOpt = Format.text,
    stream_only: StreamOnlyOpt = None, config_path: ConfigPathOpt = None, templates: TemplatesOpt = None,
) -> None:
    """What nginx runs: version, processes, lingering generations, the loaded config's servers and their
    states (why a server is down), and what is wanted but not running yet (pending, drift). With --container
    and no inventory: what the target runs. Exit 3 when a target of a fleet cannot be reached (the others
    are reported)."""
    report = status_mod.target_status(optional_inventory(inventory, container), connect=_connect,
                                      container=container, stream_only=stream_only, config_path=config_path,
                                      templates=templates, targets=_names(targets))
    emit(report, fmt, exit_code(report, 0))


@app.command()
@handled
def history(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    config_path: ConfigPathOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """The configs the target has run, newest first; the one nginx runs is marked current."""
    report = workflows.target_history(optional_inventory(inventory, container), connect=_connect,
                                      container=container, config_path=config_path, targets=_names(targets))
    code = exit_code(report, 0)
    if fmt is Format.json and not isinstance(report, workflows.Many):
        json_ok({"target": report.target, "entries": report.rows})
        return
    emit(report, fmt, code)


@app.command()
@handled
def rollback(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="History id (see nginxctl history); default: "
                  "the config before the current one.")] = None,
    config_path: ConfigPathOpt = None,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    force: ForceOpt = False,
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Re-apply an earlier config from the target's history: tested, reloaded, verified. Refused (exit 3)
    while `nginxctl watch` controls the target."""
    report = workflows.rollback(optional_inventory(inventory, container), connect=_connect,
                                container=container, to=to, config_path=config_path, lock_wait=lock_timeout,
                                targets=_names(targets), force=force,
                                progress=progress_lines(quiet or fmt is Format.json))
    if fmt is Format.json:
        json_ok(report.to_dict())
        return
    if not quiet:
        diff_text(report.diff)
    lines(report.lines())


@app.command()
@handled
def drain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = None, container: ContainerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until no connection to the server remains.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", parser=duration, help="How long --wait waits (30s, 10m, "
                       "1h, or seconds).")] = "10m",  # type: ignore[assignment]
    force: Annotated[bool, typer.Option("--force", help="Drain even the last server taking new connections "
                     "(a backup takes over).")] = False,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Mark a server down in the inventory (comments kept), apply and reload, and report (with --wait: wait
    until none remain) its connections still open. Exit 1 when --wait times out with connections left."""

    report = drain_mod.drain(_inventory(inventory), group, server, connect=_connect, container=container,
                             wait=timeout if wait else None, force=force, lock_wait=lock_timeout,
                             templates=templates, progress=progress_lines(quiet or fmt is Format.json))
    emit(report, fmt)


@app.command()
@handled
def undrain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = None, container: ContainerOpt = None,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Put a drained server back: remove its down flag in the inventory, apply and reload."""
    report = drain_mod.undrain(_inventory(inventory), group, server, connect=_connect, container=container,
                               lock_wait=lock_timeout, templates=templates,
                               progress=progress_lines(quiet or fmt is Format.json))
    emit(report, fmt)


@app.command()
@handled
def rebalance(
    group: GroupArg,
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    rate: Annotated[str, typer.Option("--rate", help="At most this many connections closed per second, with "
                    "jitter (20 or 20/s).")] = "20",
    tolerance: Annotated[str, typer.Option("--tolerance", help="Done when every up primary server is this "
                         "close to its fair share (10% or 10), or within one connection.")] = "10%",
    timeout: Annotated[float, typer.Option("--timeout", parser=duration, help="Give up (exit 1) when not "
                       "balanced after this long (10m, 30s, or seconds).")] = "10m",  # type: ignore[assignment]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (per server: connections, fair "
                       "share, to move; the minimum); close nothing.")] = False,
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="The first overlay reload is "
                               "refused while this many old worker generations linger.")] = 3,
    retire_rate: Annotated[float, typer.Option(
        "--retire-rate", parser=rate_per_second, metavar="N/s", help="Past --max-generations, retire the oldest "
        "generation first: close its connections at N per second (idle first; clients see an orderly close), "
        "then rebalance. Default 0: refuse (exit 4).")] = "0",  # type: ignore[assignment]
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    fmt: FormatOpt = Format.text, quiet: QuietOpt = False,
) -> None:
    """Move a group's long connections off the servers above their fair share, paced, until every up primary
    server is within tolerance (hash ... consistent: the connections whose key maps to another server now).
    Clients see an orderly close (EOF) and reconnect where they must. Exit 1: not balanced by --timeout;
    3: the target's sockets cannot be seen from here, or a watch controls the target."""
    options = Options(parse_close_rate(rate), parse_tolerance(tolerance), timeout, dry_run)
    step, close = rebalance_progress(quiet or fmt is Format.json or dry_run)
    try:
        report = workflows.rebalance_group(_inventory(inventory), group, connect=_connect, options=options,
                                           container=container, targets=_names(targets), lock_wait=lock_timeout,
                                           progress=progress_lines(quiet or fmt is Format.json), on_step=step,
                                           max_generations=max_generations, retire_rate=retire_rate or None)
    finally:
        close()
    emit(report, fmt)


@app.command()
@handled
def watch(
    inventory: InventoryOpt = None, container: ContainerOpt = None, targets: TargetsOpt = None,
    quiet_period: Annotated[float, typer.Option("--quiet-period", parser=duration, help="After a change, wait "
                            "this long without another before applying (1s, 500ms).")] = "1s",  # type: ignore[assignment]
    max_wait: Annotated[float, typer.Option("--max-wait", parser=duration, help="...but never longer than this "
                        "after the first change.")] = "10s",  # type: ignore[assignment]
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="At most this many old worker "
                               "generations may linger after a reload; past it the oldest is retired "
                               "(--retire-rate).")] = WATCH_MAX_GENERATIONS,
    max_lingering_memory: Annotated[Optional[int], typer.Option(
        "--max-lingering-memory", parser=memory_size, metavar="SIZE", help="At most this much memory (PSS) may the "
        "lingering workers hold after a reload; past it the oldest generation is retired (none: no "
        "limit).")] = size_text(WATCH_MAX_LINGERING_MEMORY).replace(" ", ""),  # type: ignore[assignment]
    retire_rate: Annotated[float, typer.Option(
        "--retire-rate", parser=rate_per_second, metavar="N/s", help="Past a limit, close the oldest generation's "
        "connections at N per second (idle first, clients see an orderly close), then reload; 0: defer the "
        "change until they leave on their own (logged loudly).")] = f"{WATCH_RETIRE_RATE:g}/s",  # type: ignore[assignment]
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Serve Prometheus /metrics and /healthz on "
                       "HOST:PORT, e.g. 127.0.0.1:9145.")] = None,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="One line per decision: text or "
                          "json.")] = LogFormat.text,
    templates: TemplatesOpt = None,
    resync: Annotated[float, typer.Option("--resync", parser=duration, help="Re-read what the target has loaded "
                      "this often and correct any drift (a hand edit, a forced apply).")] = "30s",  # type: ignore[assignment]
    lock_owner: Annotated[Optional[str], typer.Option("--lock-owner", envvar="NGINXCTL_LOCK_OWNER", help="This "
                          "controller's stable name in the watch lock (say, its container's name): started again "
                          "under it, a restarted or recreated controller takes its own lock back.")] = None,
) -> None:
    """Keep the target running the inventory and the discovered backends (Docker labels, etcd keys):
    reconcile on every change, coalesced, through the same apply as `nginxctl apply --reload`. Stops
    cleanly on SIGINT/SIGTERM (exit 0)."""

    options = WatchOptions(_inventory(inventory), container, quiet_period, max_wait, max_generations, templates,
                           _names(targets), resync, lock_owner or None, max_lingering_memory, retire_rate)
    raise typer.Exit(run_watch(options, connect=_connect, log_format=log_format.value, metrics=metrics))


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (a CI job's timeout, systemd) ends a command like Ctrl-C does: with the report of what was
    # done. `watch` installs its own handler: it stops between reconcile passes.
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point."""

    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            app()
        finally:
            flush()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if code and wants_json(sys.argv[1:]) and not state["json_printed"]:
            # typer refused the command line before any command ran: still one JSON document
            print_json({"ok": False, "exit_code": code, "errors": [
                {"type": "UsageError", "message": "invalid command line (see stderr)"}]})
        raise
    except BrokenPipeError:
        reader_gone()
        sys.exit(0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
