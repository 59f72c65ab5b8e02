"""`nginxctl_backend_connections{group,server}` and `nginxctl_group_skew{group}` for `watch`, off the loop.

Reading the socket tables costs milliseconds for a small pool and ~0.5 s at 40,000 connections
(docs/sockdiag.md): never on a reconcile pass. A thread of its own reads the pool of every target every
`interval` (the watch's --resync) from what the loop last saw loaded, and sets the gauges; a target whose
sockets cannot be seen (a remote engine) leaves them as they were.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import NginxctlError
from ..history import History
from ..nginx import LiveNginx
from ..nginxtext import parse_groups
from ..pool import read_pool
from ..share import skew
from .metrics import Metrics
from .reader import Reader

FIRST_READ = 1.0   # seconds after start: the first pass has read what the target loaded by then


class PoolMetrics(Reader):
    """The reader thread of the pool gauges. `view()` gives each target and the config it loaded (None: not
    known yet)."""

    name = "nginxctl-pool-metrics"

    def __init__(self, metrics: Metrics, interval: float,
                 view: Callable[[], list[tuple[LiveNginx, str | None, History]]]) -> None:
        super().__init__(first=min(FIRST_READ, interval), retry=interval)
        self.metrics = metrics
        self.interval = interval
        self.view = view

    def read_once(self) -> float:
        """Count every target's connections per server (summed over a fleet) and set the gauges."""
        counts: dict[str, dict[str, int]] = {}
        weights: dict[str, dict[str, int]] = {}
        hashed: set[str] = set()   # a hash group follows its keys, not shares: no skew (nothing to rebalance)
        for live, loaded, history in self.view():
            if loaded is None:
                continue
            hashed |= {name for name, g in parse_groups(loaded).items() if g.balance == "hash"}
            try:
                pool = read_pool(live, loaded, history=history)   # removed servers still held too
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
            self.metrics.set_pool(counts, {g: skew(c, weights.get(g, {})) for g, c in counts.items()
                                           if g not in hashed})
        return self.interval
