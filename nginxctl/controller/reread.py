"""The inventory file read again at each pass of `watch`: an edit that loads replaces the inventory, an invalid
one (a typo, a half-written save) is logged with its problems and the last good inventory kept."""

from __future__ import annotations

from pathlib import Path

from ..capacity import Machine
from ..errors import EnvironmentProblem, InventoryError
from ..inventory import Inventory, parse_inventory
from .log import DecisionLog, Logged
from .metrics import Metrics


def reread(path: Path, text_before: str | None, current: Inventory | None, machine: Machine | None,
           log: DecisionLog, metrics: Metrics) -> tuple[str | None, Inventory | None]:
    """(the file's text now, the inventory it loads when it changed and loads; else None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        log(Logged.INVENTORY, f"cannot read {path} ({exc.strerror}); keeping the last good inventory")
        metrics.invalid_inventory.set(1)
        return text_before, None
    if text == text_before:
        return text, None
    try:
        inventory = parse_inventory(text, str(path), machine=machine)
    except InventoryError as exc:
        metrics.invalid_inventory.set(1)
        log(Logged.INVENTORY, f"invalid inventory ignored ({len(exc.problems)} problem(s)); the last good config keeps "
            "running", problems=[str(p) for p in exc.problems])
        return text, None
    except EnvironmentProblem:
        return text, None
    metrics.invalid_inventory.set(0)
    if current is not None and (inventory.target != current.target or inventory.targets != current.targets):
        log(Logged.INVENTORY, "the inventory names other targets now: this watch keeps controlling the ones it "
            "started with; restart it to follow the change", level="warning")
    log(Logged.INVENTORY, f"{path} changed and loads", sha256=inventory.digest[:12])
    return text, inventory
