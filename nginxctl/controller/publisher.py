"""What the watch publishes on its targets (through `published`): what it wants, why a change is held back,
the discovery sources it cannot reach, a heartbeat at least every half --resync, its health decisions, and
that it stopped. `status`, `diff` and the one-owner rule read these; nothing else writes them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fleet import Member
from ..history import sha
from ..host import process_identity
from ..published import Published, WatchState

# How often the published health is re-stamped while nothing changes: `status` in another PID namespace (the
# watch in a container, status on the host) cannot see the process, and calls it stale after 3 missed beats.
HEALTH_HEARTBEAT = 10.0


@dataclass
class Publisher:
    inventory: Path
    resync: float
    rendered: dict[str, str] = field(default_factory=dict)       # target -> what the last pass wanted there
    loaded: dict[str, str | None] = field(default_factory=dict)  # target -> what it ran then
    held: str | None = None               # why the desired config does not run yet
    held_since: float | None = None
    _sent: dict[str, tuple[Any, ...]] = field(default_factory=dict)   # target -> what was last published there
    _sent_at: dict[str, float] = field(default_factory=dict)

    def _state(self, desired: str | None, loaded: str | None, unreachable: list[str], now: float,
               stopped: float | None = None) -> WatchState:
        return WatchState(os.getpid(), socket.gethostname(), str(self.inventory.resolve()), now, self.resync, desired,
                          loaded, self.held, self.held_since, unreachable, stopped, process_identity())

    def hold(self, why: str) -> None:
        self.held = why
        self.held_since = self.held_since or time.time()

    def release(self) -> None:
        self.held = self.held_since = None

    def publish(self, members: Sequence[Member], unreachable: list[str]) -> None:
        """Publish on each target what this watch wants and whether it runs (only what changed, and a heartbeat
        at least every half --resync)."""
        now = time.time()
        for m in members:
            text = self.rendered.get(m.name)
            desired = sha(text) if text is not None else None   # None: nothing decided yet (a source never answered)
            key = (desired, self.loaded.get(m.name), self.held, tuple(unreachable))
            if self._sent.get(m.name) == key and now - self._sent_at.get(m.name, 0.0) < self.resync / 2:
                continue
            previous = self._sent.get(m.name)
            state = self._state(desired, key[1], unreachable, now)
            Published(m.deployer.live, m.deployer.history.base).write(
                Published.watch_files(state, text if previous is None or previous[0] != desired else None))
            self._sent[m.name] = key
            self._sent_at[m.name] = now

    def stopped(self, members: Sequence[Member]) -> None:
        """Say on each target that this watch stopped: commands stop deferring to it at once."""
        now = time.time()
        for m in members:
            if m.name in self._sent:
                desired, loaded = self._sent[m.name][0], self._sent[m.name][1]
                Published(m.deployer.live, m.deployer.history.base).write(
                    Published.watch_files(self._state(desired, loaded, [], now, stopped=now), None))

    @staticmethod
    def health(members: Sequence[Member], rows: list[dict[str, Any]], *, stopped: bool) -> None:
        """The health decisions, on every target (so `status` on any of them agrees)."""
        files = Published.health_files(rows, stopped=stopped, heartbeat=HEALTH_HEARTBEAT)
        for m in members:
            Published(m.deployer.live, m.deployer.history.base).write(files)
