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

import contextlib
import queue
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from .. import nginx
from ..apply import Deployer
from ..capacity import Machine
from ..desired import RenderTarget, render_target, target_of
from ..errors import ConfigRejected, EnvironmentProblem, InventoryError, NginxctlError
from ..fleet import Member, fleet_targets, open_fleet, rollout
from ..history import sha
from ..inventory import Inventory, check_capacity, parse_inventory
from ..inventory.model import Target
from ..inventoryfile import container_name, read_inventory
from ..trace import trace
from ..view import pending
from .debounce import Debouncer
from .decide import Action, PassInput, Plan, classify, decide, describe
from .health import Checker
from .healthstate import HealthState
from .isolate import culprits
from .log import DecisionLog
from .merge import Merged, candidate_server
from .metrics import IDLE_BEAT, Metrics
from .model import BACKOFF, Event, EventKind, Snapshot, WatchOptions, backoff
from .poolmetrics import PoolMetrics
from .publisher import HEALTH_HEARTBEAT, Publisher
from .sources import DockerSource, EtcdSource, InventoryFile

if TYPE_CHECKING:
    import docker
from .systemd import notify, watchdog_interval

Connect = Callable[[str | None], "docker.DockerClient"]


class Source(Protocol):
    """What the loop starts and stops: the inventory file, Docker, etcd, the health checker."""

    def start(self) -> None: ...

    def stop(self) -> None: ...
FIRST_SNAPSHOT_WAIT = 5.0
MAX_ISOLATED_PER_PASS = 16   # discovered servers nginx refuses, found one rejection at a time


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
        self.client: docker.DockerClient | None = None
        self.verified: str | None = None   # the config this watch last verified on the targets
        self.retry_at: float | None = None
        self.failures = 0
        self.burst_started: float | None = None
        self.skipped_seen: set[tuple[str, str, str]] = set()
        self.sources: list[Source] = []
        self._locks: list[nginx.TargetLock] = []
        self.machine: Machine | None = None
        self.health = HealthState(options.max_wait, log, metrics, clock)
        self.heartbeat_due: float | None = None
        self.watchdog = watchdog_interval()
        self.watchdog_due: float | None = None
        self.isolated: dict[tuple[str, str], str] = {}   # discovered servers nginx refused -> its reason
        self.resync_at: float | None = None
        self.publisher = Publisher(options.inventory, options.resync)
        self.render_targets: list[RenderTarget] = []
        self.loaded: dict[str, tuple[str | None, str | None]] = {}   # target -> (hash, text) this pass read
        self.reloaded = False
        self.waiting = False   # a `wait` line was logged: sources that never answered, not logged per retry

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        self.events.put(Event(EventKind.STOP, detail=reason))

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
        self.inventory = check_capacity(first, self.machine)
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

        # idle (no thread wakes) until a group has a health_check
        self.health.checker = Checker(lambda: self.events.put(Event(EventKind.HEALTH)), self.health.on_check)
        self.sources.append(self.health.checker)
        if self.metrics.served:
            self.sources.append(PoolMetrics(self.metrics, self.options.resync, self._pool_view))
        for source in self.sources:
            source.start()
        self.log("start", f"watching {self.options.inventory} for target{'s' if len(names) > 1 else ''} "
                 f"{', '.join(names)}",
                 quiet_period=self.options.quiet_period, max_wait=self.options.max_wait,
                 sources=[type(s).__name__ for s in self.sources])

    def _pool_view(self) -> list[tuple[nginx.LiveNginx, str | None]]:
        """Each target and the config this loop last read as loaded (for the pool metrics' thread)."""
        members, loaded = self.members or [], self.loaded
        return [(m.deployer.live, loaded.get(m.name, (None, None))[1]) for m in members]

    def close(self) -> None:
        if self.health.checking:
            self._write_health(stopped=True)
        self.publisher.stopped(self.members or [])
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

    def _attach(self) -> list[Member]:
        """The targets, each reached now, and what rendering needs of each (read once per attach). Raises
        EnvironmentProblem naming an unreachable one, UsageError."""
        members = self._reach()
        self.render_targets = [target_of(m.name, m.deployer) for m in members]
        return members

    def _reach(self) -> list[Member]:
        """The targets: --container, else the inventory's fleet (limited by --targets) or its target."""
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
                self.metrics.beat()  # progress, for /healthz: a pass, an event, or an idle wake-up
                if event is not None and event.kind is EventKind.STOP:
                    notify("STOPPING=1")
                    self._log_stop(event.detail)
                    return 0
                if event is not None:
                    self._handle(event)
                now = self.clock()
                if self.health.due is not None and now >= self.health.due:
                    self.health.due = None
                    self.debounce.change(now)
                if self.heartbeat_due is not None and now >= self.heartbeat_due:
                    self._write_health()
                if self.watchdog is not None and self.watchdog_due is not None and now >= self.watchdog_due:
                    notify("WATCHDOG=1")  # the loop turns: a pass stuck on a hung engine call stops these
                    self.watchdog_due = now + self.watchdog
                if self.debounce.due(now) or (self.retry_at is not None and now >= self.retry_at):
                    self._reconcile(reason="change" if self.debounce.pending else "retry")
                elif not self.debounce.pending and (event is not None and event.kind is EventKind.RESYNC or
                                                    self.resync_at is not None and now >= self.resync_at):
                    self._reconcile(reason="resync")
        finally:
            self.close()

    def _log_stop(self, detail: str) -> None:
        """The `stop` line says what was seen and is not applied (a burst in its quiet period, a retry, a
        health change held by its damping): this watch drops it, the target keeps what it runs."""
        pending = self.debounce.changes + (1 if self.retry_at is not None else 0) \
            + (1 if self.health.due is not None else 0)
        if pending:
            self.log("stop", f"{detail}: stopping; {pending} change(s) seen were not applied; the target keeps "
                     "the config it runs", not_applied=pending, level="warning")
        else:
            self.log("stop", f"{detail}: stopping; the target keeps the config it runs")

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
            if event.kind is EventKind.SNAPSHOT and event.snapshot is not None:
                previous = self.snapshots.get(event.snapshot.source)
                self.snapshots[event.snapshot.source] = event.snapshot
                self._source_state(event.snapshot, previous)
            elif event.kind is EventKind.STOP:
                backlog.append(event)
        for event in backlog:
            self.events.put(event)

    def _next_event(self) -> Event | None:
        deadlines = [d for d in (self.debounce.deadline(), self.retry_at, self.health.due, self.resync_at,
                                 self.heartbeat_due, self.watchdog_due) if d is not None]
        # never sleep longer than IDLE_BEAT: an idle loop still beats (a hung one does not)
        timeout = min(IDLE_BEAT, max(0.0, min(deadlines) - self.clock())) if deadlines else IDLE_BEAT
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _handle(self, event: Event) -> None:
        now = self.clock()
        if event.kind is EventKind.INVENTORY:
            self.debounce.change(now)
        elif event.kind is EventKind.TARGET:
            self.log("target", f"{event.detail}: checking it runs the desired config")
            self.members = None  # attach again: a restarted container has a new master
            self.debounce.change(now)
        elif event.kind is EventKind.HEALTH:
            if self.inventory is not None and self.health.changed(self.inventory, self.snapshots, now):
                self.debounce.change(now)
            self._write_health()
        elif event.kind is EventKind.SNAPSHOT and event.snapshot is not None:
            previous = self.snapshots.get(event.snapshot.source)
            self.snapshots[event.snapshot.source] = event.snapshot
            self._source_state(event.snapshot, previous)
            if previous is None or self._ours(previous) != self._ours(event.snapshot):
                self.debounce.change(now)
        self.metrics.pending.set(self.debounce.changes + (1 if self.retry_at is not None else 0))

    def _ours(self, snapshot: Snapshot) -> tuple[Any, ...]:
        """The candidates of a snapshot that this inventory's groups discover: backends labelled for another
        load balancer's groups on a shared engine are no reason for a pass."""
        wanted = {g.name for g in self.inventory.upstreams if g.discover == snapshot.source} \
            if self.inventory is not None else set()
        return tuple(c for c in snapshot.candidates if c.group in wanted)

    def _write_health(self, stopped: bool = False) -> None:
        """Publish health state beside every target's config, for `nginxctl status` (`stopped`: this watch is
        ending, nothing checks any more)."""
        self.heartbeat_due = None
        if not self.members or not self.health.checking:
            return
        self.publisher.health(self.members, self.health.rows(), stopped=stopped)
        if not stopped:
            self.heartbeat_due = self.clock() + HEALTH_HEARTBEAT

    def _source_state(self, snapshot: Snapshot, previous: Snapshot | None = None) -> None:
        self.metrics.source_stale.labels(snapshot.source).set(1 if snapshot.stale else 0)
        if snapshot.stale and (previous is None or not previous.stale):
            kept = f"keeping its last {len(snapshot.candidates)} backend(s)" if snapshot.known else \
                "nothing known of its backends yet"
            self.log("source", f"{snapshot.source} unreachable: {kept}; retrying with backoff (every "
                     f"{BACKOFF[-1]:g}s at most) until it answers", source=snapshot.source, error=snapshot.error)
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
        """One pass: gather what the target has loaded, decide once (`decide`), carry the plan out."""
        self.metrics.reconciles.inc()
        began = self.clock()
        first_change = self.debounce.take()[0] if self.debounce.pending else None
        if first_change is not None and self.burst_started is None:
            self.burst_started = first_change
        self._load()
        assert self.inventory is not None
        self.health.render(self.inventory, self.snapshots, self.clock())
        plan: Plan | None = None
        try:
            for _ in range(MAX_ISOLATED_PER_PASS + 1):
                plan = self._decide(reason)
                if plan.action is not Action.APPLY:
                    break
                try:
                    self._apply(plan)
                except ConfigRejected as exc:
                    if self._isolate(exc, plan):
                        continue  # left out what nginx refused: decide again, in the same pass
                    raise
                break
            else:
                raise NginxctlError(f"nginx refused more than {MAX_ISOLATED_PER_PASS} discovered servers in one "
                                    "pass; the last good config keeps running")
        except NginxctlError as exc:
            self._failed(exc, plan)
        else:
            assert plan is not None
            self._carried_out(plan, reason, began)
        finally:
            self.resync_at = self.clock() + self.options.resync

    def _decide(self, reason: str) -> Plan:
        """Gather (the targets' loaded configs: I/O), then decide (pure)."""
        assert self.inventory is not None
        if self.members is None:
            self.members = self._attach()
        self.loaded = {m.name: m.deployer.loaded_config() for m in self.members}
        self._prune_isolated()
        plan = decide(PassInput(reason, self.inventory, self.snapshots, self.health.down, self.isolated,
                                {name: h for name, (h, _) in self.loaded.items()}, self.verified,
                                self.failed_desired, self.retry_at is not None and self.clock() < self.retry_at),
                      self._render)
        if plan.merged is not None:
            self.health.check_targets(plan.merged)
            self._report_skipped(plan.merged)
            self.metrics.set_servers(plan.merged.rows)
            self.publisher.rendered = dict(plan.rendered)
            self.publisher.loaded = {name: h for name, (h, _) in self.loaded.items()}
        return plan

    def _render(self, inv: Inventory) -> dict[str, str]:
        return {t.name: render_target(inv, t, self.options.templates, self.options.inventory.parent)
                for t in self.render_targets}

    def _apply(self, plan: Plan) -> None:
        """Roll the plan's config to the targets behind (drift said first). Raises what `rollout` raises."""
        assert self.members is not None
        for name, runs in plan.drift:
            shown = f"sha256:{runs[:12]}" if runs else "an unknown config"
            assert self.verified is not None
            self.log("drift", f"{name} runs {shown}, not the config this watch verified "
                     f"(sha256:{self.verified[:12]}): changed outside the watch (a forced apply, a rollback, a "
                     f"hand edit); putting the desired config back", target=name, loaded=runs[:12] if runs else None,
                     level="warning")
        first = self.loaded[self.members[0].name][0]
        behind = [m for m in self.members if m.name in plan.behind]
        assert plan.desired is not None
        self.log("apply", plan.reason, desired=plan.desired[:12], loaded=first[:12] if first else None,
                 targets=list(plan.behind) if len(self.members) > 1 else None)
        result = rollout(behind, dict(plan.rendered), reload=True, dry_run=False, progress=lambda _: None)
        self.reloaded = any(o.reloaded for _, o in result.outcomes)

    def _carried_out(self, plan: Plan, reason: str, began: float) -> None:
        if plan.action is Action.WAIT:
            # nothing is known of these backends yet: rendering now would empty those groups
            wait = backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            if not self.waiting:  # once, not once per retry
                self.waiting = True
                self.log("wait", plan.reason, retry_in=wait)
            return
        self.waiting = False
        if plan.action is Action.HOLD:
            self._publish()
            return
        assert plan.merged is not None and self.members is not None
        self._succeeded(plan.merged, dict(plan.rendered), self.loaded[self.members[0].name],
                        changed=plan.action is Action.APPLY and self.reloaded, reason=reason, began=began)

    def _prune_isolated(self) -> None:
        """A refused backend is tried again once its source drops it or changes its address."""
        present = set()
        for snapshot in self.snapshots.values():
            for candidate in snapshot.candidates:
                with contextlib.suppress(InventoryError, ValueError):
                    present.add((candidate.group, candidate_server(candidate).address.text))
        self.isolated = {k: v for k, v in self.isolated.items() if k in present}

    def _isolate(self, exc: ConfigRejected, plan: Plan) -> bool:
        """Leave out the discovered servers nginx's rejection points at, so the rest of the change applies.
        False when the rejection is not about a discovered server (the inventory's author must fix it)."""
        assert plan.merged is not None
        merged = plan.merged
        rendered = plan.rendered.get(exc.target or "") or next(iter(plan.rendered.values()))
        discovered = {key for key, source in merged.sources.items() if source != "static"}
        found = [c for c in culprits(exc.result.output, rendered, discovered) if (c[0], c[1]) not in self.isolated]
        for group, address, why in found:
            self.isolated[(group, address)] = why
            self.log("skip", f"{merged.sources[(group, address)]} backend {group}/{address} left out: nginx refuses "
                     f"it ({why}); the rest of the change applies", group=group, server=address,
                     source=merged.sources[(group, address)], reason=why)
        return bool(found)

    def _locate(self, exc: ConfigRejected, plan: Plan | None) -> list[str]:
        """The inventory lines a rejection comes from (as `apply` says them)."""

        if plan is None or plan.merged is None or not plan.rendered:
            return []
        return trace(exc.result.output, next(iter(plan.rendered.values())), plan.merged.inventory)

    def _succeeded(self, merged: Merged, rendered: dict[str, str], before: tuple[str | None, str | None], *,
                   changed: bool, reason: str, began: float) -> None:
        """Every target runs `rendered`; `before` is (hash, text) of what the first one ran before this pass."""
        assert self.members
        now = self.clock()
        desired = sha(rendered[self.members[0].name])
        count = len(merged.sources)
        change = pending(before[1], rendered[self.members[0].name]) if before[1] is not None else None
        what: dict[str, Any] = {"added": change.added, "removed": change.removed, "changed": change.changed} \
            if change is not None else {"loaded_before": "unknown"}
        self.metrics.last_success.set(time.time())
        if changed:
            self.metrics.reloads.labels("ok").inc()
            if self.burst_started is not None:
                self.metrics.change_to_reload.observe(max(0.0, now - self.burst_started))
            self.log("reload", f"reloaded and verified ({reason})", result="ok", **what,
                     health_down=self.health.change[0], health_back=self.health.change[1], servers=count,
                     seconds=round(now - began, 3), sha256=desired[:12],
                     since_first_change=None if self.burst_started is None else round(now - self.burst_started, 3))
        elif reason != "resync" or self.verified != desired:
            self.log("in-sync", f"nothing to do: the target runs the desired config ({reason})", sha256=desired[:12],
                     servers=count)
        self.verified = desired
        self.failed_desired = None
        self.health.change = ([], [])
        if self.health.checking:
            self._write_health()
        self.retry_at = None
        self.failures = 0
        self.burst_started = None
        self.publisher.release()
        self.metrics.pending.set(self.debounce.changes)
        self.publisher.rendered, self.publisher.loaded = rendered, {name: sha(t) for name, t in rendered.items()}
        self._publish()

    def _publish(self) -> None:
        """Publish what this watch wants and whether it runs (see `publisher`)."""
        if self.members:
            self.publisher.publish(self.members, sorted(name for name, snap in self.snapshots.items() if snap.stale))

    def _failed(self, exc: NginxctlError, plan: Plan | None) -> None:
        """The desired config does not run: count it (`classify`), say why, retry (with backoff) or wait for the
        next change, and publish it as held, so `status` says what waits and why."""
        failure = classify(exc)
        if failure.remember and plan is not None:
            self.failed_desired = plan.desired
        if failure.detach:
            self.members = None
        message = describe(exc)
        self.metrics.reloads.labels(failure.result.value).inc()
        located = self._locate(exc, plan) if isinstance(exc, ConfigRejected) else []
        extra: dict[str, Any] = {"located": located} if located else {}
        if failure.retry:
            wait = failure.delay if failure.delay is not None else backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            self.log("reload", message, result=failure.result.value, retry_in=wait, **extra)
        else:
            self.retry_at = None
            self.burst_started = None
            self.log("reload", message, result=failure.result.value, **extra)
        self.publisher.hold(message)
        # the desired config does not run: that is a pending change, retried or not
        self.metrics.pending.set(max(1, self.debounce.changes))
        self._publish()

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
