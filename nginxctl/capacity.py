"""Capacity from intent: connections the pool must hold -> worker settings and a memory estimate.

Pure arithmetic, documented in docs/capacity.md. The constants are the measured or nginx-given facts:
each proxied connection holds two nginx connections (client side and backend side), each one file
descriptor; nginx spreads new connections unevenly over workers, so each worker is sized for
HEADROOM times its even share.
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


class CapacityError(ValueError):
    """The intent cannot be met within the limits; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    worker_processes: int | str
    worker_connections: int
    worker_rlimit_nofile: int
    memory_bytes: int | None
    notes: tuple[str, ...]


def plan(*, max_connections: int | None, worker_processes: int | str, worker_connections: int | None,
         worker_rlimit_nofile: int | None, fd_limit: int, buffer_bytes: int,
         memory_limit: int | None, listeners: int = 0) -> Plan:
    """Derive worker settings for `max_connections` client connections; explicit values win.

    Every listening socket takes one of each worker's connections too (nginx refuses to start when
    `listeners` exceed worker_connections). Raises CapacityError when the intent needs more
    descriptors per process than `fd_limit` with the workers allowed, or more buffer memory than
    `memory_limit`, or when an explicit worker_connections cannot even hold the listeners.
    """
    notes: list[str] = []
    if worker_connections is not None and worker_connections <= listeners:
        raise CapacityError(f"worker_connections {worker_connections} is not enough for {listeners} listening "
                            f"sockets (each takes one connection in every worker): raise it above {listeners}")
    usable = fd_limit - RESERVED_FDS - listeners
    if usable <= 0:
        raise CapacityError(f"{listeners} listening sockets do not fit the open-file limit of {fd_limit} per "
                            "process: raise fd_limit if the host allows more")
    if max_connections is None:
        wc = worker_connections or min(DEFAULT_WORKER_CONNECTIONS + listeners, usable + listeners)
        return Plan(worker_processes, wc, worker_rlimit_nofile or min(fd_limit, wc + RESERVED_FDS),
                    None, ())

    sockets = SOCKETS_PER_PROXIED * max_connections
    if isinstance(worker_processes, int):
        workers = worker_processes
    else:
        # `auto` may mean one worker on a one-core host: size so that even that is enough,
        # unless a single process cannot hold it; then name the count nginx must start.
        workers = max(1, math.ceil(sockets * HEADROOM / usable))
        if workers > 1:
            notes.append(f"max_connections {max_connections} needs {sockets} sockets; at {fd_limit} open "
                         f"files per process that is {workers} workers (worker_processes {workers})")
    wc = worker_connections or math.ceil(sockets * HEADROOM / workers) + listeners
    if worker_connections is not None and worker_connections * workers < sockets:
        notes.append(f"worker_connections {worker_connections} x {workers} workers holds fewer than the "
                     f"{sockets} sockets max_connections {max_connections} needs")
    if wc + RESERVED_FDS > fd_limit:
        raise CapacityError(
            f"max_connections {max_connections} needs {wc} connections per worker with {workers} worker(s), "
            f"beyond the open-file limit of {fd_limit} per process: raise worker_processes to at least "
            f"{math.ceil(sockets * HEADROOM / usable)}, or fd_limit if the host allows more")
    rlimit = worker_rlimit_nofile or min(fd_limit, wc + RESERVED_FDS)
    memory = max_connections * (2 * buffer_bytes + PER_CONNECTION_OVERHEAD)
    mib = memory / 1024 ** 2
    if memory_limit is not None and memory > memory_limit:
        raise CapacityError(
            f"max_connections {max_connections} with {buffer_bytes // 1024}k buffers needs up to {mib:.0f} MiB "
            f"of worker memory, beyond memory_limit {memory_limit // 1024 ** 2} MiB: set nginx.workload: idle "
            "(4k buffers) or a smaller proxy_buffer_size, or raise memory_limit")
    if memory > MEMORY_WARNING:
        notes.append(f"buffers for {max_connections} connections may use up to {mib:.0f} MiB once data has "
                     f"flowed ({buffer_bytes // 1024}k per direction); nginx.workload: idle uses 4k")
    return Plan(workers if workers > 1 else worker_processes, wc, rlimit, memory, tuple(notes))
