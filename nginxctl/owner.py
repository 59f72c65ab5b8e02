"""One owner per target: while `nginxctl watch` controls a target, no other command changes it behind its back.

The rule, the same for every command that changes a target (`apply`, `rollback`, `drain`, `undrain`, `rebalance`): it is
refused with exit 3 naming the watch (`WatchOwnsTarget`); nothing changes. The watch already applies every
change of its inventory by itself, verified, so the way to change a watched target is to change what the
watch reads. `apply --force` and `rollback --force` change the target anyway: to the watch that is drift,
which it logs and corrects at its next resync (`--resync`, 30 s by default) or target event.

A target is controlled by a watch when its watch lock is held by a live process and that watch's published
heartbeat (see `published`) is recent; a lock whose holder published that it stopped, or stopped beating,
does not hold the target (a killed or hung watch must not lock everyone out).
"""

from __future__ import annotations

from .errors import WatchOwnsTarget
from .fleet import Member
from .host import process_alive
from .nginx import TargetLock, describe_holder
from .published import Published, WatchState


def controlling_watch(member: Member) -> tuple[str, WatchState | None] | None:
    """(who, its published state) of the watch that controls the member's target, or None."""
    live = member.deployer.live
    state = Published(live, member.deployer.history.base).watch()
    labels = TargetLock.holder_of(live.client, live, kind="watch")
    if labels is None:
        return (state.describe(), state) if state is not None and state.live() else None
    same = state is not None and str(state.pid) == labels.get("nginxctl.pid") \
        and state.host == labels.get("nginxctl.host")
    identity = {key: labels.get(f"nginxctl.{key}", "") for key in ("boot", "pidns", "pid", "start")}
    if process_alive(identity) is True:  # its process is seen running: it controls the target, beating or not
        return (state.describe(), state) if same and state is not None else (describe_holder(labels), None)
    if same and state is not None:  # out of sight (another PID namespace): alive while it beats
        return (state.describe(), state) if state.live() else None
    return describe_holder(labels), None


def check_owner(members: list[Member], *, force: bool = False) -> list[str]:
    """Refuse (WatchOwnsTarget, exit 3) when a watch controls one of the targets; with `force`, return the notes
    that say what the forced change means instead."""
    notes = []
    for member in members:
        found = controlling_watch(member)
        if found is None:
            continue
        who, state = found
        error = WatchOwnsTarget(member.deployer.live.name, who, state.resync if state else None)
        if not force:
            raise error
        again = f"within {state.resync:g}s" if state else "at its next resync"
        notes.append(f"--force: {member.deployer.live.name} is controlled by nginxctl watch ({who}); this change is "
                     f"drift to it: it logs it and puts its own config back {again}")
    return notes
