"""The connections nginx holds to each server of its groups, per worker generation, read from the kernel.

One sock_diag dump in the nginx master's network namespace (docs/sockdiag.md), filtered in the kernel to
the backend ports (nginx's upstream-side sockets: remote = a server) and the listen ports (its client-side
sockets), then `socket_owners` of the workers: a socket held by a current worker is on the current
generation, one held by a worker "shutting down" is on an old one; sockets of any other process (a
client of the same backend on this host) are not nginx's and are left out. Servers are matched by
address and port; a server given by host name counts every address the container's /etc/hosts (else
this host) gives it.

A server the loaded config no longer has but old workers still hold connections to is found through
the target's history (the configs it ran before): it is reported under the group that last had it.

Only on the engine's host (the reader needs the container's host pids): for a remote engine `read_pool`
raises PoolUnavailable (exit 3). I/O: netlink, /proc. Not in the pure core.
"""

from __future__ import annotations

import bisect
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import EnvironmentProblem
from .history import History
from .host import started_at
from .nginx import LiveNginx
from .nginxtext import Processes, UpstreamServer, parse_upstreams
from .observe import _start_ticks, group_generations, server_addresses
from .sockdiag import (
    TCP_ESTABLISHED,
    SockDiag,
    SockDiagUnavailable,
    TcpSocket,
    fd_owners,
    paused_gc,
    socket_owners,
)

TCP_LISTEN = 10
CLOCK_SLACK = 1.0   # seconds: a history entry recorded this much after the oldest old worker started still counts
PAIR_GAP = 4            # see pair_clients
CURRENT = 0             # the pid a socket of an unknown current worker is filed under (no current worker)


class PoolUnavailable(EnvironmentProblem):
    """nginxctl cannot see (or close) the target's sockets from where it runs."""


class Held(NamedTuple):
    """One connection nginx proxies to a server: its upstream-side socket, the worker holding it, whether
    that worker is of an old generation, and (when it can be told) the client-side socket it relays.
    A NamedTuple: a status builds one per connection (40,000), 4x cheaper than a frozen dataclass."""

    sock: TcpSocket
    pid: int
    old: bool
    client: TcpSocket | None = None


@dataclass
class ServerPool:
    """A server of a group as the loaded config has it (`state` up/down/backup), or `removed`."""

    group: str
    address: str
    state: str
    weight: int
    held: list[Held] = field(default_factory=list)
    countable: bool = True   # False for a unix: server (not a TCP connection) and UDP groups

    @property
    def connections(self) -> int:
        return len(self.held)

    @property
    def old_connections(self) -> int:
        return sum(1 for h in self.held if h.old)


@dataclass
class Pool:
    """Every server of every group, with its connections; client connections per worker pid."""

    servers: dict[str, list[ServerPool]]
    clients_per_pid: dict[int, int]
    processes: Processes
    seconds: float
    endpoints: dict[tuple[str, int], ServerPool] = field(default_factory=dict)   # (ip, port) nginx connects to

    def group(self, name: str) -> list[ServerPool]:
        return self.servers.get(name, [])


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `server` address text; None for unix: sockets and addresses without a port."""
    if address.lower().startswith("unix:"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _removed_servers(history: History, loaded: dict[str, list[UpstreamServer]],
                     since: float) -> dict[str, list[UpstreamServer]]:
    """Servers the loaded config lacks, of the configs old workers may run: the target's history, newest first,
    back to the newest entry recorded before `since` (when the oldest old worker started: the config it runs),
    however many reloads ago that was (a fixed look-back lost the servers of an older generation, and its
    connections)."""
    have = {s.address for servers in loaded.values() for s in servers}
    found: dict[str, list[UpstreamServer]] = {}
    seen: set[str] = set()
    for entry in history.entries():
        text = history.read(entry)
        for group, servers in parse_upstreams(text or "").items():
            for server in servers:
                if server.address not in have and server.address not in seen:
                    seen.add(server.address)
                    found.setdefault(group, []).append(server)
        if entry.time < since - CLOCK_SLACK:
            break
    return found


def read_pool(live: LiveNginx, loaded_config: str, *, history: History | None = None, info: bool = False,
              pairs: bool = False, udp_groups: Iterable[str] = (), only_group: str | None = None) -> Pool:
    """The connections nginx in `live` holds to every server of `loaded_config` (the config it runs), split
    by worker generation; with `history` (the target's), also the servers earlier configs had that old
    workers still hold (state `removed`). `info`: with tcp_info (idleness), for rebalance; `pairs`: with
    each connection's client-side socket (`pair_clients`: the key of a consistent hash), which costs a
    second table as large and every worker's files. `clients_per_pid`: the proxied connections of each worker
    (with `pairs`, the client-side sockets); without `pairs` the current generation's are all under its first
    worker (or, when only the current side's files were read, the old generation's under its first).
    Raises PoolUnavailable when the sockets cannot be seen from here (a remote engine),
    SockDiagUnavailable when the kernel refuses."""
    if live.root is None or live.main_pid is None:
        raise PoolUnavailable(f"nginxctl cannot see the sockets of {live.name}: it is reached through a remote "
                              "Docker engine (or without this host's PID namespace)",
                              "run nginxctl on the engine's host, as root")
    began = time.monotonic()
    procs = live.processes()
    if procs.master is None:
        raise EnvironmentProblem(f"no nginx master process runs in {live.name}")
    loaded = parse_upstreams(loaded_config)
    udp = set(udp_groups)
    pools: dict[str, list[ServerPool]] = {}
    for group, servers in loaded.items():
        if only_group is not None and group != only_group:
            continue
        pools[group] = [ServerPool(group, s.address, s.state, s.weight, countable=group not in udp)
                        for s in servers]
    if history is not None and procs.old_workers:   # only old workers can hold a server the loaded config lacks
        starts = [t for t in (started_at(p.pid) for p in procs.old_workers) if t is not None]
        since = min(starts, default=0.0)   # unknown: the whole history
        for group, servers in _removed_servers(history, loaded, since).items():
            if group in pools or (only_group is None and group not in loaded):
                pools.setdefault(group, []).extend(
                    ServerPool(group, s.address, "removed", s.weight, countable=group not in udp)
                    for s in servers)
    hosts = live.hosts_file()
    by_address: dict[tuple[str, int], ServerPool] = {}
    for members in pools.values():
        for member in members:
            hp = host_port(member.address) if member.countable else None
            if hp is None:
                member.countable = False
                continue
            for addr in server_addresses(live, hp[0], hosts):
                by_address.setdefault((addr, hp[1]), member)
    master = procs.master.pid
    workers = [p.pid for p in procs.workers]
    old = sorted(p.pid for p in procs.old_workers)
    # Which worker holds each socket costs one readlink per open file of the workers (~0.27 s at 80,000 on a
    # quiet machine, several times more for nginx's workers on a busy one). Without `pairs`, nginx's sockets
    # are told apart in the kernel by the container's cgroup (`cgroup_id`), else by their owner's uid when no
    # other process of that uid shares the namespace (`_sole_uid`): then only one side's files are read, the
    # side with fewer (the current workers, or an only old generation), and nginx's sockets no file of that
    # side holds belong to the other.
    cgroup = None if pairs else cgroup_id(master)
    uid = None if pairs or cgroup is not None else _sole_uid(workers + old, [master], master)
    read, other = workers + old, None
    if uid is not None or cgroup is not None:
        read, other = old, (workers[0] if workers else CURRENT)
        if old and len(group_generations([(pid, _start_ticks(pid)) for pid in old], len(workers))) == 1 \
                and _files(workers) < _files(old):
            read, other = workers, old[0]
    # The kernel keeps IPv4 and IPv6 sockets in one table and a dump per family walks all of it (every socket
    # of the namespace): only the families a socket of interest can have are dumped (a socket's remote
    # address is of its own family; a client side, of its listener's).
    families: set[int] = {socket.AF_INET6 if ":" in addr else socket.AF_INET for addr, _ in by_address}
    with SockDiag(netns_pid=master) as diag:
        listen_ports: set[int] = set()
        if pairs:
            master_socks = socket_owners([master])
            listening = [s for s in diag.tcp(states=(TCP_LISTEN,), info=False) if s.inode in master_socks]
            listen_ports = {s.local[1] for s in listening}
            families |= {s.family for s in listening}
        backend_ports = {port for _, port in by_address}
        socks: list[TcpSocket] = []
        if listen_ports or backend_ports:
            order = [f for f in (socket.AF_INET, socket.AF_INET6) if f in families]
            try:
                socks = diag.tcp(states=(TCP_ESTABLISHED,), local_ports=listen_ports, remote_ports=backend_ports,
                                 families=order, info=info, cgroup=cgroup)
            except SockDiagUnavailable:
                if cgroup is None:
                    raise
                cgroup, read, other = None, workers + old, None   # a kernel without the cgroup test
                socks = diag.tcp(states=(TCP_ESTABLISHED,), local_ports=listen_ports,
                                 remote_ports=backend_ports, families=order, info=info)
    fds = fd_owners(read) if pairs else None
    owners = {inode: pid for inode, (pid, _) in fds.items()} if fds is not None else socket_owners(read)
    clients: dict[int, int] = {pid: 0 for pid in workers + old}
    client_socks: dict[int, list[TcpSocket]] = {}
    upstream: list[tuple[TcpSocket, int, ServerPool]] = []
    old_pids = set(old)
    new = tuple.__new__   # Held(...) without its Python-level __new__: 40,000 calls at a status
    with paused_gc():   # 40,000 Held tuples (see sockdiag.paused_gc)
        for sock in socks:
            pid = owners.get(sock.inode)
            held_by = by_address.get(sock.remote)
            if pid is None:
                if other is None or held_by is None or (cgroup is None and sock.uid != uid):
                    continue   # not nginx's
                pid = other
            if held_by is not None:
                if pairs:
                    upstream.append((sock, pid, held_by))   # held once its client side is known (below)
                else:
                    held_by.held.append(new(Held, (sock, pid, pid in old_pids, None)))
                    clients[pid] = clients.get(pid, 0) + 1
            elif sock.local[1] in listen_ports:
                clients[pid] += 1
                client_socks.setdefault(pid, []).append(sock)
        if pairs:
            matched = pair_clients(client_socks, [(s, pid) for s, pid, _ in upstream], fds)
            for sock, pid, member in upstream:
                member.held.append(new(Held, (sock, pid, pid in old_pids, matched.get(sock.inode))))
    return Pool(pools, clients, procs, time.monotonic() - began, by_address)


def cgroup_id(pid: int) -> int | None:
    """The id of the cgroup v2 process `pid` runs in (the inode of its directory: what sock_diag filters a
    container's sockets by), or None when there is no cgroup v2 hierarchy mounted or its path is not ours
    to see (nginxctl in a cgroup namespace of its own)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
            path = next((line[3:].strip() for line in fh if line.startswith("0::")), None)
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            mount = next((line.split()[1] for line in fh if line.split()[2:3] == ["cgroup2"]), None)
        if path is None or mount is None or path.startswith("/.."):
            return None
        return os.stat(mount.rstrip("/") + path).st_ino
    except OSError:
        return None


def _files(pids: list[int]) -> int:
    """How many files these processes hold open (a directory listing each: no readlink)."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def _sole_uid(workers: list[int], known: list[int], netns_pid: int) -> int | None:
    """The current workers' uid when it identifies their sockets: not root, the same for all of them, and held
    by no other process in their network namespace than nginx's own (`known`); None otherwise (then every
    worker's files are read). One stat per process of the host: a few milliseconds."""
    try:
        uids = {os.stat(f"/proc/{pid}").st_uid for pid in workers}
        netns = os.stat(f"/proc/{netns_pid}/ns/net").st_ino
    except OSError:
        return None
    if len(uids) != 1 or 0 in uids:
        return None
    uid = uids.pop()
    ours = set(workers) | set(known)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            if entry.stat().st_uid == uid and os.stat(f"/proc/{entry.name}/ns/net").st_ino == netns:
                return None
        except OSError:
            continue   # gone meanwhile, or not ours to see
    return uid


def pair_clients(clients: dict[int, list[TcpSocket]], upstream: list[tuple[TcpSocket, int]],
                 fds: dict[int, tuple[int, int]] | None = None) -> dict[int, TcpSocket]:
    """upstream inode -> the client-side socket it relays, where it can be told (`fds`: inode -> (pid, fd)).

    The kernel gives no link between nginx's two sockets of one connection. For a stream proxy without
    preread, a worker accepts the client and creates the upstream socket in the same event handler, right
    after. Two traces of that are left: file descriptors are the lowest free ones, so the upstream socket's
    fd is the client's plus one (nginx closes both together, so the holes it leaves come in such pairs);
    and socket inodes are numbered in creation order (per CPU, in batches: a worker moved to another CPU
    between the two calls breaks it), so the client's inode is the nearest lower one, a few below. A pair
    both traces agree on is taken; one trace alone is taken when the other does not contradict it; a
    socket they disagree on is not guessed (its connection is never closed by `rebalance`).
    Tested against real nginx (tests/test_rebalance.py)."""
    out: dict[int, TcpSocket] = {}
    by_pid: dict[int, list[TcpSocket]] = {}
    for sock, pid in upstream:
        by_pid.setdefault(pid, []).append(sock)
    for pid, ups in by_pid.items():
        mine = sorted(clients.get(pid, []), key=lambda s: s.inode)
        inodes = [s.inode for s in mine]
        by_fd = {fds[c.inode][1]: c for c in mine if fds is not None and c.inode in fds}
        used: set[int] = set()
        for up in sorted(ups, key=lambda s: s.inode):
            i = bisect.bisect_left(inodes, up.inode) - 1
            by_inode = mine[i] if i >= 0 and up.inode - inodes[i] <= PAIR_GAP else None
            where = fds.get(up.inode) if fds is not None else None
            adjacent = by_fd.get(where[1] - 1) if where is not None else None
            if adjacent is not None and by_inode is not None and adjacent is not by_inode:
                continue   # the two traces disagree: not guessed
            chosen = adjacent or by_inode
            if chosen is not None and chosen.inode not in used:
                used.add(chosen.inode)
                out[up.inode] = chosen
    return out


def memory_bytes(pid: int) -> int | None:
    """A process's proportional set size (Pss: its private pages plus its share of those it shares with the
    other workers), from /proc/PID/smaps_rollup; RSS when that is not readable; None when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
