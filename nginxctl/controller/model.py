"""What the controller's sources publish and its loop consumes: plain data, no Docker, no I/O.

`merge` and the reconcile decision work on these alone, so they are pure and tested in-process.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..retireplan import WATCH_MAX_GENERATIONS, WATCH_MAX_LINGERING_MEMORY, WATCH_RETIRE_RATE

BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


@dataclass(frozen=True)
class Candidate:
    """A backend a source sees, before validation: `fields` are the server's keys as found."""

    source: str     # docker | etcd
    group: str
    origin: str     # the container's name, or the etcd key
    fields: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    source: str                          # "docker", or "etcd"
    candidates: tuple[Candidate, ...] = ()
    stale: bool = False
    error: str | None = None
    known: bool = True   # False: the source has never answered (nothing is known, not "no backends")
    at: float = field(default_factory=time.monotonic)


class EventKind(str, enum.Enum):
    """Why the loop wakes: each only says "look again" (level-triggered)."""

    INVENTORY = "inventory"   # the inventory file changed
    SNAPSHOT = "snapshot"     # a discovery source published what it sees now
    TARGET = "target"         # the target container started, restarted or died: attach again
    RESYNC = "resync"         # something may have changed on the target (files copied in): re-read it
    HEALTH = "health"         # a health check changed a server's state
    STOP = "stop"             # SIGTERM / SIGINT


@dataclass(frozen=True)
class Event:
    """What the loop's queue carries."""

    kind: EventKind
    snapshot: Snapshot | None = None
    detail: str = ""


Publish = Callable[[Event], None]


def backoff(attempt: int) -> float:
    return BACKOFF[min(attempt, len(BACKOFF) - 1)]


@dataclass
class WatchOptions:
    """`nginxctl watch`'s options (see the CLI for what each means)."""

    inventory: Path
    container: str | None = None
    quiet_period: float = 1.0
    max_wait: float = 10.0
    max_generations: int = WATCH_MAX_GENERATIONS   # watch's limits let cheap generations linger (retireplan)
    templates: Path | None = None
    targets: list[str] | None = None
    resync: float = 30.0
    lock_owner: str | None = None
    max_memory: int | None = WATCH_MAX_LINGERING_MEMORY
    retire_rate: float = WATCH_RETIRE_RATE


class Result(str, enum.Enum):
    """What a reload attempt came to (`nginxctl_reloads_total{result}`)."""

    OK = "ok"                          # reloaded and verified
    REJECTED = "rejected"              # nginx -t refused the config; nothing changed
    RESTORED = "restored"              # did not take; the previous config was restored
    REFUSED = "refused"                # old worker generations linger; nothing changed
    RESTORE_FAILED = "restore_failed"  # did not take, and the restore failed too
    ERROR = "error"                    # the target or the engine could not be reached
