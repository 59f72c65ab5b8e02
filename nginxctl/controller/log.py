"""One log line per decision of the controller: text for people, JSON lines for machines."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class DecisionLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, message: str, **fields: Any) -> None:
        """Log `event` (a short stable name, e.g. `reload`) with a sentence and structured fields."""
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({"time": round(now, 3), "event": event, "message": message, **fields},
                              default=str, sort_keys=False)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
            extras = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v not in (None, [], {}))
            line = f"{stamp} {event}: {message}" + (f" ({extras})" if extras else "")
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
