"""systemd's notify protocol, for `Type=notify` units (deploy/systemd/nginxctl-watch.service): one datagram
to $NOTIFY_SOCKET per state, no dependency. Outside systemd (no NOTIFY_SOCKET) every call is a no-op."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "WATCHDOG=1", "STOPPING=1"); False when not run by systemd or the socket
    is gone (systemd stopped listening: nothing to tell)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1 (half of WatchdogSec=, as sd_watchdog_enabled advises), or None when the
    unit has no watchdog or it is meant for another process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 0) / 2e6 or None
    except ValueError:
        return None
