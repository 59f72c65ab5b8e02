"""Prometheus metrics and /healthz for `nginxctl watch`: a view of the loop's state, set where it decides.

Served by a small HTTP server on its own thread (`serve`); `/metrics` is the Prometheus text format,
`/healthz` is a liveness probe: 200 while the loop makes progress, 503 once it stopped or when it has not
beaten for `STUCK_AFTER` seconds. The loop beats at every pass and at every idle wake-up (at least every
`IDLE_BEAT` seconds, see `loop`); long work it runs on purpose beats as it goes. A probe that sees 503 should
restart the controller: a hung loop applies nothing, whatever the process table says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..lazy import lazy_import
from .model import Result

if TYPE_CHECKING:
    import http.server as http_server

    import prometheus_client
else:
    http_server = lazy_import("http.server")  # only `watch --metrics` serves
    prometheus_client = lazy_import("prometheus_client")

CHECK_RESULTS = ("pass", "fail")
IDLE_BEAT = 5.0       # the loop wakes at least this often when nothing happens
STUCK_AFTER = 60.0    # /healthz answers 503 when the loop has not beaten for this long


class Metrics:
    """The controller's metrics, in a registry of their own (never the process-global one)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        Counter, Gauge, Histogram = prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram
        self.reloads = Counter("nginxctl_reloads", "Reloads attempted, by result: ok (verified), rejected (nginx -t "
                               "refused, nothing changed), restored (did not take, previous config restored), "
                               "refused (old generations linger), restore_failed, error (target unreachable)",
                               ["result"], registry=r)
        for result in Result:
            self.reloads.labels(result.value)
        self.reconciles = Counter("nginxctl_reconciles", "Reconcile passes (desired config compared with the "
                                  "loaded one)", registry=r)
        self.last_success = Gauge("nginxctl_last_success_timestamp_seconds", "When the target was last verified "
                                  "to run the desired config (Unix time)", registry=r)
        self.servers = Gauge("nginxctl_servers", "Servers in the desired config, by group, source and state",
                             ["group", "source", "state"], registry=r)
        self.pending = Gauge("nginxctl_pending_changes", "Changes seen and not yet applied", registry=r)
        self.change_to_reload = Histogram("nginxctl_change_to_reload_seconds", "From the first change seen to the "
                                          "verified reload, quiet period included", registry=r,
                                          buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 15, 30, 60, 120))
        self.source_stale = Gauge("nginxctl_source_stale", "1 while a discovery source cannot be reached and its "
                                  "last snapshot is kept", ["source"], registry=r)
        self.invalid_inventory = Gauge("nginxctl_inventory_invalid", "1 while the inventory file does not load "
                                       "(the last good one is used)", registry=r)
        self.skipped = Gauge("nginxctl_discovered_skipped", "Discovered backends skipped for bad labels or values",
                             ["source"], registry=r)
        self.health_checks = Counter("nginxctl_health_checks", "Active health checks, by result",
                                     ["group", "server", "result"], registry=r)
        self.all_down = Gauge("nginxctl_group_all_failing", "1 while every primary server of a group fails its "
                              "health checks (they are all kept in)", ["group"], registry=r)
        self.pending_seconds = Gauge("nginxctl_pending_seconds", "How long the oldest change seen and not applied "
                                     "has waited (0 when nothing waits)", registry=r)
        self.lingering = Gauge("nginxctl_lingering_generations", "Old worker generations still shutting down "
                               "(the first target)", registry=r)
        self.lingering_memory_limit = Gauge("nginxctl_lingering_memory_limit_bytes", "--max-lingering-memory "
                                            "(0: no limit by memory)", registry=r)
        self.lingering_memory = Gauge("nginxctl_lingering_memory_bytes", "Memory (PSS) of the old worker "
                                      "generations still shutting down (the first target)", registry=r)
        self.retiring = Gauge("nginxctl_retiring", "1 while an old generation is being retired (its connections "
                              "closed at --retire-rate)", registry=r)
        self.retired = Counter("nginxctl_retired_connections", "Connections closed to retire old generations, by "
                               "what the client saw: eof (nginx's upstream side closed) or reset (its client side)",
                               ["close"], registry=r)
        for close in ("eof", "reset"):
            self.retired.labels(close)
        self.backend_connections = Gauge("nginxctl_backend_connections", "Established connections nginx holds to "
                                         "each server, all worker generations together (read every --resync)",
                                         ["group", "server"], registry=r)
        self.group_skew = Gauge("nginxctl_group_skew", "The largest relative distance of a server of the group from "
                                "its fair share (its weight's part of what the up primaries hold): 0.1 is 10%",
                                ["group"], registry=r)
        self.rebalance_moves = Counter("nginxctl_rebalance_moves", "Connections the watch closed to rebalance a group "
                                       "by itself (its `rebalance:`), by group", ["group"], registry=r)
        self.vip_holder = Gauge("nginxctl_vip_holder", "With ha: 1 on each target whose network namespace holds the "
                                "virtual IP, 0 on the others (read every advert interval; a target that cannot be "
                                "read has no series)", ["vip", "target"], registry=r)
        self.served = False   # /metrics is served: the pool gauges are worth reading
        self.running = True
        self.clock: Callable[[], float] = time.monotonic
        self.last_beat = self.clock()

    def beat(self) -> None:
        """The loop made progress (a pass, an idle wake-up, a step of long work)."""
        self.last_beat = self.clock()

    def alive(self) -> tuple[bool, str]:
        """Whether /healthz answers 200, and what it says."""
        if not self.running:
            return False, "stopped"
        idle = self.clock() - self.last_beat
        if idle > STUCK_AFTER:
            return False, f"stuck: the reconcile loop has not made progress for {idle:.0f}s"
        return True, "ok"

    def set_servers(self, rows: list[tuple[str, str, str]]) -> None:
        """Replace the server gauge with (group, source, state) rows, counted."""
        self.servers.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for row in rows:
            counts[row] = counts.get(row, 0) + 1
        for (group, source, state), n in counts.items():
            self.servers.labels(group, source, state).set(n)

    def set_pool(self, counts: dict[str, dict[str, int]], skews: dict[str, float]) -> None:
        """Replace the pool gauges: connections per (group, server), and each group's skew."""
        self.backend_connections.clear()
        for group, servers in counts.items():
            for server, n in servers.items():
                self.backend_connections.labels(group, server).set(n)
        self.group_skew.clear()
        for group, value in skews.items():
            self.group_skew.labels(group).set(value)

    def set_vip(self, vip: str, holds: dict[str, bool | None]) -> None:
        """Replace the holder gauge: 1/0 per target read, no series for one that could not be read."""
        self.vip_holder.clear()
        for target, held in holds.items():
            if held is not None:
                self.vip_holder.labels(vip, target).set(1 if held else 0)

    def checked(self, servers: list[tuple[str, str]]) -> None:
        """Health-check counters at 0 for every (group, server) checked and every result, so a healthy pool's
        dashboard has a `fail` series to show before the first failure."""
        for group, server in servers:
            for result in CHECK_RESULTS:
                self.health_checks.labels(group, server, result)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def serve(metrics: Metrics, host: str, port: int) -> http_server.ThreadingHTTPServer:
    """Serve /metrics and /healthz on host:port from a daemon thread; the caller shuts it down.
    Raises OSError when the address cannot be bound."""

    class Handler(http_server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802 (the http.server API)
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            if self.path.split("?", 1)[0] == "/metrics":
                payload, status, ctype = metrics.exposition(), 200, prometheus_client.CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok, said = metrics.alive()
                payload, status, ctype = f"{said}\n".encode(), 200 if ok else 503, "text/plain"
            else:
                payload, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server API)
            return None

    server = http_server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="nginxctl-metrics", daemon=True).start()
    return server


def parse_address(value: str) -> tuple[str, int]:
    """`--metrics HOST:PORT`. Raises UsageError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics: expected HOST:PORT such as 127.0.0.1:9145, got {value!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))
