"""The watch rebalances a group by itself (its `rebalance:`): once the group's membership (its up primary
servers in the config the targets run: inventory edits, discovery, health take-outs and put-backs) has been
stable for `after`, it runs the one-shot command's engine (`rebalance.Rebalancer`) on each target in turn.

The loop owns the timing, as for a retirement (`retiring`): it calls `turn()` when `due` has come, and a step
does what the pace allows now (at most one count and one close, and the overlay reloads they call for) and
returns, so that sources, health checks and /healthz go on meanwhile; the change lock is held for each overlay
reload only.

A new change cancels the run and starts the group's timer again. A pass that reloads a target running the
overlay replaces the overlay in that same reload (nothing waits for the run: a health take-out reloads at once),
and `replacing` keeps the overlay out of the history as the engine does; a pass that fails (the change held)
removes it. Until then the overlay is runtime state: `normal_view` reads it as the normal config it overlays, so
a pass never calls it drift nor puts the normal config back over it, and its reloads count toward the limits on
lingering generations (the first of a run is refused past them: the run starts again after `after`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from ..apply import Deployer
from ..errors import GenerationsLingering, NginxctlError, RebalanceTimeout
from ..fleet import Member
from ..history import sha
from ..inventory import Inventory
from ..inventory.model import Group
from ..nginxtext import parse_upstreams
from ..rebalance import Options, Progress, Rebalancer, Result
from .log import DecisionLog, Logged
from .metrics import Metrics

PROGRESS_REPORT = 5.0   # a `rebalance` progress line at most this often
BUSY_AGAIN = 0.5        # a run due while a change is on its way: looked at again this much later
MIN_TIMEOUT = 600.0     # a run gives up after this, or three times its plan at the rate if longer

Observed = dict[str, tuple[str | None, str | None, str | None]]   # target -> (loaded hash, its text, file hash)
Engine = Callable[[Deployer, str, Group, Options, Callable[[Progress], None]], Rebalancer]


def _engine(deployer: Deployer, name: str, group: Group, options: Options,
            on_step: Callable[[Progress], None]) -> Rebalancer:
    return Rebalancer(deployer, name, group, options, on_step=on_step, by_watch=True)


class Rebalancing:
    """A timer per group whose membership changed, and the one run in progress (one group, one target at a
    time). `make` builds a run's engine (tests give theirs a simulated kernel)."""

    def __init__(self, log: DecisionLog, metrics: Metrics, clock: Callable[[], float], make: Engine = _engine) -> None:
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.make = make
        self.settings: dict[str, Group] = {}                        # the groups with `rebalance:`
        self.membership: dict[str, frozenset[tuple[str, int]]] = {}  # their up primaries (address, weight)
        self.timers: dict[str, float] = {}                          # group -> when its run is due
        self.current: str | None = None                             # the group being rebalanced
        self.queue: list[Member] = []                               # its targets still to do
        self.run: Rebalancer | None = None                          # the run on one of them
        self.target: str | None = None
        self.counted = 0                                            # the run's moves counted in the metric
        self.progress: Progress | None = None
        self.reported = 0.0
        self.due: float | None = None

    # -- what the loop tells it --------------------------------------------------------------------------------

    def observe(self, inventory: Inventory, rendered: str, *, changed: bool) -> None:
        """After a pass verified `rendered` (the first target's config) on every target; `changed`: it reloaded
        them, which replaced any overlay: the run in progress is cancelled."""
        if changed and self.current is not None:
            self._cancel("a change was applied (its reload replaced the overlay)")
        self.settings = {g.name: g for g in inventory.upstreams if g.rebalance is not None}
        if self.current is not None and self.current not in self.settings:
            self._cancel("rebalance: is no longer set for the group")
        upstreams = parse_upstreams(rendered)
        for name in set(self.membership) - set(self.settings):
            del self.membership[name]
            self.timers.pop(name, None)
        now = self.clock()
        for name, group in self.settings.items():
            assert group.rebalance is not None
            up = frozenset((s.address, s.weight) for s in upstreams.get(name, ()) if s.state == "up")
            if self.membership.get(name) != up:
                self.membership[name] = up
                self.timers[name] = now + group.rebalance.after.seconds
                self.metrics.rebalance_moves.labels(name)
        self._schedule()

    def held(self, why: str) -> None:
        """The watch's desired config does not run (a failed pass): a run in progress stops, its overlay removed."""
        if self.current is not None:
            self._cancel(f"the watch's change is held ({why})")

    def end(self) -> None:
        if self.current is not None:
            self._cancel("the watch stops")

    def normal_view(self, members: Sequence[Member], observed: Observed) -> Observed:
        """What each target runs, this run's overlay read as the normal config it overlays (runtime state, like a
        health decision: never drift, never reverted by a pass)."""
        run = self.run
        if run is None or run.overlay.down is None or run.overlay.normal is None:
            return observed
        normal = run.overlay.normal
        for m in members:
            if m.deployer is run.deployer and m.name in observed:
                loaded, text, installed = observed[m.name]
                if loaded == run.overlay.expected:
                    loaded, text = sha(normal), normal
                observed[m.name] = (loaded, text, sha(normal) if installed == run.overlay.expected else installed)
        return observed

    @contextlib.contextmanager
    def replacing(self, behind: Sequence[Member], rendered: Mapping[str, str]) -> Iterator[None]:
        """A pass reloading the target that runs the overlay: the overlay stays out of the history (the engine
        keeps it out), the pass's config is recorded as an apply records it."""
        run = self.run
        over = [m for m in behind if run is not None and run.overlay.down is not None and m.deployer is run.deployer]
        for m in over:
            m.deployer.record_history = False
        try:
            yield
            for m in over:
                history = m.deployer.history
                history.write(history.record(rendered[m.name], history.entries()))
        finally:
            for m in over:
                m.deployer.record_history = True

    # -- a turn of the loop ------------------------------------------------------------------------------------

    def turn(self, members: Sequence[Member], *, busy: bool) -> None:
        """`due` has come: a step of the run in progress, or the next target of its group, or the group whose
        timer ended (none starts while a change is on its way, `busy`: it would cancel the run at once)."""
        now = self.clock()
        if self.run is not None:
            self._step()
        elif busy or not members:   # (no target reached: the pass that reaches them again comes first)
            self.due = now + BUSY_AGAIN
            return
        elif self.queue:
            self._begin(self.queue.pop(0))
        else:
            ready = sorted((at, name) for name, at in self.timers.items() if at <= now)
            if ready:
                self.current = ready[0][1]
                del self.timers[self.current]
                self.queue = list(members)
                self._begin(self.queue.pop(0))
        self._schedule()

    def _schedule(self) -> None:
        if self.run is not None:
            self.due = self.run.due
        elif self.queue:
            self.due = self.clock()
        else:
            self.due = min(self.timers.values(), default=None)

    def _begin(self, member: Member) -> None:
        assert self.current is not None
        group = self.settings[self.current]
        setting = group.rebalance
        assert setting is not None
        run = self.make(member.deployer, group.name, group, Options(rate=setting.rate, tolerance=setting.tolerance),
                        self._on_progress)
        self.target, self.counted, self.progress, self.reported = member.name, 0, None, self.clock()
        where = f"{group.name} on {member.name}"
        try:
            result = run.start()
        except GenerationsLingering as exc:
            with contextlib.suppress(NginxctlError, OSError):
                run.stop()
            self._over()
            self.timers[group.name] = self.clock() + setting.after.seconds
            self.log(Logged.REBALANCE, f"rebalance of {where} not started: {exc}; trying again in {setting.after}",
                     phase="cancelled", group=group.name, target=member.name, reason="lingering generations")
            return
        except (NginxctlError, OSError) as exc:
            self._failed(run, exc)
            return
        if result is not None:
            self._done(result)
            return
        self.run = run
        run.options.timeout = max(MIN_TIMEOUT, 3 * run.minimum / setting.rate)
        aim = (f"until every up primary server is within {setting.tolerance:.0%} of its fair share"
               if run.method != "hash consistent" else "whose key the ring now maps to another server")
        self.log(Logged.REBALANCE, f"rebalancing {where}: its membership has been stable for {setting.after}; moving "
                 f"{run.minimum} connection(s) at {setting.rate:g}/s {aim}", phase="start", group=group.name,
                 target=member.name, method=run.method, to_move=run.minimum, counts=run.before, rate=setting.rate,
                 tolerance=setting.tolerance)

    def _step(self) -> None:
        run = self.run
        assert run is not None
        try:
            result = run.step()
        except (NginxctlError, OSError) as exc:
            self._failed(run, exc)
            return
        self._count(run)
        if result is not None:
            self._done(result)
            return
        now = self.clock()
        if self.progress is not None and now - self.reported >= PROGRESS_REPORT:
            self.reported = now
            p = self.progress
            self.log(Logged.REBALANCE, f"rebalancing {run.name} on {self.target}: {p.moved} of {p.to_move} moved",
                     phase="progress", group=run.name, target=self.target, moved=p.moved, to_move=p.to_move,
                     counts=p.counts)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress

    def _count(self, run: Rebalancer) -> None:
        if run.moved > self.counted:
            self.metrics.rebalance_moves.labels(run.name).inc(run.moved - self.counted)
            self.counted = run.moved

    def _done(self, result: Result) -> None:
        if self.run is not None:
            self._count(self.run)
        self.run = None
        what = f"{result.moved} connection(s) moved (the minimum: {result.minimum})" if result.moved or \
            result.minimum else f"nothing to move ({'; '.join(result.notes) or 'within tolerance'})"
        self.log(Logged.REBALANCE, f"rebalanced {result.group} on {self.target}: {what}", phase="done",
                 group=result.group, target=self.target, moved=result.moved, minimum=result.minimum,
                 before=result.before, after=result.after, seconds=result.seconds, reloads=result.reloads)
        if not self.queue:
            self._over()

    def _failed(self, run: Rebalancer, exc: BaseException) -> None:
        """The run cannot go on: its overlay removed, said; not tried again before the membership changes."""
        self._count(run)
        removed = ""
        try:
            run.stop()
        except (NginxctlError, OSError) as again:
            removed = f"; removing its overlay failed too ({again}): the next change reloads the normal config"
        message = exc.reason if isinstance(exc, RebalanceTimeout) else str(exc).splitlines()[0]
        self.log(Logged.REBALANCE, f"rebalance of {run.name} on {self.target} stopped: {message}; {run.moved} "
                 f"connection(s) moved{removed}", phase="failed", group=run.name, target=self.target,
                 moved=run.moved, level="warning")
        self._over()

    def _cancel(self, reason: str) -> None:
        name, run = self.current, self.run
        assert name is not None
        moved, said, warn = 0, "", {}
        if run is not None:
            self._count(run)
            moved = run.moved
            try:
                replaced = run.overlay.down is not None and not run.overlay.runs()
                had = run.overlay.down is not None
                run.stop()
                said = "; the reload replaced its overlay" if replaced else "; its overlay removed" if had else ""
            except (NginxctlError, OSError) as exc:
                said = f"; removing its overlay failed ({exc}): the next change reloads the normal config"
                warn = {"level": "warning"}
        self._over()
        group = self.settings.get(name)
        if group is not None and group.rebalance is not None:
            self.timers[name] = self.clock() + group.rebalance.after.seconds
        self.log(Logged.REBALANCE, f"rebalance of {name} cancelled: {reason}; {moved} connection(s) moved{said}",
                 phase="cancelled", group=name, target=self.target, moved=moved, reason=reason, **warn)

    def _over(self) -> None:
        self.run, self.current, self.queue = None, None, []
        self._schedule()
