"""This machine, as capacity sees it (for `render`, where no Docker engine says where nginx runs), and who
this process is (for the locks and the health a `watch` publishes).

I/O (it reads /proc), so it lives outside the pure core; `capacity.Machine` is the data it returns.
"""

from __future__ import annotations

import os
import time

from .capacity import Machine


def _meminfo_total(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == "MemTotal":
                    value, _, unit = rest.strip().partition(" ")
                    return int(value) * (1024 if unit.strip().lower() == "kb" else 1)
    except (OSError, ValueError):
        return None
    return None


def local_machine() -> Machine:
    """The CPUs (os.cpu_count()) and memory (/proc/meminfo MemTotal, else sysconf) of this machine.

    Raises OSError when neither source tells the memory.
    """
    memory = _meminfo_total()
    if memory is None:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError) as exc:
            raise OSError(f"cannot tell this machine's memory: no /proc/meminfo and no sysconf ({exc})") from None
    return Machine(cpus=os.cpu_count() or 1, memory_bytes=memory)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): with the PID, it names one
    process even after the PID is reused."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def started_at(pid: int) -> float | None:
    """When a process of this host started (Unix time), or None when it cannot be read."""
    ticks = _start_ticks(pid)
    if ticks is None:
        return None
    # the start is counted from boot; /proc/stat's btime is whole seconds, the boot clock is exact
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + int(ticks) / os.sysconf("SC_CLK_TCK")


def process_identity() -> dict[str, str]:
    """This process as another nginxctl can recognise it: the machine's boot (a container sees its host's),
    the PID namespace, the PID in it and its start time. Host names are not part of it: a container's
    changes when it is recreated, and a container on the host network shows the host's."""
    pid = os.getpid()
    pidns = ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return {"boot": _read("/proc/sys/kernel/random/boot_id") or "", "pidns": pidns, "pid": str(pid),
            "start": _start_ticks(pid) or ""}


def process_alive(identity: dict[str, str]) -> bool | None:
    """Whether the process `identity` (from `process_identity`, maybe elsewhere) still runs: None when this
    process cannot tell (another machine or another PID namespace, or an identity without those fields)."""
    here = process_identity()
    if not identity.get("boot") or not identity.get("pidns") or not here["pidns"] \
            or (identity["boot"], identity["pidns"]) != (here["boot"], here["pidns"]):
        return None
    try:
        pid = int(identity.get("pid", ""))
    except ValueError:
        return None
    status = _read(f"/proc/{pid}/status")
    if status is None or any(line.startswith("State:") and "Z" in line.split()[1:2] for line in status.splitlines()):
        return False  # gone, or killed and not reaped yet
    return not identity.get("start") or _start_ticks(pid) == identity["start"]
