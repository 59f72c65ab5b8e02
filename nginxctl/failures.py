"""What nginx's passive checks saw lately, as `status` reports it: the servers nginx failed to connect to (refused,
timed out; a UDP server refusing datagrams) in the last minute of its error log, per group, when `max_fails` took
one out and whether its `fail_timeout` still keeps it out, and how often a group had no live server at all.
Without a `health_check` this is the only sign of a dead server: its state in the loaded config stays `up`, and
nginx passes each refused connect on to the next server.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from .clock import utc_text
from .errors import EnvironmentProblem
from .inventory.grammar import Invalid, parse_duration_seconds
from .nginx import LiveNginx
from .nginxtext import (
    LoadedGroup,
    LogFailures,
    UpstreamFailures,
    error_log_level,
    error_log_of,
    listen_port,
    server_param,
    upstream_failures,
)
from .pool import Pool, host_port
from .view import ServerView

WINDOW = 60              # seconds of nginx's error log read
LOG_LINES = 20_000       # the lines read from the end of nginx's stderr (the engine reads them from the end)
LOG_TAIL = 1 << 20       # the bytes kept from the end of an error log file
FAIL_TIMEOUT = 10.0      # nginx's default fail_timeout


def read_failures(live: LiveNginx, loaded: str | None, notes: list[str]) -> LogFailures:
    """What nginx logged of its servers' failures in the last WINDOW seconds (nothing, with a note saying why, when
    its error log cannot be read, does not log them, or was cut)."""
    where, level = error_log_of(loaded), error_log_level(loaded)
    if level in ("crit", "alert", "emerg") or not (where == "stderr" or where.startswith("/")):
        notes.append(f"nginx's failed connects to its servers unknown: it logs to {where} at level {level}")
        return LogFailures()
    since = time.time() - WINDOW
    try:
        if where == "stderr":
            text = live.log_since(("stderr", since), tail=LOG_LINES, timestamps=True)
            cut = text.count("\n") >= LOG_LINES
        else:
            content, cut = live.read_tail(where, LOG_TAIL)
            text = content.decode(errors="replace")
    except EnvironmentProblem as exc:
        notes.append(f"nginx's failed connects to its servers unknown: {exc}")
        return LogFailures()
    if cut:
        notes.append(f"nginx logged more than {LOG_LINES if where == 'stderr' else LOG_TAIL} "
                     f"{'lines' if where == 'stderr' else 'bytes'} lately: its failed connects were read from the "
                     "last of them only (older ones in the last minute are not counted)")
    return upstream_failures(text, since)


def failure_rows(views: dict[str, list[ServerView]], groups: dict[str, LoadedGroup], pool: Pool | None,
                 found: LogFailures, notes: list[str]) -> list[dict[str, Any]]:
    """The servers nginx failed to connect to lately, each with its group (told apart by the listen nginx logged: a
    server shared by two groups is counted for the one whose clients failed): the loaded config's (`in_config`),
    then those an old generation still connects to or that were removed since (by their address in an earlier
    config when the pool knows it, else as nginx logged it). A group whose clients found no live server at all gets
    a note."""
    called: dict[tuple[str, str], list[str]] = {}   # each server's addresses as nginx logs what it connects to
    logged_as: dict[tuple[str, str], str] = {}       # (group, address as nginx logs it) -> the server's address
    for (ip, port), server in (pool.endpoints if pool is not None else {}).items():
        text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        called.setdefault((server.group, server.address), []).append(text)
        logged_as[(server.group, text)] = server.address
    rows = []
    for name, servers in views.items():
        g = groups.get(name)
        ours = {_key(listen_port(listen), g.protocol == "udp") for listen in g.listen} if g else set()
        mine = {key: f for key, f in found.servers.items() if _logged(key[0]) in ours}
        for s in servers:
            names = {s.address, *called.get((name, s.address), [])}
            seen = [mine.pop(key) for key in [k for k in mine if k[1] in names]]
            if seen:
                rows.append({"group": name, "address": s.address, **_row(seen, s.flags)})
        gone: dict[str, list[UpstreamFailures]] = {}
        if any(not _literal(s.address) and (name, s.address) not in called for s in servers):
            mine = {}   # a host name nginx resolved, its addresses unknown here: what is left may be that server's
        for (_, upstream), f in mine.items():
            gone.setdefault(logged_as.get((name, upstream), upstream), []).append(f)
        rows += [{"group": name, "address": address, **_row(seen, None)}
                 for address, seen in sorted(gone.items())]
        turned_away = sum(n for listen, n in found.no_live.items() if _logged(listen) in ours)
        if turned_away:
            notes.append(f"nginx found no live server in {name} for {turned_away} client(s) in the last {WINDOW}s: "
                         "they were refused")
    return rows


def _literal(address: str) -> bool:
    """Whether a server address is written as nginx logs its connects (an IP and port, a unix: path)."""
    hp = host_port(address)
    if hp is None:
        return address.lower().startswith("unix:")
    try:
        ipaddress.ip_address(hp[0])
    except ValueError:
        return False
    return True


def _key(port: str, udp: bool) -> str:
    """A listen by protocol and port: how a listen nginx logged is told to be a group's."""
    return f"{'udp ' if udp else ''}{port}"


def _logged(listen: str) -> str:
    """The key of a listen as nginx logs it (`udp ` leading a UDP one)."""
    return _key(listen_port(listen), listen.startswith("udp "))


def _row(seen: list[UpstreamFailures], flags: tuple[str, ...] | None) -> dict[str, Any]:
    """One server's failures; `flags`: its parameters in the loaded config, None when that no longer has it (then
    nginx's passive check no longer applies to it: no fail_timeout, not out or in)."""
    latest = max(seen, key=lambda f: f.last)
    taken = max((f.taken_out for f in seen if f.taken_out is not None), default=None)
    now = time.time()
    fail_timeout = None if flags is None else _fail_timeout(flags)
    return {"in_config": flags is not None, "count": sum(f.count for f in seen), "window_seconds": WINDOW,
            "last": utc_text(latest.last),
            "seconds_ago": max(0, round(now - latest.last)), "error": latest.error,
            "taken_out_seconds_ago": None if taken is None else max(0, round(now - taken)),
            "fail_timeout_seconds": fail_timeout,
            "out_now": None if fail_timeout is None else taken is not None and now - taken < fail_timeout}


def _fail_timeout(flags: tuple[str, ...]) -> float:
    value = server_param(flags, "fail_timeout")
    try:
        return FAIL_TIMEOUT if value is None else parse_duration_seconds(value).seconds
    except Invalid:
        return FAIL_TIMEOUT
