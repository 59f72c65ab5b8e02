"""Edit the inventory in place for drain/undrain, keeping the user's comments, quotes and layout.

Pure: text in, text out (ruamel.yaml round-trip). The inventory stays the one source of truth, so a
drained server is a `down: true` the user can read, commit and review.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.util import load_yaml_guess_indent

from .errors import UsageError
from .inventory.grammar import Invalid, parse_server_address


@dataclass(frozen=True)
class Edit:
    text: str
    changed: bool
    address: str  # the server as nginx names it, e.g. 127.0.0.1:7001


def _yaml(text: str) -> tuple[YAML, Any]:
    _, indent, offset = load_yaml_guess_indent(text)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=indent or 2, offset=offset or 0)
    return yaml, yaml.load(text)


def _canonical(value: Any) -> str | None:
    try:
        return parse_server_address(str(value)).text
    except Invalid:
        return None


def _find(doc: Any, group: str, server: str) -> tuple[list[Any], int, str]:
    try:
        wanted = parse_server_address(server).text
    except Invalid as exc:
        raise UsageError(f"server {server!r}: {exc}") from None
    upstreams = doc.get("upstreams") if isinstance(doc, dict) else None
    if not isinstance(upstreams, dict) or group not in upstreams:
        known = ", ".join(upstreams) if isinstance(upstreams, dict) else "none"
        raise UsageError(f"no group '{group}' in the inventory (groups: {known})")
    servers = upstreams[group].get("servers") if isinstance(upstreams[group], dict) else None
    if not isinstance(servers, list):
        raise UsageError(f"group '{group}' has no servers list")
    addresses = []
    for i, item in enumerate(servers):
        address = _canonical(item.get("address") if isinstance(item, dict) else item)
        if address == wanted:
            return servers, i, wanted
        addresses.append(str(address))
    raise UsageError(f"no server {wanted} in group '{group}' (servers: {', '.join(addresses)})")


def _flags(item: Any) -> tuple[bool, bool]:
    return (bool(item.get("backup")), bool(item.get("down"))) if isinstance(item, dict) else (False, False)


def set_down(text: str, group: str, server: str, down: bool, *, force: bool = False) -> Edit:
    """Mark `server` of `group` down (drain) or not (undrain).

    Raises UsageError for an unknown group or server, and for draining the last server that takes
    new connections unless `force` (then only when a backup can take over).
    """
    yaml, doc = _yaml(text)
    servers, index, address = _find(doc, group, server)
    item = servers[index]
    backup, is_down = _flags(item)
    if is_down == down:
        return Edit(text, False, address)
    if down and not backup:
        live_primaries = [s for s in servers if _flags(s) == (False, False)]
        backups_up = [s for s in servers if _flags(s) == (True, False)]
        if len(live_primaries) <= 1:
            if not force:
                raise UsageError(f"{address} is the last server of '{group}' taking new connections; draining "
                                 "it leaves nothing to send them to. Add a server first, or pass --force")
            if not backups_up:
                raise UsageError(f"{address} is the last server of '{group}' and no backup can take over: even "
                                 "with --force nginx would have nowhere to send connections")
            doc["upstreams"][group]["allow_no_primary"] = True
    if down:
        if isinstance(item, dict):
            item["down"] = True
        else:
            entry = CommentedMap([("address", item), ("down", True)])
            entry.fa.set_flow_style()
            servers[index] = entry
    else:
        del item["down"]
        if list(item) == ["address"]:  # back to the short form drain made it from
            servers[index] = item["address"]
        group_map = doc["upstreams"][group]
        if not backup and group_map.get("allow_no_primary"):
            del group_map["allow_no_primary"]  # a primary serves again
    out = io.StringIO()
    yaml.dump(doc, out)
    return Edit(out.getvalue(), True, address)
