"""The connections a rebalance closes, and how: counted and closed through `Sockets` (the target's kernel:
sock_diag in nginx's network namespace; or a test's), cheapest first (old generations, then the most idle),
and the hash key of one, from its client-side socket."""

from __future__ import annotations

import socket
from typing import Protocol

from .apply import Deployer
from .hashring import address_text, key_for
from .pool import Held, Pool, read_pool
from .sockdiag import SockDiag, TcpSocket


def order(held: list[Held]) -> list[Held]:
    """Old generations first, then the most idle: the cheapest connections to move."""
    return sorted(held, key=lambda h: (not h.old, -(h.sock.idle_ms or 0)))


def held_key(template: str, held: Held) -> bytes | None:
    """The bytes nginx hashes for `held` (None: its client side could not be paired)."""
    client = held.client
    if client is None:
        return None
    family = socket.AF_INET6 if ":" in client.remote[0] else socket.AF_INET
    remote = address_text(socket.inet_pton(family, client.remote[0]))
    local = address_text(socket.inet_pton(family, client.local[0]))
    return key_for(template, remote, client.remote[1], local, client.local[1])


class Sockets(Protocol):
    """Where a run counts and closes connections: the target's kernel (`KernelSockets`), or a test's."""

    def pool(self, config: str) -> Pool: ...

    def destroy(self, sock: TcpSocket) -> bool: ...

    def close(self) -> None: ...


class KernelSockets:
    """The target's sockets: counted with sock_diag in nginx's network namespace (`pool.read_pool`, with
    idleness; `pairs`: each connection's client side too, for a hash key), closed with SOCK_DESTROY."""

    def __init__(self, deployer: Deployer, group: str, pairs: bool) -> None:
        self.deployer = deployer
        self.group = group
        self.pairs = pairs
        self.master: int | None = None
        self.diag: SockDiag | None = None

    def pool(self, config: str) -> Pool:
        pool = read_pool(self.deployer.live, config, history=self.deployer.history, info=True, pairs=self.pairs,
                         only_group=self.group)
        if pool.processes.master is not None:
            self.master = self.master or pool.processes.master.pid
        return pool

    def destroy(self, sock: TcpSocket) -> bool:
        if self.diag is None:
            assert self.master is not None
            self.diag = SockDiag(netns_pid=self.master)
        return self.diag.destroy(sock)

    def close(self) -> None:
        if self.diag is not None:
            self.diag.close()
        self.diag = None


