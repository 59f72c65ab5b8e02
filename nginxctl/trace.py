"""Map nginx's error messages (`... in /path/nginx.conf:57`) back to the inventory line they came from."""

from __future__ import annotations

import re

from .inventory.model import Inventory
from .inventory.yamlsource import KeyPath, format_path

_WHERE = re.compile(r"\s+in\s+(\S+):([0-9]+)\s*$")


def _key_for_line(rendered_lines: list[str], number: int, inv: Inventory) -> KeyPath | None:
    group = None
    for line in rendered_lines[:number]:
        m = re.match(r"\s*upstream\s+(\S+)\s*\{", line)
        if m:
            group = inv.group(m.group(1))
    if group is None:
        return ("nginx",)
    line = rendered_lines[number - 1].strip() if number <= len(rendered_lines) else ""
    m = re.match(r"server\s+(\S+)", line)
    if m:
        for i, server in enumerate(group.servers):
            if server.address.text == m.group(1):
                return ("upstreams", group.name, "servers", i)
    if line.startswith("listen"):
        return ("upstreams", group.name, "listen")
    name = line.split(" ", 1)[0]
    return ("upstreams", group.name, name) if name.startswith("proxy_") else ("upstreams", group.name)


def trace(output: str, rendered: str, inv: Inventory) -> list[str]:
    """For each [emerg] line of nginx `output` that names a line of `rendered`, where it came from."""
    lines = rendered.splitlines()
    out = []
    for message in output.splitlines():
        if "[emerg]" not in message:
            continue
        m = _WHERE.search(message)
        if not m:
            continue
        path = _key_for_line(lines, int(m.group(2)), inv)
        named = re.search(r'in upstream "([^"]+)"', message)
        if named and path and len(path) >= 2 and path[0] == "upstreams":
            group = inv.group(path[1])
            for i, server in enumerate(group.servers if group else ()):
                if server.address.text == named.group(1):
                    path = ("upstreams", path[1], "servers", i)
        if path is None or inv.positions is None:
            continue
        what = message[message.index("[emerg]") + len("[emerg]"):]
        what = _WHERE.sub("", re.sub(r"^\s*[0-9]+#[0-9]+:\s*", "", what)).strip()
        out.append(f"{inv.positions.locate(path)}: {format_path(path)}: nginx: {what}")
    return out
