"""The addresses on one interface of another process's network namespace, from the kernel (rtnetlink's
RTM_GETADDR dump, what `ip addr` reads), without running anything in the container.

The netlink socket is made in the namespace of process P (`netns.in_netns`: setns(2) in a short-lived
thread, so CAP_SYS_ADMIN on the engine's host), and the interface's index is looked up there too. Standard
library only. `parse_addresses` (bytes in, data out) is what the unit tests check.
Errors: SockDiagUnavailable (an EnvironmentProblem) when the namespace cannot be entered; NoSuchInterface
(an OSError, ENODEV); other OSErrors from the kernel or a sandbox that forbids netlink sockets.
"""

from __future__ import annotations

import errno
import socket
import struct

from .netns import in_netns

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")           # len, type
_ERR = struct.Struct("=i")
_RECV_SIZE = 1 << 16


class NoSuchInterface(OSError):
    """The namespace has no interface of that name (ENODEV)."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def dump_request(seq: int = 1) -> bytes:
    """RTM_GETADDR, every family, every interface (the kernel filters nothing for a dump: we do)."""
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_addresses(data: bytes, index: int) -> tuple[list[str], bool]:
    """The addresses of interface `index` in one buffer of the dump's answer, and whether the dump is done
    (NLMSG_DONE seen). IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a point-to-point
    link); IPv6 has IFA_ADDRESS only. Raises OSError when the kernel answered with an error."""
    found: list[str] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        body = offset + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (code,) = _ERR.unpack_from(data, body)
            if code:
                raise OSError(-code, f"netlink RTM_GETADDR: {errno.errorcode.get(-code, -code)}")
        elif kind == RTM_NEWADDR:
            family, _, _, _, ifindex = _IFADDRMSG.unpack_from(data, body)
            if ifindex == index and family in (socket.AF_INET, socket.AF_INET6):
                attrs = _attributes(data, body + _IFADDRMSG.size, offset + length)
                raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                if raw is not None:
                    found.append(socket.inet_ntop(family, raw))
        offset += _align(length)
    return found, False


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    at = start
    while at + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, at)
        if length < _RTA.size:
            break
        attrs.setdefault(kind, data[at + _RTA.size:at + length])
        at += _align(length)
    return attrs


def interface_addresses(pid: int, interface: str, timeout: float = 5.0) -> list[str]:
    """The addresses (IPv4 and IPv6, without prefix) on `interface` in the network namespace of `pid`.
    Raises SockDiagUnavailable (the namespace cannot be entered), NoSuchInterface, OSError (no netlink socket
    here, e.g. a service restricted to AF_UNIX/AF_INET/AF_INET6; the kernel refused the dump)."""

    def dump() -> list[str]:
        try:
            index = socket.if_nametoindex(interface)   # in the namespace of `pid`: this thread entered it
        except OSError:
            raise NoSuchInterface(errno.ENODEV, f"no interface {interface}") from None
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as nl:
            nl.settimeout(timeout)
            nl.bind((0, 0))
            nl.sendall(dump_request())
            found: list[str] = []
            while True:
                part, done = parse_addresses(nl.recv(_RECV_SIZE), index)
                found += part
                if done:
                    return found

    return in_netns(pid, dump)
