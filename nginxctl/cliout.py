"""What the command line prints: a command's report (text or one JSON document), its exit code, an error as
the user sees it (`handled`: nginxctl's errors become a message and their exit code; anything else an internal
error, exit 70), progress lines and the rebalance progress bar."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import workflows
from .cliopts import Format
from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InternalError,
    Interrupted,
    InventoryError,
    NginxctlError,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
state: dict[str, Any] = {"debug": False, "json_printed": False}

F = TypeVar("F", bound=Callable[..., Any])


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
    state["json_printed"] = True


def emit(report: Any, fmt: Format, code: int = 0, text: Callable[[], None] | None = None) -> None:
    """Print a command's report (one JSON document, or `text`, by default its lines) and exit with `code`."""
    if fmt is Format.json:
        json_ok(report.to_dict(), code)
    else:
        (text or (lambda: lines(report.lines())))()
    if code:
        raise typer.Exit(code)


def exit_code(report: Any, otherwise: int) -> int:
    """A read-only command's exit code: 3 when a target of the fleet could not be reached (the others are
    reported), else `otherwise`."""
    return EXIT_ENVIRONMENT if getattr(report, "unreachable", None) else otherwise


def json_ok(data: Any, exit_code: int = 0) -> None:
    body = data if isinstance(data, dict) else {"entries": data}
    print_json({"ok": exit_code == 0, "exit_code": exit_code, **body})


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
            if state["debug"]:
                err.print_exception()
            report_error(exc, as_json)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            report_error(Interrupted([], []), as_json)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            reader_gone()
            raise typer.Exit(0) from None  # not click's EPIPE exit 1 ("nginx rejected")
        except Exception as exc:  # a bug: never exit 1 ("nginx rejected") for it
            if state["debug"]:
                err.print_exception()
            report_error(InternalError.of(exc), as_json)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def report_error(exc: NginxctlError, as_json: bool) -> None:
    """An error as the user sees it: one JSON document (with the report, when the command has one), or the
    command's result lines on stdout and the message on stderr."""
    errors, text = exc.errors(), str(exc)
    if as_json:
        print_json({"ok": False, "exit_code": exc.exit_code, **(exc.report or {}), "errors": errors})
    else:
        for line in exc.stdout_lines():
            print(line)

    if errors and errors[0].get("type") == InventoryError.__name__:
        for line in text.splitlines():
            print(line, file=sys.stderr)
        print(f"error: {len(errors)} problem(s) in the inventory; no target was changed", file=sys.stderr)
        return
    for i, line in enumerate(text.splitlines()):
        print(("error: " if i == 0 else "  ") + line, file=sys.stderr)


def progress_lines(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _: None
    return lambda message: err.print(f"[dim]· {message}[/]")


def notes(notes: list[str], quiet: bool) -> None:
    if not quiet:
        for note in notes:
            err.print(f"[yellow]note:[/] {note}")


def report_text(report: Any, quiet: bool) -> None:
    """A report with diffs: for several targets each diff under its target's name, else diff then lines."""
    if isinstance(report, (workflows.Many, workflows.FleetReport)):
        for line in report.lines(with_diffs=not quiet):
            out.print(line, markup=False)
        return
    if not quiet:
        diff_text(report.diff)
    lines(report.lines())


def lines(lines: list[str]) -> None:
    for line in lines:
        print(line)


def diff_text(diff: str) -> None:
    if diff:
        out.print(diff, end="", markup=False)


def rebalance_progress(quiet: bool) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """(on_step, close): a progress bar on a terminal (moved / to move, the counts), plain lines otherwise
    (one when the moved count changes, at most one a second)."""
    if quiet:
        return (lambda _: None), (lambda: None)
    if err.is_terminal:
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
        now = time.monotonic()
        if p.moved != said["moved"] and now - said["at"] >= 1.0:
            said.update(moved=p.moved, at=now)
            counts = " ".join(f"{a}={n}" for a, n in p.counts.items())
            print(f"moved {p.moved}/{p.to_move}: {counts}", file=sys.stderr, flush=True)

    return line, lambda: None


def wants_json(argv: list[str]) -> bool:
    return any(a in ("--format=json", "-fjson") for a in argv) or any(
        a in ("--format", "-f") and b == "json" for a, b in zip(argv, argv[1:], strict=False))


def reader_gone() -> None:
    """The reader of our output went away (`nginxctl history | head -1`): not an error of ours, nothing more to
    say; what is still buffered goes nowhere instead of failing again at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def flush() -> None:
    """Flush stdout before exit: output smaller than the pipe's buffer meets a reader gone only here."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone()
