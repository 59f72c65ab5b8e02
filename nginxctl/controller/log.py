"""One log line per decision of the controller: text for people, JSON lines for machines."""

from __future__ import annotations

import enum
import json
import sys
import threading
import time
from typing import Any, TextIO


class Logged(str, enum.Enum):
    """The decision log's events (`event` in JSON lines; docs/controller.md lists what each says)."""

    START = "start"            # the watch started: its targets, limits and sources
    STOP = "stop"              # it stops, and what it saw and did not apply
    INVENTORY = "inventory"    # the inventory file changed (loads, or is invalid and ignored)
    SOURCE = "source"          # a discovery source went away or came back
    TARGET = "target"          # a target restarted or was recreated
    HEALTH = "health"          # a server taken out or put back by the health checks
    WAIT = "wait"              # nothing is applied yet, and why (a source never answered, a held change)
    APPLY = "apply"            # a pass applies the desired config
    DRIFT = "drift"            # a target runs a config this watch did not put there
    RELOAD = "reload"          # a reload's result (ok, rejected, restored, refused, ...)
    IN_SYNC = "in-sync"        # nothing to do
    SKIP = "skip"              # a discovered backend left out
    RETIRE = "retire"          # a lingering generation retired (start, progress, done)
    REBALANCE = "rebalance"    # a group rebalanced by the watch (start, progress, done, cancelled)
    VIP = "vip"                # the virtual IP moved
    MEMBER = "member"          # with ha: a member of the fleet unreachable (the others kept in step), or back
    ORDER = "order"            # with ha: the rollout order changed (standby first, the holder of the VIP last)
    KEEPALIVED = "keepalived"  # with ha: a companion stale (its target restarted), created, recreated or reloaded


class DecisionLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: Logged, message: str, **fields: Any) -> None:
        """Log `event` with a sentence and structured fields."""
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({"time": round(now, 3), "event": event.value, "message": message, **fields},
                              default=str, sort_keys=False)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
            extras = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v not in (None, [], {}))
            line = f"{stamp} {event.value}: {message}" + (f" ({extras})" if extras else "")
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
