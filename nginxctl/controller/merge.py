"""Inventory + what the sources see -> the inventory `render` takes. Pure: data in, data out.

Discovered backends pass the same grammar as inventory values (`inventory.load.parse_server`): a
container with bad labels or an etcd key with a bad value is skipped whole, with the reason, and
never breaks the config for the others. A static server wins over a discovered one with the same
address. A discovering group with no server at all keeps its listen with one `down` placeholder, so
nginx accepts the config and closes connections that find no backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import InventoryError
from ..inventory import Group, Inventory, Server
from ..inventory.grammar import parse_server_address
from ..inventory.load import parse_server
from .model import Candidate, Snapshot

# Never connected to: nginx skips a `down` server. Port 9 is discard; the address only has to parse.
PLACEHOLDER = Server(address=parse_server_address("127.0.0.1:9"), down=True)


@dataclass(frozen=True)
class Skipped:
    source: str
    origin: str
    group: str
    reason: str


@dataclass
class Merged:
    inventory: Inventory
    rows: list[tuple[str, str, str]] = field(default_factory=list)   # (group, source, state) per server
    skipped: list[Skipped] = field(default_factory=list)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, address) -> source


def candidate_server(candidate: Candidate) -> Server:
    """Validate one discovered backend. Raises InventoryError with the reasons (no file position)."""
    fields = dict(candidate.fields)
    error = fields.pop("_error", None)
    if error:
        raise ValueError(error)
    if fields.get("address") is None:
        raise ValueError("no address: set the label nginxctl.port (and nginxctl.address when the container has "
                         "no IP nginx can reach)" if candidate.source == "docker" else "no address")
    return parse_server(fields, f"{candidate.source} {candidate.origin}")


def _state(server: Server) -> str:
    return "down" if server.down else "backup" if server.backup else "up"


def merge(inv: Inventory, snapshots: dict[str, Snapshot], down: frozenset[tuple[str, str]] = frozenset(),
          isolated: dict[tuple[str, str], str] | None = None) -> Merged:
    """The inventory with each discovering group's backends added from the latest snapshots.

    `down` are (group, address) pairs rendered `down` (health checks), for static and discovered servers.
    `isolated` are discovered (group, address) pairs nginx refused, with its reason: skipped like a bad label.
    """
    isolated = isolated or {}
    merged = Merged(inv)
    by_group: dict[str, list[Candidate]] = {}
    for snapshot in snapshots.values():
        for candidate in snapshot.candidates:
            by_group.setdefault(candidate.group, []).append(candidate)
    # A backend labelled for a group this inventory does not have belongs to another load balancer
    # sharing the engine (or etcd): not ours, not an error.
    groups: list[Group] = []
    for group in inv.upstreams:
        servers = list(group.servers)
        seen = {s.address.text for s in servers}
        for s in servers:
            merged.sources[(group.name, s.address.text)] = "static"
        wanted = group.discover
        for candidate in by_group.get(group.name, []):
            if wanted is None or candidate.source != wanted:
                continue  # the group does not discover from this source: its labels are not for us
            try:
                server = candidate_server(candidate)
            except (InventoryError, ValueError) as exc:
                reason = "; ".join(p.message if not p.path else f"{p.path}: {p.message}" for p in exc.problems) \
                    if isinstance(exc, InventoryError) else str(exc)
                merged.skipped.append(Skipped(candidate.source, candidate.origin, group.name, reason))
                continue
            if (group.name, server.address.text) in isolated:
                merged.skipped.append(Skipped(candidate.source, candidate.origin, group.name,
                                              f"nginx refuses {server.address.text}: "
                                              f"{isolated[(group.name, server.address.text)]}"))
                continue
            if server.address.text in seen:
                merged.skipped.append(Skipped(candidate.source, candidate.origin, group.name,
                                              f"{server.address.text} is already a server of '{group.name}'"))
                continue
            if server.backup and group.balance in ("hash", "random", "random_two_least_conn"):
                merged.skipped.append(Skipped(candidate.source, candidate.origin, group.name,
                                              f"backup is not supported with balance {group.balance}"))
                continue
            seen.add(server.address.text)
            merged.sources[(group.name, server.address.text)] = candidate.source
            servers.append(server)
        servers = [replace(s, down=True) if (group.name, s.address.text) in down else s for s in servers]
        for s in servers:
            merged.rows.append((group.name, merged.sources[(group.name, s.address.text)], _state(s)))
        if not servers:
            servers = [PLACEHOLDER]
        groups.append(replace(group, servers=tuple(servers)))
    merged.inventory = replace(inv, upstreams=tuple(groups))
    return merged
