"""`rebalance`: move a group's long connections, paced, until every up primary server holds its fair share.

Works on one target (a `Deployer`) and the config nginx has loaded; reads no inventory file (the caller
passes the group's balancing method). The steps:

1. Count (`pool.read_pool`: sock_diag in nginx's namespace, per worker generation, with idleness) and plan
   (`share.plan`: the fewest closes that bring every server within tolerance; `hash ... consistent`: the
   connections whose key the ring now sends elsewhere, `hashring`).
2. Steer. The new generation's balancer does not see the connections old generations hold, and a reload
   restarts `least_conn` counts, so closing alone cannot choose where a client lands. For the share
   methods a temporary *overlay* is loaded: the group's config with every server that must not receive
   marked `down`, through the normal `Deployer.apply` (tested, reloaded, verified; the change lock is held
   for that reload only). It is published (`.nginxctl/overlay.json`) so that `status` shows it and does not
   call it drift, and kept out of the history. A consistent hash needs none: the ring decides.
3. Close, at most `rate` per second with jitter: nginx's upstream-side socket is destroyed, so nginx closes
   the client side with a FIN (the client reads EOF and reconnects at once). Old generations first, then
   the most idle (tcp_info last send/receive). Never more than a window of closed connections that have
   not come back: clients that do not reconnect stop the closing, not just the clock.
4. Recount every RECOUNT seconds: a receiver that has what it needed is closed to new connections too;
   when the plan is done and the clients are back, the counts say whether every server is within
   tolerance, else a new plan from them.
5. Put the normal config back (the one nginx ran before, byte for byte), verified. On timeout (exit 1),
   Ctrl-C (130) or any error, the overlay is removed first.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .apply import Deployer
from .errors import (
    EnvironmentProblem,
    Interrupted,
    NginxctlError,
    RebalanceTimeout,
    UsageError,
    WatchOwnsTarget,
)
from .fleet import Member
from .hashring import Peer, Ring, address_text, key_for, key_parts
from .history import sha
from .inventory import grammar as gr
from .inventory.model import Group
from .nginxtext import parse_upstreams, with_servers_down
from .owner import check_owner
from .pool import Held, Pool, ServerPool, read_pool
from .published import Published
from .share import MovePlan, converged, fair_shares, plan
from .sockdiag import SockDiag

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


def _order(held: list[Held]) -> list[Held]:
    """Old generations first, then the most idle: the cheapest connections to move."""
    return sorted(held, key=lambda h: (not h.old, -(h.sock.idle_ms or 0)))


def _key(template: str, held: Held) -> bytes | None:
    client = held.client
    if client is None:
        return None
    family = socket.AF_INET6 if ":" in client.remote[0] else socket.AF_INET
    remote = address_text(socket.inet_pton(family, client.remote[0]))
    local = address_text(socket.inet_pton(family, client.local[0]))
    return key_for(template, remote, client.remote[1], local, client.local[1])


class Rebalancer:
    """One rebalance of one group on one target. `run()` returns a Result, raises RebalanceTimeout (exit 1),
    Interrupted (130), UsageError, EnvironmentProblem, and what `Deployer.apply` raises."""

    def __init__(self, deployer: Deployer, name: str, group: Group | None, options: Options, *,
                 on_step: Step = lambda _: None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.deployer, self.name, self.group, self.options = deployer, name, group, options
        self.on_step, self.clock, self.sleep = on_step, clock, sleep
        self.rng = rng or random.Random()
        self.moved = 0
        self.reloads = 0
        self.normal: str | None = None       # the config nginx ran before: put back at the end
        self.overlay: set[str] | None = None  # servers closed to new connections now (None: no overlay)
        self.expected: str | None = None      # the hash of the overlay config this run loaded
        self.before: dict[str, int] = {}
        self.published = Published(deployer.live, deployer.history.base)

    # -- reading ------------------------------------------------------------------------------------------

    def _pool(self, text: str) -> Pool:
        hashed = self.group is not None and self.group.balance == "hash"
        return read_pool(self.deployer.live, text, history=self.deployer.history, info=True, pairs=hashed,
                         only_group=self.name)

    @staticmethod
    def _up(servers: list[ServerPool]) -> dict[str, int]:
        return {s.address: s.weight for s in servers if s.state == "up"}

    def _counts(self, pool: Pool) -> dict[str, int]:
        return {s.address: s.connections for s in pool.group(self.name) if s.state != "removed" or s.connections}

    # -- the run --------------------------------------------------------------------------------------------

    def run(self) -> Result:
        began = self.clock()
        live = self.deployer.live
        _, loaded = self.deployer.loaded_config()
        if loaded is None:
            raise EnvironmentProblem(f"nginx in {live.name} runs a config nginxctl cannot identify",
                                     "run `nginxctl apply --reload` first, then rebalance")
        existing = self.published.overlay()
        if existing is not None and not existing.get("stale"):
            raise EnvironmentProblem(f"another nginxctl rebalance (pid {existing.get('pid')} on "
                                     f"{existing.get('host')}) is moving the connections of "
                                     f"{existing.get('group')!r} on {live.name}",
                                     "wait for it to finish, or stop it (Ctrl-C removes its overlay)")
        if existing is not None and sha(loaded) != existing.get("normal_sha256"):
            raise EnvironmentProblem(f"nginx in {live.name} still runs the overlay of a rebalance that stopped "
                                     "without removing it", "`nginxctl apply --reload` puts the normal config back")
        upstreams = parse_upstreams(loaded)
        if self.name not in upstreams:
            raise _known_groups(upstreams, self.group, self.name)
        method = check_method(self.group, self.name)
        self.normal = loaded
        up = {s.address: s for s in upstreams[self.name] if s.state == "up"}
        if len(up) <= 1:
            counts = {}
            try:
                counts = self._counts(self._pool(loaded))
            except EnvironmentProblem:
                pass
            return Result(live.name, self.name, method, 0, 0, counts, counts, round(self.clock() - began, 3),
                          self.options.dry_run, notes=[f"group {self.name!r} has {len(up)} up primary server: "
                                                       "nothing to rebalance"])
        pool = self._pool(loaded)
        if method == "hash consistent":
            return self._hash(pool, loaded, method, began)
        return self._share(pool, loaded, method, began)

    def _result(self, method: str, minimum: int, before: dict[str, int], after: dict[str, int], began: float,
                rows: list[dict[str, Any]], notes: list[str]) -> Result:
        return Result(self.deployer.live.name, self.name, method, self.moved, minimum, before, after,
                      round(self.clock() - began, 3), self.options.dry_run, rows, notes, self.reloads)

    # -- consistent hash --------------------------------------------------------------------------------------

    def _misplaced(self, pool: Pool, ring: Ring, template: str) -> tuple[list[tuple[str, Held]], int]:
        """The held connections whose key the ring sends to another server, with the server holding each (old
        generations and idle first), and how many could not be told (no client-side socket paired: never
        guessed, never closed)."""
        misplaced: list[tuple[str, Held]] = []
        unknown = 0
        for server in pool.group(self.name):
            for held in server.held:
                key = _key(template, held)
                if key is None:
                    unknown += 1
                    continue
                where = ring.lookup(key)
                if where is not None and where != server.address:
                    misplaced.append((server.address, held))
        misplaced.sort(key=lambda item: (not item[1].old, -(item[1].sock.idle_ms or 0)))
        return misplaced, unknown

    def _hash(self, pool: Pool, loaded: str, method: str, began: float) -> Result:
        assert self.group is not None and self.group.hash_key is not None
        template = self.group.hash_key
        servers = [s for s in parse_upstreams(loaded)[self.name] if "backup" not in s.params]
        ring = Ring.build(Peer(s.address, _weight(s.params), "down" in s.params) for s in servers)
        before = self._counts(pool)
        misplaced, unknown = self._misplaced(pool, ring, template)
        minimum = len(misplaced)
        notes = [f"{unknown} connection(s) whose client could not be told apart: left where they are"] \
            if unknown else []
        rows = [{"address": a, "connections": n, "to_move": sum(1 for at, _ in misplaced if at == a)}
                for a, n in before.items()]
        if self.options.dry_run or not misplaced:
            return self._result(method, minimum, before, before, began, rows, notes)
        deadline = began + self.options.timeout
        interval = 1.0 / self.options.rate
        assert pool.processes.master is not None
        with _interrupts(self), SockDiag(netns_pid=pool.processes.master.pid) as diag:
            self.expected = sha(loaded)
            checked = self.clock()
            while misplaced and self.clock() < deadline:
                for _, held in misplaced:
                    if self.clock() >= deadline:
                        break
                    if self.clock() - checked >= RECOUNT:   # the ring this run computed is still nginx's
                        self._check_loaded()
                        checked = self.clock()
                    if diag.destroy(held.sock):
                        self.moved += 1
                        self.on_step(Progress(self.moved, minimum, before))
                    self.sleep(interval * self.rng.uniform(0.5, 1.5))
                misplaced, _ = self._misplaced(self._pool(loaded), ring, template)
            after = self._counts(self._pool(loaded))
        if misplaced:
            raise RebalanceTimeout(self._result(method, minimum, before, after, began, rows, notes),
                                   f"{len(misplaced)} connection(s) still on another server than their key's after "
                                   f"{self.options.timeout:g}s")
        return self._result(method, minimum, before, after, began, rows, notes)

    # -- fair shares --------------------------------------------------------------------------------------------

    def _share(self, pool: Pool, loaded: str, method: str, began: float) -> Result:
        weights = self._up(pool.group(self.name))
        before = self.before = self._counts(pool)
        tolerance = self.options.tolerance
        current = plan(before, weights, tolerance)
        notes = []
        if method == "random_two_least_conn" or method == "random":
            notes.append("random balancing: the overlay leaves only the servers that must receive, so moves land "
                         "there whatever the draw")
        if self.options.dry_run or current.minimum == 0:
            return self._result(method, current.minimum, before, before, began, current.rows(), notes)
        with _interrupts(self):
            try:
                after = self._move(pool, weights, current, method, began)
            except Exception:
                # the error says what went wrong; an overlay that cannot be removed now shows in `status`
                with contextlib.suppress(NginxctlError):
                    self._remove_overlay()
                raise
            self._remove_overlay()
        return self._result(method, current.minimum, before, after, began, current.rows(), notes)

    def _move(self, pool: Pool, weights: dict[str, int], current: MovePlan, method: str, began: float) \
            -> dict[str, int]:
        """Close and recount until within tolerance (the counts then), or raise RebalanceTimeout."""
        assert self.normal is not None
        first = current
        tolerance = self.options.tolerance
        deadline = began + self.options.timeout
        rate = self.options.rate
        window = max(MIN_WINDOW, math.ceil(rate))
        counts = dict(current.counts)
        reference = sum(counts.values())
        takes = dict(current.take)
        targets = {s: current.counts[s] + n for s, n in current.give.items()}
        receivers = set(current.receivers)
        self._set_overlay(set(weights) - receivers, first=True)
        candidates = self._candidates(pool)
        closed_since_count = 0
        last_close = self.clock()
        next_close = self.clock()
        next_count = self.clock() + RECOUNT
        assert pool.processes.master is not None
        with SockDiag(netns_pid=pool.processes.master.pid) as diag:
            while True:
                now = self.clock()
                in_flight = max(0, reference - sum(counts.values())) + closed_since_count
                if now >= next_count:
                    self._check_loaded()
                    pool = self._pool(self.normal)
                    counts = {a: n for a, n in self._counts(pool).items() if a in weights}
                    closed_since_count = 0
                    in_flight = max(0, reference - sum(counts.values()))
                    candidates = self._candidates(pool)
                    next_count = now + max(RECOUNT, 2 * pool.seconds)   # a large pool: count less often
                    self.on_step(Progress(self.moved, current.total, counts))
                    settled = in_flight == 0 or (sum(takes.values()) == 0 and now - last_close >= SETTLE)
                    if converged(counts, weights, tolerance) and settled:
                        return counts   # (a client that left for good is not waited for)
                    full = {r for r in receivers if counts.get(r, 0) >= targets.get(r, 0)}
                    if sum(takes.values()) == 0 and in_flight == 0:
                        # the plan is done and its clients are back, yet not within: plan again from these counts
                        current = plan(counts, weights, tolerance)
                        if current.minimum == 0:
                            return counts
                        takes, receivers = dict(current.take), set(current.receivers)
                        targets = {s: counts[s] + n for s, n in current.give.items()}
                        reference = sum(counts.values())
                        self._set_overlay(set(weights) - receivers)
                    elif full and receivers - full:
                        receivers -= full
                        self._set_overlay(set(weights) - receivers)
                if now >= deadline:
                    why = (f"{in_flight} closed connection(s) did not come back within {self.options.timeout:g}s: "
                           "the clients are not reconnecting (or cannot reach "
                           f"{', '.join(sorted(receivers))})") if in_flight else \
                        f"not within {tolerance:.0%} of the fair shares after {self.options.timeout:g}s"
                    self._remove_overlay()
                    after = self._counts(self._pool(self.normal))
                    raise RebalanceTimeout(self._result(method, first.minimum, self.before, after, began,
                                                        first.rows(), []), why)
                if now >= next_close and in_flight < window and sum(takes.values()) > 0:
                    giver = max(takes, key=lambda s: takes[s])
                    while candidates.get(giver):
                        held = candidates[giver].pop(0)
                        if diag.destroy(held.sock):
                            self.moved += 1
                            takes[giver] -= 1
                            closed_since_count += 1
                            last_close = now
                            break
                    else:
                        takes[giver] = 0   # nothing left to close there now: the next count plans again
                    next_close = now + self.rng.uniform(0.5, 1.5) / rate
                wake = min(next_count, deadline, next_close if sum(takes.values()) and in_flight < window
                           else next_count)
                self.sleep(max(0.0, min(wake - self.clock(), RECOUNT)))

    def _candidates(self, pool: Pool) -> dict[str, list[Held]]:
        return {s.address: _order(s.held) for s in pool.group(self.name) if s.state == "up"}

    # -- the overlay ------------------------------------------------------------------------------------------

    def _set_overlay(self, down: set[str], first: bool = False) -> None:
        """Load the normal config with `down` closed to new connections (published first, so `status` expects
        it). The first one is refused like any reload when too many old generations linger (nothing changed);
        later ones never are: the run must be able to change and remove what it put in. Raises
        EnvironmentProblem when the target's config changed under the run (another apply): it stops there."""
        assert self.normal is not None
        if down == self.overlay:
            return
        if not first:
            self._check_unchanged()
        text = with_servers_down(self.normal, self.name, down)
        self.published.write(Published.overlay_files(self.name, sorted(down), sha(self.normal)))
        limit = self.deployer.max_generations
        if not first:
            self.deployer.max_generations = None
        try:
            self.deployer.apply(text, reload=True)
        except BaseException:
            if first:
                self.published.write(Published.overlay_files(None, []))
            raise
        finally:
            self.deployer.max_generations = limit
        self.overlay = down
        self.expected = sha(text)
        self.reloads += 1

    def _check_unchanged(self) -> None:
        """The target still runs the overlay this run loaded and no watch took it over; else someone changed it
        meanwhile (an `apply` takes the change lock too, but between two of our reloads): stop, and put nothing
        back over it. Raises EnvironmentProblem, WatchOwnsTarget."""
        try:
            check_owner([Member(self.deployer.live.name, self.deployer)])
        except WatchOwnsTarget:
            self.overlay = None   # the watch puts its own config back: never fight it
            self.published.write(Published.overlay_files(None, []))
            raise
        self._check_loaded()

    def _check_loaded(self) -> None:
        """The target still runs this run's overlay (checked at every count: a few file reads); else stop."""
        if self.expected is not None and self.deployer.loaded() != self.expected:
            self.overlay = None
            self.published.write(Published.overlay_files(None, []))
            check_owner([Member(self.deployer.live.name, self.deployer)])   # a watch started meanwhile: say so
            raise EnvironmentProblem(f"the config of {self.deployer.live.name} changed while rebalancing (another "
                                     "nginxctl apply?): stopped; the new config is left as it is",
                                     "run the rebalance again")

    def _remove_overlay(self) -> None:
        """Put back the config nginx ran before the rebalance, verified; then unpublish the overlay. A config
        someone else installed meanwhile is left as it is (EnvironmentProblem)."""
        if self.overlay is None or self.normal is None:
            return
        self._check_unchanged()
        limit = self.deployer.max_generations
        self.deployer.max_generations = None
        try:
            self.deployer.apply(self.normal, reload=True)
        finally:
            self.deployer.max_generations = limit
        self.reloads += 1
        self.overlay = None
        self.expected = None
        self.published.write(Published.overlay_files(None, []))


def _weight(params: tuple[str, ...]) -> int:
    for param in params:
        if re.fullmatch(r"weight=\d+", param):
            return max(1, int(param[7:]))
    return 1


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
            had = self.run.overlay is not None
            self.run._remove_overlay()
            if had:
                done.append("the overlay removed: nginx runs the normal config again")
        except (KeyboardInterrupt, Exception) as again:  # noqa: BLE001 (said to the user, not swallowed)
            not_done.append(f"removing the overlay ({again or 'interrupted again'}): `nginxctl apply --reload` "
                            "puts the normal config back")
        raise Interrupted(done, not_done) from None


def fair_share_rows(servers: list[ServerPool]) -> dict[str, float]:
    """Each up primary's fair share of what the group's up primaries hold (for `status`)."""
    weights = {s.address: s.weight for s in servers if s.state == "up"}
    return fair_shares({s.address: s.connections for s in servers}, weights)
