"""Running code in another process's network namespace (the nginx container's), from this host: setns(2) in a
short-lived thread, so that no thread of nginxctl ever stays moved. Sockets made there stay there and can be
used from any thread (sock_diag's netlink socket, an interface address dump, a test's client)."""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import EnvironmentProblem

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class SockDiagUnavailable(EnvironmentProblem):
    """The kernel's socket tables cannot be read or changed here: no sock_diag, no destroy support
    (CONFIG_INET_DIAG_DESTROY), missing privileges (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns), or the
    namespace's process is gone."""

    def __init__(self, cause: str, hint: str = "", err: int | None = None) -> None:
        self.errno = err
        super().__init__(cause, hint)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    # the symbols already loaded in this process (glibc's setns): ctypes.util.find_library would run
    # ldconfig, ~25 ms each time; os.setns exists only from Python 3.12
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def same_netns(pid: int) -> bool:
    """Whether process `pid` is in this thread's network namespace. Raises SockDiagUnavailable when
    its namespace cannot be read (process gone, not allowed)."""
    try:
        theirs = os.stat(_netns_path(pid))
    except OSError as exc:
        raise SockDiagUnavailable(f"cannot read the network namespace of pid {pid} ({exc.strerror})",
                                  "is the process running on this host, and nginxctl root?", exc.errno) from None
    ours = os.stat("/proc/thread-self/ns/net")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def in_netns(pid: int | None, action: Callable[[], T]) -> T:
    """Run `action` in the network namespace of process `pid` (None: this one) and return its result.

    setns(2) moves only the calling thread, so a fresh thread enters the namespace, runs `action`
    and goes back; this thread never changes namespace. Sockets that `action` creates stay in the
    namespace they were created in and can be used from any thread afterwards.
    Raises SockDiagUnavailable when the namespace cannot be entered; re-raises what `action` raises.
    """
    if pid is None or same_netns(pid):
        return action()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target = os.open(_netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failure.append(SockDiagUnavailable(f"cannot open the network namespace of pid {pid} ({exc.strerror})",
                                               "is the process running on this host?", exc.errno))
            return
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                failure.append(SockDiagUnavailable(
                    f"cannot enter the network namespace of pid {pid} (setns: {exc.strerror})",
                    "nginxctl needs root (CAP_SYS_ADMIN) on the engine's host", exc.errno))
                return
            try:
                result.append(action())
            except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread)
                failure.append(exc)
            finally:
                _setns(home)  # the thread ends anyway; going back keeps the rule 'no thread stays moved'
        finally:
            os.close(target)
            os.close(home)

    thread = threading.Thread(target=run, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def nonlocal_bind(pid: int, family: str) -> bool:
    """Let the sockets of process `pid`'s network namespace bind an address it does not hold
    (`net.ipv4.ip_nonlocal_bind`, or ipv6): a standby's nginx listening on the virtual IP. True when it was
    off and is on now. A net sysctl is per namespace: written from a thread that entered it. Raises
    SockDiagUnavailable (the namespace cannot be entered from here)."""
    path = f"/proc/sys/net/{'ipv4' if family == 'inet' else 'ipv6'}/ip_nonlocal_bind"

    def switch() -> bool:
        with open(path, encoding="ascii") as fh:
            if fh.read().strip() == "1":
                return False
        with open(path, "w", encoding="ascii") as fh:
            fh.write("1\n")
        return True

    return in_netns(pid, switch)
