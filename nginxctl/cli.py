"""The command line: each command loads, calls one `workflows` function, and prints its report.

Errors from the library (`errors.NginxctlError`) become one message on stderr (or one JSON document on
stdout with `--format json`) and the class's exit code; anything else is an internal error (exit 70).
`--debug` shows tracebacks.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from . import __version__, workflows
from . import drain as drain_mod
from . import status as status_mod
from .controller.model import WatchOptions
from .controller.service import run_watch
from .errors import (
    EXIT_CODES,
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    InternalError,
    Interrupted,
    InventoryError,
    NginxctlError,
    UsageError,
)
from .inventory import json_schema
from .inventory.grammar import Invalid, parse_duration
from .inventoryfile import DEFAULT_INVENTORY, optional_inventory
from .nginx import connect
from .retireplan import (
    APPLY_MAX_GENERATIONS,
    WATCH_MAX_GENERATIONS,
    WATCH_MAX_LINGERING_MEMORY,
    WATCH_RETIRE_RATE,
    parse_memory,
    parse_rate,
    size_text,
)
from .targets import parse_names

app = typer.Typer(
    name="nginxctl", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="nginx as a TCP/UDP (L4) load balancer, from one inventory file.\n\nExit codes: "
         + "; ".join(f"{code} {text.split(':')[0].split(' (')[0]}" for code, text in EXIT_CODES.items()) + ".")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_state: dict[str, Any] = {"debug": False, "json_printed": False}


class Format(str, Enum):
    text = "text"
    json = "json"


def _duration(value: str) -> float:
    """A time option: a duration with units (30s, 500ms, 10m, 1h30m) or a number of seconds."""

    try:
        return parse_duration(value).ms / 1000
    except Invalid as exc:
        raise typer.BadParameter(str(exc)) from None


def _rate(value: str) -> float:
    """--retire-rate: connections per second, 20 or 20/s (0: never)."""
    try:
        return parse_rate(value)
    except Invalid as exc:
        raise typer.BadParameter(str(exc)) from None


def _memory(value: str) -> int | None:
    """--max-lingering-memory: a size (512m, 1g), or none."""
    if value.strip().lower() in ("none", "off", "0"):
        return None
    try:
        return parse_memory(value)
    except Invalid as exc:
        raise typer.BadParameter(str(exc)) from None


InventoryOpt = Annotated[Optional[Path], typer.Option(
    "--inventory", "-i", help="Inventory file (default: inventory.yaml).", envvar="NGINXCTL_INVENTORY",
    show_default=False)]
ContainerOpt = Annotated[Optional[str], typer.Option(
    "--container", "-c", help="The nginx container (default: the inventory's target.container).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="text for people, json for scripts (one JSON "
                                           "document on stdout, also on errors).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")]
TemplatesOpt = Annotated[Optional[Path], typer.Option(
    "--templates", "-t", help="Folder of templates that override the shipped ones.")]
StreamOnlyOpt = Annotated[Optional[bool], typer.Option(
    "--stream-only/--full-config", help="Deploy only the stream {} block (for an nginx.conf that "
    "includes it) or the whole nginx.conf (default).")]
ConfigPathOpt = Annotated[Optional[str], typer.Option(
    "--config-path", help="The file nginxctl owns in the container (default /etc/nginx/nginx.conf).")]
LockTimeoutOpt = Annotated[float, typer.Option(
    "--lock-timeout", parser=_duration, help="How long to wait while another nginxctl changes the same target "
    "(30s, 2m, or seconds).")]
TargetsOpt = Annotated[Optional[str], typer.Option(
    "--targets", help="With a fleet (targets: in the inventory): only these, e.g. lb1,lb2.")]
GroupArg = Annotated[str, typer.Argument(help="The upstream group.")]
ServerArg = Annotated[str, typer.Argument(help="The server's address as in the inventory, e.g. 10.0.0.5:6666.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Change the target even while `nginxctl watch` controls it "
                     "(the watch logs it as drift and puts its config back at its next resync).")]

F = TypeVar("F", bound=Callable[..., Any])


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
    _state["json_printed"] = True


def _emit(report: Any, fmt: Format, code: int = 0, text: Callable[[], None] | None = None) -> None:
    """Print a command's report (one JSON document, or `text`, by default its lines) and exit with `code`."""
    if fmt is Format.json:
        _json_ok(report.to_dict(), code)
    else:
        (text or (lambda: _lines(report.lines())))()
    if code:
        raise typer.Exit(code)


def _code(report: Any, otherwise: int) -> int:
    """A read-only command's exit code: 3 when a target of the fleet could not be reached (the others are
    reported), else `otherwise`."""
    return EXIT_ENVIRONMENT if getattr(report, "unreachable", None) else otherwise


def _json_ok(data: Any, exit_code: int = 0) -> None:
    body = data if isinstance(data, dict) else {"entries": data}
    _print_json({"ok": exit_code == 0, "exit_code": exit_code, **body})


def handled(func: F) -> F:
    """Turn nginxctl's errors into a message (or a JSON document) and an exit code, for every command."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("fmt") is Format.json
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except NginxctlError as exc:
            if _state["debug"]:
                err.print_exception()
            _report(exc, as_json)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _report(Interrupted([], []), as_json)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise  # the reader of our output went away: main() ends quietly
        except Exception as exc:  # a bug: never exit 1 ("nginx rejected") for it
            if _state["debug"]:
                err.print_exception()
            _report(InternalError.of(exc), as_json)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _report(exc: NginxctlError, as_json: bool) -> None:
    """An error as the user sees it: one JSON document (with the report, when the command has one), or the
    command's result lines on stdout and the message on stderr."""
    errors, text = exc.errors(), str(exc)
    if as_json:
        _print_json({"ok": False, "exit_code": exc.exit_code, **(exc.report or {}), "errors": errors})
    else:
        for line in exc.stdout_lines():
            print(line)

    if errors and errors[0].get("type") == InventoryError.__name__:
        for line in text.splitlines():
            print(line, file=sys.stderr)
        print(f"error: {len(errors)} problem(s) in the inventory; nothing was written", file=sys.stderr)
        return
    for i, line in enumerate(text.splitlines()):
        print(("error: " if i == 0 else "  ") + line, file=sys.stderr)


def _progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _: None
    return lambda message: err.print(f"[dim]· {message}[/]")


def _notes(notes: list[str], quiet: bool) -> None:
    if not quiet:
        for note in notes:
            err.print(f"[yellow]note:[/] {note}")


def _connect(docker_host: str | None) -> Any:

    return connect(docker_host)


def _inventory(path: Path | None) -> Path:
    return path if path is not None else DEFAULT_INVENTORY


def _names(targets: str | None) -> list[str] | None:
    return parse_names(targets)


def _report_text(report: Any, quiet: bool) -> None:
    """A report with diffs: for several targets each diff under its target's name, else diff then lines."""
    if isinstance(report, (workflows.Many, workflows.FleetReport)):
        for line in report.lines(with_diffs=not quiet):
            out.print(line, markup=False)
        return
    if not quiet:
        _diff_text(report.diff)
    _lines(report.lines())


def _lines(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _diff_text(diff: str) -> None:
    if diff:
        out.print(diff, end="", markup=False)


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
    _state["debug"] = debug


@app.command()
@handled
def render(
    inventory: InventoryOpt = None,
    full: Annotated[bool, typer.Option("--full", help="A whole nginx.conf (main, events, stream).")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to FILE (atomically; a "
                                                   "read-only FILE is refused) instead of stdout.")] = None,
    templates: TemplatesOpt = None,
    quiet: QuietOpt = False,
    keepalived: Annotated[bool, typer.Option("--keepalived", help="With ha: in the inventory, each target's "
                          "keepalived.conf instead (one after the other; -o needs --targets NAME).")] = False,
    targets: TargetsOpt = None,
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
    _notes(report.notes, quiet)
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
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Run nginx -t on the rendered config in a throwaway, locked-down container."""

    report = workflows.validate(_inventory(inventory), connect=_connect, image=image, container=container,
                                resolve=resolve, pull=pull, templates=templates,
                                progress=_progress(quiet or fmt is Format.json))
    if not report.ok:
        raise report.rejection()
    if fmt is Format.json:
        _json_ok(report.to_dict())
        return
    _notes(report.notes(), quiet)
    _lines(report.lines(_inventory(inventory)))


@app.command()
@handled
def apply(
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    reload: Annotated[bool, typer.Option("--reload", help="Reload nginx and verify the new config runs.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff (with --reload: what a reload would do "
                       "to lingering workers and connections); change nothing.")] = False,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="Refuse to reload while "
                               "this many old worker generations are still shutting down.")] = APPLY_MAX_GENERATIONS,
    max_lingering_memory: Annotated[Optional[int], typer.Option(
        "--max-lingering-memory", parser=_memory, metavar="SIZE", help="Refuse to reload while the old workers "
        "(and the current ones, which a reload makes old) would hold more memory than this (512m, 1g; default: "
        "none).")] = None,
    retire_rate: Annotated[float, typer.Option(
        "--retire-rate", parser=_rate, metavar="N/s", help="Instead of refusing past a limit, retire the oldest "
        "generation first: close its connections at N per second (idle first; clients see an orderly close and "
        "reconnect), then reload. Default 0: refuse.")] = "0",  # type: ignore[assignment]
    wait: Annotated[bool, typer.Option("--wait", help="Wait for old generations to drain instead of "
                    "refusing.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", "--wait-timeout", parser=_duration,
                       help="How long --wait waits (10m, 30s, or seconds).")] = "10m",  # type: ignore[assignment]
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    templates: TemplatesOpt = None,
    targets: TargetsOpt = None,
    force: ForceOpt = False,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Render, diff, test, install and (with --reload) reload and verify, restoring on failure. With a fleet
    (targets: in the inventory): test on every target first, then change one at a time, putting the
    changed ones back when one fails. Refused (exit 3) while `nginxctl watch` controls the target."""
    report = workflows.apply_inventory(
        _inventory(inventory), connect=_connect, container=container, reload=reload, dry_run=dry_run,
        stream_only=stream_only, config_path=config_path, max_generations=max_generations,
        wait=timeout if wait else None, lock_wait=lock_timeout, templates=templates, targets=_names(targets),
        force=force, max_memory=max_lingering_memory, retire_rate=retire_rate or None,
        progress=_progress(quiet or fmt is Format.json))
    if fmt is Format.json:
        _json_ok(report.to_dict())
        return
    _notes(report.notes, quiet)
    _report_text(report, quiet)


@app.command()
@handled
def diff(
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    templates: TemplatesOpt = None,
    targets: TargetsOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Show what apply would change. Exit 0: nginx runs the inventory's config; 1: the file differs, or nginx
    has not loaded it yet (a reload is pending)."""
    report = status_mod.diff_inventory(_inventory(inventory), connect=_connect, container=container,
                                      stream_only=stream_only, config_path=config_path, templates=templates,
                                      targets=_names(targets))
    _emit(report, fmt, _code(report, EXIT_REJECTED if report.differs else 0), lambda: _report_text(report, False))


@app.command()
@handled
def status(
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    targets: TargetsOpt = None,
    fmt: FormatOpt = Format.text,
    stream_only: StreamOnlyOpt = None,
    config_path: ConfigPathOpt = None,
    templates: TemplatesOpt = None,
) -> None:
    """What nginx runs: version, processes, lingering generations, the loaded config's servers and their
    states (why a server is down), and what is wanted but not running yet (pending, drift). With --container
    and no inventory: what the target runs. Exit 3 when a target of a fleet cannot be reached (the others
    are reported)."""
    report = status_mod.target_status(optional_inventory(inventory, container), connect=_connect,
                                      container=container, stream_only=stream_only, config_path=config_path,
                                      templates=templates, targets=_names(targets))
    _emit(report, fmt, _code(report, 0))


@app.command()
@handled
def history(
    container: ContainerOpt = None,
    inventory: InventoryOpt = None,
    config_path: ConfigPathOpt = None,
    targets: TargetsOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """The configs the target has run, newest first; the one nginx runs is marked current."""
    report = workflows.target_history(optional_inventory(inventory, container), connect=_connect,
                                      container=container, config_path=config_path, targets=_names(targets))
    code = _code(report, 0)
    if fmt is Format.json and not isinstance(report, workflows.Many):
        _json_ok({"target": report.target, "entries": report.rows})
        return
    _emit(report, fmt, code)


@app.command()
@handled
def rollback(
    container: ContainerOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="History id (see nginxctl history); default: "
                  "the config before the current one.")] = None,
    inventory: InventoryOpt = None,
    config_path: ConfigPathOpt = None,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    targets: TargetsOpt = None,
    force: ForceOpt = False,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Re-apply an earlier config from the target's history: tested, reloaded, verified. Refused (exit 3)
    while `nginxctl watch` controls the target."""
    report = workflows.rollback(optional_inventory(inventory, container), connect=_connect,
                                container=container, to=to, config_path=config_path, lock_wait=lock_timeout,
                                targets=_names(targets), force=force, progress=_progress(quiet or fmt is Format.json))
    if fmt is Format.json:
        _json_ok(report.to_dict())
        return
    if not quiet:
        _diff_text(report.diff)
    _lines(report.lines())


@app.command()
@handled
def drain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until no connection to the server remains.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", parser=_duration, help="How long --wait waits (30s, 10m, "
                       "1h, or seconds).")] = "10m",  # type: ignore[assignment]
    force: Annotated[bool, typer.Option("--force", help="Drain even the last server taking new connections "
                     "(a backup takes over).")] = False,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Mark a server down in the inventory (comments kept), apply and reload, and report (with --wait: wait
    until none remain) its connections still open. Exit 1 when --wait times out with connections left."""

    report = drain_mod.drain(_inventory(inventory), group, server, connect=_connect, container=container,
                             wait=timeout if wait else None, force=force, lock_wait=lock_timeout,
                             templates=templates, progress=_progress(quiet or fmt is Format.json))
    _emit(report, fmt)


@app.command()
@handled
def undrain(
    group: GroupArg,
    server: ServerArg,
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    templates: TemplatesOpt = None,
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Put a drained server back: remove its down flag in the inventory, apply and reload."""
    report = drain_mod.undrain(_inventory(inventory), group, server, connect=_connect, container=container,
                               lock_wait=lock_timeout, templates=templates,
                               progress=_progress(quiet or fmt is Format.json))
    _emit(report, fmt)


def _rebalance_progress(quiet: bool) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """(on_step, close): a progress bar on a terminal (moved / to move, the counts), plain lines otherwise
    (one when the moved count changes, at most one a second)."""
    if quiet:
        return (lambda _: None), (lambda: None)
    if err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("moving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.description}"), console=err, transient=True)
        task = bar.add_task("", total=None)
        bar.start()

        def step(p: Any) -> None:
            counts = " ".join(f"{a}={n}" for a, n in p.counts.items())
            bar.update(task, completed=p.moved, total=max(p.to_move, p.moved) or None, description=counts)

        return step, bar.stop
    said = {"moved": -1, "at": 0.0}

    def line(p: Any) -> None:
        import time

        now = time.monotonic()
        if p.moved != said["moved"] and now - said["at"] >= 1.0:
            said.update(moved=p.moved, at=now)
            counts = " ".join(f"{a}={n}" for a, n in p.counts.items())
            print(f"moved {p.moved}/{p.to_move}: {counts}", file=sys.stderr, flush=True)

    return line, lambda: None


@app.command()
@handled
def rebalance(
    group: GroupArg,
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    targets: TargetsOpt = None,
    rate: Annotated[str, typer.Option("--rate", help="At most this many connections closed per second, with "
                    "jitter (20 or 20/s).")] = "20",
    tolerance: Annotated[str, typer.Option("--tolerance", help="Done when every up primary server is this "
                         "close to its fair share (10% or 10), or within one connection.")] = "10%",
    timeout: Annotated[float, typer.Option("--timeout", parser=_duration, help="Give up (exit 1) when not "
                       "balanced after this long (10m, 30s, or seconds).")] = "10m",  # type: ignore[assignment]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (per server: connections, fair "
                       "share, to move; the minimum); close nothing.")] = False,
    lock_timeout: LockTimeoutOpt = "30s",  # type: ignore[assignment]
    fmt: FormatOpt = Format.text,
    quiet: QuietOpt = False,
) -> None:
    """Move a group's long connections off the servers above their fair share, paced, until every up primary
    server is within tolerance (hash ... consistent: the connections whose key maps to another server now).
    Clients see an orderly close (EOF) and reconnect where they must. Exit 1: not balanced by --timeout;
    3: the target's sockets cannot be seen from here, or a watch controls the target."""
    from .rebalance import Options, parse_rate, parse_tolerance

    options = Options(parse_rate(rate), parse_tolerance(tolerance), timeout, dry_run)
    step, close = _rebalance_progress(quiet or fmt is Format.json or dry_run)
    try:
        report = workflows.rebalance_group(_inventory(inventory), group, connect=_connect, options=options,
                                           container=container, targets=_names(targets), lock_wait=lock_timeout,
                                           progress=_progress(quiet or fmt is Format.json), on_step=step)
    finally:
        close()
    _emit(report, fmt)


class LogFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
@handled
def watch(
    inventory: InventoryOpt = None,
    container: ContainerOpt = None,
    quiet_period: Annotated[float, typer.Option("--quiet-period", parser=_duration, help="After a change, wait "
                            "this long without another before applying (1s, 500ms).")] = "1s",  # type: ignore[assignment]
    max_wait: Annotated[float, typer.Option("--max-wait", parser=_duration, help="...but never longer than this "
                        "after the first change.")] = "10s",  # type: ignore[assignment]
    max_generations: Annotated[int, typer.Option("--max-generations", min=1, help="At most this many old worker "
                               "generations may linger after a reload; past it the oldest is retired "
                               "(--retire-rate).")] = WATCH_MAX_GENERATIONS,
    max_lingering_memory: Annotated[Optional[int], typer.Option(
        "--max-lingering-memory", parser=_memory, metavar="SIZE", help="At most this much memory (PSS) may the "
        "lingering workers hold after a reload; past it the oldest generation is retired (none: no "
        "limit).")] = size_text(WATCH_MAX_LINGERING_MEMORY).replace(" ", ""),  # type: ignore[assignment]
    retire_rate: Annotated[float, typer.Option(
        "--retire-rate", parser=_rate, metavar="N/s", help="Past a limit, close the oldest generation's "
        "connections at N per second (idle first, clients see an orderly close), then reload; 0: defer the "
        "change until they leave on their own (logged loudly).")] = f"{WATCH_RETIRE_RATE:g}/s",  # type: ignore[assignment]
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Serve Prometheus /metrics and /healthz on "
                       "HOST:PORT, e.g. 127.0.0.1:9145.")] = None,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help="One line per decision: text or "
                          "json.")] = LogFormat.text,
    templates: TemplatesOpt = None,
    targets: TargetsOpt = None,
    resync: Annotated[float, typer.Option("--resync", parser=_duration, help="Re-read what the target has loaded "
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


def _wants_json(argv: list[str]) -> bool:
    return any(a in ("--format=json", "-fjson") for a in argv) or any(
        a in ("--format", "-f") and b == "json" for a, b in zip(argv, argv[1:], strict=False))


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (a CI job's timeout, systemd) ends a command like Ctrl-C does: with the report of what was
    # done. `watch` installs its own handler: it stops between reconcile passes.
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point."""

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if code and _wants_json(sys.argv[1:]) and not _state["json_printed"]:
            # typer refused the command line before any command ran: still one JSON document
            _print_json({"ok": False, "exit_code": code, "errors": [
                {"type": "UsageError", "message": "invalid command line (see stderr)"}]})
        raise
    except BrokenPipeError:
        # the reader went away (`nginxctl history | head -1`): not an error of ours, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
