"""Capacity from intent: connections the pool must hold -> worker settings and a memory estimate.

Pure arithmetic, explained in the README ("What nginxctl decides for you") and docs/runbook.md ("Size
capacity"). The constants are the measured or nginx-given facts: each proxied connection holds two nginx
connections (client side and backend side), each one file descriptor; nginx spreads new connections
unevenly over workers, so each worker is sized for HEADROOM times its even share.

The machine nginx runs on is data (`Machine`), passed in by the caller: the Docker engine's for commands
that talk to one, this machine's for `render` (nginxctl.host). Without one, only the inventory's own
limits (fd_limit, memory_limit) apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOCKETS_PER_PROXIED = 2
HEADROOM = 1.5
RESERVED_FDS = 64  # listen sockets, log files, the channel to the master
DEFAULT_WORKER_CONNECTIONS = 8192  # ~4,000 proxied connections per worker with no intent declared
PER_CONNECTION_OVERHEAD = 1536  # bytes besides the two buffers (measured: 4k buffers ~9.4 MiB / 1,000)
BUFFER_BY_WORKLOAD = {"idle": "4k", "balanced": None, "bulk": "64k"}
NGINX_DEFAULT_BUFFER = 16 * 1024
MEMORY_WARNING = 1024 ** 3
# More workers than this per CPU only add context switches and memory: nginx's own advice is one per
# core; up to 4 leaves room for a host whose CPUs are shared, and at least 4 for small machines.
WORKERS_PER_CPU = 4
MIN_WORKER_BOUND = 4
# nginx's process table holds 1024 processes (NGX_MAX_PROCESSES; a worker beyond it is not started), and a
# reload starts the new generation before the old one leaves: at most half of it can be reloaded.
NGINX_MAX_WORKERS = 512
NGINX_WORKER_LIMIT = ("nginx runs at most 1024 processes, and a reload starts the new workers before the old ones "
                      "leave")


@dataclass(frozen=True)
class Machine:
    """The machine nginx runs on: its CPUs and its memory in bytes."""

    cpus: int
    memory_bytes: int

    @property
    def max_workers(self) -> int:
        """The most worker processes nginxctl derives for this machine."""
        return max(MIN_WORKER_BOUND, WORKERS_PER_CPU * self.cpus)


class CapacityError(ValueError):
    """The intent cannot be met. `problems` are (setting, message) pairs: the setting at fault
    (max_connections, worker_connections, fd_limit or zone_size) and what to change."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


@dataclass(frozen=True)
class Plan:
    worker_processes: int | str
    worker_connections: int
    worker_rlimit_nofile: int
    memory_bytes: int | None
    notes: tuple[str, ...]


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:.0f} MiB" if n >= 1024 ** 2 else f"{n / 1024:.0f} KiB"


def plan(*, max_connections: int | None, worker_processes: int | str, worker_connections: int | None,
         worker_rlimit_nofile: int | None, fd_limit: int, buffer_bytes: int,
         memory_limit: int | None, listeners: int = 0, zone_bytes: int = 0,
         machine: Machine | None = None) -> Plan:
    """Derive worker settings for `max_connections` client connections; explicit values win.

    Every listening socket takes one of each worker's connections too (nginx refuses to start when
    `listeners` exceed worker_connections). Memory is the connection buffers (with an intent) plus the
    groups' shared zones (`zone_bytes`, mapped when nginx loads the config), checked against
    `memory_limit`, else the `machine`'s memory. Raises CapacityError with every problem: an explicit
    worker_connections that cannot hold the listeners, more descriptors per process than `fd_limit`,
    more memory than that limit, more derived workers than the machine's bound (Machine.max_workers).
    """
    if worker_connections is not None and worker_connections <= listeners:
        raise CapacityError([("worker_connections", f"worker_connections {worker_connections} is not enough for "
                              f"{listeners} listening sockets (each takes one connection in every worker): raise "
                              f"it above {listeners}")])
    usable = fd_limit - RESERVED_FDS - listeners
    if usable <= 0:
        raise CapacityError([("fd_limit", f"{listeners} listening sockets do not fit the open-file limit of "
                              f"{fd_limit} per process: raise fd_limit if the host allows more")])
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    if memory_limit is not None:
        limit: int | None = memory_limit
        beyond = f"memory_limit {_mib(memory_limit)}"
        remedy = "raise memory_limit"
    elif machine is not None:
        limit = machine.memory_bytes
        beyond = f"the {_mib(machine.memory_bytes)} of memory of the machine nginx runs on"
        remedy = "set nginx.memory_limit to the memory nginx may really use"
    else:
        limit, beyond, remedy = None, "", ""
    if limit is not None and zone_bytes > limit:
        problems.append(("zone_size", f"the groups' shared zones need {_mib(zone_bytes)}, beyond {beyond}: lower "
                         f"zone_size, or {remedy}"))
    if max_connections is None:
        if problems:
            raise CapacityError(problems)
        wc = worker_connections or min(DEFAULT_WORKER_CONNECTIONS + listeners, usable + listeners)
        return Plan(worker_processes, wc, worker_rlimit_nofile or min(fd_limit, wc + RESERVED_FDS), None, ())

    sockets = SOCKETS_PER_PROXIED * max_connections
    needed = math.ceil(sockets * HEADROOM / usable)  # workers that hold the intent within fd_limit
    on_machine = (f"; this machine has {machine.cpus} CPU(s), so nginxctl runs at most {machine.max_workers} "
                  f"workers ({WORKERS_PER_CPU} per CPU, at least {MIN_WORKER_BOUND})") if machine else ""
    if isinstance(worker_processes, int):
        workers = worker_processes
    else:
        # `auto` may mean one worker on a one-core host: size so that even that is enough,
        # unless a single process cannot hold it; then name the count nginx must start.
        workers = max(1, needed)
        if machine is not None and workers > machine.max_workers:
            problems.append(("max_connections", f"max_connections {max_connections} needs {workers} workers at "
                             f"{fd_limit} open files per process{on_machine}: lower max_connections, raise "
                             "fd_limit if the host allows more, or set worker_processes yourself"))
        elif workers > NGINX_MAX_WORKERS:
            problems.append(("max_connections", f"max_connections {max_connections} needs {workers} workers at "
                             f"{fd_limit} open files per process, beyond the {NGINX_MAX_WORKERS} nginx can run and "
                             "reload: lower max_connections, or raise fd_limit if the host allows more"))
        elif workers > 1:
            notes.append(f"max_connections {max_connections} needs {sockets} sockets; at {fd_limit} open files "
                         f"per process that is {workers} workers (worker_processes {workers}){on_machine}")
    wc = worker_connections or math.ceil(sockets * HEADROOM / workers) + listeners
    if worker_connections is not None and worker_connections * workers < sockets:
        notes.append(f"worker_connections {worker_connections} x {workers} workers holds fewer than the "
                     f"{sockets} sockets max_connections {max_connections} needs")
    if wc + RESERVED_FDS > fd_limit:
        problems.append(("max_connections", f"max_connections {max_connections} needs {wc} connections per worker "
                         f"with {workers} worker(s), beyond the open-file limit of {fd_limit} per process: raise "
                         f"worker_processes to at least {needed}, or fd_limit if the host allows more{on_machine}"))
    rlimit = worker_rlimit_nofile or min(fd_limit, wc + RESERVED_FDS)
    memory = max_connections * (2 * buffer_bytes + PER_CONNECTION_OVERHEAD)
    zones = f" (plus {_mib(zone_bytes)} of shared zones)" if zone_bytes else ""
    if limit is not None and zone_bytes <= limit < memory + zone_bytes:
        problems.append(("max_connections", f"max_connections {max_connections} with {buffer_bytes // 1024}k "
                         f"buffers needs up to {_mib(memory)} of worker memory{zones}, beyond {beyond}: set "
                         "nginx.workload: idle (4k buffers) or a smaller proxy_buffer_size, lower "
                         f"max_connections, or {remedy}"))
    if problems:
        raise CapacityError(problems)
    if memory > MEMORY_WARNING:
        of = f" of the machine's {_mib(machine.memory_bytes)}" if machine else ""
        notes.append(f"buffers for {max_connections} connections may use up to {_mib(memory)}{of} once data has "
                     f"flowed ({buffer_bytes // 1024}k per direction); nginx.workload: idle uses 4k")
    return Plan(workers if workers > 1 else worker_processes, wc, rlimit, memory, tuple(notes))
