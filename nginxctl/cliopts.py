"""The command line's shared options, defined once (`Annotated` aliases), and the parsers of their values:
a typo in an option is refused by typer with the rule (exit 2), before any command runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .inventory.grammar import Invalid, parse_duration
from .retireplan import parse_memory, parse_rate


class Format(str, Enum):
    text = "text"
    json = "json"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def duration(value: str) -> float:
    """A time option: a duration with units (30s, 500ms, 10m, 1h30m) or a number of seconds."""

    try:
        return parse_duration(value).ms / 1000
    except Invalid as exc:
        raise typer.BadParameter(str(exc)) from None


def rate_per_second(value: str) -> float:
    """--retire-rate: connections per second, 20 or 20/s (0: never)."""
    try:
        return parse_rate(value)
    except Invalid as exc:
        raise typer.BadParameter(str(exc)) from None


def memory_size(value: str) -> int | None:
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
    "--lock-timeout", parser=duration, help="How long to wait while another nginxctl changes the same target "
    "(30s, 2m, or seconds).")]
TargetsOpt = Annotated[Optional[str], typer.Option(
    "--targets", help="With a fleet (targets: in the inventory): only these, e.g. lb1,lb2.")]
GroupArg = Annotated[str, typer.Argument(help="The upstream group.")]
ServerArg = Annotated[str, typer.Argument(help="The server's address as in the inventory, e.g. 10.0.0.5:6666.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Change the target even while `nginxctl watch` controls it "
                     "(the watch logs it as drift and puts its config back at its next resync).")]
