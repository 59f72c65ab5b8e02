"""Time: waiting with a deadline (the one polling loop of nginxctl, with an injectable clock for the tests), and
the one way a moment is written for people and JSON (UTC, to the second)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def utc_text(t: float) -> str:
    """A moment (seconds since the epoch) as UTC text: 2026-12-05T02:35:04Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Polled(Generic[T]):
    done: bool   # the check said yes before the deadline
    value: T     # the last thing the check returned


def poll_until(check: Callable[[], tuple[bool, T]], timeout: float, *, interval: float = 0.05,
               on_wait: Callable[[T], None] | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Polled[T]:
    """Call `check` until it returns (True, value) or `timeout` seconds have passed; `check` runs at
    least once, and once more at the deadline. `on_wait` sees each value that was not yet done."""
    deadline = clock() + timeout
    while True:
        done, value = check()
        if done:
            return Polled(True, value)
        left = deadline - clock()
        if left <= 0:
            return Polled(False, value)
        if on_wait is not None:
            on_wait(value)
        sleep(min(interval, left))
