"""Connections land where the inventory says: real nginx in a container, real echo servers, real sockets.

Every config goes in through `nginxctl apply --reload`, which returns only after verifying that
the new worker generation runs it, so no test waits on time.
"""

from __future__ import annotations

import socket
from collections import Counter

from helpers import Held, cli, udp_who, who


def apply_ok(lb) -> None:  # type: ignore[no-untyped-def]
    result = cli("apply", "-i", str(lb.inventory), "--reload", "--quiet")
    assert result.returncode == 0, result.stderr


def test_round_robin_alternates_strictly_across_two_workers(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"rr": group}, nginx={"worker_processes": 2})
    apply_ok(lb)
    assert len(lb.workers()) == 2
    names = [who(port) for _ in range(20)]
    first = names[0]
    other = "B" if first == "A" else "A"
    assert names == [first, other] * 10


def test_weights_three_to_one_give_exactly_three_of_every_four(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([{"address": a.address, "weight": 3}, b.address])
    lb.write({"weighted": group})
    apply_ok(lb)
    names = [who(port) for _ in range(40)]
    for i in range(0, 40, 4):
        assert Counter(names[i:i + 4]) == {"A": 3, "B": 1}, names


def test_backup_idle_while_primaries_up_then_takes_everything(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, group = lb.group([a.address, b.address, {"address": c.address, "backup": True}],
                           balance="least_conn")
    lb.write({"pool": group})
    apply_ok(lb)
    assert "C" not in {who(port) for _ in range(12)}
    a.stop()
    b.stop()
    assert [who(port) for _ in range(6)] == ["C"] * 6


def test_down_server_gets_nothing(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, {"address": b.address, "down": True}])
    lb.write({"pool": group})
    apply_ok(lb)
    assert {who(port) for _ in range(10)} == {"A"}


def test_killed_backend_clients_still_get_through(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    apply_ok(lb)
    assert {who(port) for _ in range(4)} == {"A", "B"}
    b.stop()
    assert [who(port) for _ in range(10)] == ["A"] * 10


def test_udp_datagrams_are_balanced(lb, backends):
    a, b = backends("A", udp=True), backends("B", udp=True)
    port = __import__("helpers").free_port(socket.SOCK_DGRAM)
    _, group = lb.group([a.address, b.address], port=port, protocol="udp", proxy_responses=1,
                        proxy_timeout="2s")
    lb.write({"dns": group})
    apply_ok(lb)
    names = [udp_who(port) for _ in range(10)]
    assert Counter(names) == {"A": 5, "B": 5}, names


def test_consistent_hash_keeps_each_client_on_one_server(lb, backends):
    servers = [backends(n) for n in "ABC"]
    port, group = lb.group([s.address for s in servers], balance="hash", hash_key="$remote_addr",
                           consistent=True)
    lb.write({"devices": group})
    apply_ok(lb)
    sources = [f"127.0.0.{i}" for i in range(2, 12)]
    seen = {src: {who(port, src) for _ in range(5)} for src in sources}
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len({next(iter(n)) for n in seen.values()}) > 1, "ten clients all hashed to one server"


def test_least_conn_sends_new_connections_away_from_held_ones(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address], balance="least_conn")
    lb.write({"netty": group})
    apply_ok(lb)
    held = [Held(port) for _ in range(4)]
    try:
        assert Counter(h.name for h in held) == {"A": 2, "B": 2}
        for h in [h for h in held if h.name == "B"]:
            h.close()
        assert b.wait_connections(0)  # nginx has closed both sides: its counts are down
        # round-robin would alternate; least_conn sends every new one to B while A holds two
        assert [who(port) for _ in range(4)] == ["B"] * 4
        assert a.wait_connections(2)
    finally:
        for h in held:
            h.close()
