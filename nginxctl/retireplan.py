"""Retiring old worker generations, decided: the limits (a count and a memory cost), how many of the oldest
generations must go before a reload fits, which of a generation's sockets to close and in what order, and the
pace (`--retire-rate`). Pure: data in, data out, the clock passed in; `retire` carries it out.

Why nginx's upstream-side sockets: destroying the socket nginx holds towards the backend makes nginx close the
client's side with a FIN, so the client sees an orderly EOF and reconnects to the current generation
(docs/sockdiag.md, measured). Idle connections go first (tcp_info's last send and receive): a client that is
sending at the instant nginx closes its side may see a reset instead.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .inventory.grammar import Invalid

if TYPE_CHECKING:
    from .sockdiag import TcpSocket

Endpoint = tuple[str, int]

# watch's defaults: many generations may linger while they are cheap (an idle generation of 2 workers
# costs ~8 MiB here, see docs/controller.md); past either limit the oldest is retired at a gentle rate
WATCH_MAX_GENERATIONS = 16
WATCH_MAX_LINGERING_MEMORY = 512 * 1024 * 1024
WATCH_RETIRE_RATE = 20.0
APPLY_MAX_GENERATIONS = 3
BURST_SECONDS = 0.25         # at most this much of the rate closed in one step (a late step does not burst)
FALLBACK_GRACE = 5.0         # seconds without any upstream-side socket before client sides are closed

_RATE = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*(?:/\s*s)?\s*$")
_MEMORY = re.compile(r"(\d{1,15})\s*(?:([kKmMgG])(?:i?[bB])?)?")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(value: str) -> float:
    """`--retire-rate`: connections per second, `20` or `20/s` (0: never retire). Raises Invalid."""
    found = _RATE.match(str(value))
    if not found or float(found.group(1)) > 100_000:
        raise Invalid("connections per second from 0 to 100000, such as 20 or 20/s (0: never retire)", value)
    return float(found.group(1))


def parse_memory(value: str) -> int:
    """`--max-lingering-memory`: a size (512m, 1g, 200MiB...). Raises Invalid."""
    match = _MEMORY.fullmatch(str(value).strip())
    if not match or int(match.group(1)) == 0:
        raise Invalid("a size above 0 such as 512m, 2g or 300MiB", value)
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


@dataclass(frozen=True)
class Limits:
    """How much may linger after a reload: generations (a count) and their workers' memory (bytes)."""

    max_generations: int | None = None
    max_memory: int | None = None

    def describe(self) -> str:
        parts = []
        if self.max_generations is not None:
            parts.append(f"--max-generations {self.max_generations}")
        if self.max_memory is not None:
            parts.append(f"--max-lingering-memory {size_text(self.max_memory)}")
        return ", ".join(parts) or "no limit"


@dataclass(frozen=True)
class Excess:
    """How many of the oldest generations must go for a reload to fit, and which limit says so."""

    count: int
    reason: str   # "" when it fits

    def __bool__(self) -> bool:
        return self.count > 0


def excess(limits: Limits, memories: Sequence[int | None], current_memory: int | None) -> Excess:
    """Generations (oldest first, each its workers' memory or None when unknown) that must be retired for a
    reload to fit `limits`: after it, the current workers linger too (they become a generation), so at most
    `max_generations - 1` old ones may stay, and the memory of those kept plus the current workers' must not
    pass `max_memory`. Unknown memory is not counted. Never more than there are: when even that does not fit
    (the current workers alone cost more), retiring all of them is all that can be done."""
    need, reason = 0, ""
    if limits.max_generations is not None and len(memories) >= limits.max_generations:
        need, reason = len(memories) - limits.max_generations + 1, "count"
    if limits.max_memory is not None:
        known = [m or 0 for m in memories]
        total = sum(known) + (current_memory or 0)
        if total > limits.max_memory:
            drop = 0
            while drop < len(known) and total > limits.max_memory:
                total -= known[drop]
                drop += 1
            if drop > need:
                need, reason = drop, "memory"
    return Excess(min(need, len(memories)), reason)


def _listening(endpoint: Endpoint, listen: set[Endpoint]) -> bool:
    address, port = endpoint
    return endpoint in listen or ("0.0.0.0", port) in listen or ("::", port) in listen or (
        address.startswith("::ffff:") and (address[7:], port) in listen)


def split_sides(sockets: Iterable[TcpSocket], owners: dict[int, int], pids: set[int], listen: set[Endpoint],
                listen_ports: set[int] | frozenset[int] = frozenset()) -> tuple[list[TcpSocket], list[TcpSocket]]:
    """The generation's sockets (held by `pids`), as (client-side, upstream-side). A client-side socket is on
    an address nginx listens on (`listen`: what the master listens on now), or on a port the target's configs
    listen on (`listen_ports`: a listen the current config dropped). Without those ports, a local address
    several of the generation's sockets share is taken for a listen too (many clients on one port) — a guess:
    the kernel may give one ephemeral port to several connections towards different backends.
    Upstream-side sockets are the rest (nginx connected out)."""
    mine = [s for s in sockets if owners.get(s.inode) in pids]
    shared = Counter(s.local for s in mine) if not listen_ports else Counter()
    clients = [s for s in mine if _listening(s.local, listen) or s.local[1] in listen_ports or shared[s.local] > 1]
    ids = {s.cookie for s in clients}
    return clients, [s for s in mine if s.cookie not in ids]


IDLE_MS = 2000   # a connection quiet this long is idle: closed first, the longest idle first


def idle_first(sockets: Iterable[TcpSocket]) -> list[TcpSocket]:
    """The order to close a generation's upstream-side sockets in: idle ones first (no data either way for
    IDLE_MS, tcp_info's last send and receive), the longest idle first; then the busy ones whose last exchange
    is complete (the backend spoke last: a heartbeat's answer was relayed), the most recent first, since a
    client sending periodically is then furthest from its next send (a client sending at the instant nginx
    closes its side sees a reset, not EOF: measured with devices beating every second); then the rest, the
    longest idle first; unknown idleness last; ties by cookie, so the order is the same for the same table."""
    def key(s: TcpSocket) -> tuple[int, int, int]:
        idle = s.idle_ms
        if idle is None:
            return (3, 0, s.cookie)
        if idle >= IDLE_MS:
            return (0, -idle, s.cookie)
        sent, recv = s.last_data_sent_ms or 0, s.last_data_recv_ms or 0
        if recv <= sent:   # ms since: the backend's answer came after the client's last bytes
            return (1, idle, s.cookie)
        return (2, -idle, s.cookie)

    return sorted(sockets, key=key)


@dataclass(frozen=True)
class Step:
    """What one step closes: upstream-side sockets (clients see EOF), or, once none is left for a while,
    client-side ones (clients see a reset: a unix-socket backend, a connection still connecting)."""

    close: tuple[TcpSocket, ...]
    left: int            # the generation's connections (client sides) before this step
    upstream_left: int   # its upstream-side sockets before this step
    fallback: bool


def plan_step(sockets: Iterable[TcpSocket], owners: dict[int, int], pids: set[int], listen: set[Endpoint],
              budget: int, fallback_allowed: bool = False,
              listen_ports: set[int] | frozenset[int] = frozenset()) -> Step:
    """The sockets one step closes: at most `budget`, idle first, upstream sides; client sides only when
    the generation has no upstream side left and `fallback_allowed`."""
    clients, upstream = split_sides(sockets, owners, pids, listen, listen_ports)
    if upstream:
        return Step(tuple(idle_first(upstream)[:max(0, budget)]), len(clients), len(upstream), False)
    chosen = tuple(idle_first(clients)[:max(0, budget)]) if fallback_allowed else ()
    return Step(chosen, len(clients), 0, bool(chosen))


class Pacer:
    """A token bucket: `rate` closes per second, at most `burst` at once (so a step that comes late does not
    close a second's worth in a burst). The clock is given by the caller."""

    def __init__(self, rate: float, now: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("a pacer needs a rate above 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate * BURST_SECONDS))
        self.tokens = 1.0
        self.last = now

    def _fill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = max(self.last, now)

    def available(self, now: float) -> int:
        self._fill(now)
        return int(self.tokens + 1e-9)

    def spend(self, n: int) -> None:
        self.tokens -= n

    def next_at(self, now: float, want: int = 1) -> float:
        """When `want` closes (at most a burst) are allowed (now, if they are)."""
        self._fill(now)
        want = min(max(1, want), self.burst)
        return now if self.tokens >= want - 1e-9 else now + (want - self.tokens) / self.rate


_LISTEN = re.compile(r"(?:^|[;{}\s])listen\s+([^\s;]+)")
_PORT = re.compile(r":(\d{1,5})$")


def config_ports(configs: Iterable[str]) -> tuple[set[int], set[int]]:
    """(ports nginx listens on, ports of its upstream servers) in these configs (the ones an old generation may
    run: the history's), so that a socket dump can be filtered in the kernel: a host-network namespace may
    hold far more sockets than nginx's (a busy machine: 160,000 here). unix: servers and bare ports included."""
    from .nginxtext import parse_upstreams

    listens: set[int] = set()
    servers: set[int] = set()
    for config in configs:
        text = re.sub(r"#[^\n]*", "", config)
        for found in _LISTEN.finditer(text):
            value = found.group(1)
            port = _PORT.search(value)
            if port or value.isdigit():
                listens.add(int(port.group(1) if port else value))
        for group in parse_upstreams(text).values():
            for server in group:
                port = _PORT.search(server.address)
                if port and not server.address.startswith("unix:"):
                    servers.add(int(port.group(1)))
    return listens, servers


def retire_seconds(connections: int | None, rate: float) -> float | None:
    """How long retiring `connections` takes at `rate` (None: unknown or never)."""
    if connections is None or rate <= 0:
        return None
    return connections / rate
