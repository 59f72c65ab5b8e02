"""When to apply: after a change, wait for `quiet` seconds without another, but never longer than `max_wait`
after the first (docker-gen's `wait = "500ms:2s"`). Pure: the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Debouncer:
    quiet: float
    max_wait: float
    first: float | None = None   # when the first change of the current burst was seen
    last: float | None = None    # when the latest was seen
    changes: int = 0             # changes in the current burst

    def change(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.changes += 1

    @property
    def pending(self) -> bool:
        return self.first is not None

    def deadline(self) -> float | None:
        """When the burst is due (None: nothing pending)."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_wait)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> tuple[float, int]:
        """Start a new burst; returns when the one taken began and how many changes it had."""
        assert self.first is not None
        taken = (self.first, self.changes)
        self.first = self.last = None
        self.changes = 0
        return taken
