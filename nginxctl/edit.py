"""Edit the inventory in place for drain/undrain: the smallest textual change, nothing else moves.

Pure: text in, text out. The YAML is composed only to learn where things sit; each edit inserts or
removes a few characters at those positions, so comments, alignment, quoting, flow or block style
stay exactly as written, and undrain after drain gives back the original bytes. Every edit is checked
by loading the result: it must be the original data with only the intended change. The inventory
stays the one source of truth, so a drained server is a `down: true` the user can read, commit and
review.

What drain writes, and undrain takes away again:
- a short form `- 10.0.0.6:6666` (or an item of `[a, b]`) becomes `{address: 10.0.0.6:6666, down: true}`;
- a flow mapping `{address: ..., weight: 5}` gets `, down: true` before its `}` (`{address: ...}`
  alone gets `down: true, ` after its `{`, so that undrain can tell it from a short form);
- a block mapping gets a `down: true` line after its last key;
- `drain --force` of the last primary adds `allow_no_primary: true` as the group's first key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .errors import InventoryError, UsageError
from .inventory.grammar import Invalid, parse_server_address
from .inventory.yamlsource import parse_yaml, yaml, yaml_loader

_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Edit:
    text: str
    changed: bool
    address: str  # the server as nginx names it, e.g. 127.0.0.1:7001


class _Text:
    """The inventory text and the edits to make to it, as (start, end, replacement) spans."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.spans: list[tuple[int, int, str]] = []

    def replace(self, start: int, end: int, new: str) -> None:
        self.spans.append((start, end, new))

    def line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def after_line(self, index: int) -> int:
        """Where the line holding `index` ends, its line break included."""
        end = self.text.find("\n", index)
        return len(self.text) if end < 0 else end + 1

    def result(self) -> str:
        out = self.text
        for start, end, new in sorted(self.spans, reverse=True):
            out = out[:start] + new + out[end:]
        return out


def _refuse(what: str) -> UsageError:
    return UsageError(f"cannot {what} without rewriting other parts of the inventory: edit it by hand")


def _get(node: yaml.Node | None, key: str) -> tuple[int, yaml.Node, yaml.Node] | None:
    """(index, key node, value node) of `key` written in the mapping `node` itself (not merged in by <<)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for i, (k, v) in enumerate(node.value):
        if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE and k.value == key:
            return i, k, v
    return None


def _start(node: yaml.Node) -> int:
    return int(node.start_mark.index)


def _end(node: yaml.Node) -> int:
    return int(node.end_mark.index)


def _scalar_source(doc: _Text, node: yaml.Node, what: str) -> str:
    """The scalar as written (quotes included), when it can be moved into a flow mapping as is."""
    source = doc.text[_start(node):_end(node)]
    if not isinstance(node, yaml.ScalarNode) or node.style not in (None, "", "'", '"') or "\n" in source:
        raise _refuse(what)
    return source


def _add_key(doc: _Text, mapping: yaml.MappingNode, key: str, what: str, *, first: bool) -> None:
    """Add `key: true` to `mapping`: as its first key (`first`) or after its last one."""
    pairs = mapping.value
    entry = f"{key}: true"
    if mapping.flow_style:
        if first or len(pairs) == 1:
            doc.replace(_start(pairs[0][0]), _start(pairs[0][0]), entry + ", ")
        else:
            doc.replace(_end(pairs[-1][1]), _end(pairs[-1][1]), ", " + entry)
        return
    indent = " " * pairs[0][0].start_mark.column
    if first:
        line = doc.line_start(_start(pairs[0][0]))
        if doc.text[line:_start(pairs[0][0])].strip():
            raise _refuse(what)
        doc.replace(line, line, indent + entry + doc.newline)
        return
    last = pairs[-1][1]
    if not isinstance(last, yaml.ScalarNode) or last.style in ("|", ">"):
        raise _refuse(what)
    at = doc.after_line(_end(last))
    if doc.text.endswith("\n") or at < len(doc.text):
        doc.replace(at, at, indent + entry + doc.newline)
    else:  # the last line has no line break: neither has the new one
        doc.replace(at, at, doc.newline + indent + entry)


def _remove_key(doc: _Text, mapping: yaml.MappingNode, index: int, what: str) -> None:
    """Remove the pair at `index` of `mapping`: the exact inverse of _add_key."""
    pairs = mapping.value
    key, value = pairs[index]
    if index + 1 < len(pairs):  # the next key takes its place (and its indentation)
        doc.replace(_start(key), _start(pairs[index + 1][0]), "")
    elif mapping.flow_style:
        doc.replace(_end(pairs[index - 1][1]), _end(value), "")
    else:
        line = doc.line_start(_start(key))
        if index == 0 or doc.text[line:_start(key)].strip():
            raise _refuse(what)
        at = doc.after_line(_end(value))
        if at == len(doc.text) and not doc.text.endswith("\n"):
            line -= len(doc.newline)  # the last line, with no line break: take the one before it
        doc.replace(line, at, "")


def _canonical(value: Any) -> str | None:
    try:
        return parse_server_address(value).text
    except Invalid:
        return None


def _discovered(group: str, address: str, listed: list[str], discover: Any, down: bool) -> UsageError:
    """`address` is not listed in `group`, which discovers servers: drain cannot mark it down in the inventory.
    The refusal says how to do it at the source (Docker labels cannot change on a running container)."""
    etcd = discover.get("etcd") if isinstance(discover, dict) else None
    source = f"etcd (keys under {etcd})" if etcd else "docker"
    head = (f"no server {address} in group '{group}' (servers: {', '.join(listed)}); if it is a backend discovered "
            f"from {source}: ") if listed else \
        f"{address} is not listed in group '{group}', whose servers are discovered from {source}: "
    if not down:
        return UsageError(head + "undrain changes only the servers the inventory lists (a discovered backend comes "
                          "back when its source lists it again)")
    first, then = ("delete its key", f'set its value to {{"address": "{address}", "down": true}}') if etcd else (
        "stop or remove its container", f"add {{address: {address}, down: true}} to the group's servers: (a listed "
        "server wins over a discovered one with the same address) and run this drain again")
    return UsageError(head + "drain marks down only the servers the inventory lists. Drain a discovered backend at "
                      f"its source: {first} (nginxctl watch, or the next apply --reload, takes it out); or, to send it "
                      f"no new connections while its open ones finish, {then}")


def _find(data: Any, root: yaml.Node | None, group: str, server: str, down: bool = True) \
        -> tuple[yaml.MappingNode, yaml.SequenceNode, int, str]:
    """(group node, servers node, index, canonical address) of `server` in `group`. Raises UsageError."""
    try:
        wanted = parse_server_address(server).text
    except Invalid as exc:
        raise UsageError(f"server {server!r}: {exc}") from None
    upstreams = data.get("upstreams") if isinstance(data, dict) else None
    if not isinstance(upstreams, dict) or group not in upstreams:
        known = ", ".join(upstreams) if isinstance(upstreams, dict) else "none"
        raise UsageError(f"no group '{group}' in the inventory (groups: {known})")
    servers = upstreams[group].get("servers") if isinstance(upstreams[group], dict) else None
    discover = upstreams[group].get("discover") if isinstance(upstreams[group], dict) else None
    if not isinstance(servers, list):
        if discover is not None:
            raise _discovered(group, wanted, [], discover, down)
        raise UsageError(f"group '{group}' has no servers list")
    addresses = []
    for i, item in enumerate(servers):
        address = _canonical(item.get("address") if isinstance(item, dict) else item)
        if address == wanted:
            found = _get(root, "upstreams")
            group_node = _get(found[2], group) if found else None
            servers_node = _get(group_node[2], "servers") if group_node else None
            if group_node is None or servers_node is None or not isinstance(group_node[2], yaml.MappingNode) \
                    or not isinstance(servers_node[2], yaml.SequenceNode) or len(servers_node[2].value) != len(servers):
                raise _refuse(f"change {wanted} of '{group}', which YAML merges in with <<,")
            return group_node[2], servers_node[2], i, wanted
        addresses.append(str(address))
    if discover is not None:
        raise _discovered(group, wanted, addresses, discover, down)
    raise UsageError(f"no server {wanted} in group '{group}' (servers: {', '.join(addresses)})")


def _flags(item: Any) -> tuple[bool, bool]:
    return (bool(item.get("backup")), bool(item.get("down"))) if isinstance(item, dict) else (False, False)


def _load(text: str) -> tuple[Any, yaml.Node | None]:
    try:
        data, _, _ = parse_yaml(text, "inventory")
        loader = yaml_loader()(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except (InventoryError, yaml.YAMLError) as exc:
        raise UsageError(f"the inventory cannot be edited: {exc}") from None
    return data, root


def set_down(text: str, group: str, server: str, down: bool, *, force: bool = False) -> Edit:
    """Mark `server` of `group` down (drain) or not (undrain), by the smallest textual edit.

    Raises UsageError for an unknown group or server, for draining the last server that takes new
    connections unless `force` (then only when a backup can take over), and for a server the text
    cannot be edited in place for (merged in with `<<`, a block scalar).
    """
    data, root = _load(text)
    group_node, servers_node, index, address = _find(data, root, group, server, down)
    group_data = data["upstreams"][group]
    servers = group_data["servers"]
    backup, is_down = _flags(servers[index])
    if is_down == down:
        return Edit(text, False, address)
    doc = _Text(text)
    expected = copy.deepcopy(data)
    new_group = expected["upstreams"][group]
    node = servers_node.value[index]
    what = f"mark {address} of '{group}' {'down' if down else 'up'}"
    if down:
        if not backup and sum(_flags(s) == (False, False) for s in servers) <= 1:
            if not force:
                raise UsageError(f"{address} is the last server of '{group}' taking new connections; draining "
                                 "it leaves nothing to send them to. Add a server first, or pass --force")
            if not any(_flags(s) == (True, False) for s in servers):
                raise UsageError(f"{address} is the last server of '{group}' and no backup can take over: even "
                                 "with --force nginx would have nowhere to send connections")
            if not group_data.get("allow_no_primary"):
                flag = _get(group_node, "allow_no_primary")
                if flag is not None:
                    doc.replace(_start(flag[2]), _end(flag[2]), "true")
                else:
                    _add_key(doc, group_node, "allow_no_primary", what, first=True)
                new_group["allow_no_primary"] = True
        if isinstance(node, yaml.ScalarNode):
            doc.replace(_start(node), _end(node), f"{{address: {_scalar_source(doc, node, what)}, down: true}}")
            new_group["servers"][index] = {"address": servers[index], "down": True}
        else:
            flag = _get(node, "down")
            if flag is not None:
                doc.replace(_start(flag[2]), _end(flag[2]), "true")
            else:
                _add_key(doc, node, "down", what, first=False)
            new_group["servers"][index]["down"] = True
    else:
        flag = _get(node, "down")
        if flag is None:
            raise _refuse(what + " (its down: true comes from a << merge)")
        first_value = node.value[0][1]
        source = doc.text[_start(first_value):_end(first_value)]
        if [k.value for k, _ in node.value] == ["address", "down"] and \
                doc.text[_start(node):_end(node)] == f"{{address: {source}, down: true}}":
            # exactly what drain makes of a short form: back to it
            doc.replace(_start(node), _end(node), _scalar_source(doc, first_value, what))
            new_group["servers"][index] = servers[index]["address"]
        else:
            _remove_key(doc, node, flag[0], what)
            del new_group["servers"][index]["down"]
        allow = _get(group_node, "allow_no_primary")
        if not backup and group_data.get("allow_no_primary") and allow is not None:
            _remove_key(doc, group_node, allow[0], what)  # a primary serves again
            del new_group["allow_no_primary"]
    new_text = doc.result()
    try:
        result, _, _ = parse_yaml(new_text, "inventory")
    except InventoryError:
        result = None
    if result != expected:
        raise _refuse(what)
    return Edit(new_text, True, address)
