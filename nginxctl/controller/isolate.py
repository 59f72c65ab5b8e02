"""Which discovered servers made nginx reject a config. Pure: nginx's output and the rendered text in.

A discovered backend can pass the grammar and still be refused by nginx (`host not found in upstream`: a
name nginx cannot resolve where it runs). nginx names the file and line it refused; the rendered text says
which `server` stands there and in which `upstream`. Only discovered servers are ever blamed: a static
server of the inventory is the inventory author's to fix (a located error, as `apply` gives).
"""

from __future__ import annotations

import re

_WHERE = re.compile(r"\[emerg\].*? in \S+?:(\d+)\s*$")
_QUOTED = re.compile(r'"([^"]+)"')
_PREFIX = re.compile(r"^\s*\d+#\d+:")  # the error log's pid#tid (nginx -t prints none)
_UPSTREAM = re.compile(r"^\s*upstream\s+(\S+)\s*\{")
_SERVER = re.compile(r"^\s*server\s+(\S+)")


def _server_at(rendered: list[str], line: int) -> tuple[str, str] | None:
    """(group, address) of the `server` line `line` (1-based) of the rendered config, if it is one."""
    if not 1 <= line <= len(rendered):
        return None
    m = _SERVER.match(rendered[line - 1])
    if m is None:
        return None
    for above in reversed(rendered[:line - 1]):
        g = _UPSTREAM.match(above)
        if g:
            return g.group(1), m.group(1).rstrip(";")
        if above.strip() == "}":
            return None
    return None


def culprits(output: str, rendered: str, discovered: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The discovered (group, address) pairs nginx's rejection points at, with nginx's own words:
    [(group, address, message)]. Empty when the rejection is not about a discovered server."""
    lines = rendered.splitlines()
    found: dict[tuple[str, str], str] = {}
    for message in output.splitlines():
        if "[emerg]" not in message:
            continue
        said = _PREFIX.sub("", message.split("[emerg]", 1)[1]).strip()
        m = _WHERE.search(message)
        at = _server_at(lines, int(m.group(1))) if m else None
        if at is not None and at in discovered:
            found.setdefault(at, said)
            continue
        # nginx quotes the address it could not use ("host not found in upstream "name:port""): match it
        for quoted in _QUOTED.findall(message):
            for pair in discovered:
                if pair[1] == quoted:
                    found.setdefault(pair, said)
    return [(g, a, why) for (g, a), why in found.items()]
