"""What nginx is doing right now: worker generations still draining, and the connections each worker holds.

Processes come from the Docker API (`LiveNginx.processes`); sockets from /proc on this host, which
sees a container's processes when nginxctl runs beside the engine (not for a remote engine: then the
answers are None, "unknown", never a guess).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .nginx import LiveNginx
from .nginxtext import Processes, Socket, hosts_lookup, parse_proc_net


def sockets(pids: list[int]) -> dict[int, list[Socket]] | None:
    """TCP sockets per process, read from /proc on this host; None when the processes are not
    visible here (a remote Docker engine). Each network namespace's table is read once."""
    wanted: dict[int, set[str]] = {}
    tables: dict[str, str] = {}
    try:
        for pid in pids:
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            wanted[pid] = inodes
            netns = os.readlink(f"/proc/{pid}/ns/net")
            if netns not in tables:
                text = ""
                for name in ("tcp", "tcp6"):
                    with open(f"/proc/{pid}/net/{name}", encoding="ascii") as fh:
                        text += fh.read()
                tables[netns] = text
    except OSError:
        return None
    every = set().union(*wanted.values()) if wanted else set()
    table: dict[str, Socket] = {}
    for text in tables.values():
        table.update(parse_proc_net(text, every))
    return {pid: [table[i] for i in inodes if i in table] for pid, inodes in wanted.items()}


def memory(pid: int) -> int | None:
    """A process's memory in bytes: its proportional set size (PSS: pages shared with the master and the
    other workers counted in part, so a sum over workers is not inflated), else its RSS; None when the
    process cannot be seen from here (a remote engine) or is gone."""
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path, encoding="ascii") as fh:
                for line in fh:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return None


def memory_of(pids: list[int]) -> int | None:
    """The memory of several processes (None when none of them can be read)."""
    known = [m for m in (memory(p) for p in pids) if m is not None]
    return sum(known) if known else None


@dataclass
class Generation:
    """Old workers from one earlier reload, still serving connections they had."""

    pids: list[int]
    connections: int | None
    memory: int | None = None   # bytes (PSS), None when unknown

    def describe(self) -> str:
        held = "connections unknown" if self.connections is None else f"{self.connections} connection(s)"
        cost = "" if self.memory is None else f", {self.memory / (1 << 20):.1f} MiB"
        return f"{len(self.pids)} old worker(s) {', '.join(map(str, self.pids))}: {held}{cost}"


@dataclass
class ReloadState:
    processes: Processes
    generations: list[Generation]
    workers_connections: int | None
    shutdown_timeout: str | None
    current_memory: int | None = None   # the current workers' memory: a generation of its own after a reload

    @property
    def lingering_memory(self) -> int | None:
        known = [g.memory for g in self.generations if g.memory is not None]
        return sum(known) if known else (0 if not self.generations else None)

    def summary(self) -> list[str]:
        lines = [f"lingering generation {i}: {gen.describe()}" for i, gen in enumerate(self.generations, 1)]
        if self.workers_connections is not None:
            lines.append(f"current workers hold {self.workers_connections} client connection(s)")
        if self.shutdown_timeout:
            lines.append(f"a reload moves them to old workers, cut after worker_shutdown_timeout "
                         f"{self.shutdown_timeout}")
        else:
            lines.append("a reload moves them to old workers that keep them until clients close "
                         "(no worker_shutdown_timeout)")
        return lines

    def to_dict(self) -> dict[str, object]:
        return {"lingering_generations": [{"pids": g.pids, "connections": g.connections, "memory_bytes": g.memory}
                                          for g in self.generations],
                "lingering_memory_bytes": self.lingering_memory,
                "client_connections": self.workers_connections, "worker_shutdown_timeout": self.shutdown_timeout}


def _client_sockets(master: int | None, pids: list[int]) -> dict[int, int] | None:
    """Established client-side sockets per worker: those whose local port the master listens on."""
    socks = sockets(pids + ([master] if master is not None else []))
    if socks is None:
        return None
    listening = {s.local[1] for lst in socks.values() for s in lst if s.state == "LISTEN"}
    return {pid: sum(1 for s in socks[pid] if s.state == "ESTABLISHED" and s.local[1] in listening)
            for pid in pids}


def server_addresses(live: LiveNginx, host: str, hosts: str | None = None) -> set[str]:
    """The addresses nginx connects to for a server given as `host`: the literal itself, or what the
    container's /etc/hosts gives the name (nginx reads it first), else what this host resolves it to.
    `hosts`: the container's /etc/hosts text when the caller read it already."""
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return {host}
    except OSError:
        pass
    found = hosts_lookup(live.hosts_file() if hosts is None else hosts, host)
    if not found:
        try:
            found = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        except OSError:
            found = set()
    return {a[7:] if a.startswith("::ffff:") else a for a in found}


def server_connections(live: LiveNginx, host: str, port: int) -> dict[int, int] | None:
    """Established connections from nginx workers (current and old) to one backend, per worker pid,
    by the addresses nginx connects to (a host name counts as every address it resolves to).
    None when the processes cannot be seen from here (a remote Docker engine)."""
    procs = live.processes()
    addresses = server_addresses(live, host)
    socks = sockets([p.pid for p in procs.workers + procs.old_workers])
    if socks is None:
        return None
    return {pid: n for pid, lst in socks.items()
            if (n := sum(1 for s in lst if s.state == "ESTABLISHED" and s.remote[1] == port
                         and s.remote[0] in addresses))}


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def group_generations(old: list[tuple[int, int | None]], workers_per_generation: int) -> list[list[int]]:
    """Old workers (pid, start tick) -> generations. The workers of one reload are forked within
    milliseconds and reloads are at least ~150 ms apart (nginx -t, then the new cycle), so a gap of
    8 clock ticks (80 ms) separates generations; without start ticks, by the current worker count."""
    if not old:
        return []
    if all(t is not None for _, t in old):
        groups: list[list[int]] = []
        last = None
        for pid, tick in sorted(old, key=lambda p: p[1] or 0):
            if last is None or (tick or 0) - last > 8:
                groups.append([])
            groups[-1].append(pid)
            last = tick or 0
        return groups
    pids = sorted(pid for pid, _ in old)
    per = max(1, workers_per_generation)
    return [pids[i:i + per] for i in range(0, len(pids), per)]


def reload_state(live: LiveNginx, shutdown_timeout: str | None, connections: bool = True,
                 counts: dict[int, int] | None = None, processes: Processes | None = None,
                 memory: Callable[[int], int | None] | None = None) -> ReloadState:
    """Old worker generations still shutting down, with the connections each holds (`connections` False:
    not counted, None: reading the socket tables of a busy host costs tens of milliseconds). `counts`
    (client connections per worker pid) and `processes`: what the caller read already (`pool.read_pool`);
    `memory`: how to read a worker's memory (each generation then shows its workers' total)."""
    procs = processes or live.processes()
    old = sorted(procs.old_workers, key=lambda p: p.pid)
    if counts is None and connections:
        counts = _client_sockets(procs.master.pid if procs.master else None, [p.pid for p in old + procs.workers])
    groups = group_generations([(p.pid, _start_ticks(p.pid)) for p in old], len(procs.workers))
    generations = [Generation(g, None if counts is None else sum(counts.get(p, 0) for p in g), memory_of(g))
                   for g in groups]
    current = None if counts is None else sum(counts.get(p.pid, 0) for p in procs.workers)
    return ReloadState(procs, generations, current, shutdown_timeout, memory_of([p.pid for p in procs.workers]))
