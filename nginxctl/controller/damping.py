"""When a health decision reaches nginx: damping per server. Pure: the caller passes the time.

A server whose checks change its state is rendered so at once (the loop then waits for the quiet period
and reloads), unless *that server* had a rendered health change less than `max_wait` ago: then its change
waits until `max_wait` after that one. So a flapping server causes at most one health reload per
`max_wait`, and it never delays another server's decision, nor do reloads for other reasons.

One exception, for safety: a held put-back of a passing server is released at once when holding it would
leave every primary server of a group rendered down.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Decision(Generic[K]):
    down: frozenset[K]              # render these down now
    due: float | None               # when the earliest held change may be rendered (None: nothing held)
    held: frozenset[K]              # servers whose change waits for their damping
    changed_at: dict[K, float] = field(default_factory=dict)   # per server, its last rendered health change,
    # once `down` is rendered (entries older than max_wait are dropped: they no longer hold anything)


def decide(want: frozenset[K], rendered: frozenset[K], changed_at: Mapping[K, float], now: float, max_wait: float,
           groups: Iterable[frozenset[K]] = ()) -> Decision[K]:
    """`want`: the servers the checks say should be down now; `rendered`: those rendered down now;
    `changed_at`: per server, when its last rendered health change was; `groups`: sets of servers of which
    one at least must stay up (each group's primaries). Returns what to render down now."""
    held = frozenset(k for k in want ^ rendered
                     if k in changed_at and now < changed_at[k] + max_wait)
    down = (want - held) | (rendered & held)
    for group in groups:
        if group and group <= down:
            released = (group & held & rendered) - want   # passing servers kept down only by their damping
            down -= released
            held -= released
    due = min((changed_at[k] + max_wait for k in held), default=None)
    recent = {k: t for k, t in changed_at.items() if now < t + max_wait}
    return Decision(down, due, held, {**recent, **{k: now for k in down ^ rendered}})
