"""The state nginxctl publishes on a target, beside its config, for the commands that read it.

  .nginxctl/watch.json    the running watch: who (pid, host, inventory), when it last looked (a heartbeat
                          at least every --resync), what it wants (the desired config's hash; the text in
                          desired.conf) and why a change is held back, if one is
  .nginxctl/desired.conf  the config the watch wants the target to run (health decisions included)
  .nginxctl/health.json   the watch's health decisions, server by server
  .nginxctl/drained.json  servers `nginxctl drain` took out (so `status` says `drain`, not `inventory`)
  .nginxctl/overlay.json  the temporary overlay a running `nginxctl rebalance` has loaded: the servers of one
                          group it closed to new connections while it moves connections (runtime state like
                          health decisions: `status` shows it and expects it, never as drift)

This module is the one owner of these files: the watch writes them through it, `status`, `diff` and the
one-owner rule read them through it. Every file carries `"format": FORMAT`; a file without one was
written by an older nginxctl and is read as format 1 (the same keys).

A watch is *live* when its heartbeat is recent (LIVE_HEARTBEATS resync intervals) and it has not said it
stopped; on the same host, a watch process that no longer exists is not live whatever its heartbeat says.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import NginxctlError
from .history import FORMAT, Store
from .host import process_alive, process_identity

LIVE_HEARTBEATS = 3
MIN_LIVE_SECONDS = 30.0


def _load(raw: bytes | None) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _gone(identity: Any, host: Any = None, pid: Any = None) -> bool:
    """Whether the publishing process is known to be gone: by its identity (boot, PID namespace, pid, start:
    decidable wherever the same PID namespace is seen, a container's included), else, for files an older
    nginxctl wrote, by host name and pid on that host."""
    if isinstance(identity, dict) and identity:
        return process_alive(identity) is False
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid or 0), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OSError):
        return False
    return False


@dataclass
class WatchState:
    """What a watch publishes about itself and what it wants."""

    pid: int
    host: str
    inventory: str
    updated: float
    resync: float
    desired_sha256: str | None = None
    loaded_sha256: str | None = None
    held: str | None = None            # why the desired config is not running yet (None: nothing held)
    held_since: float | None = None
    unreachable: list[str] = field(default_factory=list)   # discovery sources not reachable now
    stopped: float | None = None
    identity: dict[str, str] = field(default_factory=dict)  # host.process_identity() of the watch

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.__dict__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatchState | None:
        try:
            return cls(int(data["pid"]), str(data["host"]), str(data.get("inventory", "")), float(data["updated"]),
                       float(data.get("resync") or 30.0), data.get("desired_sha256"), data.get("loaded_sha256"),
                       data.get("held"), data.get("held_since"), list(data.get("unreachable") or []),
                       data.get("stopped"), dict(data.get("identity") or {}))
        except (KeyError, TypeError, ValueError):
            return None

    def live(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.stopped:
            return False
        if now - self.updated > max(MIN_LIVE_SECONDS, LIVE_HEARTBEATS * self.resync):
            return False
        return not _gone(self.identity, self.host, self.pid)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, inventory {self.inventory}"


class Published:
    """Read and write the published files of one target (`store`: the live container, or a dict in tests)."""

    def __init__(self, store: Store, directory: str) -> None:
        self.store = store
        self.dir = directory          # the config's folder; the files live in its .nginxctl/

    def _read(self, name: str) -> dict[str, Any] | None:
        return _load(self.store.read_file(f"{self.dir}/.nginxctl/{name}"))

    def write(self, files: dict[str, str]) -> None:
        """Write files (names relative to .nginxctl/) in one call; a target that went away is not an error here:
        the next pass publishes again."""
        try:
            self.store.put_files(self.dir, {f".nginxctl/{k}": v for k, v in files.items()})
        except NginxctlError:
            pass

    # -- the watch ------------------------------------------------------------------------------------------

    def watch(self) -> WatchState | None:
        data = self._read("watch.json")
        return WatchState.from_dict(data) if data else None

    def live_watch(self) -> WatchState | None:
        """The watch that controls this target now, if one does."""
        state = self.watch()
        return state if state is not None and state.live() else None

    def desired(self, state: WatchState) -> str | None:
        """The config `state`'s watch wants, when what is stored is that config."""
        raw = self.store.read_file(f"{self.dir}/.nginxctl/desired.conf")
        if raw is None:
            return None

        return raw.decode() if hashlib.sha256(raw).hexdigest() == state.desired_sha256 else None

    @staticmethod
    def watch_files(state: WatchState, desired: str | None) -> dict[str, str]:
        files = {"watch.json": json.dumps(state.to_dict(), indent=1) + "\n"}
        if desired is not None:
            files["desired.conf"] = desired
        return files

    # -- health ---------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any] | None:
        """The health decisions last published (None: no watch ever checked this target), with `stale` set
        when the watch that published them no longer runs."""
        data = self._read("health.json")
        if data is None:
            return None
        if data.get("stopped") or _gone(data.get("watch"), data.get("watch_host"), data.get("watch_pid")):
            alive = False
        elif data.get("heartbeat_seconds"):  # re-stamped while nothing changes: alive while it beats
            try:
                alive = time.time() - float(data["updated"]) < LIVE_HEARTBEATS * float(data["heartbeat_seconds"])
            except (KeyError, TypeError, ValueError):
                alive = False
        else:  # an older nginxctl wrote no heartbeat: its process must be seen running
            alive = data.get("watch_host") == socket.gethostname() and process_alive(data.get("watch") or {}) \
                is not False and not _gone(None, data.get("watch_host"), data.get("watch_pid"))
        data["stale"] = not alive
        return data

    @staticmethod
    def health_files(rows: list[dict[str, Any]], *, stopped: bool, heartbeat: float) -> dict[str, str]:
        now = time.time()
        return {"health.json": json.dumps({"format": FORMAT, "updated": now, "heartbeat_seconds": heartbeat,
                                           "watch_pid": os.getpid(), "watch_host": socket.gethostname(),
                                           "watch": process_identity(), "stopped": now if stopped else None,
                                           "servers": rows}, indent=1) + "\n"}

    # -- drained servers ------------------------------------------------------------------------------------

    def drained(self) -> set[tuple[str, str]]:
        data = self._read("drained.json") or {}
        return {(str(r.get("group")), str(r.get("address"))) for r in data.get("servers", []) if isinstance(r, dict)}

    def set_drained(self, group: str, address: str, drained: bool) -> None:
        now = self.drained()
        now = now | {(group, address)} if drained else now - {(group, address)}
        self.write({"drained.json": json.dumps({"format": FORMAT, "servers": [
            {"group": g, "address": a} for g, a in sorted(now)]}, indent=1) + "\n"})

    # -- the rebalance overlay ------------------------------------------------------------------------------

    def overlay(self) -> dict[str, Any] | None:
        """The overlay a rebalance published (None: none), with `stale` set when the process that published it
        no longer runs (its overlay is then nobody's: `apply --reload` puts the normal config back)."""
        data = self._read("overlay.json")
        if not data or not data.get("group"):
            return None
        data["stale"] = _gone(data.get("identity"), data.get("host"), data.get("pid"))
        return data

    @staticmethod
    def overlay_files(group: str | None, down: list[str], normal_sha256: str | None = None,
                      by: str = "rebalance") -> dict[str, str]:
        """The overlay.json that says `group`'s servers `down` are closed to new connections by this process,
        `by` a one-shot `rebalance` or a `watch` (`group` None: no overlay)."""
        data: dict[str, Any] = {"format": FORMAT, "group": group}
        if group is not None:
            data.update({"down": sorted(down), "by": by, "pid": os.getpid(), "host": socket.gethostname(),
                         "identity": process_identity(), "since": time.time(), "normal_sha256": normal_sha256})
        return {"overlay.json": json.dumps(data, indent=1) + "\n"}
