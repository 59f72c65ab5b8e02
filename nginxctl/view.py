"""What nginx runs, server by server, and what is wanted but not running yet. Pure: text in, data out.

`status` and `diff` describe nginx: the servers listed are those of the config nginx has *loaded*, each with
its state there (up, down, backup) and, for a down one, why (the inventory, a health check, a drain, or a
placeholder for a discovering group with no backend). What the inventory or a running watch wants and
nginx does not run yet is `pending` (added, removed, changed servers, or other settings); `drift` is
`pending` not being empty. Groups whose wanted servers cannot be known (a discovery source that could
not be read) are left out of `pending`, and the caller says so in a note.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from .nginxtext import UpstreamServer, parse_upstreams

PLACEHOLDER = "127.0.0.1:9"   # see controller.merge: a discovering group with no backend keeps its listen


@dataclass(frozen=True)
class ServerView:
    address: str
    state: str                 # up | down | backup | removed (held by old workers only, later)
    reason: str | None = None  # for down: inventory | health | drain | placeholder | rebalance
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "state": self.state, "reason": self.reason, "flags": list(self.flags)}


@dataclass
class Pending:
    added: list[str] = field(default_factory=list)     # "group/address"
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)   # "group/address: up -> down"
    config: bool = False   # other settings differ (listen, timeouts, balance...)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.config)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "config": self.config}

    def summary(self) -> str:
        parts = [f"{len(items)} {what}" for what, items in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed)) if items]
        if self.config:
            parts.append("other settings")
        return ", ".join(parts) or "nothing"


def _reason(group: str, server: UpstreamServer, health_down: AbstractSet[tuple[str, str]],
            drained: AbstractSet[tuple[str, str]], overlay: AbstractSet[tuple[str, str]]) -> str | None:
    if server.state != "down":
        return None
    key = (group, server.address)
    if key in overlay:
        return "rebalance"
    if key in health_down:
        return "health"
    if key in drained:
        return "drain"
    if server.address == PLACEHOLDER:
        return "placeholder"
    return "inventory"


def servers_view(loaded: str, *, health_down: AbstractSet[tuple[str, str]] = frozenset(),
                 drained: AbstractSet[tuple[str, str]] = frozenset(),
                 overlay: AbstractSet[tuple[str, str]] = frozenset()) -> dict[str, list[ServerView]]:
    """Each upstream of the loaded config with its servers as nginx runs them (`overlay`: the servers a running
    rebalance closed to new connections; their reason is `rebalance`)."""
    return {group: [ServerView(s.address, s.state, _reason(group, s, health_down, drained, overlay), s.params)
                    for s in servers]
            for group, servers in parse_upstreams(loaded).items()}


def _describe(server: UpstreamServer) -> str:
    return " ".join((server.state, *server.settings))


def pending(loaded: str, desired: str, *, unknown_groups: AbstractSet[str] = frozenset()) -> Pending:
    """What `desired` changes against `loaded`, server by server; groups in `unknown_groups` (their wanted
    servers cannot be known now) are not compared."""
    have, want = parse_upstreams(loaded), parse_upstreams(desired)
    out = Pending()
    for group in sorted(set(have) | set(want)):
        if group in unknown_groups:
            continue
        old = {s.address: s for s in have.get(group, [])}
        new = {s.address: s for s in want.get(group, [])}
        out.added += [f"{group}/{a}" for a in new if a not in old and a != PLACEHOLDER]
        out.removed += [f"{group}/{a}" for a in old if a not in new and a != PLACEHOLDER]
        out.changed += [f"{group}/{a}: {_describe(old[a])} -> {_describe(new[a])}" for a in new
                        if a in old and old[a].params != new[a].params]
    # settings other than the servers (listen, balance, timeouts...) differ, whatever the servers do
    before, after = (_settings(_without_groups(t, unknown_groups)) for t in (loaded, desired))
    out.config = before != after
    return out


def _settings(text: str) -> str:
    """The config without its upstreams' server lines (those are compared one by one above) and its comment lines
    (the header names the inventory's digest, which every edit changes: no setting of nginx's)."""
    return re.sub(r"^\s*(?:server\s+[^{};]+;|#.*)\s*$", "", text, flags=re.M)


def _without_groups(text: str, groups: AbstractSet[str]) -> str:
    for group in groups:
        text = re.sub(rf"\bupstream\s+{re.escape(group)}\s*\{{[^}}]*\}}", "", text)
    return text
