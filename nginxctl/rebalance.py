"""`rebalance`: move a group's long connections, paced, until every up primary server holds its fair share.

Works on one target (a `Deployer`) and the config nginx has loaded; reads no inventory file (the caller
passes the group's balancing method). The steps:

1. Count (`closing.Sockets`: sock_diag in nginx's namespace, per worker generation, with idleness) and plan
   (`share.plan`: the fewest closes that bring every server within tolerance; `hash ... consistent`: the
   connections whose key the ring now sends elsewhere, `hashring`).
2. Steer. The new generation's balancer does not see the connections old generations hold, and a reload
   restarts `least_conn` counts, so closing alone cannot choose where a client lands. For the share
   methods a temporary *overlay* is loaded (`overlay`): the group's config with every server that must not
   receive marked `down`, published, kept out of the history. A consistent hash needs none: the ring decides.
3. Close, at most `rate` per second with jitter: nginx's upstream-side socket is destroyed, so nginx closes
   the client side with a FIN (the client reads EOF and reconnects at once). Old generations first, then
   the most idle (tcp_info last send/receive). Never more than a window of closed connections that have
   not come back: clients that do not reconnect stop the closing, not just the clock.
4. Recount every RECOUNT seconds: a receiver that has what it needed is closed to new connections too;
   when the plan is done and the clients are back, the counts say whether every server is within
   tolerance, else a new plan from them.
5. Put the normal config back (the one nginx ran before, byte for byte), verified. On timeout (exit 1),
   Ctrl-C (130) or any error, the overlay is removed first.

One engine, two drivers: `start()` then `step()` whenever `due` has come does what the pace allows and
returns at once; the one-shot command's `run()` sleeps between the steps, `watch` runs one per turn of its
loop (`controller.rebalancing`), so that nothing it does waits behind a rebalance.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .apply import Deployer
from .closing import KernelSockets, Sockets, held_key, order
from .errors import EnvironmentProblem, Interrupted, NginxctlError, RebalanceTimeout, UsageError
from .hashring import Peer, Ring, key_parts
from .history import sha
from .inventory import grammar as gr
from .inventory.model import Group
from .nginxtext import parse_upstreams
from .overlay import Overlay
from .pool import Held, Pool, ServerPool
from .share import MovePlan, converged, plan

RECOUNT = 0.5          # seconds between two counts while moving
MIN_WINDOW = 5         # closed connections allowed to be on their way back at once (at least)
SETTLE = 5.0           # seconds after the last close when a client still away is taken to have left
SHARE_METHODS = ("round_robin", "least_conn", "random", "random_two_least_conn")

Step = Callable[["Progress"], None]


@dataclass
class Progress:
    """Where a rebalance is: moved of to move, and the counts now."""

    moved: int
    to_move: int
    counts: dict[str, int]
    note: str = ""


@dataclass
class Options:
    rate: float = 20.0          # closes per second
    tolerance: float = 0.10     # of the fair share
    timeout: float = 600.0
    dry_run: bool = False


def parse_rate(text: str) -> float:
    """`--rate`: `20` or `20/s`. Raises UsageError for anything else or a rate of 0 or less."""
    try:
        return gr.parse_rate(text)
    except gr.Invalid as exc:
        raise UsageError(f"--rate: {exc}") from None


def parse_tolerance(text: str) -> float:
    """`--tolerance`: `10%` or `10` (the same): a fraction of the fair share. Raises UsageError outside 0-100%."""
    try:
        return gr.parse_percent(text)
    except gr.Invalid as exc:
        raise UsageError(f"--tolerance: {exc}") from None


@dataclass
class Result:
    target: str
    group: str
    method: str
    moved: int
    minimum: int
    before: dict[str, int]
    after: dict[str, int]
    seconds: float
    dry_run: bool = False
    plan: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reloads: int = 0


def _known_groups(loaded: dict[str, Any], group: Group | None, name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(loaded), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (groups: {', '.join(sorted(loaded)) or 'none'})"
    return UsageError(f"no group {name!r} in the config nginx runs{hint}")


def check_method(group: Group | None, name: str) -> str:
    """The balancing method, or UsageError (exit 2) for a group rebalance cannot do: UDP, plain hash, a hash key
    nginxctl cannot compute for a held connection."""
    if group is None:
        return "round_robin"
    if group.protocol == "udp":
        raise UsageError(f"group {name!r} is UDP: rebalance moves TCP connections (UDP sessions end on their own "
                         "after proxy_timeout)")
    if group.balance == "hash" and not group.consistent:
        raise UsageError(f"group {name!r} balances by plain hash ({group.hash_key}): nginx remaps almost every key "
                         "when the servers change, so there is no fair share to restore and no small set to move; "
                         "add `consistent: true` to move only the misplaced connections")
    if group.balance == "hash":
        key_parts(str(group.hash_key))   # UnsupportedHashKey (exit 2): a variable nginxctl cannot compute
        return "hash consistent"
    return group.balance


@dataclass
class _Share:
    """A fair-share run between two steps: the plan in force and the counts it works from."""

    weights: dict[str, int]
    current: MovePlan
    counts: dict[str, int]
    candidates: dict[str, list[Held]]
    reference: int = 0                       # connections held when the plan in force was made
    takes: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    receivers: set[str] = field(default_factory=set)
    closed_since_count: int = 0
    last_close: float = 0.0
    next_close: float = 0.0
    next_count: float = 0.0

    def follow(self, current: MovePlan, counts: dict[str, int]) -> None:
        self.current, self.takes, self.receivers = current, dict(current.take), set(current.receivers)
        self.targets = {s: counts[s] + n for s, n in current.give.items()}
        self.reference = sum(counts.values())


@dataclass
class _Hash:
    """A consistent-hash run between two steps: the ring and the connections it sends elsewhere."""

    ring: Ring
    template: str
    misplaced: list[tuple[str, Held]]
    index: int = 0
    checked: float = 0.0
    last_close: float = 0.0


class Rebalancer:
    """One rebalance of one group on one target. `run()` blocks until it is done; `start()` then `step()` at
    `due` until one returns the Result is the same run a step at a time (the watch's loop). Both raise
    RebalanceTimeout (exit 1), UsageError, EnvironmentProblem, and what `Deployer.apply` raises; `run()` also
    Interrupted (130). `by_watch`: the run of the watch that controls the target (no one-owner check)."""

    def __init__(self, deployer: Deployer, name: str, group: Group | None, options: Options, *,
                 on_step: Step = lambda _: None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 by_watch: bool = False, sockets: Sockets | None = None) -> None:
        self.deployer, self.name, self.group, self.options = deployer, name, group, options
        self.on_step, self.clock, self.sleep = on_step, clock, sleep
        self.rng = rng or random.Random()
        self.by_watch = by_watch
        hashed = group is not None and group.balance == "hash"
        self.sockets = sockets or KernelSockets(deployer, name, hashed)
        self.overlay = Overlay(deployer, name, by_watch=by_watch)
        self.moved = 0
        self.minimum = 0
        self.method = ""
        self.began = 0.0
        self.due = 0.0                        # when the next step is worth doing
        self.before: dict[str, int] = {}
        self.notes: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self._share: _Share | None = None
        self._hash: _Hash | None = None

    @property
    def reloads(self) -> int:
        return self.overlay.reloads

    # -- reading ------------------------------------------------------------------------------------------

    def _pool(self, text: str) -> Pool:
        return self.sockets.pool(text)

    @staticmethod
    def _up(servers: list[ServerPool]) -> dict[str, int]:
        return {s.address: s.weight for s in servers if s.state == "up"}

    def _counts(self, pool: Pool) -> dict[str, int]:
        return {s.address: s.connections for s in pool.group(self.name) if s.state != "removed" or s.connections}

    # -- the run --------------------------------------------------------------------------------------------

    def run(self) -> Result:
        with _interrupts(self):
            try:
                result = self.start()
                while result is None:
                    self.sleep(max(0.0, self.due - self.clock()))
                    result = self.step()
            except Exception:
                # the error says what went wrong; an overlay that cannot be removed now shows in `status`
                with contextlib.suppress(NginxctlError):
                    self.overlay.remove()
                raise
            finally:
                self.sockets.close()
        return result

    def start(self) -> Result | None:
        """Count and plan; with something to move, load the overlay (the share methods) and return None: then
        `step()` from `due` on. The Result at once when there is nothing to move (or a dry run)."""
        self.began = self.clock()
        live = self.deployer.live
        _, loaded = self.deployer.loaded_config()
        if loaded is None:
            raise EnvironmentProblem(f"nginx in {live.name} runs a config nginxctl cannot identify",
                                     "run `nginxctl apply --reload` first, then rebalance")
        existing = self.overlay.published.overlay()
        if existing is not None and self.by_watch:
            self.overlay.unpublish()   # the watch owns the target: its own run's, or a stopped one's, left over
        elif existing is not None and not existing.get("stale"):
            raise EnvironmentProblem(f"another nginxctl {existing.get('by', 'rebalance')} (pid "
                                     f"{existing.get('pid')} on "
                                     f"{existing.get('host')}) is moving the connections of "
                                     f"{existing.get('group')!r} on {live.name}",
                                     "wait for it to finish, or stop it (Ctrl-C removes its overlay)")
        elif existing is not None and sha(loaded) != existing.get("normal_sha256"):
            raise EnvironmentProblem(f"nginx in {live.name} still runs the overlay of a rebalance that stopped "
                                     "without removing it", "`nginxctl apply --reload` puts the normal config back")
        upstreams = parse_upstreams(loaded)
        if self.name not in upstreams:
            raise _known_groups(upstreams, self.group, self.name)
        self.method = check_method(self.group, self.name)
        self.overlay.normal = loaded
        up = {s.address: s for s in upstreams[self.name] if s.state == "up"}
        if len(up) <= 1:
            counts = {}
            with contextlib.suppress(EnvironmentProblem):
                counts = self._counts(self._pool(loaded))
            self.notes = [f"group {self.name!r} has {len(up)} up primary server: nothing to rebalance"]
            return self._result(counts, counts)
        pool = self._pool(loaded)
        if self.method == "hash consistent":
            return self._start_hash(pool, loaded)
        return self._start_share(pool, loaded)

    def step(self) -> Result | None:
        """What the pace allows now (at most one count and one close, and the overlay reloads they call for), then
        return: None until the run is done (the next step is due at `due`), then its Result."""
        result = self._step_hash() if self._hash is not None else self._step_share()
        if result is not None:
            self.sockets.close()
        return result

    def stop(self) -> None:
        """End the run here: remove the overlay if nginx still runs it (a config loaded meanwhile, such as the
        watch's own, is left as it is). Raises what `Deployer.apply` raises."""
        try:
            if self.overlay.down is not None and not self.overlay.runs():
                self.overlay.forget()
            else:
                self.overlay.remove()
        finally:
            self.sockets.close()

    def _result(self, before: dict[str, int], after: dict[str, int], minimum: int | None = None) -> Result:
        return Result(self.deployer.live.name, self.name, self.method, self.moved,
                      self.minimum if minimum is None else minimum, before, after, round(self.clock() - self.began, 3),
                      self.options.dry_run, self.rows, self.notes, self.reloads)

    @property
    def deadline(self) -> float:
        return self.began + self.options.timeout

    # -- consistent hash --------------------------------------------------------------------------------------

    def _misplaced(self, pool: Pool, ring: Ring, template: str) -> tuple[list[tuple[str, Held]], int]:
        """The held connections whose key the ring sends to another server, with the server holding each (old
        generations and idle first), and how many could not be told (no client-side socket paired: never
        guessed, never closed)."""
        misplaced: list[tuple[str, Held]] = []
        unknown = 0
        for server in pool.group(self.name):
            for held in server.held:
                key = held_key(template, held)
                if key is None:
                    unknown += 1
                    continue
                where = ring.lookup(key)
                if where is not None and where != server.address:
                    misplaced.append((server.address, held))
        misplaced.sort(key=lambda item: (not item[1].old, -(item[1].sock.idle_ms or 0)))
        return misplaced, unknown

    def _start_hash(self, pool: Pool, loaded: str) -> Result | None:
        assert self.group is not None and self.group.hash_key is not None
        template = self.group.hash_key
        servers = [s for s in parse_upstreams(loaded)[self.name] if "backup" not in s.params]
        ring = Ring.build(Peer(s.address, s.weight, "down" in s.params) for s in servers)
        before = self.before = self._counts(pool)
        misplaced, unknown = self._misplaced(pool, ring, template)
        self.minimum = len(misplaced)
        self.notes = [f"{unknown} connection(s) whose client could not be told apart: left where they are"] \
            if unknown else []
        self.rows = [{"address": a, "connections": n, "to_move": sum(1 for at, _ in misplaced if at == a)}
                     for a, n in before.items()]
        if self.options.dry_run or not misplaced:
            return self._result(before, before)
        self.overlay.expected = sha(loaded)   # no overlay: the ring this run computed must stay nginx's
        self._hash = _Hash(ring, template, misplaced, checked=self.clock())
        self.due = self.clock()
        return None

    def _step_hash(self) -> Result | None:
        h = self._hash
        assert h is not None and self.overlay.normal is not None
        now = self.clock()
        if now >= self.deadline or h.index >= len(h.misplaced):
            h.misplaced, _ = self._misplaced(self._pool(self.overlay.normal), h.ring, h.template)
            h.index = 0
            if h.misplaced and now < self.deadline:
                self.due = now
                return None
            after = self._counts(self._pool(self.overlay.normal))
            if sum(after.values()) < sum(self.before.values()) and now - h.last_close < SETTLE and not h.misplaced:
                self.due = now + RECOUNT   # the moved clients are coming back: count them where they land
                return None
            result = self._result(self.before, after)
            if h.misplaced:
                raise RebalanceTimeout(result, f"{len(h.misplaced)} connection(s) still on another server than "
                                               f"their key's after {self.options.timeout:g}s")
            return result
        if now - h.checked >= RECOUNT:
            self.overlay.check_loaded()
            h.checked = now
        _, held = h.misplaced[h.index]
        h.index += 1
        if self.sockets.destroy(held.sock):
            self.moved += 1
            h.last_close = now
            self.on_step(Progress(self.moved, self.minimum, self.before))
        self.due = now + self.rng.uniform(0.5, 1.5) / self.options.rate
        return None

    # -- fair shares --------------------------------------------------------------------------------------------

    def _start_share(self, pool: Pool, loaded: str) -> Result | None:
        weights = self._up(pool.group(self.name))
        before = self.before = self._counts(pool)
        current = plan(before, weights, self.options.tolerance)
        if self.method in ("random_two_least_conn", "random"):
            self.notes.append("random balancing: the overlay leaves only the servers that must receive, so moves "
                              "land there whatever the draw")
        self.minimum, self.rows = current.minimum, current.rows()
        if self.options.dry_run or current.minimum == 0:
            return self._result(before, before)
        self.overlay.set(set(weights) - current.receivers, first=True)
        s = self._share = _Share(weights, current, dict(current.counts), self._candidates(pool))
        s.follow(current, s.counts)
        s.last_close = s.next_close = self.due = self.clock()
        s.next_count = s.last_close + RECOUNT
        return None

    def _step_share(self) -> Result | None:
        """Close and recount until within tolerance (then the normal config back, and the Result), or raise
        RebalanceTimeout."""
        s = self._share
        assert s is not None and self.overlay.normal is not None
        tolerance = self.options.tolerance
        rate = self.options.rate
        window = max(MIN_WINDOW, math.ceil(rate))
        now = self.clock()
        in_flight = max(0, s.reference - sum(s.counts.values())) + s.closed_since_count
        if now >= s.next_count:
            self.overlay.check_loaded()
            pool = self._pool(self.overlay.normal)
            s.counts = {a: n for a, n in self._counts(pool).items() if a in s.weights}
            s.closed_since_count = 0
            in_flight = max(0, s.reference - sum(s.counts.values()))
            s.candidates = self._candidates(pool)
            s.next_count = now + max(RECOUNT, 2 * pool.seconds)   # a large pool: count less often
            self.on_step(Progress(self.moved, s.current.total, s.counts))
            settled = in_flight == 0 or (sum(s.takes.values()) == 0 and now - s.last_close >= SETTLE)
            if converged(s.counts, s.weights, tolerance) and settled:
                return self._finish(s.counts)   # (a client that left for good is not waited for)
            full = {r for r in s.receivers if s.counts.get(r, 0) >= s.targets.get(r, 0)}
            if sum(s.takes.values()) == 0 and in_flight == 0:
                # the plan is done and its clients are back, yet not within: plan again from these counts
                current = plan(s.counts, s.weights, tolerance)
                if current.minimum == 0:
                    return self._finish(s.counts)
                s.follow(current, s.counts)
                self.overlay.set(set(s.weights) - s.receivers)
            elif full and s.receivers - full:
                s.receivers -= full
                self.overlay.set(set(s.weights) - s.receivers)
        if now >= self.deadline:
            why = (f"{in_flight} closed connection(s) did not come back within {self.options.timeout:g}s: "
                   "the clients are not reconnecting (or cannot reach "
                   f"{', '.join(sorted(s.receivers))})") if in_flight else \
                f"not within {tolerance:.0%} of the fair shares after {self.options.timeout:g}s"
            self.overlay.remove()
            after = self._counts(self._pool(self.overlay.normal))
            raise RebalanceTimeout(self._result(self.before, after), why)
        if now >= s.next_close and in_flight < window and sum(s.takes.values()) > 0:
            giver = max(s.takes, key=lambda a: s.takes[a])
            while s.candidates.get(giver):
                held = s.candidates[giver].pop(0)
                if self.sockets.destroy(held.sock):
                    self.moved += 1
                    s.takes[giver] -= 1
                    s.closed_since_count += 1
                    s.last_close = now
                    break
            else:
                s.takes[giver] = 0   # nothing left to close there now: the next count plans again
            s.next_close = now + self.rng.uniform(0.5, 1.5) / rate
        closing = sum(s.takes.values()) and in_flight < window
        wake = min(s.next_count, self.deadline, s.next_close if closing else s.next_count)
        self.due = min(wake, self.clock() + RECOUNT)
        return None

    def _finish(self, counts: dict[str, int]) -> Result:
        self.overlay.remove()
        return self._result(self.before, counts)

    def _candidates(self, pool: Pool) -> dict[str, list[Held]]:
        return {s.address: order(s.held) for s in pool.group(self.name) if s.state == "up"}


class _interrupts:
    """Ctrl-C (or SIGTERM) during a rebalance: remove the overlay, say how many were moved (exit 130)."""

    def __init__(self, run: Rebalancer) -> None:
        self.run = run

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None or not issubclass(kind, KeyboardInterrupt):
            return
        done = [f"{self.run.moved} connection(s) moved (closed; their clients reconnect)"]
        not_done = ["the rest of the rebalance"]
        try:
            had = self.run.overlay.down is not None
            self.run.overlay.remove()
            if had:
                done.append("the overlay removed: nginx runs the normal config again")
        except (KeyboardInterrupt, Exception) as again:  # noqa: BLE001 (said to the user, not swallowed)
            not_done.append(f"removing the overlay ({again or 'interrupted again'}): `nginxctl apply --reload` "
                            "puts the normal config back")
        raise Interrupted(done, not_done) from None
