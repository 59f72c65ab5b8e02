"""Who holds the virtual IP (`ha:`), and what each target's keepalived says it is. Pure: text in, data out.

The truth is read from the targets' network namespaces, never inferred from keepalived: a target *holds* the
address when its namespace has it on `ha.interface` (`ip -o addr`, or the kernel's netlink dump). keepalived's
own word is its VRRP state (MASTER, BACKUP, FAULT), which the shipped keepalived.conf makes it write to a state
file at every transition; `down` is a target whose keepalived does not run (or that cannot be reached), and
`unknown` one whose keepalived runs but has not said its state (a companion reloaded from a keepalived.conf
without the `notify` line keeps quiet until its next transition).

Two holders is a split brain (clients reach one or the other at the whim of their ARP caches); none is an
outage of everything behind the address. Both are said loudly: a `WARNING` line in text, `split_brain` and
`error` in JSON. Neither changes an exit code (see docs/controller.md, "The virtual IP").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .clock import utc_text

STATES = ("MASTER", "BACKUP", "FAULT")
DOWN = "down"
UNKNOWN = "unknown"


def parse_state(text: str | bytes | None) -> str | None:
    """The state keepalived wrote (`MASTER`, `BACKUP`, `FAULT`), or None for anything else (no file yet, `STOP`
    left by a keepalived that stopped, a torn write)."""
    if text is None:
        return None
    word = (text.decode(errors="replace") if isinstance(text, bytes) else text).strip().split(" ")[0]
    return word if word in STATES else None


def parse_ip_addr(text: str) -> list[str]:
    """The addresses in `ip -o addr show dev IFACE` output (iproute2's or busybox's), without their prefix:
    `2: eth0    inet 10.254.7.100/16 scope global secondary eth0\\ ...` -> ['10.254.7.100']."""
    found = []
    for line in text.splitlines():
        words = line.split()
        for i, word in enumerate(words[:-1]):
            if word in ("inet", "inet6"):
                found.append(words[i + 1].split("/", 1)[0])
                break
    return found


def has_address(addresses: list[str], address: str) -> bool:
    """Whether `address` is among `addresses` (IPv6 compared canonically: 2001:db8::64 == 2001:DB8:0::64)."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return address in addresses
    for text in addresses:
        try:
            if ipaddress.ip_address(text.split("%", 1)[0]) == wanted:
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class MemberVip:
    """One target of the fleet as read now."""

    name: str
    state: str                    # MASTER | BACKUP | FAULT (keepalived's word) | down | unknown
    holds: bool | None            # the address is on ha.interface in its namespace; None: could not be read
    since: float | None = None    # when keepalived said `state` (Unix time of the state file), when known
    why: str = ""                 # what made it down or unknown, or its namespace unreadable
    via: str = ""                 # how its namespace was read: netlink | exec | throwaway | none (no namespace)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "holds": self.holds, "since": self.since, "why": self.why or None,
                "read_via": self.via or None}


@dataclass(frozen=True)
class VipView:
    """The virtual IP over the fleet: every target, who holds the address, and what is wrong with that."""

    vip: str                      # address/prefix as the inventory says it
    address: str
    interface: str
    members: tuple[MemberVip, ...]

    @property
    def holders(self) -> list[str]:
        return [m.name for m in self.members if m.holds]

    @property
    def unreadable(self) -> list[str]:
        return [m.name for m in self.members if m.holds is None]

    @property
    def split_brain(self) -> bool:
        return len(self.holders) > 1

    @property
    def error(self) -> str | None:
        """What is wrong, in one sentence (None: exactly one target holds the address)."""
        holders = self.holders
        if len(holders) > 1:
            return (f"split brain: {' and '.join(holders)} all hold {self.address} on {self.interface}: each client "
                    "reaches whichever its ARP cache names (adverts not reaching each other: a partition or a "
                    "filter on VRRP, IP protocol 112; or a keepalived killed without removing the address)")
        if holders:
            return None
        unread = self.unreadable
        if unread:
            return (f"no target is known to hold {self.address} on {self.interface} ({', '.join(unread)} could "
                    "not be read)")
        return (f"no target holds {self.address} on {self.interface}: clients of the virtual IP reach nothing "
                "(every keepalived in FAULT or down: does nginx answer its health listener on each target?)")

    def states(self) -> dict[str, str]:
        return {m.name: m.state for m in self.members}

    def to_dict(self) -> dict[str, Any]:
        return {"vip": self.vip, "interface": self.interface, "holders": self.holders, "targets": self.states(),
                "split_brain": self.split_brain, "error": self.error, "unreadable": self.unreadable,
                "members": {m.name: m.to_dict() for m in self.members}}

    def lines(self) -> list[str]:
        holders = self.holders
        head = f"vip         {self.vip} on {self.interface}: " + (
            f"held by {', '.join(holders)}" if holders else "held by no target" if not self.unreadable
            else "held by no target known")
        out = [head]
        if self.error is not None:
            out.append(f"WARNING     {self.error}")
        width = max((len(m.name) for m in self.members), default=0)
        for m in self.members:
            text = f"  {m.name:<{width}}  {m.state:<7}"
            if m.holds:
                text += f"  holds {self.address}"
                if m.state in ("BACKUP", "FAULT"):
                    text += f" (yet keepalived says {m.state})"
                elif m.state == DOWN:
                    text += " (and no keepalived runs there to give it up)"
            elif m.holds is None:
                text += "  holding unknown"
            if m.since is not None and m.state in STATES:
                text += f"  since {utc_text(m.since)}"
            if m.why:
                text += f"  ({m.why})"
            out.append(text.rstrip())
        return out


def moved(before: VipView | None, after: VipView) -> bool:
    """Whether the holders (or which targets cannot be read) changed: a `vip` line is due."""
    return before is None or (before.holders, before.unreadable) != (after.holders, after.unreadable)

