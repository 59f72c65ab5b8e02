"""The change procedure: diff, test, keep history, install, reload, verify, restore.

Works on a `LiveNginx` (nginx in a running container) and rendered text; reads no inventory file.
State kept with the target, beside the config file in the container:
  .nginxctl/history/NNNN-HASH.conf   every config the target has run under nginxctl, numbered
  .nginxctl/state.json               the phase of the last apply, so an interrupted one is finished
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import ApplyFailure, ConfigRejected, UsageError
from .nginx import LiveNginx, Processes, TargetLock, config_from_dump, staged_name

Progress = Callable[[str], None]
RELOAD_TIMEOUT = 20.0
POLL = 0.05


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def unified_diff(old: str | None, new: str, old_label: str, new_label: str) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                        old_label, new_label))


@dataclass(frozen=True)
class Entry:
    id: int
    time: float
    hash: str


HISTORY_SLOTS = 50  # the archive API cannot delete files: a ring of slots keeps the history bounded


class History:
    """Configs the target has run, kept in the container next to the config file: an index (ids, times,
    hashes) and a ring of HISTORY_SLOTS files, so an apply reads one small file, not the whole history."""

    def __init__(self, live: LiveNginx, config_path: str) -> None:
        self.live = live
        self.base = os.path.dirname(config_path)  # exists; put_archive cannot create its target
        self.dir = os.path.join(self.base, ".nginxctl")

    def entries(self) -> list[Entry]:
        """Newest first."""
        raw = self.live.read_file(f"{self.dir}/history/index.json")
        try:
            return [Entry(int(e["id"]), float(e["time"]), str(e["hash"])) for e in json.loads(raw or b"[]")]
        except (ValueError, KeyError, TypeError):
            return []

    @staticmethod
    def _slot(entry: Entry) -> str:
        return f".nginxctl/history/slot-{entry.id % HISTORY_SLOTS:02d}.conf"

    def read(self, entry: Entry) -> str:
        """The config of one entry. Raises UsageError when its slot no longer holds it."""
        raw = self.live.read_file(f"{self.base}/{self._slot(entry)}")
        if raw is None or sha(raw) != entry.hash:
            raise UsageError(f"history entry {entry.id} is no longer stored on {self.live.name}")
        return raw.decode()

    def record(self, text: str, entries: list[Entry] | None = None) -> dict[str, str]:
        """The files that add `text` to the history (nothing when it is already the newest entry).
        Names are relative to the config's folder; pass `entries` to save reading them again (the
        list is updated in place)."""
        entries = self.entries() if entries is None else entries
        if entries and entries[0].hash == sha(text):
            return {}
        entry = Entry((entries[0].id + 1) if entries else 1, time.time(), sha(text))
        entries.insert(0, entry)
        del entries[HISTORY_SLOTS:]
        index = json.dumps([{"id": e.id, "time": round(e.time, 3), "hash": e.hash} for e in entries], indent=1)
        return {self._slot(entry): text, ".nginxctl/history/index.json": index + "\n"}

    def state(self) -> dict[str, str]:
        raw = self.live.read_file(f"{self.dir}/state.json")
        try:
            return dict(json.loads(raw)) if raw else {}
        except ValueError:
            return {}

    @staticmethod
    def state_file(**state: str) -> dict[str, str]:
        return {".nginxctl/state.json": json.dumps(state, sort_keys=True) + "\n"}

    def write(self, files: dict[str, str]) -> None:
        """History entries, state and staged files in one archive: one Docker call."""
        if files:
            self.live.put_files(self.base, files)


@dataclass
class Generation:
    """Old workers from one earlier reload, still serving connections they had."""

    pids: list[int]
    connections: int | None

    def describe(self) -> str:
        held = "connections unknown" if self.connections is None else f"{self.connections} connection(s)"
        return f"{len(self.pids)} old worker(s) {', '.join(map(str, self.pids))}: {held}"


@dataclass
class ReloadState:
    processes: Processes
    generations: list[Generation]
    workers_connections: int | None
    shutdown_timeout: str | None

    def summary(self) -> list[str]:
        lines = []
        for i, gen in enumerate(self.generations, 1):
            lines.append(f"lingering generation {i}: {gen.describe()}")
        if self.workers_connections is not None:
            lines.append(f"current workers hold {self.workers_connections} client connection(s)")
        if self.shutdown_timeout:
            lines.append(f"a reload moves them to old workers, cut after worker_shutdown_timeout "
                         f"{self.shutdown_timeout}")
        else:
            lines.append("a reload moves them to old workers that keep them until clients close "
                         "(no worker_shutdown_timeout)")
        return lines


def _client_sockets(live: LiveNginx, master: int | None, pids: list[int]) -> dict[int, int] | None:
    """Established client-side sockets per worker: those whose local port the master listens on."""
    socks = live.sockets(pids + ([master] if master is not None else []))
    if socks is None:
        return None
    listening = {s.local[1] for lst in socks.values() for s in lst if s.state == "LISTEN"}
    return {pid: sum(1 for s in socks[pid] if s.state == "ESTABLISHED" and s.local[1] in listening)
            for pid in pids}


def server_connections(live: LiveNginx, host: str, port: int) -> dict[int, int] | None:
    """Established connections from nginx workers (current and old) to one backend, per worker pid.
    None when the processes cannot be seen from here (a remote Docker engine)."""
    procs = live.processes()
    pids = [p.pid for p in procs.workers + procs.old_workers]
    socks = live.sockets(pids)
    if socks is None:
        return None
    host = host.strip("[]")
    return {pid: n for pid, lst in socks.items()
            if (n := sum(1 for s in lst if s.state == "ESTABLISHED" and s.remote == (host, port)))}


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def reload_state(live: LiveNginx, shutdown_timeout: str | None) -> ReloadState:
    """Old worker generations still shutting down, with the connections each holds."""
    procs = live.processes()
    old = sorted(procs.old_workers, key=lambda p: p.pid)
    counts = _client_sockets(live, procs.master.pid if procs.master else None,
                             [p.pid for p in old + procs.workers])
    generations: list[Generation] = []
    ticks = {p.pid: _start_ticks(p.pid) for p in old}
    if old and all(t is not None for t in ticks.values()):
        # the workers of one reload are forked within milliseconds; reloads are at least ~150 ms apart
        # (nginx -t, then the new cycle), so a gap of 8 clock ticks (80 ms) separates generations
        group: list[int] = []
        last = None
        for proc in sorted(old, key=lambda p: ticks[p.pid] or 0):
            tick = ticks[proc.pid] or 0
            if last is not None and tick - last > 8:
                generations.append(_generation(group, counts))
                group = []
            group.append(proc.pid)
            last = tick
        generations.append(_generation(group, counts))
    elif old:
        per = max(1, len(procs.workers))
        pids = [p.pid for p in old]
        generations = [_generation(pids[i:i + per], counts) for i in range(0, len(pids), per)]
    current = None if counts is None else sum(counts.get(p.pid, 0) for p in procs.workers)
    return ReloadState(procs, generations, current, shutdown_timeout)


def _generation(pids: list[int], counts: dict[int, int] | None) -> Generation:
    return Generation(list(pids), None if counts is None else sum(counts.get(p, 0) for p in pids))


def _error_log_of(config: str | None) -> str:
    m = re.search(r"^\s*error_log\s+([^\s;]+)", config or "", re.M)
    return m.group(1) if m else "stderr"


def _shutdown_timeout_of(config: str | None) -> str | None:
    m = re.search(r"^\s*worker_shutdown_timeout\s+([^\s;]+)", config or "", re.M)
    return m.group(1) if m else None


@dataclass
class ReloadResult:
    old_workers: set[int]
    new_workers: set[int]
    master: int


def reload_and_verify(live: LiveNginx, expected: str, config_path: str, error_log: str,
                      timeout: float = RELOAD_TIMEOUT) -> ReloadResult:
    """Reload nginx and prove the new config runs: a new worker generation under the same master,
    no [emerg] logged since the signal, and `nginx -T` shows exactly `expected` at `config_path`.

    Raises ApplyFailure(restored=False) with what was seen when any of these fails.
    """
    before = live.processes()
    if before.master is None:
        raise ApplyFailure("no nginx master process in the container", restored=False)
    cursor = live.log_cursor(error_log)
    live.signal_reload(before.master)
    deadline = time.monotonic() + timeout
    while True:
        log = live.log_since(cursor)
        emerg = [line for line in log.splitlines() if "[emerg]" in line]
        if emerg:
            raise ApplyFailure("nginx refused the new config at reload", restored=False, details=emerg)
        now = live.processes()
        if now.master is None or now.master.pid != before.master.pid:
            raise ApplyFailure("the nginx master process exited during the reload", restored=False)
        new = now.worker_pids - before.worker_pids
        if new and not (now.worker_pids & before.worker_pids):
            break
        if time.monotonic() > deadline:
            raise ApplyFailure(f"no new worker generation within {timeout:.0f}s of the reload signal",
                               restored=False, details=log.splitlines()[-5:])
        time.sleep(POLL)
    emerg = [line for line in live.log_since(cursor).splitlines() if "[emerg]" in line]
    if emerg:
        raise ApplyFailure("nginx logged an error after the reload", restored=False, details=emerg)
    dump = live.exec(["-T"])
    loaded = config_from_dump(dump.stdout, config_path)
    if loaded is None or sha(loaded) != sha(expected):
        raise ApplyFailure(f"nginx -T does not show the rendered config at {config_path}", restored=False)
    return ReloadResult(before.worker_pids, now.worker_pids, now.master.pid)


@dataclass
class Outcome:
    changed: bool
    reloaded: bool
    diff: str
    previous_hash: str | None
    new_hash: str
    messages: list[str] = field(default_factory=list)
    reload: ReloadResult | None = None


@dataclass
class Deployer:
    """Applies configs to one target. `test_path` is where a candidate is staged for `nginx -t`."""

    live: LiveNginx
    config_path: str = "/etc/nginx/nginx.conf"
    stream_only: bool = False
    progress: Progress = lambda _: None
    lock_wait: float = 30.0
    max_generations: int | None = None
    wait_generations: float | None = None
    _held: bool = False

    @property
    def history(self) -> History:
        return History(self.live, self.config_path)

    def deployed(self) -> str | None:
        raw = self.live.read_file(self.config_path)
        return raw.decode() if raw is not None else None

    def diff(self, rendered: str) -> str:
        return unified_diff(self.deployed(), rendered, f"{self.live.name}:{self.config_path}", "rendered")

    def test_staged(self) -> None:
        """`nginx -t` of the staged config with the container's own binary, modules and network.
        Raises ConfigRejected."""
        if self.stream_only:
            return  # an included file cannot be tested alone: `_test_in_place` tests it after install
        directory = os.path.dirname(self.config_path)
        result = self.live.exec(["-t", "-c", f"{directory}/{staged_name(self.config_path)}"])
        if result.exit_code != 0:
            raise ConfigRejected(result)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the target's lock across several steps (drain: edit the inventory, then apply)."""
        if self._held:
            yield
            return
        with TargetLock(self.live.client, self.live, wait=self.lock_wait, progress=self.progress):
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def apply(self, rendered: str, *, reload: bool, dry_run: bool = False) -> Outcome:
        """Install `rendered` (and with `reload`, reload and verify it), or change nothing.

        Raises ConfigRejected (nothing changed), ApplyFailure (restored), EnvironmentProblem, LockBusy.
        """
        with self.locked():
            return self._apply_locked(rendered, reload=reload, dry_run=dry_run)

    def _apply_locked(self, rendered: str, *, reload: bool, dry_run: bool) -> Outcome:
        deployed = self.deployed()
        history = self.history
        state = history.state()
        diff = unified_diff(deployed, rendered, f"{self.live.name}:{self.config_path}", "rendered")
        changed = deployed != rendered
        # An apply killed after installing but before its reload left the file ahead of nginx.
        unfinished = state.get("phase") not in (None, "done") and state.get("hash") == sha(rendered)
        outcome = Outcome(changed, False, diff, sha(deployed) if deployed is not None else None, sha(rendered))
        if dry_run:
            return outcome
        if not changed and not (reload and unfinished):
            outcome.messages.append("no changes: nothing installed, no reload")
            return outcome
        if reload:
            self._check_generations(deployed, outcome)
        # One archive: the candidate, the previous config into the history, and the phase.
        entries = history.entries()
        previous = sha(deployed or "")
        files = history.state_file(phase="installing", hash=sha(rendered), previous=previous)
        if changed:
            files[staged_name(self.config_path)] = rendered
            if deployed is not None:
                files.update(history.record(deployed, entries))
        history.write(files)
        if changed:
            self.progress("testing the new config with the container's nginx")
            try:
                self.test_staged()
            except ConfigRejected:
                history.write(history.state_file(phase="done", hash=previous))
                raise
            self.live.commit_staged(self.config_path)
            if self.stream_only:
                self._test_in_place(deployed)
        if not reload:
            history.write(history.state_file(phase="installed", hash=sha(rendered), previous=previous))
            outcome.messages.append("installed; not reloaded (use --reload)")
            return outcome
        self.progress("reloading nginx and verifying the new config runs")
        try:
            outcome.reload = reload_and_verify(self.live, rendered, self.config_path, _error_log_of(deployed))
        except ApplyFailure as failure:
            if deployed is None or not changed:
                raise
            self._restore(deployed, failure)
        history.write({**history.record(rendered, entries), **history.state_file(phase="done", hash=sha(rendered))})
        outcome.reloaded = True
        return outcome

    def _test_in_place(self, previous: str | None) -> None:
        result = self.live.exec(["-t"])
        if result.exit_code != 0:
            if previous is not None:
                self.live.install_file(self.config_path, previous)
            self.history.write(self.history.state_file(phase="done", hash=sha(previous or "")))
            raise ConfigRejected(result)

    def _restore(self, previous: str, failure: ApplyFailure) -> None:
        self.progress("the new config did not take; restoring the previous one")
        self.live.install_file(self.config_path, previous)
        try:
            reload_and_verify(self.live, previous, self.config_path, _error_log_of(previous))
            restored = True
        except ApplyFailure as again:
            failure.details.append(f"restoring: {again.reason}")
            restored = False
        self.history.write(self.history.state_file(phase="done" if restored else "restore-failed",
                                                   hash=sha(previous)))
        raise ApplyFailure(failure.reason, restored=restored, details=failure.details)

    def _check_generations(self, deployed: str | None, outcome: Outcome) -> None:
        state = reload_state(self.live, _shutdown_timeout_of(deployed))
        outcome.messages.extend(state.summary())
        for line in state.summary():
            self.progress(line)
        limit = self.max_generations
        if limit is None or len(state.generations) < limit:
            return
        if self.wait_generations:
            deadline = time.monotonic() + self.wait_generations
            while len(state.generations) >= limit and time.monotonic() < deadline:
                self.progress(f"waiting for old workers to drain: {len(state.generations)} lingering "
                              f"generation(s), at most {limit - 1} may linger before a reload")
                time.sleep(1.0)
                state = reload_state(self.live, state.shutdown_timeout)
            if len(state.generations) < limit:
                return
        raise ApplyFailure(
            f"refused: {len(state.generations)} old worker generation(s) still shutting down "
            f"(--max-generations {limit}); a reload now would add one more. Wait for them to drain "
            "(--wait), or set worker_shutdown_timeout", restored=True, touched=False,
            details=[g.describe() for g in state.generations])

    def rollback(self, to: int | None, *, reload: bool = True) -> tuple[Entry, Outcome]:
        """Re-apply an earlier config from the history (default: the one before the current)."""
        entries = self.history.entries()
        current = sha(self.deployed() or "")
        if to is None:
            idx = next((i for i, e in enumerate(entries) if e.hash == current), None)
            older = entries[idx + 1:] if idx is not None else entries
            older = [e for e in older if e.hash != current]
            if not older:
                raise UsageError(f"no earlier config in the history of {self.live.name} to roll back to")
            target = older[0]
        else:
            target = next((e for e in entries if e.id == to), None)  # type: ignore[assignment]
            if target is None:
                ids = ", ".join(str(e.id) for e in entries) or "none"
                raise UsageError(f"no history entry {to} on {self.live.name} (entries: {ids})")
        return target, self.apply(self.history.read(target), reload=reload)

