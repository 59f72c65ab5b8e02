"""A reader that runs off the loop's thread (the pool metrics, who holds the virtual IP): started and stopped like
a source, it calls `read_once()` again and again, each read saying when the next is due. A failed read is never
worth the controller: the next one tries again after `retry` seconds."""

from __future__ import annotations

import threading


class Reader:
    name = "nginxctl-reader"

    def __init__(self, first: float, retry: float) -> None:
        self.first = first
        self.retry = retry
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.closed()

    def closed(self) -> None:
        """What to let go of once the thread has ended."""

    def read_once(self) -> float:
        """Read once; return the seconds until the next read."""
        raise NotImplementedError

    def _run(self) -> None:
        delay = self.first
        while not self.stopping.wait(delay):
            try:
                delay = self.read_once()
            except Exception:  # noqa: BLE001 (a metric is never worth the controller: the next read tries again)
                delay = self.retry
