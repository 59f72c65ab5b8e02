"""sock_diag reader (nginxctl.sockdiag) against real sockets: the kernel's tables, its tcp_info, its destroy,
in this network namespace, in a container's own, and through a real nginx."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from nginxctl.errors import EXIT_ENVIRONMENT
from nginxctl.nginx import LiveNginx
from nginxctl.sockdiag import (
    INET_DIAG_INFO,
    SOCK_DIAG_BY_FAMILY,
    SockDiag,
    SockDiagUnavailable,
    TcpSocket,
    in_netns,
    socket_owners,
)

from helpers import TIMEOUT, Backend, Held, cli, free_port, write_inventory

T = TypeVar("T")


def until(probe: Callable[[], T | None], timeout: float = TIMEOUT, every: float = 0.02) -> T:
    """Poll `probe` until it returns something true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {probe}")
        time.sleep(every)


class Pairs:
    """A listener on 127.0.0.1 (or ::1) and connections to it: clients[i] <-> servers[i]."""

    def __init__(self, count: int, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.servers: list[socket.socket] = []
        for _ in range(count):
            client = socket.create_connection((host, self.port), timeout=TIMEOUT)
            self.clients.append(client)
            server, _ = self.listener.accept()
            server.settimeout(TIMEOUT)
            self.servers.append(server)

    def local_port(self, index: int) -> int:
        return int(self.clients[index].getsockname()[1])

    def close(self) -> None:
        for sock in [*self.clients, *self.servers, self.listener]:
            sock.close()


@pytest.fixture
def pairs() -> Iterator[Callable[..., Pairs]]:
    made: list[Pairs] = []

    def make(count: int, host: str = "127.0.0.1") -> Pairs:
        made.append(Pairs(count, host))
        return made[-1]

    yield make
    for p in made:
        p.close()


def outcome(sock: socket.socket, timeout: float = TIMEOUT) -> str:
    """What a reader of `sock` sees next: 'EOF', 'data', 'reset' (ECONNRESET), 'aborted' (ECONNABORTED)."""
    sock.settimeout(timeout)
    try:
        return "EOF" if sock.recv(4096) == b"" else "data"
    except ConnectionResetError:
        return "reset"
    except ConnectionAbortedError:
        return "aborted"


def test_dump_finds_exactly_the_connections_opened_with_ports_inodes_and_owner(pairs):
    v4, v6 = pairs(5), pairs(2, "::1")
    with SockDiag() as diag:
        found = diag.tcp(local_ports=[v4.port, v6.port], remote_ports=[v4.port, v6.port])
    # the machine is shared: another process's sockets may use the same port numbers on other addresses
    mine = {os.fstat(sock.fileno()).st_ino for p in (v4, v6) for sock in (*p.clients, *p.servers)}
    by_inode = {s.inode: s for s in found if s.inode in mine}
    assert len(by_inode) == 14 and all(s.inode in mine for s in found
                                       if s.local[0] in ("127.0.0.1", "::1") and s.remote[0] == s.local[0]
                                       and {s.local[1], s.remote[1]} & {v4.port, v6.port}
                                       and (s.local, s.remote) in {(b.local, b.remote) for b in by_inode.values()})
    for p, family, host in ((v4, socket.AF_INET, "127.0.0.1"), (v6, socket.AF_INET6, "::1")):
        for client, server in zip(p.clients, p.servers, strict=True):
            c, s = by_inode[os.fstat(client.fileno()).st_ino], by_inode[os.fstat(server.fileno()).st_ino]
            assert (c.family, c.state_name, c.uid) == (family, "ESTABLISHED", os.getuid())
            assert c.local == (host, client.getsockname()[1]) and c.remote == (host, p.port)
            assert s.local == (host, p.port) and s.remote == c.local
            assert c.cookie != s.cookie
    assert v4.listener.fileno() not in {s.inode for s in found}  # listening sockets are not ESTABLISHED


def test_the_kernel_port_filter_keeps_what_python_would_keep(pairs):
    a, b, c = pairs(3), pairs(2), pairs(4)
    with SockDiag() as diag:
        everything = diag.tcp()
        cases = (([a.port], []), ([], [b.port]), ([a.port, c.port], [b.port]), ([], [a.port, b.port, c.port]))
        for local, remote in cases:
            filtered = diag.tcp(local_ports=local, remote_ports=remote)
            ours = {a.port, b.port, c.port}
            expected = {s.inode for s in everything if (s.local[1] in local or s.remote[1] in remote)
                        and ours & {s.local[1], s.remote[1]}}
            assert {s.inode for s in filtered if ours & {s.local[1], s.remote[1]}} == expected
            assert all(s.local[1] in local or s.remote[1] in remote for s in filtered)
        assert len([s for s in diag.tcp(local_ports=[a.port], info=False) if s.local[0] == "127.0.0.1"]) == 3
        assert diag.tcp(remote_ports=[c.port], info=False)[0].last_data_sent_ms is None


def _names(sock: socket.socket) -> tuple[tuple[str, int], tuple[str, int]]:
    return sock.getsockname()[:2], sock.getpeername()[:2]


def test_a_dump_over_many_datagrams_gives_every_socket_as_the_socket_itself_says(pairs):
    # 800 sockets: several 32 KiB datagrams per dump, records read a run at a time, with and without tcp_info
    v4, v6 = pairs(300), pairs(100, "::1")
    truth = {os.fstat(sock.fileno()).st_ino: _names(sock) for p in (v4, v6) for sock in (*p.clients, *p.servers)}
    with SockDiag() as diag:
        for info in (False, True):
            found = [s for s in diag.tcp(local_ports=[v4.port, v6.port], remote_ports=[v4.port, v6.port], info=info)
                     if s.inode in truth]
            assert sorted(s.inode for s in found) == sorted(truth)   # each once
            for s in found:
                assert (s.local, s.remote) == truth[s.inode]
                assert (s.state_name, s.uid) == ("ESTABLISHED", os.getuid())
                assert s.family == (socket.AF_INET6 if ":" in s.local[0] else socket.AF_INET)
                assert (s.rtt_us is not None, s.last_data_recv_ms is not None) == (info, info)


def _record(seq: int, inode: int, attrs: list[tuple[int, bytes]], *, family: int = socket.AF_INET) -> bytes:
    """One SOCK_DIAG_BY_FAMILY record as the kernel writes it (netlink header, inet_diag_msg, attributes)."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    raw = socket.inet_pton(family, host).ljust(16, b"\0")
    msg = struct.pack("=BBBBHH16s16sIIIIIIII", family, 1, 0, 0, socket.htons(40000 + inode), socket.htons(21000),
                      raw, raw, 0, inode * 7, 1, 0, 3, 5, 1000, inode)
    for kind, payload in attrs:
        msg += struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)
    return struct.pack("=IHHII", 16 + len(msg), SOCK_DIAG_BY_FAMILY, 2, seq, 4242) + msg


def _tcp_info(inode: int) -> bytes:
    """A tcp_info of the kernel's size, with last data sent/received, last ACK received and RTT set."""
    info = bytearray(232)
    struct.pack_into("=I", info, 44, inode + 1)    # tcpi_last_data_sent
    struct.pack_into("=II", info, 52, inode + 2, inode + 3)   # tcpi_last_data_recv, tcpi_last_ack_recv
    struct.pack_into("=I", info, 68, inode + 4)    # tcpi_rtt
    return bytes(info)


def _expected(inode: int, info: bool, family: int = socket.AF_INET) -> TcpSocket:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    extra = (inode + 1, inode + 2, inode + 3, inode + 4) if info else (None, None, None, None)
    return TcpSocket(family, 1, (host, 40000 + inode), (host, 21000), 0, inode * 7 | 1 << 32, inode, 1000, 3, 5,
                     *extra)


INET_DIAG_SHUTDOWN, INET_DIAG_MARK = 8, 15   # linux/inet_diag.h: attributes the kernel adds to every record
SHUTDOWN = (INET_DIAG_SHUTDOWN, b"\0")


@pytest.mark.parametrize("case", ["alike", "longer", "reordered", "other-dump", "ipv6"])
def test_records_a_run_at_a_time_read_as_one_at_a_time(case):
    """A datagram's records are read a run of alike records at a time (one struct over them); a record unlike
    the first (more attributes, another layout of the same length, another dump's) ends the run and is read
    alone. Whatever the mix, each socket comes out as the kernel wrote it: fed through a real socket to the
    real reader, against values set by hand."""
    seq, info = 9, case != "alike"
    family = socket.AF_INET6 if case == "ipv6" else socket.AF_INET

    def alike(inode: int) -> bytes:
        return _record(seq, inode, [SHUTDOWN, (INET_DIAG_INFO, _tcp_info(inode))] if info else [SHUTDOWN],
                       family=family)

    records = [alike(i) for i in range(1, 6)]
    expected = [_expected(i, info, family) for i in range(1, 6)]
    if case == "longer":       # one record with an attribute more, in the middle
        records[2] = _record(seq, 3, [SHUTDOWN, (INET_DIAG_INFO, _tcp_info(3)), (INET_DIAG_MARK, b"\1\0\0\0")])
    elif case == "reordered":  # the same length, tcp_info elsewhere: not where the run reads it
        records[2] = _record(seq, 3, [(INET_DIAG_INFO, _tcp_info(3)), SHUTDOWN])
    elif case == "other-dump":  # a late record of an earlier dump: not this dump's
        records[2] = _record(seq - 1, 3, [SHUTDOWN, (INET_DIAG_INFO, _tcp_info(3))])
        del expected[2]
    done = struct.pack("=IHHIIi", 20, 3, 2, seq, 4242, 0)   # NLMSG_DONE
    # two datagrams, as the kernel splits a dump: the second ends with NLMSG_DONE
    datagrams = [b"".join(records[:4]), records[4] + done]
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.settimeout(TIMEOUT)   # a reader that lost its place would wait for a datagram that never comes
    with SockDiag() as diag, mine, theirs:
        diag._sock.close()
        diag._sock = mine
        for datagram in datagrams:
            theirs.send(datagram)
        assert diag._dump(seq, family, info) == expected


def test_last_send_and_receive_tell_a_busy_connection_from_an_idle_one(pairs):
    p = pairs(2)
    for client, server in zip(p.clients, p.servers, strict=True):
        client.sendall(b"hello")
        assert server.recv(5) == b"hello"
    busy, idle = p.local_port(0), p.local_port(1)

    with SockDiag() as diag:
        def idle_long_enough() -> dict[int, TcpSocket] | None:
            p.clients[0].sendall(b"x")
            assert p.servers[0].recv(1) == b"x"
            clients = {s.local[1]: s for s in diag.tcp(remote_ports=[p.port])}
            return clients if (clients[idle].idle_ms or 0) >= 300 else None

        clients = until(idle_long_enough)
        servers = {s.remote[1]: s for s in diag.tcp(local_ports=[p.port])}
    assert clients[busy].last_data_sent_ms is not None and clients[busy].last_data_sent_ms < 200
    assert servers[busy].last_data_recv_ms is not None and servers[busy].last_data_recv_ms < 200
    assert clients[idle].last_data_sent_ms is not None and clients[idle].last_data_sent_ms >= 300
    assert servers[idle].last_data_recv_ms is not None and servers[idle].last_data_recv_ms >= 300


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_destroy_closes_exactly_the_chosen_socket_its_peer_sees_a_reset(pairs, host):
    p = pairs(3, host)
    with SockDiag() as diag:
        chosen = next(s for s in diag.tcp(local_ports=[p.port]) if s.remote[1] == p.local_port(1))
        assert diag.destroy(chosen) is True
        assert outcome(p.clients[1]) == "reset"
        assert outcome(p.servers[1]) == "aborted"  # its owner: ECONNABORTED (103), as nginx logs it
        assert diag.destroy(chosen) is False  # already gone
        left = diag.tcp(local_ports=[p.port], remote_ports=[p.port])
    assert sorted(s.local[1] for s in left if s.remote == (host, p.port)) == sorted([p.local_port(0),
                                                                                      p.local_port(2)])
    for i in (0, 2):
        p.clients[i].sendall(b"still")
        assert p.servers[i].recv(5) == b"still"


def test_destroy_refuses_a_socket_of_another_cookie_on_the_same_addresses(pairs):
    p = pairs(1)
    with SockDiag() as diag:
        mine = {os.fstat(p.servers[0].fileno()).st_ino}  # the machine is shared: other sockets may share the port
        (sock,) = [s for s in diag.tcp(local_ports=[p.port]) if s.inode in mine]
        impostor = sock._replace(cookie=sock.cookie + 1_000_000)
        assert diag.destroy(impostor) is False
        assert len([s for s in diag.tcp(local_ports=[p.port]) if s.inode in mine]) == 1
    p.clients[0].sendall(b"ok")
    assert p.servers[0].recv(2) == b"ok"


def test_socket_owners_maps_each_socket_to_the_process_holding_it(pairs):
    p = pairs(2)
    script = ("import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
              "print(s.getsockname()[1], flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", script, str(p.port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            theirs = int(holder.stdout.readline())
            with SockDiag() as diag:
                found = {s.local[1]: s.inode for s in diag.tcp(remote_ports=[p.port])}
            owners = socket_owners([holder.pid, os.getpid()])
            assert owners[found[theirs]] == holder.pid
            assert owners[found[p.local_port(0)]] == os.getpid() == owners[found[p.local_port(1)]]
            assert socket_owners([holder.pid])[found[theirs]] == holder.pid
            assert socket_owners([2**22 + 12345]) == {}  # no such process: nothing, no error
        finally:
            holder.kill()


def test_a_pid_whose_namespace_cannot_be_read_is_an_environment_problem():
    with pytest.raises(SockDiagUnavailable) as info:
        SockDiag(netns_pid=2**22 + 12345)
    assert info.value.exit_code == EXIT_ENVIRONMENT and "network namespace of pid" in str(info.value)


def test_a_container_network_namespace_of_its_own(isolated):
    box = isolated()
    pid = main_pid(box)
    home = os.readlink("/proc/thread-self/ns/net")
    assert os.readlink(f"/proc/{pid}/ns/net") != home
    inside = in_netns(pid, lambda: Pairs(2))
    try:
        assert os.readlink("/proc/thread-self/ns/net") == home  # this thread never moved
        with SockDiag() as host:
            assert [s for s in host.tcp(local_ports=[inside.port]) if s.inode in own_inodes(inside)] == []
        with SockDiag(netns_pid=pid) as diag:
            found = diag.tcp(local_ports=[inside.port], remote_ports=[inside.port])
            assert {s.inode for s in found} == own_inodes(inside)
            chosen = next(s for s in found if s.local[1] == inside.port and s.remote[1] == inside.local_port(0))
            assert diag.destroy(chosen) is True
        assert outcome(inside.clients[0]) == "reset"
        inside.clients[1].sendall(b"ok")
        assert inside.servers[1].recv(2) == b"ok"
    finally:
        inside.close()


def main_pid(container: object) -> int:
    """The host pid of a container's main process (nginx's master here), once it runs."""
    def probe() -> int:
        container.reload()  # type: ignore[attr-defined]
        return int(container.attrs["State"]["Pid"])  # type: ignore[attr-defined]
    return until(probe)


def own_inodes(p: Pairs) -> set[int]:
    return {os.fstat(s.fileno()).st_ino for s in [*p.clients, *p.servers]}


def nginx_sockets(diag: SockDiag, live: LiveNginx, backend_port: int) -> list[TcpSocket]:
    """nginx's upstream-side sockets to `backend_port`, each held by one of its workers."""
    owners = socket_owners(live.processes().worker_pids)
    return [s for s in diag.tcp(remote_ports=[backend_port]) if s.inode in owners]


ALL_STATES = range(1, 12)


def closed_clients(diag: SockDiag, port: int, held: list[Held]) -> dict[int, str]:
    """index in `held` -> TCP state, for the clients whose socket has left ESTABLISHED."""
    mine = {h.sock.getsockname()[1]: i for i, h in enumerate(held)}
    return {mine[s.local[1]]: s.state_name for s in diag.tcp(states=ALL_STATES, remote_ports=[port])
            if s.local[1] in mine and s.state_name != "ESTABLISHED"}


def echoes(h: Held) -> bool:
    return h.echo(b"ping\n") == b"ping\n"


def test_destroying_nginx_upstream_side_socket_gives_the_client_an_orderly_eof(lb, backends, docker_client):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    held = [Held(port) for _ in range(3)]
    try:
        assert a.wait_connections(3)
        live = LiveNginx.attach(docker_client, lb.name)
        master = live.processes().master
        assert master is not None
        with SockDiag(netns_pid=master.pid) as diag:
            upstream = until(lambda: (lambda got: got if len(got) == 3 else None)(nginx_sockets(diag, live, a.port)))
            assert diag.destroy(upstream[0]) is True
            # FIN received = CLOSE_WAIT (a reset would leave CLOSE): the kernel's word before any read
            closed = until(lambda: closed_clients(diag, port, held))
            assert list(closed.values()) == ["CLOSE_WAIT"]
            assert a.wait_connections(2)
            assert len(nginx_sockets(diag, live, a.port)) == 2
        (gone,) = closed
        assert outcome(held[gone].sock) == "EOF"
        assert all(echoes(h) for i, h in enumerate(held) if i != gone)
    finally:
        for h in held:
            h.close()


def test_nginx_in_a_network_namespace_of_its_own(isolated, docker_client, tmp_path: Path):
    box = isolated()
    pid = main_pid(box)
    backend = in_netns(pid, lambda: Backend("A", free_port()).start())
    try:
        port = free_port()
        inventory = write_inventory(tmp_path / "inventory.yaml", {
            "nginx": {"worker_processes": 2}, "target": {"container": box.name},
            "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "servers": [backend.address]}}})
        result = cli("apply", "-i", str(inventory), "--reload")
        assert result.returncode == 0, result.stderr
        held: list[Held] = in_netns(pid, lambda: [Held(port) for _ in range(2)])
        try:
            live = LiveNginx.attach(docker_client, box.name)
            with SockDiag() as host:
                assert nginx_sockets(host, live, backend.port) == []  # not in the host's tables
            with SockDiag(netns_pid=pid) as diag:
                upstream = nginx_sockets(diag, live, backend.port)
                assert len(upstream) == 2
                assert diag.destroy(upstream[0]) is True
                closed = until(lambda: closed_clients(diag, port, held))
            assert list(closed.values()) == ["CLOSE_WAIT"]
            (gone,) = closed
            assert outcome(held[gone].sock) == "EOF"
            assert echoes(held[1 - gone])
        finally:
            for h in held:
                h.close()
    finally:
        backend.stop()
