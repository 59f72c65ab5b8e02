"""Retiring an old worker generation: close its connections at a pace, one step at a time, until its workers
have left (the plan is `retireplan`'s; this module does the I/O: sock_diag in nginx's network namespace, the
workers' fd links, SOCK_DESTROY).

Each step counts again (a fresh socket dump and the workers' sockets), closes what the pace allows, and
returns at once: the one-shot `apply --retire-rate` runs steps until the generation is gone, `watch` runs one
step per turn of its loop, so that a health take-out or a new change never waits behind a retirement.

Raises EnvironmentProblem (SockDiagUnavailable: exit 3) when nginxctl cannot see or close the target's sockets
(a remote engine, no CAP_NET_ADMIN, a kernel without CONFIG_INET_DIAG_DESTROY).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from .errors import EnvironmentProblem, GenerationsLingering
from .nginx import LiveNginx
from .observe import Generation
from .retireplan import (
    FALLBACK_GRACE,
    Endpoint,
    Pacer,
    Step,
    config_ports,
    plan_step,
    retire_seconds,
    split_sides,
)
from .sockdiag import SockDiag, socket_owners

LISTEN = 10
MIN_STEP = 0.1          # seconds between two steps at least (each step dumps the socket table once)
FULL_DUMP = 2.0         # between whole dumps, a step dumps only the sockets towards the backends seen
RETIRE_GRACE = 15.0     # beyond connections / rate, how long a retirement may take before it gives up


def _worker_of(pid: int, master: int) -> bool:
    """Whether `pid` is still a worker of `master` (not gone, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1]) == master
    except (OSError, ValueError, IndexError):
        return False


class Retirement:
    """Closes the connections of one old generation at `rate` per second, idle first, upstream sides (clients
    see EOF), then, when none is left for FALLBACK_GRACE, client sides (clients see a reset). `step()` does one
    step and says whether the generation is gone; `next_at()` is when the next step is worth doing."""

    def __init__(self, live: LiveNginx, generation: Generation, rate: float,
                 clock: Callable[[], float] = time.monotonic, configs: Sequence[str] = ()) -> None:
        procs = live.processes()
        if procs.master is None:
            raise EnvironmentProblem(f"no nginx master process runs in {live.name}")
        if live.root is None:
            raise EnvironmentProblem(f"cannot see or close the sockets of {live.name}: nginxctl does not run on its "
                                     "Docker engine's host (a remote engine)",
                                     "run nginxctl on the engine's host to retire generations, or use --wait")
        self.name = live.name
        self.clock = clock
        self.rate = rate
        self.generation = generation
        self.pids = set(generation.pids)
        self.master = procs.master.pid
        self.diag = SockDiag(netns_pid=self.master)
        try:
            owners = socket_owners([self.master])
            self.listen: set[Endpoint] = {s.local for s in self.diag.tcp(states=(LISTEN,), info=False)
                                          if s.inode in owners}
        except BaseException:
            self.diag.close()
            raise
        # whole dumps filtered in the kernel to the ports of the configs the generation may run (its clients'
        # side: the listens; its upstream side: the servers); none known: every socket of the namespace
        listens, servers = config_ports(configs)
        self._filter = ({p for _, p in self.listen} | listens, servers) if servers else None
        self._listen_ports = {p for _, p in self.listen} | listens if listens else set()
        self.started = clock()
        self.pacer = Pacer(rate, self.started)
        self.closed = 0          # upstream sides destroyed: their clients saw EOF
        self.resets = 0          # client sides destroyed: their clients saw a reset
        self.last: Step | None = None
        self._no_upstream_since: float | None = None
        self._idle_until = self.started
        self._ports: list[int] = []      # the backends' ports of this generation's upstream sides
        self._full_at: float | None = None
        self.left = generation.connections   # its connections (client sides): the last whole dump, less closes since

    @property
    def deadline(self) -> float:
        """When this retirement gives up (its connections at the rate, plus a grace)."""
        return self.started + (retire_seconds(self.generation.connections, self.rate) or 0.0) + RETIRE_GRACE

    def gone(self) -> bool:
        return not any(_worker_of(pid, self.master) for pid in self.pids)

    def step(self) -> bool:
        """One step: count, close what the pace allows. True when the generation's workers have all left."""
        if self.gone():
            self.left = 0
            return True
        now = self.clock()
        budget = self.pacer.available(now)
        if budget <= 0:
            return False
        owners = socket_owners(self.pids)
        fallback = self._no_upstream_since is not None and now - self._no_upstream_since >= FALLBACK_GRACE
        # A whole dump walks every socket of the namespace (~5 us each): between whole dumps, ask the kernel
        # only for the sockets towards the backends this generation was seen talking to (an old generation
        # opens no new connection, so that set only shrinks).
        whole = self._full_at is None or now - self._full_at >= FULL_DUMP or not self._ports
        if not whole:
            sockets = self.diag.tcp(remote_ports=self._ports)
        elif self._filter is not None:
            sockets = self.diag.tcp(local_ports=self._filter[0], remote_ports=self._filter[1])
        else:
            sockets = self.diag.tcp()
        step = plan_step(sockets, owners, self.pids, self.listen, budget, fallback and whole, self._listen_ports)
        if whole:
            self._full_at = now
            self.left = step.left
            _, upstream = split_sides(sockets, owners, self.pids, self.listen, self._listen_ports)
            self._ports = sorted({s.remote[1] for s in upstream})
        if step.upstream_left:
            self._no_upstream_since = None
        elif self._no_upstream_since is None:
            self._no_upstream_since = now
        done = sum(1 for sock in step.close if self.diag.destroy(sock))
        if self.left is not None:   # those closed since the last whole dump are not left (closed + left: the start)
            self.left = max(0, self.left - done)
        self.pacer.spend(len(step.close))
        if step.fallback:
            self.resets += done
        else:
            self.closed += done
        self.last = step
        # nothing to close (every connection closing, or waiting for the fallback): look again shortly;
        # else when a whole burst may be closed (one dump per burst, not per connection)
        self._idle_until = now + (MIN_STEP if not step.close else 0.0)
        return False

    def next_at(self) -> float:
        now = self.clock()
        return max(self.pacer.next_at(now, self.pacer.burst), self._idle_until)

    def describe(self) -> str:
        left = self.left
        return (f"retiring old generation (workers {', '.join(map(str, sorted(self.pids)))}) of {self.name}: "
                f"{self.closed} connection(s) closed (EOF)" + (f", {self.resets} reset" if self.resets else "")
                + ("" if left is None else f", {left} left") + f", at {self.rate:g}/s")

    def close(self) -> None:
        self.diag.close()


def retire(live: LiveNginx, generations: list[Generation], rate: float, progress: Callable[[str], None],
           clock: Callable[[], float] = time.monotonic, configs: Sequence[str] = ()) -> int:
    """Retire `generations` (oldest first) one after the other, blocking: the one-shot `apply --retire-rate`.
    Returns the connections closed. Raises GenerationsLingering when one is not gone by its deadline (nothing
    was reloaded), EnvironmentProblem."""
    closed = 0
    pause = threading.Event()
    for generation in generations:
        seconds = retire_seconds(generation.connections, rate)
        progress(f"retiring the oldest generation (workers {', '.join(map(str, generation.pids))}): "
                 f"{generation.connections if generation.connections is not None else 'unknown'} connection(s) at "
                 f"{rate:g}/s" + (f", about {seconds:.1f}s" if seconds is not None else ""))
        retirement = Retirement(live, generation, rate, clock, configs)
        reported = clock()
        try:
            while not retirement.step():
                now = clock()
                if now > retirement.deadline:
                    raise GenerationsLingering(len(generations), None, [generation.describe()], unfinished=(
                        f"retiring it did not finish within {now - retirement.started:.0f}s: "
                        f"{retirement.describe()}"))
                if now - reported >= 5:
                    progress(retirement.describe())
                    reported = now
                pause.wait(max(0.0, retirement.next_at() - clock()))
        finally:
            retirement.close()
        closed += retirement.closed + retirement.resets
        progress(retirement.describe().replace("retiring", "retired"))
    return closed
