"""Which targets hold the virtual IP (`ha:`): read from their network namespaces, never guessed from keepalived.

A target holds the address when it is on `ha.interface` in the network namespace its nginx and its keepalived
companion share. Two ways to read that, the first that works:

- this host (the target is reached through /proc): `nsenter -t PID -n ip -o addr show dev IFACE`, with PID the
  container's main process (needs CAP_SYS_ADMIN; a controller without it falls through);
- the companion `<target>-keepalived` (any engine): `docker exec` of its busybox `ip -o addr show dev IFACE`,
  unless it is stale (left in a namespace its target no longer has).

When neither works the answer is unknown (None), never "no".
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from ..inventory.model import HA
from ..lazy import lazy_import
from .keepalived import _stale, companion_name
from .live import LiveNginx

if TYPE_CHECKING:
    import docker
    import docker.errors
    import requests
    import requests.exceptions
else:
    docker = lazy_import("docker")
    requests = lazy_import("requests")

READ_TIMEOUT = 10.0


class Reached(Protocol):
    """A target as a command or the controller holds it (`fleet.Member`)."""

    @property
    def name(self) -> str: ...

    @property
    def live(self) -> LiveNginx: ...


def addresses(text: str) -> list[str]:
    """The addresses in `ip -o addr show` output (iproute2's or busybox's), without their prefix length:
    `2: eth0    inet 10.254.7.100/16 scope global secondary eth0\\ ...` -> ['10.254.7.100']."""
    found = []
    for line in text.splitlines():
        words = line.split()
        found += [words[i + 1].split("/", 1)[0] for i, w in enumerate(words[:-1]) if w in ("inet", "inet6")][:1]
    return found


def has(found: list[str], address: str) -> bool:
    """Whether `address` is among `found` (IPv6 compared as addresses: 2001:db8::64 is 2001:DB8:0::64)."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return address in found
    for text in found:
        try:
            if ipaddress.ip_address(text.split("%", 1)[0]) == wanted:
                return True
        except ValueError:
            continue
    return False


def _by_nsenter(live: LiveNginx, interface: str) -> str | None:
    pid = live.main_pid
    if live.root is None or pid is None:
        return None
    try:
        done = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "addr", "show", "dev", interface],
                              capture_output=True, text=True, timeout=READ_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _by_companion(live: LiveNginx, interface: str) -> str | None:
    try:
        companion = live.client.containers.get(companion_name(live.name))
        if _stale(companion, live.container):
            return None
        result = companion.exec_run(["/bin/busybox", "ip", "-o", "addr", "show", "dev", interface], demux=False)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    if result.exit_code != 0:
        return None
    return bytes(result.output or b"").decode(errors="replace")


def addresses_on(live: LiveNginx, interface: str) -> list[str] | None:
    """The addresses on `interface` in the target's network namespace; None when they cannot be read."""
    try:
        live.container.reload()   # its main process and start time now: a restart makes a new namespace
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    text = _by_nsenter(live, interface)
    if text is None:
        text = _by_companion(live, interface)
    return None if text is None else addresses(text)


def holds(live: LiveNginx, ha: HA) -> bool | None:
    """Whether the target holds the virtual IP now (None: its namespace could not be read)."""
    found = addresses_on(live, ha.interface)
    return None if found is None else has(found, ha.address)


def holders(members: Iterable[Reached], ha: HA) -> list[str]:
    """The names of the members that hold the virtual IP now, in their order (one, normally; none while no
    keepalived runs or none can be read; two in a split brain)."""
    return [m.name for m in members if holds(m.live, ha)]
