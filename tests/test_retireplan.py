"""The retirement plan, pure: the limits (count and memory), which generations go, which of their sockets are
closed and in what order, and how many per step at a rate (a fake clock: nothing sleeps)."""

from __future__ import annotations

import socket

import pytest
from nginxctl.inventory.grammar import Invalid
from nginxctl.retireplan import (
    FALLBACK_GRACE,
    Limits,
    Pacer,
    excess,
    idle_first,
    parse_memory,
    parse_rate,
    plan_step,
    split_sides,
)
from nginxctl.sockdiag import TcpSocket

MIB = 1 << 20
LISTEN = {("127.0.0.1", 6666)}


def sock(cookie: int, local: tuple[str, int], remote: tuple[str, int], idle: int | None = 1000) -> TcpSocket:
    return TcpSocket(socket.AF_INET, 1, local, remote, 0, cookie, cookie + 1000, 0, 0, 0, idle, idle, idle, 50)


def client(cookie: int, idle: int | None = 1000, port: int = 6666) -> TcpSocket:
    return sock(cookie, ("127.0.0.1", port), ("127.0.0.9", 40000 + cookie), idle)


def upstream(cookie: int, idle: int | None = 1000) -> TcpSocket:
    return sock(cookie, ("127.0.0.1", 50000 + cookie), ("127.0.0.1", 7001), idle)


def owned(socks: list[TcpSocket], pid: int) -> dict[int, int]:
    return {s.inode: pid for s in socks}


@pytest.mark.parametrize("text, rate", [("20", 20.0), ("20/s", 20.0), (" 2.5 / s ", 2.5), ("0", 0.0)])
def test_a_rate_is_a_number_per_second(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "-1", "fast", "20/m", "1e3", "200000"])
def test_a_bad_rate_is_refused_saying_what_is_expected(text):
    with pytest.raises(Invalid, match="connections per second"):
        parse_rate(text)


@pytest.mark.parametrize("text, size", [("512m", 512 * MIB), ("512MiB", 512 * MIB), ("1g", 1 << 30),
                                        ("64k", 64 << 10), ("4096", 4096), ("2GB", 2 << 30)])
def test_a_memory_limit_is_a_size(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["0", "lots", "5t", "-1m"])
def test_a_bad_memory_limit_is_refused(text):
    with pytest.raises(Invalid, match="a size above 0"):
        parse_memory(text)


def test_the_count_limit_leaves_room_for_the_generation_a_reload_adds():
    limits = Limits(max_generations=3)
    assert not excess(limits, [MIB, MIB], MIB)                       # 2 linger: a reload makes 3
    assert excess(limits, [MIB] * 3, MIB).count == 1                 # 3 linger: the oldest must go
    assert excess(limits, [MIB] * 5, MIB).count == 3
    assert excess(limits, [MIB] * 5, MIB).reason == "count"
    assert not excess(Limits(), [MIB] * 50, MIB)                     # no limit: nothing goes


def test_the_memory_limit_retires_the_oldest_until_it_fits_with_the_current_workers():
    limits = Limits(max_generations=16, max_memory=100 * MIB)
    fits = excess(limits, [30 * MIB, 30 * MIB], 30 * MIB)
    assert not fits
    over = excess(limits, [60 * MIB, 20 * MIB, 10 * MIB], 30 * MIB)  # 120 MiB: the oldest (60) must go
    assert (over.count, over.reason) == (1, "memory")
    assert excess(limits, [10 * MIB, 10 * MIB, 90 * MIB], 5 * MIB).count == 2  # oldest first, until it fits
    # the current workers alone cost more than the limit: every old generation is all that can be retired
    assert excess(limits, [MIB, MIB], 200 * MIB).count == 2
    # unknown memory (a remote engine) is not counted
    assert not excess(limits, [None, None], None)


def test_the_larger_of_the_two_limits_wins():
    over = excess(Limits(max_generations=2, max_memory=100 * MIB), [90 * MIB, 5 * MIB, 5 * MIB], 5 * MIB)
    assert (over.count, over.reason) == (2, "count")
    over = excess(Limits(max_generations=3, max_memory=20 * MIB), [10 * MIB, 10 * MIB], 5 * MIB)
    assert (over.count, over.reason) == (1, "memory")


def test_only_the_generations_upstream_sides_are_closed_and_clients_sides_are_told_apart():
    ours = [client(1), client(2), upstream(3), upstream(4)]
    theirs = [client(5), upstream(6)]    # the current generation's: never touched
    owners = {**owned(ours, 11), **owned(theirs, 22)}
    clients, up = split_sides(ours + theirs, owners, {11}, LISTEN)
    assert [s.cookie for s in clients] == [1, 2] and [s.cookie for s in up] == [3, 4]
    # a listen the current config dropped: known from the target's configs
    dropped = [client(7, port=7777), client(8, port=7777), upstream(9)]
    clients, up = split_sides(dropped, owned(dropped, 11), {11}, LISTEN, {6666, 7777})
    assert [s.cookie for s in clients] == [7, 8] and [s.cookie for s in up] == [9]
    # ...else guessed: its clients share the local address
    clients, up = split_sides(dropped, owned(dropped, 11), {11}, LISTEN)
    assert [s.cookie for s in clients] == [7, 8] and [s.cookie for s in up] == [9]
    # the kernel gives one ephemeral port to connections towards two backends: both upstream sides, when
    # the listen ports are known (measured under churn: the guess closed them as client sides, with resets)
    twice = [upstream(10), sock(11, ("127.0.0.1", 50010), ("127.0.0.1", 7002))]
    clients, up = split_sides(twice, owned(twice, 11), {11}, LISTEN, {6666})
    assert clients == [] and [s.cookie for s in up] == [10, 11]
    # a wildcard listen
    clients, _ = split_sides([client(1)], owned([client(1)], 11), {11}, {("0.0.0.0", 6666)})
    assert [s.cookie for s in clients] == [1]


def test_idle_first_then_unknown_then_by_cookie():
    order = idle_first([upstream(1, 10), upstream(2, None), upstream(3, 5000), upstream(4, 5000)])
    assert [s.cookie for s in order] == [3, 4, 1, 2]


def test_busy_connections_go_just_after_an_exchange_completed_not_just_before_the_next():
    """Devices beating every second are never idle: closing the one whose answer was just relayed leaves the
    most time before its client sends again (a client sending at the close sees a reset)."""
    def beat(cookie: int, sent: int, recv: int) -> TcpSocket:
        return sock(cookie, ("127.0.0.1", 50000 + cookie), ("127.0.0.1", 7001), None)._replace(
            last_data_sent_ms=sent, last_data_recv_ms=recv)

    answered_long_ago, answered_now, waiting = beat(1, 900, 899), beat(2, 40, 38), beat(3, 5, 600)
    idle = beat(4, 8000, 8000)
    order = idle_first([answered_long_ago, waiting, answered_now, idle])
    assert [s.cookie for s in order] == [4, 2, 1, 3]


def test_a_step_closes_at_most_its_budget_idle_first():
    socks = [client(1), client(2), client(3), upstream(4, 100), upstream(5, 9000), upstream(6, 3000)]
    step = plan_step(socks, owned(socks, 11), {11}, LISTEN, budget=2)
    assert [s.cookie for s in step.close] == [5, 6]
    assert (step.left, step.upstream_left, step.fallback) == (3, 3, False)
    assert plan_step(socks, owned(socks, 11), {11}, LISTEN, budget=0).close == ()


def test_client_sides_are_closed_only_when_no_upstream_side_is_left_and_fallback_is_allowed():
    socks = [client(1, 5), client(2, 500)]       # a unix-socket backend: no TCP upstream side
    step = plan_step(socks, owned(socks, 11), {11}, LISTEN, budget=5)
    assert step.close == () and step.upstream_left == 0 and step.left == 2
    step = plan_step(socks, owned(socks, 11), {11}, LISTEN, budget=5, fallback_allowed=True)
    assert sorted(s.cookie for s in step.close) == [1, 2] and step.fallback
    assert FALLBACK_GRACE >= 0.5   # long enough for nginx to close the client sides of destroyed upstreams


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_the_pacer_closes_at_the_rate_in_steps_never_in_a_burst():
    clock = FakeClock()
    pacer = Pacer(20.0, clock.now)          # 20/s: at most 5 per step (0.25 s of the rate)
    assert pacer.burst == 5
    closed = 0
    for _ in range(100):                    # 10 s in steps of 100 ms
        n = pacer.available(clock.now)
        pacer.spend(n)
        closed += n
        clock.advance(0.1)
    assert 199 <= closed <= 201             # 20/s over 10 s
    clock.advance(30)                       # a loop busy for 30 s does not make up for it at once
    assert pacer.available(clock.now) == 5


def test_the_pacer_says_when_the_next_close_is_allowed():
    clock = FakeClock()
    pacer = Pacer(4.0, clock.now)           # one every 250 ms
    assert pacer.burst == 1 and pacer.next_at(clock.now) == clock.now
    pacer.spend(pacer.available(clock.now))
    assert pacer.next_at(clock.now) == pytest.approx(clock.now + 0.25)
    clock.advance(0.1)
    assert pacer.available(clock.now) == 0
    assert pacer.next_at(clock.now) == pytest.approx(clock.now + 0.15)
    fast = Pacer(100.0, clock.now)          # a burst of 25: the next step when 25 may go, 250 ms on
    fast.spend(fast.available(clock.now))
    assert fast.burst == 25 and fast.next_at(clock.now, fast.burst) == pytest.approx(clock.now + 0.25)


def test_a_slow_rate_closes_one_at_a_time():
    clock = FakeClock()
    pacer = Pacer(0.5, clock.now)
    seen = []
    for _ in range(10):
        n = pacer.available(clock.now)
        pacer.spend(n)
        seen.append(n)
        clock.advance(1.0)
    assert seen == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_the_ports_of_the_configs_filter_the_dump_in_the_kernel():
    from nginxctl.retireplan import config_ports

    old = """stream {
    upstream pool { zone pool 64k; server 127.0.0.1:7001 weight=2; server 10.0.0.5:7002 down; server unix:/s.sock; }
    server { listen 127.0.0.1:6666; proxy_pass pool; }
    server { listen 53 udp; proxy_pass dns; }   # listen 9999 in a comment is not a listen
    upstream dns { server [::1]:5301; }
}"""
    new = "stream { upstream pool { server 127.0.0.1:7003; } server { listen [::]:6667; proxy_pass pool; } }"
    assert config_ports([old, new]) == ({6666, 53, 6667}, {7001, 7002, 5301, 7003})
    assert config_ports([]) == (set(), set())
