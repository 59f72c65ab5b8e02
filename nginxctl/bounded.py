"""Jobs run at once and waited for together, within a bound: a stopping controller's sources and locks, where one
that hangs (a thread stuck in a read, a slow Docker engine) must neither delay the others nor keep the process
alive. Threads only; no I/O of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence


def together(jobs: Sequence[tuple[str, Callable[[], object]]], wait: float,
             running: Sequence[tuple[str, threading.Thread]] = ()) -> list[str]:
    """Start each named job on a daemon thread, then wait for them and for the threads already `running`, all
    within `wait` seconds. Returns the names of those still running then (daemons: they do not keep the process
    alive), sorted, each once."""
    started = [(name, threading.Thread(target=job, name=f"nginxctl-{name}", daemon=True)) for name, job in jobs]
    for _, thread in started:
        thread.start()
    deadline = time.monotonic() + wait
    pending = [*started, *running]
    for _, thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sorted({name for name, thread in pending if thread.is_alive()})
