"""The reconcile loop of `nginxctl watch`.

Level-triggered: an event (the inventory file, a source's snapshot, the target restarting) only says "look again".
After the quiet period (never later than max-wait after the first change) the loop renders the desired config from
the last good inventory and the latest snapshots, compares it with what the target has loaded, and applies the
difference through the same `Deployer` as `nginxctl apply` (test, install, reload, verify, restore). A pass that
cannot finish (lingering generations, the target or the engine gone, a reload that did not take) stays pending,
retried with backoff: "pending" is simply "desired differs from loaded". One thread; sources only enqueue.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import nginx
from ..capacity import Machine
from ..desired import RenderTarget, render_target, target_of
from ..errors import ConfigRejected, FleetFailure, GenerationsLingering, NginxctlError
from ..fleet import Member, rollout
from ..history import History, sha
from ..inventory import Inventory, check_capacity
from ..inventoryfile import read_inventory
from ..published import Published
from ..view import pending
from .debounce import Debouncer
from .decide import Action, PassInput, Plan, classify, decide, describe, drift_lines, locate
from .hafleet import HAFleet
from .health import Checker
from .healthstate import HealthState
from .keepalived import Companions
from .leftout import LeftOut
from .log import DecisionLog, Logged
from .merge import Merged, merge
from .metrics import IDLE_BEAT, Metrics
from .model import Event, EventKind, Snapshot, WatchOptions, backoff
from .poolmetrics import PoolMetrics
from .publisher import HEALTH_HEARTBEAT, Publisher
from .rebalancing import Rebalancing
from .reread import reread
from .retiring import Generations
from .sources import DockerSource, InventoryFile
from .sourceset import SourceSet, ours
from .systemd import notify, watchdog_interval
from .vipwatch import VipWatch

if TYPE_CHECKING:
    import docker

Connect = Callable[[str | None], "docker.DockerClient"]

LOCK_RELEASE_WAIT = 10.0   # seconds a stopping watch waits for its locks' removal
MAX_ISOLATED_PER_PASS = 16   # discovered servers nginx refuses, found one rejection at a time


class Controller:
    """One controller for one target. `run()` blocks until `stop()` and returns 0."""

    def __init__(self, options: WatchOptions, *, connect: Connect, log: DecisionLog, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.connect = connect
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()   # put() is safe in a signal handler
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
        self.sources = SourceSet(self.events, log, metrics)
        self._locks: list[nginx.TargetLock] = []
        self.machine: Machine | None = None
        self.health = HealthState(options.max_wait, log, metrics, clock)
        self.heartbeat_due: float | None = None
        self.watchdog = watchdog_interval()
        self.watchdog_due: float | None = None
        self.left_out = LeftOut(log, metrics)
        self.resync_at: float | None = None
        self.publisher = Publisher(options.inventory, options.resync)
        self.attached: list[Member] = []   # the targets last reached: published to even while one is unreachable
        self.render_targets: list[RenderTarget] = []
        self.loaded: dict[str, tuple[str | None, str | None]] = {}   # target -> (hash, text) this pass read
        self.reloaded = False
        self.waiting = False   # a `wait` line was logged: sources that never answered, not logged per retry
        self.generations = Generations(options, log, metrics, clock)
        self.rebalancing = Rebalancing(log, metrics, clock)   # `rebalance:` groups, a step per turn
        self.takeouts: set[str] = set()   # health take-outs seen and not applied yet: never held by the limits
        self.held_since: float | None = None   # the desired config has not run since (a failed or deferred pass)
        self.ha = HAFleet(log)   # the members reached and held; with ha:, standby first and one away not holding back
        self.companions = Companions(log, options.templates, options.inventory.parent)   # ha: keepalived beside each
        metrics.pending_seconds.set_function(self._pending_seconds)

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        self.events.put(Event(EventKind.STOP, detail=reason))

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
        names = [m.deployer.live.name for m in self.members]
        publish = self.events.put
        self.sources.add(InventoryFile(str(self.options.inventory), publish))
        self.sources.add(DockerSource(lambda: self.connect(first.target.docker_host), publish,
                                      set(names) | self.ha.containers, local_engine=first.target.docker_host is None))
        self.sources.follow_etcd(self.inventory, self.snapshots)

        # idle (no thread wakes) until a group has a health_check
        self.health.checker = Checker(lambda: self.events.put(Event(EventKind.HEALTH)), self.health.on_check)
        # a restarted watch starts from the health decisions the previous one published: a server that was
        # failing stays out until its checks pass, instead of going back into rotation for a few seconds
        first_member = self.members[0].deployer
        self.health.checker.seed((Published(first_member.live, first_member.history.base).health() or {})
                                 .get("servers", []))
        self.sources.add(self.health.checker)
        if self.metrics.served:
            self.sources.add(PoolMetrics(self.metrics, self.options.resync, self._pool_view))
        self.sources.add(VipWatch(self.metrics, self.log, self.connect, lambda: self.inventory))  # ha: off the loop
        self.sources.start()
        # the limits on lingering generations are fields of the line (said in text logs too)
        self.log(Logged.START, f"watching {self.options.inventory} for target{'s' if len(names) > 1 else ''} "
                 f"{', '.join(names)}", quiet_period=self.options.quiet_period, max_wait=self.options.max_wait,
                 max_generations=self.options.max_generations, max_lingering_memory=self.options.max_memory,
                 retire_rate=self.options.retire_rate, sources=self.sources.names())

    def _pool_view(self) -> list[tuple[nginx.LiveNginx, str | None, History]]:
        """Each target, the config it runs as this loop last knew it, its history (for the pool metrics' thread)."""
        members, loaded = self.members or [], self.loaded
        return [(m.deployer.live, loaded.get(m.name, (None, None))[1], m.deployer.history) for m in members]

    def close(self) -> None:
        self.generations.end()
        self.rebalancing.end()   # its overlay removed: the target keeps the normal config
        if self.health.checking:
            self._write_health(stopped=True)
        self.publisher.stopped(self.members or [])
        self.sources.stop()
        if left := nginx.release_all(self._locks, LOCK_RELEASE_WAIT):   # a slow engine: the next nginxctl takes them
            self.log(Logged.STOP, f"the locks on {', '.join(left)} were not removed within {LOCK_RELEASE_WAIT:g}s (a "
                     "slow Docker engine): the next nginxctl takes them over", level="warning", targets=left)
        if self.client is not None:
            self.client.close()
        self.metrics.running = False

    def _attach(self) -> list[Member]:
        """The targets, each reached now, and what rendering needs of each (read once per attach). Raises
        EnvironmentProblem naming an unreachable one, UsageError."""
        members = self._reach()
        self._locks += self.ha.hold(members, self.options.lock_owner)
        self.render_targets = [target_of(m.name, m.deployer) for m in members]
        self.attached = members
        return members

    def _reach(self) -> list[Member]:
        assert self.inventory is not None
        return self.ha.reach(self.options, self.inventory, self.client, self.connect)

    def run(self) -> int:
        """Start, apply, then reconcile on every change until stopped (`stop()`, which the signal handlers of
        `service` call). Returns the exit code (0)."""
        try:
            self.start()
            # Ready once the loop runs, not after a first apply: a discovery source down at start (the
            # loop waits for it) must not look like a failed start to systemd and become a restart loop.
            notify("READY=1")
            if self.watchdog is not None:
                self.watchdog_due = self.clock()
            self.sources.first_snapshots(self.snapshots, self.clock)
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
                if self.generations.due is not None and now >= self.generations.due:
                    if self.generations.step(self.members or []):
                        self.retry_at = self.clock()
                    now = self.clock()
                if self.rebalancing.due is not None and now >= self.rebalancing.due:  # starts none while a change waits
                    busy = self.debounce.pending or self.publisher.held is not None
                    self.rebalancing.turn(self.members or [], busy=busy)
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
        pending = self.debounce.changes + (self.retry_at is not None) + (self.health.due is not None)
        if pending:
            self.log(Logged.STOP, f"{detail}: stopping; {pending} change(s) seen were not applied; the target keeps "
                     "the config it runs", not_applied=pending, level="warning")
        else:
            self.log(Logged.STOP, f"{detail}: stopping; the target keeps the config it runs")

    def _next_event(self) -> Event | None:
        deadlines = [d for d in (self.debounce.deadline(), self.retry_at, self.health.due, self.resync_at,
                                 self.heartbeat_due, self.watchdog_due, self.generations.due, self.rebalancing.due)
                     if d is not None]
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
            self.log(Logged.TARGET, f"{event.detail}: checking it runs the desired config")
            self.members = None  # attach again: a restarted container has a new master
            self.debounce.change(now)
        elif event.kind is EventKind.HEALTH:
            if self.inventory is not None and self.health.changed(self.inventory, self.snapshots, now):
                self.debounce.change(now)
            self._write_health()
        elif event.kind is EventKind.SNAPSHOT and event.snapshot is not None:
            previous = self.sources.take(self.snapshots, event.snapshot)
            if previous is None or ours(self.inventory, previous) != ours(self.inventory, event.snapshot):
                self.debounce.change(now)
        self._set_pending()

    def _set_pending(self) -> None:
        """Changes seen and not applied: those in the quiet period, plus 1 while the desired config does not run
        (a retry scheduled, or a change held back: deferred, rejected, restored)."""
        held = self.retry_at is not None or self.publisher.held is not None
        self.metrics.pending.set(self.debounce.changes + (1 if held else 0))

    def _write_health(self, stopped: bool = False) -> None:
        """Publish health state beside every target's config, for `nginxctl status` (`stopped`: this watch is
        ending, nothing checks any more)."""
        self.heartbeat_due = None
        if not self.members or not self.health.checking:
            return
        self.publisher.health(self.members, self.health.rows(), stopped=stopped)
        if not stopped:
            self.heartbeat_due = self.clock() + HEALTH_HEARTBEAT

    # -- one reconcile pass ------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the inventory file again; an invalid one is logged and the last good one kept."""
        self.inventory_text, inventory = reread(self.options.inventory, self.inventory_text, self.inventory,
                                                self.machine, self.log, self.metrics)
        if inventory is not None:
            self.inventory = inventory
            self.sources.follow_etcd(inventory, self.snapshots)

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
                    if self.left_out.isolate(exc, plan):
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
        if self.members is None or self.ha.away:   # with ha:, one away is looked for again at every pass
            try:
                self.members = self._attach()
            except NginxctlError:
                self._publish_wanted()  # what waits for the unreachable target is still said on the others
                raise
        observed = self.rebalancing.normal_view(self.members, {m.name: m.deployer.observed() for m in self.members})
        self.loaded = {name: (h, text) for name, (h, text, _) in observed.items()}
        self.left_out.prune(self.snapshots)
        plan = decide(PassInput(reason, self.inventory, self.snapshots, self.health.down, self.left_out.refused,
                                {name: h for name, (h, _) in self.loaded.items()}, self.verified,
                                self.failed_desired, self.retry_at is not None and self.clock() < self.retry_at,
                                self.failed_for_good, {name: f for name, (_, _, f) in observed.items()},
                                self.ha.take_returned(), self.companions.installed(self.members, self.inventory)),
                      self._render, self.companions.render)
        self.generations.observe(self.members)
        if plan.action is not Action.WAIT and self.waiting:  # the source answered: no longer held for it
            self.waiting = False
            self.publisher.release()
        if plan.merged is not None:
            self.health.check_targets(plan.merged)
            self.left_out.report(plan.merged)
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
            merged = merge(self.inventory, self.snapshots, self.health.down, self.left_out.refused)
            self.publisher.rendered = self._render(merged.inventory)

    def _render(self, inv: Inventory) -> dict[str, str]:
        return {t.name: render_target(inv, t, self.options.templates, self.options.inventory.parent)
                for t in self.render_targets}

    def _apply(self, plan: Plan) -> None:
        """Roll the plan's config to the targets behind (drift said first). Raises what `rollout` raises."""
        assert self.members is not None and self.inventory is not None
        for message, fields in drift_lines(plan, self.verified):
            self.log(Logged.DRIFT, message, **fields, level="warning")
        first = self.loaded[self.members[0].name][0]
        behind = self.ha.order([m for m in self.members if m.name in plan.behind], self.inventory)
        assert plan.desired is not None
        if self.publisher.held is None:  # a retry of a held change is not announced again
            self.log(Logged.APPLY, plan.reason, desired=plan.desired[:12], loaded=first[:12] if first else None,
                     targets=[m.name for m in behind] if len(self.members) > 1 or self.ha.away else None)
        for m in behind:  # a health take-out is never held back by the limits on lingering generations
            m.deployer.waive_limits = bool(self.takeouts)
        with self.rebalancing.replacing(behind, plan.rendered):   # a reload that replaces a rebalance's overlay
            result = rollout(behind, dict(plan.rendered), reload=plan.reload, dry_run=False, progress=lambda _: None,
                             keepalived=self.companions.checked(behind, plan.keepalived, self.inventory))
        self.companions.said(result)
        self.reloaded = any(o.reloaded for _, o in result.outcomes)

    def _carried_out(self, plan: Plan, reason: str, began: float) -> None:
        if plan.action is Action.WAIT:
            # nothing is known of these backends yet: rendering now would empty those groups
            wait = backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            if not self.waiting:  # once, not once per retry
                self.waiting = True
                self.log(Logged.WAIT, plan.reason, retry_in=wait)
            self.publisher.hold(plan.reason)
            self.publisher.rendered = {}  # nothing is decided while a source never answered: status renders itself
            self._publish()
            return
        self.waiting = False
        if plan.action is Action.HOLD:
            self._publish()
            return
        assert plan.merged is not None and self.members is not None
        self._succeeded(plan.merged, dict(plan.rendered), self.loaded[self.members[0].name], changed=plan.action is
                        Action.APPLY and self.reloaded, reason=reason if self.reloaded or plan.action is not
                        Action.APPLY else f"{reason}: nginx not reloaded, keepalived.conf applied", began=began)

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
            self.generations.observe(self.members)   # the generation this reload made old counts from now
            if self.burst_started is not None:
                self.metrics.change_to_reload.observe(max(0.0, now - self.burst_started))
            self.log(Logged.RELOAD, f"reloaded and verified ({reason})", result="ok", **what,
                     health_down=self.health.change[0], health_back=self.health.change[1], servers=count,
                     seconds=round(now - began, 3), sha256=desired[:12],
                     since_first_change=None if self.burst_started is None else round(now - self.burst_started, 3))
        elif reason != "resync" or self.verified != desired:
            self.log(Logged.IN_SYNC, f"in sync: the target runs the desired config ({reason})", sha256=desired[:12],
                     servers=count)
        self.verified = desired
        self.failed_desired = None
        self.takeouts.clear()
        self.held_since = self.generations.wait_reported = None
        self.health.change = ([], [])
        if self.health.checking:
            self._write_health()
        self.retry_at, self.failures = None, 0
        self.burst_started = None
        self.failed_for_good = False
        self.publisher.release()
        self._set_pending()
        self.loaded = {name: (sha(t), t) for name, t in rendered.items()}   # what runs now (the pool gauges read it)
        self.publisher.rendered, self.publisher.loaded = rendered, {name: h for name, (h, _) in self.loaded.items()}
        self._publish()
        self.rebalancing.observe(merged.inventory, rendered[self.members[0].name], changed=changed)

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
            self.failed_desired = plan.attempt
            self.failed_for_good = not failure.retry
        if failure.detach:
            self.members = None
        message = describe(exc)
        if self.held_since is None:
            self.held_since = self.burst_started or self.clock()
        lingering = exc.cause if isinstance(exc, FleetFailure) else exc
        if isinstance(lingering, GenerationsLingering):
            message = self.generations.refused(lingering, message, self.members or [], self.clock() - self.held_since)
        again = message == self.publisher.held   # the same failure as the last attempt: counted, said once
        self.metrics.reloads.labels(failure.result.value).inc()
        located = locate(exc, plan) if isinstance(exc, ConfigRejected) else []
        extra: dict[str, Any] = {"located": located} if located else {}
        if failure.retry:
            wait = failure.delay if failure.delay is not None else backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            if not again:
                self.log(Logged.RELOAD, message, result=failure.result.value, retry_in=wait, **extra)
        else:
            self.retry_at = None
            self.burst_started = None
            self.log(Logged.RELOAD, message, result=failure.result.value, **extra)
        if self.generations.retiring:
            self.retry_at = None   # the pass comes when the retirement is done
        self.publisher.hold(message)
        self._set_pending()
        self._publish()
        self.rebalancing.held(message)

    def _pending_seconds(self) -> float:
        """`nginxctl_pending_seconds`: how long the oldest change not applied yet has waited (0: none waits)."""
        marks = [t for t in (self.held_since, self.burst_started, self.debounce.first) if t is not None]
        return max(0.0, self.clock() - min(marks)) if marks else 0.0
