"""`nginxctl_backend_connections{group,server}` and `nginxctl_group_skew{group}` for `watch`, off the loop.

Reading the socket tables costs milliseconds for a small pool and ~0.5 s at 40,000 connections
(docs/sockdiag.md): never on a reconcile pass. A thread of its own reads the pool of every target every
`interval` (the watch's --resync) from what the loop last saw loaded, and sets the gauges; a target whose
sockets cannot be seen (a remote engine) leaves them as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import NginxctlError
from ..nginx import LiveNginx
from ..pool import read_pool
from ..share import skew
from .metrics import Metrics

FIRST_READ = 1.0   # seconds after start: the first pass has read what the target loaded by then


class PoolMetrics:
    """The reader thread (started and stopped like a source). `view()` gives each target and the config it
    loaded (None: not known yet)."""

    def __init__(self, metrics: Metrics, interval: float,
                 view: Callable[[], list[tuple[LiveNginx, str | None]]]) -> None:
        self.metrics = metrics
        self.interval = interval
        self.view = view
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nginxctl-pool-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def _run(self) -> None:
        delay = min(FIRST_READ, self.interval)
        while not self.stopping.wait(delay):
            delay = self.interval
            try:
                self.read_once()
            except Exception:  # noqa: BLE001 (a metric is never worth the controller: the next read tries again)
                continue

    def read_once(self) -> None:
        """Count every target's connections per server (summed over a fleet) and set the gauges."""
        counts: dict[str, dict[str, int]] = {}
        weights: dict[str, dict[str, int]] = {}
        for live, loaded in self.view():
            if loaded is None:
                continue
            try:
                pool = read_pool(live, loaded)
            except NginxctlError:
                continue
            for group, servers in pool.servers.items():
                for server in servers:
                    if not server.countable:
                        continue
                    row = counts.setdefault(group, {})
                    row[server.address] = row.get(server.address, 0) + server.connections
                    if server.state == "up":
                        weights.setdefault(group, {})[server.address] = server.weight
        if counts:
            self.metrics.set_pool(counts, {g: skew(c, weights.get(g, {})) for g, c in counts.items()})
