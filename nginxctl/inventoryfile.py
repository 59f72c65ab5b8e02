"""The inventory file as commands and the controller open it: read with errors for people (a missing file,
a folder, not UTF-8), validated, and the container it names. Pure but for reading the one file."""

from __future__ import annotations

from pathlib import Path

from .errors import InventoryError, Location, Problem, UsageError
from .inventory import Inventory, parse_inventory

DEFAULT_INVENTORY = Path("inventory.yaml")


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


def read_inventory(path: Path) -> Inventory:
    """Read and validate the inventory file (capacity against a machine is `check_capacity`, a second step).
    Raises InventoryError (exit 2)."""
    return parse_inventory(read_text(path), str(path))


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
