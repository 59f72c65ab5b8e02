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
from ..errors import ConfigRejected, EnvironmentProblem, GenerationsLingering, InventoryError, NginxctlError
from ..fleet import FleetFailure, Member, fleet_targets, open_fleet, rollout
from ..history import sha
from ..inventory import Inventory, check_capacity, parse_inventory
from ..inventory.model import Target
from ..inventoryfile import container_name, read_inventory
from ..observe import reload_state
from ..published import Published
from ..retire import Retirement
from ..retireplan import retire_seconds
from ..trace import trace
from ..view import pending
from .debounce import Debouncer
from .decide import Action, PassInput, Plan, classify, decide, describe
from .health import Checker
from .healthstate import HealthState
from .isolate import culprits
from .log import DecisionLog
from .merge import Merged, candidate_server, merge
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
RETIRE_REPORT = 5.0          # a `retire` progress line at most this often
WAIT_REPORT = 30.0           # with --retire-rate 0, the `wait` line of a held change again this often


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
        self.failed_for_good = False             # ...and is not retried until the inputs change (rejected)
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
        self.started = False   # the sources run
        self.attached: list[Member] = []   # the targets last reached: published to even while one is unreachable
        self.render_targets: list[RenderTarget] = []
        self.loaded: dict[str, tuple[str | None, str | None]] = {}   # target -> (hash, text) this pass read
        self.reloaded = False
        self.waiting = False   # a `wait` line was logged: sources that never answered, not logged per retry
        self.retirement: Retirement | None = None   # an old generation being retired, a step per turn
        self.retire_due: float | None = None
        self.retire_reported = 0.0
        self.takeouts: set[str] = set()   # health take-outs seen and not applied yet: never held by the limits
        self.held_since: float | None = None   # the desired config has not run since (a failed or deferred pass)
        self.wait_reported: float | None = None
        metrics.pending_seconds.set_function(self._pending_seconds)

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
        self._follow_etcd(self.inventory)

        # idle (no thread wakes) until a group has a health_check
        self.health.checker = Checker(lambda: self.events.put(Event(EventKind.HEALTH)), self.health.on_check)
        self._seed_health()
        self.sources.append(self.health.checker)
        if self.metrics.served:
            self.sources.append(PoolMetrics(self.metrics, self.options.resync, self._pool_view))
        for source in self.sources:
            source.start()
        self.started = True
        # the limits on lingering generations are fields of the line (said in text logs too)
        self.log("start", f"watching {self.options.inventory} for target{'s' if len(names) > 1 else ''} "
                 f"{', '.join(names)}",
                 quiet_period=self.options.quiet_period, max_wait=self.options.max_wait,
                 max_generations=self.options.max_generations, max_lingering_memory=self.options.max_memory,
                 retire_rate=self.options.retire_rate, sources=[type(s).__name__ for s in self.sources])

    def _seed_health(self) -> None:
        """A restarted watch starts from the health decisions the previous one published: a server that was
        failing stays out until its checks pass, instead of going back into rotation for a few seconds."""
        assert self.health.checker is not None and self.members
        published = Published(self.members[0].deployer.live, self.members[0].deployer.history.base).health()
        if published is not None:
            self.health.checker.seed(published.get("servers", []))

    def _pool_view(self) -> list[tuple[nginx.LiveNginx, str | None]]:
        """Each target and the config this loop last read as loaded (for the pool metrics' thread)."""
        members, loaded = self.members or [], self.loaded
        return [(m.deployer.live, loaded.get(m.name, (None, None))[1]) for m in members]

    def close(self) -> None:
        self._end_retirement()
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
        self.attached = members
        return members

    def _reach(self) -> list[Member]:
        """The targets: --container, else the inventory's fleet (limited by --targets) or its target."""
        assert self.inventory is not None
        inv = self.inventory

        def make(live: nginx.LiveNginx, target: Target) -> Deployer:
            return Deployer(live, config_path=target.config_path, stream_only=target.stream_only,
                            max_generations=self.options.max_generations, max_memory=self.options.max_memory,
                            lock_wait=30.0,
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
                if self.retirement is not None and self.retire_due is not None and now >= self.retire_due:
                    self._retire_step()
                    now = self.clock()
                if self.debounce.due(now) or (self.retry_at is not None and now >= self.retry_at):
                    self._reconcile(reason="change" if self.debounce.pending else "retry")
                elif not self.debounce.pending and self.retry_at is None and (
                        event is not None and event.kind is EventKind.RESYNC or
                        self.resync_at is not None and now >= self.resync_at):  # a retry is scheduled: it looks
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
                                 self.heartbeat_due, self.watchdog_due, self.retire_due) if d is not None]
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
        self._set_pending()

    def _set_pending(self) -> None:
        """Changes seen and not applied: those in the quiet period, plus 1 while the desired config does not run
        (a retry scheduled, or a change held back: deferred, rejected, restored)."""
        held = self.retry_at is not None or self.publisher.held is not None
        self.metrics.pending.set(self.debounce.changes + (1 if held else 0))

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
        self._follow_etcd(inventory)

    def _follow_etcd(self, inv: Inventory) -> None:
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
            self.snapshots.pop("etcd", None)
        if prefixes:
            source = EtcdSource(endpoints, prefixes, self.events.put)
            self.sources.append(source)
            if current is not None or self.started:
                source.start()
                self.log("source", f"etcd: following {', '.join(sorted(prefixes.values()))}", source="etcd")

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
        self.takeouts |= set(self.health.change[0])
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
            try:
                self.members = self._attach()
            except NginxctlError:
                self._publish_wanted()  # what waits for the unreachable target is still said on the others
                raise
        observed = {m.name: m.deployer.observed() for m in self.members}
        self.loaded = {name: (h, text) for name, (h, text, _) in observed.items()}
        self._prune_isolated()
        plan = decide(PassInput(reason, self.inventory, self.snapshots, self.health.down, self.isolated,
                                {name: h for name, (h, _) in self.loaded.items()}, self.verified,
                                self.failed_desired, self.retry_at is not None and self.clock() < self.retry_at,
                                self.failed_for_good, {name: f for name, (_, _, f) in observed.items()}),
                      self._render)
        self._observe_generations()
        if plan.action is not Action.WAIT and self.waiting:  # the source answered: no longer held for it
            self.waiting = False
            self.publisher.release()
        if plan.merged is not None:
            self.health.check_targets(plan.merged)
            self._report_skipped(plan.merged)
            self.metrics.set_servers(plan.merged.rows)
            self.publisher.rendered = dict(plan.rendered)
            self.publisher.loaded = {name: h for name, (h, _) in self.loaded.items()}
        return plan

    def _publish_wanted(self) -> None:
        """While the targets cannot all be reached, publish on the last reached ones what this watch wants now
        (an inventory edit made meanwhile included), so `status` there shows it pending."""
        assert self.inventory is not None
        if not self.render_targets:
            return
        with contextlib.suppress(NginxctlError):
            merged = merge(self.inventory, self.snapshots, self.health.down, self.isolated)
            self.publisher.rendered = self._render(merged.inventory)

    def _render(self, inv: Inventory) -> dict[str, str]:
        return {t.name: render_target(inv, t, self.options.templates, self.options.inventory.parent)
                for t in self.render_targets}

    def _apply(self, plan: Plan) -> None:
        """Roll the plan's config to the targets behind (drift said first). Raises what `rollout` raises."""
        assert self.members is not None
        for name, runs in plan.drift:
            shown = f"sha256:{runs[:12]}" if runs else "an unknown config"
            if runs is not None and runs == sha(plan.rendered[name]):
                self.log("drift", f"{name}: its config file was changed outside the watch (nginx still runs the "
                         "desired config, a restart would not): reinstalling it", target=name, loaded=runs[:12],
                         level="warning")
                continue
            verified = f"the config this watch verified (sha256:{self.verified[:12]})" if self.verified else \
                "the desired config"
            why = "changed outside the watch (a forced apply, a rollback, a hand edit)" if runs else \
                "restarted, changed outside the watch, or nginx not running yet"
            self.log("drift", f"{name} runs {shown}, not {verified}: {why}; putting the desired config back",
                     target=name, loaded=runs[:12] if runs else None, level="warning")
        first = self.loaded[self.members[0].name][0]
        behind = [m for m in self.members if m.name in plan.behind]
        assert plan.desired is not None
        if self.publisher.held is None:  # a retry of a held change is not announced again
            self.log("apply", plan.reason, desired=plan.desired[:12], loaded=first[:12] if first else None,
                     targets=list(plan.behind) if len(self.members) > 1 else None)
        for m in behind:  # a health take-out is never held back by the limits on lingering generations
            m.deployer.waive_limits = bool(self.takeouts)
        result = rollout(behind, dict(plan.rendered), reload=plan.reload, dry_run=False, progress=lambda _: None)
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
            self.publisher.hold(plan.reason)
            self.publisher.rendered = {}  # nothing is decided while a source never answered: status renders itself
            self._publish()
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
        self.takeouts.clear()
        self.held_since = self.wait_reported = None
        self.health.change = ([], [])
        if self.health.checking:
            self._write_health()
        self.retry_at = None
        self.failures = 0
        self.burst_started = None
        self.failed_for_good = False
        self.publisher.release()
        self._set_pending()
        self.publisher.rendered, self.publisher.loaded = rendered, {name: sha(t) for name, t in rendered.items()}
        self._publish()

    def _publish(self) -> None:
        """Publish what this watch wants and whether it runs (see `publisher`), on every target last reached: a
        target that went away does not silence the watch on the others."""
        self.publisher.publish(self.members or self.attached,
                               sorted(name for name, snap in self.snapshots.items() if snap.stale))

    def _failed(self, exc: NginxctlError, plan: Plan | None) -> None:
        """The desired config does not run: count it (`classify`), say why, retry (with backoff) or wait for the
        next change, and publish it as held, so `status` says what waits and why."""
        failure = classify(exc)
        if failure.remember and plan is not None:
            self.failed_desired = plan.desired
            self.failed_for_good = not failure.retry
        if failure.detach:
            self.members = None
        message = describe(exc)
        if self.held_since is None:
            self.held_since = self.burst_started or self.clock()
        lingering = exc.cause if isinstance(exc, FleetFailure) else exc
        if isinstance(lingering, GenerationsLingering):
            message = self._lingering(lingering, message)
        again = message == self.publisher.held   # the same failure as the last attempt: counted, said once
        self.metrics.reloads.labels(failure.result.value).inc()
        located = self._locate(exc, plan) if isinstance(exc, ConfigRejected) else []
        extra: dict[str, Any] = {"located": located} if located else {}
        if failure.retry:
            wait = failure.delay if failure.delay is not None else backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            if not again:
                self.log("reload", message, result=failure.result.value, retry_in=wait, **extra)
        else:
            self.retry_at = None
            self.burst_started = None
            self.log("reload", message, result=failure.result.value, **extra)
        if self.retirement is not None:
            self.retry_at = None   # the pass comes when the retirement is done
        self.publisher.hold(message)
        self._set_pending()
        self._publish()

    def _isolated_reasons(self) -> set[tuple[str, str]]:
        """How `merge` words the servers nginx refused (their `skip` line was logged when they were found)."""
        return {(group, f"nginx refuses {address}: {why}") for (group, address), why in self.isolated.items()}

    # -- lingering generations: retired a step at a time between passes ----------------------------------------

    def _pending_seconds(self) -> float:
        """`nginxctl_pending_seconds`: how long the oldest change not applied yet has waited (0: none waits)."""
        marks = [t for t in (self.held_since, self.burst_started, self.debounce.first) if t is not None]
        return max(0.0, self.clock() - min(marks)) if marks else 0.0

    def _observe_generations(self) -> None:
        """The lingering generations' count and memory on the first target, for the metrics (cheap: /proc)."""
        if not self.members:
            return
        try:
            state = reload_state(self.members[0].deployer.live, None, connections=False)
        except NginxctlError:
            return
        self.metrics.lingering.set(len(state.generations))
        self.metrics.lingering_memory_limit.set(self.options.max_memory or 0)
        self.metrics.lingering_memory.set(state.lingering_memory or 0)

    def _lingering(self, exc: GenerationsLingering, message: str) -> str:
        """A reload refused past the limits: start retiring the oldest generation (--retire-rate), or with
        --retire-rate 0 say loudly what the change waits for. Returns what `status` shows as held."""
        oldest = exc.generations[0] if exc.generations else None
        held = self.clock() - (self.held_since or self.clock())
        if oldest is None:
            return message
        what = (f"generation 1 of {exc.count} (workers {', '.join(map(str, oldest.pids))}) holds "
                f"{'an unknown number of' if oldest.connections is None else oldest.connections} connection(s)")
        if not self.options.retire_rate:
            now = self.clock()
            said = f"{what}; past {self._limits(exc)} and --retire-rate 0: the change waits until they close"
            if self.wait_reported is None or now - self.wait_reported >= WAIT_REPORT:
                self.wait_reported = now
                self.log("wait", f"change held for {held:.0f}s: {said}", generation_pids=oldest.pids,
                         connections=oldest.connections, waited=round(held, 1), lingering=exc.count,
                         memory_bytes=exc.memory, level="warning")
            return f"reload deferred: {said}"
        if self.retirement is None:
            members = self.members or []
            member = next((m for m in members if m.deployer.live.name == exc.target),
                          members[0] if members else None)
            if member is None:
                return message
            try:
                self.retirement = Retirement(member.deployer.live, oldest, self.options.retire_rate, self.clock,
                                             member.deployer.known_configs())
            except NginxctlError as cannot:
                self.log("retire", f"cannot retire the oldest generation: {cannot}; the change waits for it to "
                         "leave", level="warning")
                return f"{message}; cannot retire the oldest generation: {cannot}"
            seconds = retire_seconds(oldest.connections, self.options.retire_rate)
            self.retire_due = self.clock()
            self.retire_reported = self.clock()
            self.metrics.retiring.set(1)
            self.log("retire", f"retiring the oldest generation, past {self._limits(exc)}: {what}; closing them at "
                     f"{self.options.retire_rate:g}/s" + (f" (about {seconds:.1f}s)" if seconds is not None else "")
                     + ", then reloading", generation_pids=oldest.pids, connections=oldest.connections,
                     rate=self.options.retire_rate, reason=exc.reason, lingering=exc.count, memory_bytes=exc.memory)
        return (f"{message}; retiring the oldest generation (workers {', '.join(map(str, oldest.pids))}) at "
                f"{self.options.retire_rate:g}/s")

    def _limits(self, exc: GenerationsLingering) -> str:
        if exc.reason == "memory" and exc.max_memory is not None:
            return (f"--max-lingering-memory {exc.max_memory / (1 << 20):.0f} MiB (they hold "
                    f"{(exc.memory or 0) / (1 << 20):.1f} MiB)")
        return f"--max-generations {exc.limit} ({exc.count} linger)"

    def _retire_step(self) -> None:
        """One step of the retirement in progress (bounded: what the pace allows now); the pass that reloads
        comes when the generation is gone."""
        retirement = self.retirement
        assert retirement is not None
        self.metrics.beat()
        eof, reset = retirement.closed, retirement.resets
        try:
            done = retirement.step()
        except (NginxctlError, OSError) as exc:
            self.log("retire", f"retirement stopped: {exc}; retrying the change", level="warning")
            self._end_retirement()
            self.retry_at = self.clock()
            return
        self.metrics.retired.labels("eof").inc(retirement.closed - eof)
        self.metrics.retired.labels("reset").inc(retirement.resets - reset)
        now = self.clock()
        if done:
            self.log("retire", f"{retirement.describe().replace('retiring', 'retired')}; its workers have left, "
                     "reloading", closed=retirement.closed, resets=retirement.resets,
                     seconds=round(now - retirement.started, 3))
            self._end_retirement()
            self.retry_at = now
            self._observe_generations()
            return
        if now > retirement.deadline:
            self.log("retire", f"{retirement.describe()}: not gone by its deadline; trying again",
                     level="warning")
            self._end_retirement()
            self.retry_at = now
            return
        if now - self.retire_reported >= RETIRE_REPORT:
            self.retire_reported = now
            self.log("retire", retirement.describe(), closed=retirement.closed, resets=retirement.resets,
                     left=retirement.left)
            self._observe_generations()
        self.retire_due = retirement.next_at()

    def _end_retirement(self) -> None:
        if self.retirement is not None:
            self.retirement.close()
        self.retirement = None
        self.retire_due = None
        self.metrics.retiring.set(0)

    def _report_skipped(self, merged: Merged) -> None:
        counts: dict[str, int] = {}
        for skip in merged.skipped:
            counts[skip.source] = counts.get(skip.source, 0) + 1
            key = (skip.source, skip.origin, skip.reason)
            if key not in self.skipped_seen and (skip.group, skip.reason) not in self._isolated_reasons():
                self.skipped_seen.add(key)
                self.log("skip", f"{skip.source} backend {skip.origin} skipped: {skip.reason}", source=skip.source,
                         origin=skip.origin, group=skip.group)
        for source in ("docker", "etcd"):
            self.metrics.skipped.labels(source).set(counts.get(source, 0))
