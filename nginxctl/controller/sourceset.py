"""The sources one watch runs (the inventory file, Docker events, etcd, the health checker, the pool metrics):
started and stopped together, the etcd source following the inventory's prefixes, and what each snapshot
says of its source's reachability (a `source` line when it changes, the stale gauge always)."""

from __future__ import annotations

import contextlib
import functools
import queue
from collections.abc import Callable
from typing import Any, Protocol

from ..bounded import together
from ..inventory import Inventory
from .log import DecisionLog, Logged
from .metrics import Metrics
from .model import BACKOFF, Event, EventKind, Snapshot
from .sources import EtcdSource

FIRST_SNAPSHOT_WAIT = 5.0
STOP_WAIT = 10.0   # for the sources to stop, together


class Source(Protocol):
    """What the loop starts and stops: the inventory file, Docker, etcd, the health checker."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SourceSet:
    def __init__(self, events: queue.SimpleQueue[Event], log: DecisionLog, metrics: Metrics) -> None:
        self.events = events
        self.log = log
        self.metrics = metrics
        self.sources: list[Source] = []
        self.started = False

    def add(self, source: Source) -> None:
        self.sources.append(source)

    def start(self) -> None:
        for source in self.sources:
            source.start()
        self.started = True

    def stop(self, wait: float = STOP_WAIT) -> list[str]:
        """Stop every source at once (each may wait a few seconds for its thread): the stop takes the slowest
        one's time, not their sum, and at most `wait` seconds. Returns the names of those still stopping then,
        said in a warning `stop` line."""
        def stop_one(source: Source) -> None:
            with contextlib.suppress(Exception):  # stopping is best effort
                source.stop()

        stuck = together([(type(s).__name__, functools.partial(stop_one, s)) for s in self.sources], wait)
        if stuck:
            self.log(Logged.STOP, f"{', '.join(stuck)} did not stop within {wait:g}s: exiting without them",
                     stuck=stuck, level="warning")
        return stuck

    def names(self) -> list[str]:
        return [type(s).__name__ for s in self.sources]

    def follow_etcd(self, inv: Inventory, snapshots: dict[str, Snapshot]) -> None:
        """One etcd source for the groups that discover from etcd now: started, or started again with the new
        prefixes and endpoints when an inventory edit changes them (its last snapshot is dropped with it)."""
        prefixes = {g.name: g.discover_prefix for g in inv.upstreams if g.discover_prefix}
        endpoints = list(inv.discovery_etcd_endpoints)
        current = next((s for s in self.sources if isinstance(s, EtcdSource)), None)
        if current is not None and (current.prefixes, current.endpoints) == (prefixes, endpoints):
            return
        if current is not None:
            current.stop()
            self.sources.remove(current)
            snapshots.pop("etcd", None)
        if prefixes:
            source = EtcdSource(endpoints, prefixes, self.events.put)
            self.sources.append(source)
            if current is not None or self.started:
                source.start()
                self.log(Logged.SOURCE, f"etcd: following {', '.join(sorted(prefixes.values()))}", source="etcd")

    def first_snapshots(self, snapshots: dict[str, Snapshot], clock: Callable[[], float]) -> None:
        """Give the discovery sources a moment to publish, so the first apply includes what they see (a stop
        asked meanwhile is put back in the queue)."""
        wanted = {"docker"} | ({"etcd"} if any(isinstance(s, EtcdSource) for s in self.sources) else set())
        deadline = clock() + FIRST_SNAPSHOT_WAIT
        backlog = []
        while not wanted <= {name for name, snap in snapshots.items() if snap.known} and clock() < deadline:
            try:
                event = self.events.get(timeout=max(0.0, deadline - clock()))
            except queue.Empty:
                break
            if event.kind is EventKind.SNAPSHOT and event.snapshot is not None:
                self.take(snapshots, event.snapshot)
            elif event.kind is EventKind.STOP:
                backlog.append(event)
        for event in backlog:
            self.events.put(event)

    def take(self, snapshots: dict[str, Snapshot], snapshot: Snapshot) -> Snapshot | None:
        """Keep a source's new snapshot; say when the source went away or came back. Returns the previous one."""
        previous = snapshots.get(snapshot.source)
        snapshots[snapshot.source] = snapshot
        self.metrics.source_stale.labels(snapshot.source).set(1 if snapshot.stale else 0)
        if snapshot.stale and (previous is None or not previous.stale):
            kept = f"keeping its last {len(snapshot.candidates)} backend(s)" if snapshot.known else \
                "nothing known of its backends yet"
            self.log(Logged.SOURCE, f"{snapshot.source} unreachable: {kept}; retrying with backoff (every "
                     f"{BACKOFF[-1]:g}s at most) until it answers", source=snapshot.source, error=snapshot.error)
        elif previous is not None and previous.stale and not snapshot.stale:
            self.log(Logged.SOURCE, f"{snapshot.source} reachable again: resynced", source=snapshot.source,
                     backends=len(snapshot.candidates))
        return previous


def ours(inv: Inventory | None, snapshot: Snapshot) -> tuple[Any, ...]:
    """The candidates of a snapshot that this inventory's groups discover: backends labelled for another load
    balancer's groups on a shared engine are no reason for a pass."""
    wanted = {g.name for g in inv.upstreams if g.discover == snapshot.source} if inv is not None else set()
    return tuple(c for c in snapshot.candidates if c.group in wanted)
