"""Where nginx sends a key under `hash KEY consistent`: its ketama ring, rebuilt in Python, no I/O.

`rebalance` must know, for every held connection, the server a new connection with the same key
reaches now; asking nginx is not possible, so we compute what its stream module computes. The facts
below come from nginx's src/stream/ngx_stream_upstream_hash_module.c (the current source, where
`ngx_stream_upstream_update_chash` rebuilds the same ring when a `resolve` server changes, and an
older copy), ngx_stream_upstream_round_robin.c and ngx_stream_upstream.c, restated in our own
words; every rule below is checked against the nginx 1.22.1 of our image by tests/test_hashring.py.

The ring (`ngx_stream_upstream_init_chash`):
- Only primary peers take part, in the order of the `server` lines; a server whose name resolves to
  several addresses is one peer per address, every one carrying the same server text.
- The server text is the `server` directive's address exactly as written (`us->name = u.url` in
  `ngx_stream_upstream_server`). It is cut into host and port: `unix:` (any case) leaves the rest as
  host and no port; otherwise a run of trailing ASCII digits after the last `:` is the port and what
  precedes that `:` the host (`[::1]:80` -> `[::1]`, `80`); anything else is all host, no port.
- Each peer contributes 160 * weight points. Point j is the CRC-32 (ngx_crc32, the zlib/IEEE one) of
  host, one NUL byte, port and the previous point's value as 4 little-endian bytes (0 before the
  first point), so every point chains on the one before.
- Points are sorted by value; of equal values only the first is kept.

The lookup (`ngx_stream_upstream_init_chash_peer`, `ngx_stream_upstream_find_chash_point`,
`ngx_stream_upstream_get_chash_peer`):
- The key's CRC-32 (ngx_crc32_long) finds the first point whose value is >= it; past the last point
  the ring wraps to the first.
- The point's server text is looked up among the peers: a peer with that text that is not down (and,
  at run time, not failed by max_fails/fail_timeout nor full by max_conns) takes the connection;
  among several such peers (one name, several addresses) nginx picks by smooth weighted round robin.
- If none can, the walk moves to the next point; after 20 such moves (21 points looked at) nginx
  gives up on the key and falls back to round robin over all peers (`hp->tries > 20`). A group of a
  single peer and an empty key take round robin from the start. (Old versions walked every point
  and then failed instead; 1.22 has the limit.)
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UsageError
from .inventory.grammar import KEY_VARIABLES
from .inventory.model import Group

POINTS_PER_WEIGHT = 160
MAX_MOVES = 20  # points nginx moves on past the first before it falls back to round robin


def split_server(text: str) -> tuple[bytes, bytes]:
    """The (host, port) bytes nginx hashes for a `server` address text."""
    raw = text.encode()
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    digits = len(raw)
    while digits > 0 and raw[digits - 1:digits].isdigit():
        digits -= 1
    if digits > 0 and raw[digits - 1:digits] == b":":
        return raw[:digits - 1], raw[digits:]
    return raw, b""


def server_points(text: str, weight: int = 1) -> list[int]:
    """The `160 * weight` point values one peer with this server text puts on the ring, in order."""
    host, port = split_server(text)
    base = host + b"\0" + port
    points = []
    prev = 0
    for _ in range(POINTS_PER_WEIGHT * weight):
        prev = zlib.crc32(base + struct.pack("<I", prev))
        points.append(prev)
    return points


@dataclass(frozen=True)
class Peer:
    """One peer of the group: the server text as rendered, its weight, and whether it is marked down."""

    name: str
    weight: int = 1
    down: bool = False


@dataclass(frozen=True)
class Ring:
    """The sorted, de-duplicated points of one `hash ... consistent` group and the server of each."""

    peers: tuple[Peer, ...]
    values: tuple[int, ...]
    owners: tuple[str, ...]

    @classmethod
    def build(cls, servers: Iterable[Peer | tuple[str, int, bool]]) -> Ring:
        """The ring nginx builds for these primary servers, in `server` line order.

        A tuple is (server text, weight, down). A name nginx resolves to several addresses is passed
        once per address (nginx makes one peer per address, all with the same text). Raises
        ValueError for an empty group or a weight below 1 (nginx refuses both)."""
        peers = tuple(p if isinstance(p, Peer) else Peer(p[0], p[1], p[2]) for p in servers)
        if not peers:
            raise ValueError("a hash group needs at least one primary server")
        for peer in peers:
            if peer.weight < 1:
                raise ValueError(f"weight must be 1 or more; got {peer.weight} for {peer.name}")
        # Sorted by value, then by position: on equal values the earlier point is kept (the one a
        # stable sort leaves first). Only a 32-bit collision between two servers makes this matter.
        points = sorted((value, order, peer.name) for order, (value, peer) in
                        enumerate((v, p) for p in peers for v in server_points(p.name, p.weight)))
        values: list[int] = []
        owners: list[str] = []
        for value, _, name in points:
            if not values or values[-1] != value:
                values.append(value)
                owners.append(name)
        return cls(peers, tuple(values), tuple(owners))

    def first_point(self, key: bytes) -> int:
        """The index of the first point whose value is >= the key's CRC-32 (may be len: wraps to 0)."""
        return bisect.bisect_left(self.values, zlib.crc32(key))

    def lookup(self, key: bytes, unavailable: Iterable[str] = ()) -> str | None:
        """The server text a new connection with this key reaches, or None when the key does not decide
        it: nginx then balances round robin (the walk passed 21 points of unavailable servers, or the
        key is empty), or finds no live server at all.

        `unavailable` names servers that nginx skips at run time besides those marked down (failed by
        max_fails, full by max_conns); nginxctl cannot see that state, so the caller says it."""
        if not key:
            return None
        return self.lookup_from(self.first_point(key), unavailable)

    def shares(self, unavailable: Iterable[str] = ()) -> dict[str, float]:
        """The fraction of the 32-bit key-hash space each server text receives by key (0 for down ones).

        A point owns the hashes from just above the previous point up to itself (the first point also
        owns everything above the last), and hands them on to the next live point when its server is
        down: what uniformly spread keys would see. What falls to round robin (see `lookup`) is under
        the empty string."""
        out = {p.name: 0.0 for p in self.peers}
        count = len(self.values)
        for i in range(count):
            arc = (self.values[i] - self.values[i - 1]) % 2**32 if count > 1 else 2**32
            owner = self.lookup_from(i, unavailable)
            out[owner or ""] = out.get(owner or "", 0.0) + arc / 2**32
        return out

    def lookup_from(self, start: int, unavailable: Iterable[str] = ()) -> str | None:
        """The server nginx picks when its walk starts at point `start` (see `lookup`)."""
        skip = set(unavailable)
        live = {p.name for p in self.peers if not p.down and p.name not in skip}
        if len(self.peers) == 1:  # nginx: a single peer is served round robin, i.e. it or nothing
            return self.peers[0].name if live else None
        count = len(self.values)
        for step in range(MAX_MOVES + 1):
            owner = self.owners[(start + step) % count]
            if owner in live:
                return owner
        return None

    def lookup_index(self, key: bytes, unavailable: Iterable[str] = ()) -> int | None:
        """Like `lookup`, as the position of the first peer with that server text."""
        name = self.lookup(key, unavailable)
        if name is None:
            return None
        return next(i for i, p in enumerate(self.peers) if p.name == name)

    def point_count(self, name: str) -> int:
        """How many of the ring's points belong to this server text."""
        return sum(1 for owner in self.owners if owner == name)


class UnsupportedHashKey(UsageError):
    """A hash key nginxctl cannot evaluate for a held connection (exit 2 with the reason)."""

    def __init__(self, template: str, variable: str) -> None:
        self.template = template
        self.variable = variable
        super().__init__(
            f"a hash key nginxctl can compute is built from ${', $'.join(KEY_VARIABLES)} and plain "
            f"text; got ${variable} in hash key {template!r}")

    def to_dict(self) -> dict[str, str]:  # type: ignore[override]
        return {"type": type(self).__name__, "message": str(self), "key": self.template,
                "variable": self.variable}


# nginx's script compiler: `$` then a name of ASCII letters, digits and `_`, or the name in braces.
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]*)\}|([A-Za-z0-9_]*))")


def key_parts(template: str) -> list[tuple[str, str]]:
    """The template as ("text", literal) and ("var", name) parts; raises UnsupportedHashKey for any
    variable outside `KEY_VARIABLES` (so a caller can refuse a group before it looks at sockets)."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in _VARIABLE.finditer(template):
        if match.start() > pos:
            parts.append(("text", template[pos:match.start()]))
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in KEY_VARIABLES:
            raise UnsupportedHashKey(template, name)
        parts.append(("var", name))
        pos = match.end()
    if pos < len(template):
        parts.append(("text", template[pos:]))
    return parts


def key_for(template: str, remote_addr: str, remote_port: int, server_addr: str, server_port: int) -> bytes:
    """The bytes nginx hashes for one connection: `template` with its variables filled in.

    Addresses are nginx's text form (`127.0.0.5`, `::1`; see `address_text`). Raises
    UnsupportedHashKey for a variable other than $remote_addr, $remote_port, $server_addr,
    $server_port."""
    values = {"remote_addr": remote_addr, "remote_port": str(remote_port),
              "server_addr": server_addr, "server_port": str(server_port)}
    return "".join(values[v] if kind == "var" else v for kind, v in key_parts(template)).encode()


def address_text(packed: bytes) -> str:
    """An IPv4 (4 bytes) or IPv6 (16 bytes) address as nginx writes it in $remote_addr/$server_addr.

    IPv6 follows ngx_inet6_ntop: lowercase hex words without leading zeros, the first longest run of
    two or more zero words as `::`, and a dotted IPv4 tail for IPv4-mapped (`::ffff:a.b.c.d`) and
    IPv4-compatible addresses (all but the last two words zero, except `::` and `::1` forms)."""
    if len(packed) == 4:
        return ".".join(str(b) for b in packed)
    if len(packed) != 16:
        raise ValueError(f"an address is 4 or 16 bytes; got {len(packed)}")
    words = [packed[i] * 256 + packed[i + 1] for i in range(0, 16, 2)]
    zero, longest, run, run_start = -1, 1, 0, -1
    for i, word in enumerate(words):
        if word:
            if run > longest:
                zero, longest = run_start, run
            run = 0
            continue
        if run == 0:
            run_start = i
        run += 1
    if run > longest:
        zero, longest = run_start, run
    out = ""
    end = 8
    if zero == 0:
        if ((longest == 5 and words[5] == 0xFFFF) or longest == 6
                or (longest == 7 and packed[14] != 0 and packed[15] != 1)):
            end = 6
        out += ":"
    i = 0
    while i < end:
        if i == zero:
            out += ":"
            i += longest
            continue
        out += f"{words[i]:x}"
        if i < 7:
            out += ":"
        i += 1
    if end == 6:
        out += ".".join(str(b) for b in packed[12:])
    return out


def ring_for_group(group: Group) -> Ring:
    """The ring nginx builds for an inventory group's listed servers (address text as rendered).

    Backup servers are left out as nginx leaves them out (and the inventory refuses them with hash).
    A server given by host name stands for one peer here; nginx makes one per resolved address, with
    the same points, so the server text it maps a key to is the same."""
    return Ring.build(Peer(s.address.text, s.weight or 1, s.down) for s in group.servers if not s.backup)
