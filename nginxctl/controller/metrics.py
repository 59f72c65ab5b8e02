"""Prometheus metrics and /healthz for `nginxctl watch`: a view of the loop's state, set where it decides.

Served by a small HTTP server on its own thread (`serve`); `/metrics` is the Prometheus text format,
`/healthz` answers 200 while the loop runs (it beats at every pass) and 503 once it stopped.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RELOAD_RESULTS = ("ok", "rejected", "restored", "refused", "restore_failed", "error")
CHECK_RESULTS = ("pass", "fail")


class Metrics:
    """The controller's metrics, in a registry of their own (never the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reloads = Counter("nginxctl_reloads", "Reloads attempted, by result: ok (verified), rejected (nginx -t "
                               "refused, nothing changed), restored (did not take, previous config restored), "
                               "refused (old generations linger), restore_failed, error (target unreachable)",
                               ["result"], registry=r)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
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
        self.running = True

    def set_servers(self, rows: list[tuple[str, str, str]]) -> None:
        """Replace the server gauge with (group, source, state) rows, counted."""
        self.servers.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for row in rows:
            counts[row] = counts.get(row, 0) + 1
        for (group, source, state), n in counts.items():
            self.servers.labels(group, source, state).set(n)

    def checked(self, servers: list[tuple[str, str]]) -> None:
        """Health-check counters at 0 for every (group, server) checked and every result, so a healthy pool's
        dashboard has a `fail` series to show before the first failure."""
        for group, server in servers:
            for result in CHECK_RESULTS:
                self.health_checks.labels(group, server, result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def serve(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on host:port from a daemon thread; the caller shuts it down.
    Raises OSError when the address cannot be bound."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path.split("?", 1)[0] == "/metrics":
                body, status, ctype = metrics.exposition(), 200, CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok = metrics.running
                body, status, ctype = (b"ok\n" if ok else b"stopped\n"), 200 if ok else 503, "text/plain"
            else:
                body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server API)
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="nginxctl-metrics", daemon=True).start()
    return server
