"""What a target has run, and what it runs now: the history ring and the apply state, kept with the target.

Beside the config file in the container:
  .nginxctl/history/index.json        ids, times and hashes of the configs the target has run, newest first
  .nginxctl/history/slot-NN.conf      a ring of HISTORY_SLOTS files (the archive API cannot delete files)
  .nginxctl/history/slot-NN.keepalived.conf   with `ha:`, the keepalived.conf installed with that entry
  .nginxctl/state.json                the phase of the last apply and the config last verified as loaded

nginx cannot be asked which config its workers run. nginxctl records the hash it last *verified* as
loaded (after a reload proved it, or a restore did), with the identity of the master process that
loaded it. A master that is not the one recorded (the container restarted) loaded the file it found
at its start: that is the file on disk when the file is older than the master, and unknown otherwise.

The store is anything with `read_file(path) -> bytes | None` and `put_files(directory, files)`: the
live container, or a dict in the unit tests.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

HISTORY_SLOTS = 50
# The format of what nginxctl keeps on a target (.nginxctl/: history index, state, published files). Format 1
# (an older nginxctl: the index a bare list, no "format" key) is read as it is; the next write is format 2.
# An entry's "keepalived" key (the hash of the keepalived.conf installed with it) is optional within format 2:
# an entry without it speaks of nginx alone, and an older nginxctl reading the index ignores it.
FORMAT = 2


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


class Store(Protocol):
    def read_file(self, path: str) -> bytes | None: ...

    def put_files(self, directory: str, files: dict[str, str]) -> None: ...


class Phase(str, enum.Enum):
    """Where the last apply on a target got to."""

    DONE = "done"                      # finished: the file is what the last apply left (loaded or not)
    INSTALLING = "installing"          # candidate staged; the file may be old or new
    INSTALLED = "installed"            # new file in place, not reloaded (apply without --reload)
    RELOADING = "reloading"            # reload signalled, not verified yet
    RESTORE_FAILED = "restore-failed"  # the change and the restore both failed: the target may run neither


@dataclass(frozen=True)
class Entry:
    id: int
    time: float
    hash: str
    keepalived: str | None = None   # sha256 of the keepalived.conf installed with it (`ha:`); None: nginx alone

    def same(self, nginx: str, keepalived: str | None = None) -> bool:
        """Whether this entry is that config: the same nginx config, and the same keepalived.conf when both this
        entry and the question name one (an entry, or a target, without keepalived speaks of nginx alone)."""
        return self.hash == nginx and (self.keepalived is None or keepalived is None or self.keepalived == keepalived)


@dataclass(frozen=True)
class Master:
    """The nginx master that loaded a config: its pid and the container's start time."""

    pid: int
    started: str


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.DONE
    hash: str | None = None        # the candidate of the last apply
    previous: str | None = None    # the file before it
    loaded: str | None = None      # last verified as loaded by nginx
    master: Master | None = None   # ...by this master
    workers: tuple[int, ...] | None = None   # ...whose workers were these (a reload by hand replaces them)

    @classmethod
    def parse(cls, raw: bytes | None) -> State:
        try:
            data = json.loads(raw) if raw else {}
            master = data.get("master")
            workers = data.get("workers")
            return cls(Phase(data.get("phase", "done")), data.get("hash"), data.get("previous"),
                       data.get("loaded"), Master(int(master["pid"]), str(master["started"])) if master else None,
                       tuple(int(w) for w in workers) if isinstance(workers, list) else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def dumps(self) -> str:
        data: dict[str, Any] = {k: v for k, v in asdict(self).items() if v is not None}
        data["phase"] = self.phase.value
        data["format"] = FORMAT
        return json.dumps(data, sort_keys=True) + "\n"

    def with_(self, **changes: Any) -> State:
        return State(**{**self.__dict__, **changes})


def loaded_now(state: State, master: Master | None, file_hash: str | None, file_older_than_master: bool | None,
               workers: set[int] | None = None, file_older_than_workers: bool | None = None) -> str | None:
    """The hash of the config nginx runs, as far as it can be known (None: unknown).

    The recorded one while the master that loaded it still runs and (when recorded) its workers still
    serve; when none of them does, nginx was reloaded by something else: it re-read the file, so the
    recorded config is loaded only if the file still is it, and what runs is unknown otherwise (the file
    may have been written after that reload). After a restart, the file on disk when it is older than the
    new master (nginx read it at start), else unknown."""
    if master is None:
        return None
    if state.master == master:
        if state.workers and workers is not None and not set(state.workers) & workers:
            if file_hash == state.loaded or (file_hash is not None and file_older_than_workers):
                return file_hash
            return None
        return state.loaded
    if file_hash is not None and file_older_than_master:
        return file_hash
    return None


def select_rollback(entries: list[Entry], current_hash: str, to: int | None,
                    current_keepalived: str | None = None) -> Entry:
    """The entry `rollback` goes to: `to`, or the newest entry older than the current config with a
    different config (nginx's, or the keepalived.conf beside it: `current_keepalived`, its hash). Raises
    LookupError with a message for people."""
    if to is not None:
        for entry in entries:
            if entry.id == to:
                return entry
        ids = ", ".join(str(e.id) for e in entries) or "none"
        raise LookupError(f"no history entry {to} (entries: {ids})")
    idx = next((i for i, e in enumerate(entries) if e.same(current_hash, current_keepalived)), None)
    older = entries[idx + 1:] if idx is not None else entries
    for entry in older:
        if not entry.same(current_hash, current_keepalived):
            return entry
    raise LookupError("no earlier config in the history to roll back to")


def current_entry(entries: list[Entry], running_hash: str | None, running_keepalived: str | None = None) -> int | None:
    """The id of the one entry that is current: the newest whose config is `running_hash` (and whose
    keepalived.conf is `running_keepalived`, when both are known)."""
    return next((e.id for e in entries if e.same(running_hash, running_keepalived)), None) if running_hash else None


class History:
    """The history ring and the apply state of one target (see the module docstring)."""

    def __init__(self, store: Store, config_path: str) -> None:
        self.store = store
        self.base = os.path.dirname(config_path)  # exists; put_archive cannot create its target
        self.dir = os.path.join(self.base, ".nginxctl")

    def entries(self) -> list[Entry]:
        """Newest first."""
        raw = self.store.read_file(f"{self.dir}/history/index.json")
        try:
            data = json.loads(raw or b"[]")
            rows = data.get("entries", []) if isinstance(data, dict) else data   # format 2, or format 1's list
            return [Entry(int(e["id"]), float(e["time"]), str(e["hash"]),
                          str(e["keepalived"]) if e.get("keepalived") else None) for e in rows]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []

    @staticmethod
    def _slot(entry: Entry, kind: str = "") -> str:
        return f".nginxctl/history/slot-{entry.id % HISTORY_SLOTS:02d}{kind}.conf"

    def read(self, entry: Entry) -> str | None:
        """The config of one entry; None when its slot no longer holds it."""
        return self._read(self._slot(entry), entry.hash)

    def read_keepalived(self, entry: Entry) -> str | None:
        """The keepalived.conf installed with one entry; None when it has none or its slot no longer holds it."""
        return self._read(self._slot(entry, ".keepalived"), entry.keepalived) if entry.keepalived else None

    def _read(self, slot: str, expected: str) -> str | None:
        raw = self.store.read_file(f"{self.base}/{slot}")
        if raw is None or sha(raw) != expected:
            return None
        return raw.decode()

    def record(self, text: str, entries: list[Entry], now: float | None = None,
               keepalived: str | None = None) -> dict[str, str]:
        """The files that add `text` (with `keepalived`, the keepalived.conf installed with it: one entry for
        both) to the history; nothing when it is already the newest entry. Names are relative to the config's
        folder; `entries` is updated in place."""
        wanted = sha(keepalived) if keepalived is not None else None
        if entries and entries[0].hash == sha(text) and (wanted is None or entries[0].keepalived == wanted):
            return {}
        entry = Entry((entries[0].id + 1) if entries else 1, time.time() if now is None else now, sha(text), wanted)
        entries.insert(0, entry)
        del entries[HISTORY_SLOTS:]
        index = json.dumps({"format": FORMAT, "entries": [
            {"id": e.id, "time": round(e.time, 3), "hash": e.hash, **({"keepalived": e.keepalived} if e.keepalived
                                                                       else {})} for e in entries]}, indent=1)
        files = {self._slot(entry): text, ".nginxctl/history/index.json": index + "\n"}
        if keepalived is not None:
            files[self._slot(entry, ".keepalived")] = keepalived
        return files

    def state(self) -> State:
        return State.parse(self.store.read_file(f"{self.dir}/state.json"))

    def last_phase(self) -> str:
        """The phase of the last apply, or `none` when nginxctl never changed this target."""
        raw = self.store.read_file(f"{self.dir}/state.json")
        return State.parse(raw).phase.value if raw is not None else "none"

    @staticmethod
    def state_file(state: State) -> dict[str, str]:
        return {".nginxctl/state.json": state.dumps()}

    def write(self, files: dict[str, str]) -> None:
        """History entries, state and staged files in one archive: one Docker call."""
        if files:
            self.store.put_files(self.base, files)
