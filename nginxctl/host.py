"""This machine, as capacity sees it: for `render`, where no Docker engine says where nginx runs.

I/O (it reads /proc), so it lives outside the pure core; `capacity.Machine` is the data it returns.
"""

from __future__ import annotations

import os

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
