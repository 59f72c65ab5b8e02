"""The inventory file as the watch reads it: read again on every pass, parsed only when its text changed; an
invalid or unreadable file is said (with every problem) and the last good inventory keeps running."""

from __future__ import annotations

from pathlib import Path

from ..capacity import Machine
from ..errors import EnvironmentProblem, InventoryError
from ..inventory import Inventory, parse_inventory
from .log import DecisionLog, Logged
from .metrics import Metrics


def reread(path: Path, last_text: str | None, machine: Machine | None, log: DecisionLog,
           metrics: Metrics) -> tuple[str | None, Inventory | None]:
    """(the text now, the inventory when the text changed and loads; else None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        log(Logged.INVENTORY, f"cannot read {path} ({exc.strerror}); keeping the last good inventory")
        metrics.invalid_inventory.set(1)
        return last_text, None
    if text == last_text:
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
    log(Logged.INVENTORY, f"{path} changed and loads", sha256=inventory.digest[:12])
    return text, inventory
