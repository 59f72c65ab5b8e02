"""The virtual IP read off the targets (`ha:`): which target's network namespace has the address, and what its
keepalived (the `<container>-keepalived` companion) says it is.

How each is read, per target, in this order:

- **The address**: the kernel's netlink dump in the companion's namespace (`ifaddr`: no exec, needs
  CAP_SYS_ADMIN on the engine's host and the companion's process in this host's /proc); else `ip -o addr show
  dev IFACE` run in the companion through the Docker API (`docker exec`: a remote engine, or no privilege to
  enter a namespace). With the companion not running, the target's own namespace: netlink again when local,
  else (when `throwaway`, i.e. `status`, never `watch`) `ip` in a throwaway container of ha.image joined to the
  target's namespace. With neither running, there is no namespace to hold the address.
- **The state**: the file the shipped keepalived.conf's `notify` writes at every transition
  (`render.VRRP_STATE_FILE`), read through /proc/PID/root when local, else the Docker API's archive.

Every engine failure becomes a member that is `down` with the reason, never an exception: a read-only report
says what it can of every target.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from ..errors import EnvironmentProblem
from ..ifaddr import NoSuchInterface, interface_addresses
from ..inventory.model import HA, Inventory, NamedTarget
from ..lazy import lazy_import
from ..nginxtext import parse_docker_time
from ..render import VRRP_STATE_FILE
from ..vipview import DOWN, UNKNOWN, MemberVip, VipView, has_address, parse_ip_addr, parse_state
from .engine import engine_call, short
from .keepalived import KEEPALIVED_HINT, companion_name, companion_stale
from .live import LiveNginx
from .sandbox import _run_throwaway
from .transport import local_root

if TYPE_CHECKING:
    import docker
    import docker.errors
    from docker.models.containers import Container
else:
    docker = lazy_import("docker")

Clients = Callable[[str | None], "docker.DockerClient"]


def read_vip(clients: Clients, inv: Inventory, *, throwaway: bool = False) -> VipView:
    """Every target of the fleet (all of `targets:`, whatever a command's --targets) as read now; `clients` gives
    the engine of a docker_host (raising EnvironmentProblem when it cannot be reached)."""
    assert inv.ha is not None
    members = []
    for target in inv.targets:
        try:
            client = clients(target.docker_host)
        except EnvironmentProblem as exc:
            members.append(MemberVip(target.name, DOWN, None, why=str(exc).splitlines()[0], via=""))
            continue
        members.append(read_member(client, target, inv.ha, throwaway=throwaway))
    return VipView(inv.ha.vip, inv.ha.address, inv.ha.interface, tuple(members))


def read_member(client: docker.DockerClient, target: NamedTarget, ha: HA, *, throwaway: bool = False) -> MemberVip:
    """One target: its keepalived's state and whether its namespace holds ha.address (see the module docstring)."""
    name = target.container or target.name
    try:
        with engine_call(f"cannot inspect {name} and its keepalived"):
            nginx_box, companion = _get(client, name), _get(client, companion_name(name))
    except EnvironmentProblem as exc:
        return MemberVip(target.name, DOWN, None, why=str(exc).splitlines()[0])
    if companion is None or companion.status != "running":
        why = f"no keepalived beside {name} (apply runs {companion_name(name)})" if companion is None else \
            f"keepalived is {companion.status}"
        holds, via, unread = _holds_without(client, nginx_box, ha, throwaway)
        return MemberVip(target.name, DOWN, holds, why="; ".join(w for w in (why, unread) if w), via=via)
    state, since, quiet = _state(companion)
    holds, via, unread = _holds_in(companion, ha)
    stale = companion_stale(companion, nginx_box) if nginx_box is not None else f"container {name} is gone"
    why = "; ".join(w for w in (quiet, unread, f"stale companion: {stale}" if stale else "") if w)
    return MemberVip(target.name, state, holds, since, why, via)


def _get(client: docker.DockerClient, name: str) -> Container | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _local_pid(container: Container) -> int | None:
    """The container's main process when this host's /proc shows it (None: a remote engine)."""
    if local_root(container) is None:
        return None
    return int(container.attrs["State"]["Pid"])


# -- keepalived's word -----------------------------------------------------------------------------------------

def _state(companion: Container) -> tuple[str, float | None, str]:
    """(state, since, why it is unknown) from the state file."""
    pid = _local_pid(companion)
    content: bytes | None = None
    since: float | None = None
    try:
        if pid is not None:
            with open(f"/proc/{pid}/root{VRRP_STATE_FILE}", "rb") as fh:
                content, since = fh.read(), os.fstat(fh.fileno()).st_mtime
        else:
            content, since = _archive(companion, VRRP_STATE_FILE)
    except FileNotFoundError:
        content = None
    except (OSError, EnvironmentProblem) as exc:
        return UNKNOWN, None, f"its state file cannot be read ({exc})"
    state = parse_state(content)
    if state is not None:
        return state, since, ""
    if content is None:
        return UNKNOWN, None, ("keepalived has not said its state (a keepalived.conf without nginxctl's notify "
                               "line: it says it at its next transition, or at a restart of its companion)")
    return UNKNOWN, since, f"keepalived said {content.decode(errors='replace').strip()!r}"


def _archive(container: Container, path: str) -> tuple[bytes | None, float | None]:
    """A file's content and mtime through the Docker API (None: no such file). Raises EnvironmentProblem."""
    with engine_call(f"cannot read {path} in {container.name}"):
        try:
            chunks, stat = container.get_archive(path)
            data = b"".join(chunks)
        except docker.errors.NotFound:
            return None, None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member is not None else None
        content = extracted.read() if extracted is not None else None
    when = parse_docker_time(str(stat.get("mtime", ""))) if isinstance(stat, dict) else None
    return content, when.timestamp() if when is not None else None


# -- the namespace's truth -------------------------------------------------------------------------------------

def _holds_in(companion: Container, ha: HA) -> tuple[bool | None, str, str]:
    """(holds, via, why unknown) through the running companion: netlink in its namespace, else exec."""
    pid = _local_pid(companion)
    if pid is not None:
        found = _netlink(pid, ha)
        if found is not None:
            return found
    try:
        with engine_call(f"cannot run ip in {companion.name}"):
            result = companion.exec_run(["/bin/busybox", "ip", "-o", "addr", "show", "dev", ha.interface],
                                        stdout=True, stderr=True)
    except EnvironmentProblem as exc:
        return None, "exec", str(exc)
    output = bytes(result.output or b"").decode(errors="replace")
    if result.exit_code != 0:
        return None, "exec", f"ip addr show dev {ha.interface}: {output.strip() or result.exit_code}"
    return has_address(parse_ip_addr(output), ha.address), "exec", ""


def _netlink(pid: int, ha: HA) -> tuple[bool | None, str, str] | None:
    """Through the kernel in the namespace of `pid`; None when the namespace cannot be entered here."""
    try:
        return has_address(interface_addresses(pid, ha.interface), ha.address), "netlink", ""
    except NoSuchInterface:
        return None, "netlink", f"no interface {ha.interface} in its namespace"
    except (EnvironmentProblem, OSError):
        return None   # no privilege to enter it (setns), or no netlink socket here: let the engine run ip


def _holds_without(client: docker.DockerClient, nginx_box: Container | None, ha: HA,
                   throwaway: bool) -> tuple[bool | None, str, str]:
    """(holds, via, why unknown) with no keepalived running: the target's own namespace, if it has one."""
    if nginx_box is None or nginx_box.status not in ("running", "paused"):
        return False, "none", ""   # no process, no namespace: nothing can hold the address there
    pid = _local_pid(nginx_box)
    if pid is not None:
        found = _netlink(pid, ha)
        if found is not None:
            return found
    if not throwaway or nginx_box.status != "running":
        return None, "", "its namespace cannot be read without its keepalived from here"
    try:
        result = _run_throwaway(client, ha.image, ["/bin/busybox", "ip", "-o", "addr", "show", "dev", ha.interface],
                                network=f"container:{nginx_box.id}", caps=(), what="ip addr", hint=KEEPALIVED_HINT)
    except EnvironmentProblem as exc:
        return None, "throwaway", short(exc)
    if result.exit_code != 0:
        return None, "throwaway", f"ip addr show dev {ha.interface}: {result.output.strip()}"
    return has_address(parse_ip_addr(result.output), ha.address), "throwaway", ""


# -- who holds it, for a rollout's order --------------------------------------------------------------------------

class Reached(Protocol):
    """A target as a command or the controller holds it (`fleet.Member`)."""

    @property
    def name(self) -> str: ...

    @property
    def live(self) -> LiveNginx: ...


def holders(members: Iterable[Reached], ha: HA) -> list[str]:
    """The names of the members that hold the virtual IP now, in their order (one, normally; none while no
    keepalived runs or none can be read: unknown is not holding; two in a split brain). Read as `status` reads
    it, without a throwaway container."""
    return [m.name for m in members
            if read_member(m.live.client, NamedTarget(container=m.live.name, name=m.name), ha).holds]
