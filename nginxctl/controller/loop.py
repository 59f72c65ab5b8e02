"""The reconcile loop of `nginxctl watch`.

Level-triggered: an event (the inventory file, a source's snapshot, the target restarting) only says
"look again". After the quiet period (never later than max-wait after the first change) the loop
renders the desired config from the last good inventory and the latest snapshots, compares it with
what the target has loaded, and applies the difference through the same `Deployer` as `nginxctl apply`
(test, install, reload, verify, restore). A pass that cannot finish (lingering generations, the
target or the engine gone, a reload that did not take) stays pending and is retried with backoff:
"pending" is simply "desired differs from loaded". Everything runs on one thread; sources only enqueue.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .. import nginx
from ..apply import Deployer
from ..errors import (
    EXIT_NOT_RESTORED,
    ApplyFailure,
    ConfigRejected,
    EnvironmentProblem,
    GenerationsLingering,
    InventoryError,
    NginxctlError,
    RestoreFailed,
    TemplateError,
)
from ..fleet import FleetFailure, Member, fleet_targets, open_fleet, rollout
from ..history import sha
from ..inventory import Inventory
from ..inventory.model import Target
from ..workflows import container_name, read_inventory, render_for
from .debounce import Debouncer
from .log import DecisionLog
from .merge import Merged, merge
from .metrics import Metrics
from .sources import DockerSource, EtcdSource, Event, InventoryFile, Snapshot, backoff
from .systemd import notify, watchdog_interval

Connect = Callable[[str | None], Any]
GENERATIONS_RETRY = 2.0
FIRST_SNAPSHOT_WAIT = 5.0
# How often the published health is re-stamped while nothing changes: `status` in another PID namespace (the
# watch in a container, status on the host) cannot see the process, and calls it stale after 3 missed beats.
HEALTH_HEARTBEAT = 10.0


@dataclass
class WatchOptions:
    inventory: Path
    container: str | None = None
    quiet_period: float = 1.0
    max_wait: float = 10.0
    max_generations: int = 3
    templates: Path | None = None
    targets: list[str] | None = None
    lock_owner: str | None = None


@dataclass
class Applied:
    """What the loop last verified on the target."""

    hash: str | None = None
    servers: dict[str, set[str]] = field(default_factory=dict)   # group -> server addresses (usable or not)


class Controller:
    """One controller for one target. `run()` blocks until `stop()` (or SIGTERM/SIGINT) and returns 0."""

    def __init__(self, options: WatchOptions, *, connect: Connect, log: DecisionLog, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.connect = connect
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.events: queue.Queue[Event] = queue.Queue()
        self.debounce = Debouncer(options.quiet_period, options.max_wait)
        self.inventory: Inventory | None = None
        self.inventory_text: str | None = None
        self.snapshots: dict[str, Snapshot] = {}
        self.members: list[Member] | None = None
        self.failed_desired: str | None = None   # the desired config whose last apply failed
        self.client: Any = None
        self.applied = Applied()
        self.retry_at: float | None = None
        self.failures = 0
        self.burst_started: float | None = None
        self.skipped_seen: set[tuple[str, str, str]] = set()
        self.sources: list[Any] = []
        self.down: frozenset[tuple[str, str]] = frozenset()
        self._locks: list[nginx.TargetLock] = []
        self.machine: Any = None
        self.checker: Any = None
        self.health_change: tuple[list[str], list[str]] = ([], [])
        self.last_health_apply: float | None = None
        self.health_due: float | None = None
        self.heartbeat_due: float | None = None
        self.watchdog = watchdog_interval()
        self.watchdog_due: float | None = None
        self.all_failing: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        self.events.put(Event("stop", detail=reason))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(f"{signal.Signals(signum).name} received")

    def start(self) -> None:
        """Load the inventory, reach the target, take the watch lock, start the sources. Raises
        InventoryError, EnvironmentProblem, LockBusy (another watch holds the target)."""
        self.inventory_text = self.options.inventory.read_text(encoding="utf-8") \
            if self.options.inventory.exists() else None
        first = read_inventory(self.options.inventory)
        self.client = self.connect(first.target.docker_host)
        self.machine = nginx.engine_machine(self.client)  # the engine's machine does not change under us
        self.inventory = read_inventory(self.options.inventory, machine=self.machine)
        self.members = self._attach()
        for member in self.members:
            lock = nginx.TargetLock(member.deployer.live.client, member.deployer.live, wait=0, purpose="watch",
                                    kind="watch", owner=self.options.lock_owner)
            lock.__enter__()
            self._locks.append(lock)
        names = [m.deployer.live.name for m in self.members]
        publish = self.events.put
        self.sources.append(InventoryFile(str(self.options.inventory), publish))
        self.sources.append(DockerSource(lambda: self.connect(first.target.docker_host), publish, set(names),
                                         local_engine=first.target.docker_host is None))
        prefixes = {g.name: g.discover_prefix for g in self.inventory.upstreams if g.discover_prefix}
        if prefixes:
            self.sources.append(EtcdSource(list(self.inventory.discovery_etcd_endpoints), prefixes, publish))
        from .health import Checker

        # idle (no thread wakes) until a group has a health_check
        self.checker = Checker(lambda: self.events.put(Event("health")), self._on_check)
        self.sources.append(self.checker)
        for source in self.sources:
            source.start()
        self.log("start", f"watching {self.options.inventory} for target{'s' if len(names) > 1 else ''} "
                 f"{', '.join(names)}",
                 quiet_period=self.options.quiet_period, max_wait=self.options.max_wait,
                 sources=[type(s).__name__ for s in self.sources])

    def close(self) -> None:
        if self.checker is not None and self.checker.targets:
            self._write_health(stopped=True)
        for source in self.sources:
            try:
                source.stop()
            except Exception:  # noqa: BLE001 (stopping is best effort)
                pass
        for lock in self._locks:
            lock.__exit__(None, None, None)
        if self.client is not None:
            self.client.close()
        self.metrics.running = False

    @property
    def deployer(self) -> Deployer | None:
        """The first target's (where health state is published)."""
        return self.members[0].deployer if self.members else None

    def _attach(self) -> list[Member]:
        """The targets: --container, else the inventory's fleet (limited by --targets) or its target; each
        reached now. Raises EnvironmentProblem naming an unreachable one, UsageError."""
        assert self.inventory is not None
        inv = self.inventory

        def make(live: nginx.LiveNginx, target: Target) -> Deployer:
            return Deployer(live, config_path=target.config_path, stream_only=target.stream_only,
                            max_generations=self.options.max_generations, lock_wait=30.0,
                            release_lock_in_background=True, count_connections=False)

        if self.options.container is not None or not inv.targets:
            name = container_name(inv, self.options.container)
            live = nginx.LiveNginx.attach(self.client, name)
            return [Member(name, make(live, inv.target))]
        targets = fleet_targets(inv, self.options.targets)
        first_host = inv.target.docker_host
        return open_fleet(list(targets), lambda host: self.client if host == first_host else self.connect(host),
                          make, [t.name for t in targets])

    def run(self, install_signals: bool = True) -> int:
        """Start, apply, then reconcile on every change until stopped. Returns the exit code (0)."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.start()
            # Ready once the loop runs, not after a first apply: a discovery source down at start (the
            # loop waits for it) must not look like a failed start to systemd and become a restart loop.
            notify("READY=1")
            if self.watchdog is not None:
                self.watchdog_due = self.clock()
            self._first_snapshots()
            self.debounce.change(self.clock())
            self._reconcile(reason="start")
            while True:
                event = self._next_event()
                if event is not None and event.kind == "stop":
                    notify("STOPPING=1")
                    self.log("stop", f"{event.detail}: stopping; the target keeps the config it runs")
                    return 0
                if event is not None:
                    self._handle(event)
                now = self.clock()
                if self.health_due is not None and now >= self.health_due:
                    self.health_due = None
                    self.debounce.change(now)
                if self.heartbeat_due is not None and now >= self.heartbeat_due:
                    self._write_health()
                if self.watchdog is not None and self.watchdog_due is not None and now >= self.watchdog_due:
                    notify("WATCHDOG=1")  # the loop turns: a pass stuck on a hung engine call stops these
                    self.watchdog_due = now + self.watchdog
                if self.debounce.due(now) or (self.retry_at is not None and now >= self.retry_at):
                    self._reconcile(reason="change" if self.debounce.pending else "retry")
        finally:
            self.close()

    def _first_snapshots(self) -> None:
        """Give the discovery sources a moment to publish, so the first apply includes what they see."""
        wanted = {"docker"} | ({"etcd"} if any(isinstance(s, EtcdSource) for s in self.sources) else set())
        deadline = self.clock() + FIRST_SNAPSHOT_WAIT
        backlog = []
        while not wanted <= {name for name, snap in self.snapshots.items() if snap.known} \
                and self.clock() < deadline:
            try:
                event = self.events.get(timeout=max(0.0, deadline - self.clock()))
            except queue.Empty:
                break
            if event.kind == "snapshot" and event.snapshot is not None:
                self.snapshots[event.snapshot.source] = event.snapshot
                self._source_state(event.snapshot)
            elif event.kind == "stop":
                backlog.append(event)
        for event in backlog:
            self.events.put(event)

    def _next_event(self) -> Event | None:
        deadlines = [d for d in (self.debounce.deadline(), self.retry_at, self.health_due, self.heartbeat_due,
                                 self.watchdog_due) if d is not None]
        timeout = max(0.0, min(deadlines) - self.clock()) if deadlines else None
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _handle(self, event: Event) -> None:
        now = self.clock()
        if event.kind == "inventory":
            self.debounce.change(now)
        elif event.kind == "target":
            self.log("target", f"{event.detail}: checking it runs the desired config")
            self.members = None  # attach again: a restarted container has a new master
            self.debounce.change(now)
        elif event.kind == "health":
            self._health_changed(now)
        elif event.kind == "snapshot" and event.snapshot is not None:
            previous = self.snapshots.get(event.snapshot.source)
            self.snapshots[event.snapshot.source] = event.snapshot
            self._source_state(event.snapshot, previous)
            if previous is None or previous.candidates != event.snapshot.candidates:
                self.debounce.change(now)
        self.metrics.pending.set(self.debounce.changes + (1 if self.retry_at is not None else 0))

    # -- health checks -------------------------------------------------------------------------------------

    def _health_changed(self, now: float) -> None:
        """A server went down or came back: render it so, at most once per --max-wait (a flapping server
        does not reload nginx at every flap)."""
        if self.checker is None or self.inventory is None:
            return
        down = self._effective_down(self.checker.down())
        if down == self.down:
            return
        earliest = self.last_health_apply + self.options.max_wait if self.last_health_apply is not None else now
        if now >= earliest:
            self.debounce.change(now)
            self.health_due = None
        else:
            self.health_due = earliest
        self._write_health()

    def _effective_down(self, failing: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        """What is rendered down: failing servers, except that a group never loses every primary server to
        its checks (when all fail, all stay in: nginx's passive checks still apply)."""
        assert self.inventory is not None
        keep: set[tuple[str, str]] = set()
        merged = merge(self.inventory, self.snapshots)
        for group in merged.inventory.upstreams:
            primaries = [(group.name, s.address.text) for s in group.servers
                         if not s.backup and not s.down and (group.name, s.address.text) in merged.sources]
            all_failing = bool(primaries) and all(p in failing for p in primaries)
            self.metrics.all_down.labels(group.name).set(1 if all_failing else 0)
            if all_failing:
                keep.update(primaries)
                if group.name not in self.all_failing:
                    self.all_failing.add(group.name)
                    self.log("health", f"ALL {len(primaries)} primary server(s) of '{group.name}' fail their health "
                             "checks: keeping them all in (nginx's passive checks still apply); check the backends "
                             "and the network between this host and them", group=group.name, level="error")
            elif group.name in self.all_failing:
                self.all_failing.discard(group.name)
                self.log("health", f"'{group.name}' has a passing primary server again", group=group.name)
        return frozenset(failing - keep)

    def _check_targets(self, merged: Merged) -> None:
        from .health import Target

        if self.checker is None:
            return
        targets = [Target(g.name, s.address.text, g.health_check, g.protocol == "udp")
                   for g in merged.inventory.upstreams if g.health_check is not None
                   for s in g.servers if (g.name, s.address.text) in merged.sources]
        self.metrics.checked([(t.group, t.address) for t in targets])
        self.checker.set_targets(targets)

    def _write_health(self, stopped: bool = False) -> None:
        """Publish health state beside the target's config, for `nginxctl status` (`stopped`: this watch is
        ending, nothing checks any more)."""
        self.heartbeat_due = None
        if self.checker is None or self.deployer is None or not self.checker.targets:
            return
        import json

        from ..host import process_identity

        rows = [{"group": g, "address": a, "state": "up" if h.up else "down", "since": h.since,
                 "last_error": h.last_error, "checks": h.checks, "rendered_down": (g, a) in self.down}
                for (g, a), h in sorted(self.checker.health().items())]
        try:
            self.deployer.history.write({".nginxctl/health.json": json.dumps(
                {"updated": time.time(), "heartbeat_seconds": HEALTH_HEARTBEAT, "watch_pid": os.getpid(),
                 "watch_host": socket.gethostname(), "watch": process_identity(),
                 "stopped": time.time() if stopped else None, "servers": rows}, indent=1) + "\n"})
        except NginxctlError:
            pass
        if not stopped:
            self.heartbeat_due = self.clock() + HEALTH_HEARTBEAT

    def _on_check(self, target: Any, ok: bool, error: str | None) -> None:
        self.metrics.health_checks.labels(target.group, target.address, "pass" if ok else "fail").inc()

    def _source_state(self, snapshot: Snapshot, previous: Snapshot | None = None) -> None:
        self.metrics.source_stale.labels(snapshot.source).set(1 if snapshot.stale else 0)
        if snapshot.stale and (previous is None or not previous.stale):
            self.log("source", f"{snapshot.source} unreachable: keeping its last {len(snapshot.candidates)} "
                     "backend(s) and retrying", source=snapshot.source, error=snapshot.error)
        elif previous is not None and previous.stale and not snapshot.stale:
            self.log("source", f"{snapshot.source} reachable again: resynced", source=snapshot.source,
                     backends=len(snapshot.candidates))

    # -- one reconcile pass ------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the inventory file again; an invalid one is logged and the last good one kept."""
        try:
            text = self.options.inventory.read_text(encoding="utf-8")
        except OSError as exc:
            self.log("inventory", f"cannot read {self.options.inventory} ({exc.strerror}); keeping the last good "
                     "inventory")
            self.metrics.invalid_inventory.set(1)
            return
        if text == self.inventory_text:
            return
        self.inventory_text = text
        try:
            machine = self.machine
            from ..inventory import parse_inventory

            inventory = parse_inventory(text, str(self.options.inventory), machine=machine)
        except InventoryError as exc:
            self.metrics.invalid_inventory.set(1)
            self.log("inventory", f"invalid inventory ignored ({len(exc.problems)} problem(s)); the last good "
                     "config keeps running", problems=[str(p) for p in exc.problems])
            return
        except EnvironmentProblem:
            return
        self.metrics.invalid_inventory.set(0)
        if self.inventory is not None and (inventory.target != self.inventory.target
                                           or inventory.targets != self.inventory.targets):
            self.log("inventory", "the inventory names other targets now: this watch keeps controlling the ones it "
                     "started with; restart it to follow the change", level="warning")
        self.inventory = inventory
        self.log("inventory", f"{self.options.inventory} changed and loads", sha256=inventory.digest[:12])

    def _reconcile(self, reason: str) -> None:
        self.metrics.reconciles.inc()
        began = self.clock()
        first_change = self.debounce.take()[0] if self.debounce.pending else None
        if first_change is not None and self.burst_started is None:
            self.burst_started = first_change
        self._load()
        assert self.inventory is not None
        if self.checker is not None:
            before_down = self.down
            self.down = self._effective_down(self.checker.down())
            self.health_change = (sorted(f"{g}/{a}" for g, a in self.down - before_down),
                                  sorted(f"{g}/{a}" for g, a in before_down - self.down))
            self.last_health_apply = self.clock()
            self.health_due = None
        unknown = sorted({g.discover for g in self.inventory.upstreams if g.discover
                          and not (self.snapshots.get(g.discover) and self.snapshots[g.discover].known)})
        if unknown:
            # Nothing is known of these backends yet (the source never answered): rendering now would empty
            # those groups. The target keeps what it runs until the source answers once.
            wait = backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            self.log("wait", f"{', '.join(unknown)} not reachable yet: the target keeps what it runs until "
                     "discovery has answered once", retry_in=wait)
            return
        merged = merge(self.inventory, self.snapshots, self.down)
        self._check_targets(merged)
        self._report_skipped(merged)
        self.metrics.set_servers(merged.rows)
        try:
            if self.members is None:
                self.members = self._attach()
            rendered = {m.name: render_for(merged.inventory, m.deployer, self.options.templates,
                                           self.options.inventory.parent) for m in self.members}
            desired = sha(rendered[self.members[0].name])
            if desired == self.failed_desired and self.retry_at is not None and self.clock() < self.retry_at:
                return  # the same config failed moments ago: wait for its backoff, whatever woke us
            loaded = {m.name: m.deployer.loaded() for m in self.members}
            behind = [m for m in self.members if loaded[m.name] != sha(rendered[m.name])]
            if not behind:
                self._succeeded(merged, desired, changed=False, reason=reason, began=began)
                return
            first = loaded[behind[0].name]
            self.log("apply", f"applying ({reason}): the desired config differs from the loaded one",
                     desired=desired[:12], loaded=first[:12] if first else None,
                     targets=[m.name for m in behind] if len(self.members) > 1 else None)
            result = rollout(behind, rendered, reload=True, dry_run=False, progress=lambda _: None)
            reloaded = any(o.reloaded for _, o in result.outcomes)
        except FleetFailure as exc:
            self.failed_desired = desired
            if isinstance(exc.cause, EnvironmentProblem):
                self.members = None
            self._failed("restore_failed" if exc.exit_code == EXIT_NOT_RESTORED else "restored",
                         str(exc).replace("\n", "; "), retry=True)
        except TemplateError as exc:
            self._failed("rejected", f"the templates cannot render: {exc}", retry=False)
        except ConfigRejected as exc:
            self._failed("rejected", f"nginx rejected the config; the last good config keeps running: {exc}",
                         retry=False)
        except GenerationsLingering as exc:
            self._failed("refused", f"reload deferred: {exc.count} old worker generation(s) linger "
                         f"(--max-generations {exc.limit}); retrying in {GENERATIONS_RETRY:g}s",
                         retry=True, delay=GENERATIONS_RETRY)
        except RestoreFailed as exc:
            self.failed_desired = desired
            self._failed("restore_failed", str(exc).replace("\n", "; "), retry=True)
        except ApplyFailure as exc:
            self.failed_desired = desired
            self._failed("restored", str(exc).replace("\n", "; "), retry=True)
        except EnvironmentProblem as exc:
            self.members = None
            self._failed("error", f"target unreachable: {exc}", retry=True)
        except NginxctlError as exc:
            self._failed("error", str(exc).splitlines()[0], retry=True)
        else:
            self._succeeded(merged, desired, changed=reloaded, reason=reason, began=began)

    def _succeeded(self, merged: Merged, desired: str, *, changed: bool, reason: str, began: float) -> None:
        now = self.clock()
        servers: dict[str, set[str]] = {g.name: set() for g in merged.inventory.upstreams}
        for group, address in merged.sources:
            servers[group].add(address)
        if self.applied.hash is None:  # the first pass: everything is new, say how much
            added: list[str] = []
            removed: list[str] = []
        else:
            added = sorted(f"{g}/{a}" for g, addrs in servers.items()
                           for a in addrs - self.applied.servers.get(g, set()))
            removed = sorted(f"{g}/{a}" for g, addrs in self.applied.servers.items()
                             for a in addrs - servers.get(g, set()))
        count = sum(len(addrs) for addrs in servers.values())
        self.metrics.last_success.set(time.time())
        if changed:
            self.metrics.reloads.labels("ok").inc()
            if self.burst_started is not None:
                self.metrics.change_to_reload.observe(max(0.0, now - self.burst_started))
            self.log("reload", f"reloaded and verified ({reason})", result="ok", added=added, removed=removed,
                     health_down=self.health_change[0], health_back=self.health_change[1], servers=count,
                     seconds=round(now - began, 3), sha256=desired[:12],
                     since_first_change=None if self.burst_started is None else round(now - self.burst_started, 3))
        else:
            self.log("in-sync", f"nothing to do: the target runs the desired config ({reason})", sha256=desired[:12],
                     added=added, removed=removed, servers=count)
        self.applied = Applied(desired, servers)
        self.failed_desired = None
        self.health_change = ([], [])
        if self.checker is not None and self.checker.targets:
            self._write_health()
        self.retry_at = None
        self.failures = 0
        self.burst_started = None
        self.metrics.pending.set(self.debounce.changes)

    def _failed(self, result: str, message: str, *, retry: bool, delay: float | None = None) -> None:
        self.metrics.reloads.labels(result).inc()
        if retry:
            wait = delay if delay is not None else backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            self.log("reload", message, result=result, retry_in=wait)
        else:
            self.retry_at = None
            self.burst_started = None
            self.log("reload", message, result=result)
        self.metrics.pending.set(self.debounce.changes + (1 if self.retry_at is not None else 0))

    def _report_skipped(self, merged: Merged) -> None:
        counts: dict[str, int] = {}
        for skip in merged.skipped:
            counts[skip.source] = counts.get(skip.source, 0) + 1
            key = (skip.source, skip.origin, skip.reason)
            if key not in self.skipped_seen:
                self.skipped_seen.add(key)
                self.log("skip", f"{skip.source} backend {skip.origin} skipped: {skip.reason}", source=skip.source,
                         origin=skip.origin, group=skip.group)
        for source in ("docker", "etcd"):
            self.metrics.skipped.labels(source).set(counts.get(source, 0))

