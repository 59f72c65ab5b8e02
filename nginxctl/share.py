"""Fair shares of a group's connections, how far a pool is from them, and the moves that restore them.
Pure: counts in, numbers and plans out.

A server's fair share is its weight's part of the connections the group's up primary servers hold
(down, backup and removed servers take no new connections: they have no share). A server is *within*
its share when it is off by at most `tolerance` of it, or by one connection (a share of 2.5 cannot be
met exactly). The *minimum* number of connections to close is the larger of what the servers hold above
share + tolerance and what they lack below share - tolerance: each closed connection removes one from
an over-share server and, reconnecting, adds one to an under-share server.

`plan` picks how many to close on each server and which servers should receive: the fewest closes
(`minimum`) that leave every server within, taken from the servers furthest above their share first
(water filling) and given to those furthest below.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

EPSILON = 1e-9


def fair_shares(counts: Mapping[str, int], weights: Mapping[str, int]) -> dict[str, float]:
    """Each server's share of the connections the servers in `weights` (the up primaries) hold."""
    total = sum(counts.get(s, 0) for s in weights)
    weight = sum(weights.values())
    return {s: (total * w / weight if weight else 0.0) for s, w in weights.items()}


def slack(share: float, tolerance: float) -> float:
    """How far from its share a server may be: `tolerance` of it, or one connection."""
    return max(share * tolerance, 1.0)


def within(count: int, share: float, tolerance: float) -> bool:
    return abs(count - share) <= slack(share, tolerance) + EPSILON


def ceiling(share: float, tolerance: float) -> int:
    """The most connections a server may hold and be within its share."""
    return math.floor(share + slack(share, tolerance) + EPSILON)


def floor_(share: float, tolerance: float) -> int:
    """The fewest connections a server may hold and be within its share."""
    return max(0, math.ceil(share - slack(share, tolerance) - EPSILON))


def minimum(counts: Mapping[str, int], weights: Mapping[str, int], tolerance: float) -> int:
    """The fewest connections that must be closed (and reconnect elsewhere) to bring every up primary within
    its share: max(what they hold above share + tolerance, what they lack below share - tolerance)."""
    shares = fair_shares(counts, weights)
    above = sum(max(0, counts.get(s, 0) - ceiling(share, tolerance)) for s, share in shares.items())
    below = sum(max(0, floor_(share, tolerance) - counts.get(s, 0)) for s, share in shares.items())
    return max(above, below)


def skew(counts: Mapping[str, int], weights: Mapping[str, int]) -> float:
    """The largest relative distance of a server from its fair share (0.1: 10%); 0 for an empty group."""
    shares = fair_shares(counts, weights)
    return max((abs(counts.get(s, 0) - share) / share for s, share in shares.items() if share > 0), default=0.0)


def converged(counts: Mapping[str, int], weights: Mapping[str, int], tolerance: float) -> bool:
    shares = fair_shares(counts, weights)
    return all(within(counts.get(s, 0), share, tolerance) for s, share in shares.items())


@dataclass
class MovePlan:
    """How many connections to close on each server (`take`), where they should land (`give`), from the
    counts it was made from."""

    counts: dict[str, int]
    shares: dict[str, float]
    tolerance: float
    minimum: int
    take: dict[str, int] = field(default_factory=dict)
    give: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.take.values())

    @property
    def receivers(self) -> set[str]:
        return {s for s, n in self.give.items() if n > 0}

    def rows(self) -> list[dict[str, object]]:
        return [{"address": s, "connections": self.counts.get(s, 0), "fair_share": round(share, 2),
                 "to_move": self.take.get(s, 0), "to_receive": self.give.get(s, 0)}
                for s, share in self.shares.items()]


def plan(counts: Mapping[str, int], weights: Mapping[str, int], tolerance: float) -> MovePlan:
    """The moves that bring every up primary server (`weights`) within `tolerance` of its fair share with
    the fewest closes: `minimum` of them, each taken from the server then furthest above its share (never
    below its floor) and given to the server then furthest below it (never above its ceiling)."""
    shares = fair_shares(counts, weights)
    need = minimum(counts, weights, tolerance)
    out = MovePlan({s: counts.get(s, 0) for s in shares}, shares, tolerance, need)
    if need == 0:
        return out
    now = dict(out.counts)
    # what must move: each server above its ceiling gives down to it, each below its floor receives up to it
    for s, share in shares.items():
        over = now[s] - ceiling(share, tolerance)
        under = floor_(share, tolerance) - now[s]
        if over > 0:
            out.take[s] = over
        if under > 0:
            out.give[s] = under
    for s, n in out.take.items():
        now[s] -= n
    for s, n in out.give.items():
        now[s] += n
    # the larger side sets the count; the other side's rest goes where it keeps every server within, taken from
    # the servers furthest above their share and given to those furthest below
    _spread(now, shares, tolerance, need - sum(out.take.values()), out.take, giving=False)
    _spread(now, shares, tolerance, need - sum(out.give.values()), out.give, giving=True)
    return out


def _spread(now: dict[str, int], shares: Mapping[str, float], tolerance: float, count: int, into: dict[str, int], *,
            giving: bool) -> None:
    """Move `count` more connections one at a time onto (`giving`) or off the server furthest below (above) its
    share that stays within its bounds; `now` and `into` are updated."""
    sign = 1 if giving else -1
    heap = [(sign * (now[s] - share) / share, s) for s, share in shares.items() if share > 0]
    heapq.heapify(heap)
    for _ in range(count):
        while heap:
            _, s = heap[0]
            if (now[s] + 1 <= ceiling(shares[s], tolerance)) if giving else \
                    (now[s] - 1 >= floor_(shares[s], tolerance)):
                break
            heapq.heappop(heap)
        if not heap:
            return
        _, s = heapq.heappop(heap)
        now[s] += sign
        into[s] = into.get(s, 0) + 1
        heapq.heappush(heap, (sign * (now[s] - shares[s]) / shares[s], s))
