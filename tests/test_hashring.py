"""nginxctl.hashring maps a key where nginx's `hash KEY consistent` maps it.

Pure tests pin the ring's rules (points per weight, chaining, down servers, wrap-around, keys); the
integration tests ask a real nginx: 250 source addresses in 127.0.0.0/8 connect through it, and the
backend each one reaches must be the server the ring predicts, for every one of them.
"""

from __future__ import annotations

import io
import ipaddress
import random
import socket
import struct
import tarfile
import time
import zlib
from collections import Counter

import pytest
from nginxctl.hashring import (
    POINTS_PER_WEIGHT,
    Peer,
    Ring,
    UnsupportedHashKey,
    address_text,
    key_for,
    key_parts,
    ring_for_group,
    server_points,
    split_server,
)
from nginxctl.inventory.load import parse_inventory

from helpers import TIMEOUT, Backend, cli, read_line

THREE = [("127.0.0.1:9001", 1, False), ("127.0.0.1:9002", 1, False), ("127.0.0.1:9003", 1, False)]
KEYS = [f"10.{i // 256}.{i % 256}.7".encode() for i in range(2000)]


# --- pure -----------------------------------------------------------------------------------------

def test_a_point_is_the_crc32_of_host_nul_port_and_the_previous_point() -> None:
    points = server_points("127.0.0.1:9001")
    assert len(points) == POINTS_PER_WEIGHT
    assert points[0] == zlib.crc32(b"127.0.0.1\x009001" + b"\0\0\0\0")
    assert points[1] == zlib.crc32(b"127.0.0.1\x009001" + struct.pack("<I", points[0]))


def test_server_text_is_cut_like_nginx_does() -> None:
    assert split_server("127.0.0.1:9001") == (b"127.0.0.1", b"9001")
    assert split_server("[::1]:6666") == (b"[::1]", b"6666")
    assert split_server("db.local:3306") == (b"db.local", b"3306")
    assert split_server("unix:/run/app.sock") == (b"/run/app.sock", b"")
    assert split_server("UNIX:/run/app.sock") == (b"/run/app.sock", b"")
    assert split_server("db.local") == (b"db.local", b"")
    assert split_server("host:ab") == (b"host:ab", b"")


def test_the_ring_is_deterministic_sorted_and_unique() -> None:
    one, two = Ring.build(THREE), Ring.build(list(THREE))
    assert one == two
    assert list(one.values) == sorted(set(one.values))
    assert len(one.values) == 3 * POINTS_PER_WEIGHT
    assert [one.lookup(k) for k in KEYS] == [two.lookup(k) for k in KEYS]


def test_weight_multiplies_the_points_and_the_share() -> None:
    ring = Ring.build([("127.0.0.1:9001", 3, False), ("127.0.0.1:9002", 1, False), ("127.0.0.1:9003", 1, False)])
    assert [ring.point_count(p.name) for p in ring.peers] == [480, 160, 160]
    share = Counter(ring.lookup(k) for k in KEYS)
    assert share["127.0.0.1:9001"] > share["127.0.0.1:9002"] + share["127.0.0.1:9003"] - 200


def test_lookup_takes_the_first_point_at_or_after_the_key_and_wraps() -> None:
    ring = Ring.build(THREE)
    for key in KEYS[:200]:
        h = zlib.crc32(key)
        owner = next((o for v, o in zip(ring.values, ring.owners, strict=True) if v >= h), ring.owners[0])
        assert ring.lookup(key) == owner
    # a key hashing above the last point wraps to the first point's server
    above = next(k for k in (str(i).encode() for i in range(10**6)) if zlib.crc32(k) > ring.values[-1])
    assert ring.first_point(above) == len(ring.values)
    assert ring.lookup(above) == ring.owners[0]


def test_a_down_server_keeps_its_points_and_its_keys_move_to_the_next_point() -> None:
    up = Ring.build(THREE)
    down = Ring.build([THREE[0], (THREE[1][0], 1, True), THREE[2]])
    assert down.values == up.values  # down peers still place their points
    for key in KEYS:
        before, after = up.lookup(key), down.lookup(key)
        assert after != "127.0.0.1:9002"
        if before != "127.0.0.1:9002":
            assert after == before
        else:
            i = up.first_point(key)
            assert after == next((up.owners[(i + s) % len(up.owners)] for s in range(21)
                                  if up.owners[(i + s) % len(up.owners)] != "127.0.0.1:9002"), None)
    assert down.lookup(b"x", unavailable=["127.0.0.1:9001", "127.0.0.1:9003"]) is None
    assert Ring.build([(n, 1, True) for n, _, _ in THREE]).lookup(b"x") is None


def test_after_21_points_of_unavailable_servers_the_key_no_longer_decides() -> None:
    servers = [(f"127.0.0.1:{9000 + i}", 1, i >= 2) for i in range(30)]  # 2 up, 28 down
    ring = Ring.build(servers)
    live = {"127.0.0.1:9000", "127.0.0.1:9001"}
    undecided = 0
    for key in KEYS:
        i = ring.first_point(key)
        walk = [ring.owners[(i + s) % len(ring.owners)] for s in range(21)]
        first_live = next((o for o in walk if o in live), None)
        assert ring.lookup(key) == first_live
        undecided += first_live is None
    assert 0.15 * len(KEYS) < undecided < 0.35 * len(KEYS)  # (28/30)**21 = 0.23
    assert ring.shares()[""] > 0.15
    assert ring.lookup(b"") is None  # an empty key: round robin


def test_a_single_server_takes_every_key_unless_it_is_down() -> None:
    assert Ring.build([THREE[0]]).lookup(b"k") == THREE[0][0]
    assert Ring.build([(THREE[0][0], 1, True)]).lookup(b"k") is None


def test_adding_a_server_moves_keys_only_to_it() -> None:
    three = Ring.build(THREE)
    four = Ring.build([*THREE, ("127.0.0.1:9004", 1, False)])
    moved = [k for k in KEYS if three.lookup(k) != four.lookup(k)]
    assert all(four.lookup(k) == "127.0.0.1:9004" for k in moved)
    share = four.shares()["127.0.0.1:9004"]
    assert 0.15 < share < 0.35
    assert abs(len(moved) / len(KEYS) - share) < 4 * (share * (1 - share) / len(KEYS)) ** 0.5


def test_shares_cover_the_key_space_and_follow_down_servers() -> None:
    ring = Ring.build(THREE)
    shares = ring.shares()
    assert abs(sum(shares.values()) - 1) < 1e-9
    down = Ring.build([THREE[0], (THREE[1][0], 1, True), THREE[2]]).shares()
    assert down["127.0.0.1:9002"] == 0
    assert abs(down["127.0.0.1:9001"] + down["127.0.0.1:9003"] - 1) < 1e-9
    assert down["127.0.0.1:9001"] >= shares["127.0.0.1:9001"]
    assert Ring.build([THREE[0]]).shares() == {"127.0.0.1:9001": 1.0}
    assert "" not in shares


def test_a_name_repeated_for_each_address_maps_keys_to_that_name() -> None:
    once = Ring.build([("db.local:5432", 1, False), ("127.0.0.1:9001", 1, False)])
    twice = Ring.build([("db.local:5432", 1, False), ("db.local:5432", 1, True), ("127.0.0.1:9001", 1, False)])
    assert once.values == twice.values
    assert [once.lookup(k) for k in KEYS[:300]] == [twice.lookup(k) for k in KEYS[:300]]
    assert twice.lookup_index(b"k") in (0, 2)


def test_bad_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Ring.build([])
    with pytest.raises(ValueError, match="weight must be 1 or more"):
        Ring.build([Peer("127.0.0.1:1", 0)])


def test_keys_from_the_four_variables_and_text() -> None:
    assert key_for("$remote_addr", "127.0.0.5", 40000, "127.0.0.1", 80) == b"127.0.0.5"
    assert key_for("$remote_addr:$remote_port", "127.0.0.5", 40000, "127.0.0.1", 80) == b"127.0.0.5:40000"
    assert key_for("x${server_port}-$server_addr", "::1", 1, "::1", 80) == b"x80-::1"
    assert key_for("fixed", "1.2.3.4", 1, "1.2.3.4", 1) == b"fixed"


@pytest.mark.parametrize("template, variable", [("$binary_remote_addr", "binary_remote_addr"),
                                                ("$remote_addr$ssl_preread_server_name", "ssl_preread_server_name"),
                                                ("$remote_addrx", "remote_addrx"), ("a$", "")])
def test_other_variables_are_refused_with_the_reason(template: str, variable: str) -> None:
    with pytest.raises(UnsupportedHashKey) as err:
        key_parts(template)
    assert err.value.exit_code == 2
    assert err.value.variable == variable
    assert str(err.value) == ("a hash key nginxctl can compute is built from $remote_addr, $remote_port, "
                              f"$server_addr, $server_port and plain text; got ${variable} in hash key {template!r}")


@pytest.mark.parametrize("text, nginx", [
    ("127.0.0.5", "127.0.0.5"), ("::1", "::1"), ("::", "::"), ("1::", "1::"), ("1::2", "1::2"),
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("fe80::1:0:0:1", "fe80::1:0:0:1"),
    ("::ffff:10.1.2.3", "::ffff:10.1.2.3"), ("::10.1.2.3", "::10.1.2.3"),
    ("2001:DB8::0001", "2001:db8::1"), ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"), ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
])
def test_addresses_are_written_as_nginx_writes_them(text: str, nginx: str) -> None:
    assert address_text(ipaddress.ip_address(text).packed) == nginx


def test_ring_for_group_uses_the_rendered_server_text() -> None:
    inv = parse_inventory("target: {container: x}\nupstreams:\n  g:\n    listen: 127.0.0.1:7000\n"
                          "    balance: hash\n    hash_key: $remote_addr\n    consistent: true\n"
                          "    servers: [127.0.0.1:9001, {address: 127.0.0.1:9002, weight: 2}, "
                          "{address: '[::1]:9003', down: true}]\n")
    group = inv.group("g")
    assert group is not None
    ring = ring_for_group(group)
    assert ring.peers == (Peer("127.0.0.1:9001", 1, False), Peer("127.0.0.1:9002", 2, False),
                          Peer("[::1]:9003", 1, True))


# --- against a real nginx -------------------------------------------------------------------------

def sources(count: int = 250, seed: int = 14) -> list[str]:
    """Distinct addresses in 127.0.0.0/8 (all local on Linux loopback), none ending in .0 or .255."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        out.add(f"127.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    return sorted(out)


def connect_from(port: int, source: str) -> tuple[str, int]:
    """Connect through nginx from `source` (kernel-chosen port); the backend's name and our port."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        return read_line(s), int(s.getsockname()[1])


def apply(lb) -> None:  # type: ignore[no-untyped-def]
    result = cli("apply", "-i", str(lb.inventory), "--reload", "--quiet")
    assert result.returncode == 0, result.stderr


def check(lb, port: int, key: str, names: dict[str, str | frozenset[str]], budget: float = 60.0,  # type: ignore[no-untyped-def]
          unavailable: list[str] | None = None, round_robin: list[tuple[str, str]] | None = None) \
        -> dict[str, str]:
    """Every source reaches the server the ring predicts; returns source -> backend name.

    `names`: server text -> the backend's name, or the names of its addresses (a host name)."""
    inv = parse_inventory(lb.inventory.read_text())
    group = inv.upstreams[0]
    ring = ring_for_group(group)
    deadline = time.monotonic() + budget
    seen: dict[str, str] = {}
    wrong = []
    for src in sources():
        assert time.monotonic() < deadline, f"{len(seen)} sources checked in {budget}s"
        name, src_port = connect_from(port, src)
        expected = ring.lookup(key_for(key, src, src_port, "127.0.0.1", port), unavailable or ())
        seen[src] = name
        if expected is None and round_robin is not None:  # the key does not decide: any live server
            round_robin.append((src, name))
            continue
        allowed = names.get(expected or "", "")
        if name not in ({allowed} if isinstance(allowed, str) else allowed):
            wrong.append((src, src_port, expected, name))
    assert not wrong, f"{len(wrong)}/{len(seen)} sources reached another server than predicted: {wrong[:10]}"
    decided = len(seen) - len(round_robin or ())
    print(f"{group.name}: {decided} sources decided by key, all as predicted: "
          f"{dict(sorted(Counter(seen.values()).items()))}")
    return seen


def hashed(lb, servers: list[object], port: int, key: str = "$remote_addr") -> None:  # type: ignore[no-untyped-def]
    _, group = lb.group(servers, port=port, balance="hash", hash_key=key, consistent=True)
    lb.write({"devices": group})
    apply(lb)


def test_nginx_maps_every_source_where_the_ring_says_then_a_fourth_server_takes_a_quarter(lb, backends):
    pool: list[Backend] = [backends(n) for n in "ABCD"]
    names = {b.address: b.name for b in pool}
    port = lb.group([])[0]
    hashed(lb, [b.address for b in pool[:3]], port)
    before = check(lb, port, "$remote_addr", names)
    assert set(before.values()) == {"A", "B", "C"}

    hashed(lb, [b.address for b in pool], port)
    after = check(lb, port, "$remote_addr", names)
    moved = [src for src in before if before[src] != after[src]]
    assert all(after[src] == "D" for src in moved), "a key moved between old servers"
    # The ring gives D its arcs' share of the hash space, not exactly 1/4; 250 keys sample it.
    share = ring_for_group(parse_inventory(lb.inventory.read_text()).upstreams[0]).shares()[pool[3].address]
    print(f"a fourth server: {len(moved)}/{len(before)} keys moved; D's arcs hold {share:.1%} of the ring "
          f"(1/4 with perfectly even arcs)")
    assert abs(len(moved) / len(before) - share) < 4 * (share * (1 - share) / len(before)) ** 0.5


def test_nginx_agrees_with_weights_and_a_down_server(lb, backends):
    pool = [backends(n) for n in "ABC"]
    names = {b.address: b.name for b in pool}
    port = lb.group([])[0]
    hashed(lb, [{"address": pool[0].address, "weight": 3}, pool[1].address, {"address": pool[2].address,
                                                                              "weight": 2}], port)
    weighted = Counter(check(lb, port, "$remote_addr", names).values())
    assert weighted["A"] > weighted["B"]

    hashed(lb, [pool[0].address, {"address": pool[1].address, "down": True}, pool[2].address], port)
    assert "B" not in check(lb, port, "$remote_addr", names).values()


def test_nginx_agrees_on_keys_with_ports_and_the_server_address(lb, backends):
    pool = [backends(n) for n in "ABC"]
    names = {b.address: b.name for b in pool}
    port = lb.group([])[0]
    for key in ("$remote_addr:$remote_port", "k-$server_addr:$server_port/$remote_addr"):
        hashed(lb, [b.address for b in pool], port, key)
        assert len(set(check(lb, port, key, names).values())) == 3


def test_a_stopped_backend_sends_its_keys_to_the_next_point_as_the_ring_says(lb, backends):
    pool = [backends(n) for n in "ABC"]
    names = {b.address: b.name for b in pool}
    port = lb.group([])[0]
    hashed(lb, [b.address for b in pool], port)
    pool[1].stop()  # refuses connections: nginx tries the next point (proxy_next_upstream, max_fails)
    assert "B" not in check(lb, port, "$remote_addr", names, unavailable=[pool[1].address]).values()


def test_a_host_name_server_is_hashed_by_its_text_not_its_address(lb, backends):
    pool = [backends(n) for n in "ABC"]
    named = f"localhost:{pool[0].port}"
    names = {named: "A", pool[1].address: "B", pool[2].address: "C"}
    port = lb.group([])[0]
    hashed(lb, [named, pool[1].address, pool[2].address], port)
    seen = check(lb, port, "$remote_addr", names)
    # Hashed by its address instead, A's points (and so some keys) would sit elsewhere: the test can tell.
    as_address = Ring.build([(pool[0].address, 1, False), (pool[1].address, 1, False), (pool[2].address, 1, False)])
    by_address = {pool[0].address: "A", pool[1].address: "B", pool[2].address: "C"}
    assert [s for s in seen if by_address[as_address.lookup(s.encode()) or ""] != seen[s]]


def test_a_name_with_several_addresses_takes_its_keys_round_robin_over_them(lb_factory, backends):
    """nginx makes one peer per address, all with the name's text: same points, and among the
    addresses smooth weighted round robin (so which address is not a function of the key)."""
    lb = lb_factory(extra_hosts=["pool.test:127.0.0.2", "pool.test:127.0.0.3"])
    # glibc returns only the first /etc/hosts line for a name unless host.conf says `multi on`
    data = b"multi on\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("host.conf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    lb.container.put_archive("/etc", buf.getvalue())
    b, c = backends("B"), backends("C")
    a1 = backends("A1", host="127.0.0.2")
    backends("A2", host="127.0.0.3", port=a1.port)
    named = f"pool.test:{a1.port}"
    port = lb.group([])[0]
    hashed(lb, [named, b.address, c.address], port)
    seen = check(lb, port, "$remote_addr", {named: frozenset({"A1", "A2"}), b.address: "B", c.address: "C"})
    assert {"A1", "A2"} <= set(seen.values()), "the name's keys all went to one of its addresses"


def test_after_21_points_of_down_servers_nginx_balances_round_robin(lb, backends):
    a, b = backends("A"), backends("B")
    idle = [f"127.0.0.1:{p}" for p in range(40001, 40029)]  # 28 down servers: never connected to
    port = lb.group([])[0]
    hashed(lb, [a.address, b.address, *({"address": s, "down": True} for s in idle)], port)
    undecided: list[tuple[str, str]] = []
    seen = check(lb, port, "$remote_addr", {a.address: "A", b.address: "B"}, round_robin=undecided)
    print(f"{len(undecided)} sources round robin (past 21 points)")
    assert 0.1 * len(seen) < len(undecided) < 0.4 * len(seen)
    # Had nginx walked on past 21 points, each of these would sit where the full walk ends; round robin
    # alternates instead, so about half of them differ.
    ring = ring_for_group(parse_inventory(lb.inventory.read_text()).upstreams[0])
    names = {a.address: "A", b.address: "B"}

    def full_walk(src: str) -> str:
        i = ring.first_point(src.encode())
        walk = (ring.owners[(i + s) % len(ring.owners)] for s in range(len(ring.owners)))
        return names[next(o for o in walk if o in names)]

    assert [src for src, name in undecided if full_walk(src) != name]
