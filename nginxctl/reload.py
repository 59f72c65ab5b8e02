"""Reloading nginx and proving the new config took (a new worker generation under the same master, no [emerg]
of this reload in the log, the file nginx re-read is the rendered one); and what a reload would do now.

nginx -t ignores "address in use" and a failed reload leaves the old config running with only a log line to
show it: `reload_and_verify` is the only way nginxctl says "reloaded".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .clock import poll_until
from .errors import ReloadFailed
from .history import sha
from .nginx import LiveNginx
from .nginxtext import Processes, config_from_dump, emerg_lines, reload_lines
from .observe import ReloadState
from .retireplan import Limits

RELOAD_TIMEOUT = 20.0


@dataclass
class ReloadResult:
    old_workers: set[int]
    new_workers: set[int]
    master: int


def _new_generation(before: Processes, now: Processes) -> bool:
    """New workers under the master, and none of the old ones still current. nginx forks the new
    workers within milliseconds of a successful reload but tells the old ones to stop accepting only
    ~100 ms later: until then a new connection may still get the old config, so the reload has not
    taken for clients yet."""
    return bool(now.worker_pids - before.worker_pids) and not (now.worker_pids & before.worker_pids)


def reload_and_verify(live: LiveNginx, expected: str, config_path: str, error_log: str,
                      timeout: float = RELOAD_TIMEOUT) -> ReloadResult:
    """Reload nginx and prove the new config runs: a new worker generation under the same master,
    no [emerg] among this reload's own log lines, and `nginx -T` shows exactly `expected` at `config_path`.

    Raises ReloadFailed with what was seen when any of these fails; EnvironmentProblem.
    """
    before = live.processes()
    if before.master is None:
        raise ReloadFailed("no nginx master process in the container")
    master = before.master
    cursor = live.log_cursor(error_log)
    live.signal_reload(master)

    missing = [0]
    polls = [0]
    local = live.root is not None

    def check() -> tuple[bool, tuple[Processes, list[str]]]:
        polls[0] += 1
        lines: list[str] = []
        # /proc is cheap, the log is an API call: locally, read the log on every 5th poll (and at the end)
        if not local or polls[0] % 5 == 0:
            lines, _ = reload_lines(live.log_since(cursor))
            if emerg_lines(lines):
                return True, (before, lines)
        now = live.processes()
        if now.master is not None and now.master.pid != master.pid:
            raise ReloadFailed("the nginx master process was replaced during the reload")
        if now.master is None:
            # one process listing can miss it while it forks; three in a row cannot
            missing[0] += 1
            if missing[0] >= 3:
                raise ReloadFailed("the nginx master process exited during the reload")
            return False, (before, lines)
        missing[0] = 0
        return _new_generation(before, now), (now, lines)

    polled = poll_until(check, timeout, interval=0.005 if local else 0.05)
    now, lines = polled.value
    if not polled.done:
        raise ReloadFailed(f"no new worker generation within {timeout:.0f}s of the reload signal", lines[-5:],
                           cursor)
    lines, _ = reload_lines(live.log_since(cursor))
    emerg = emerg_lines(lines)
    if emerg:
        raise ReloadFailed("nginx refused the new config at reload", emerg, cursor)
    # What nginx re-read at the signal is the file: it must still be `expected` (nginx -T shows the
    # file too; on this host it is read directly).
    if live.root is not None:
        on_disk = live.read_file(config_path)
        loaded = on_disk.decode(errors="replace") if on_disk is not None else None
        where = f"{config_path} in the container"
    else:
        loaded = config_from_dump(live.exec(["-T"]).stdout, config_path)
        where = f"nginx -T at {config_path}"
    if loaded is None or sha(loaded) != sha(expected):
        raise ReloadFailed(f"{where} does not show the rendered config", [], cursor)
    assert now.master is not None
    return ReloadResult(before.worker_pids, now.worker_pids, now.master.pid)


@dataclass
class ReloadPreview:
    """What a reload would do now (`apply --reload --dry-run`)."""

    state: ReloadState
    max_generations: int | None
    refused: bool
    limits: Limits = field(default_factory=Limits)

    def lines(self) -> list[str]:
        out = self.state.summary()
        if self.refused:
            out.append(f"a reload now would be refused: {len(self.state.generations)} old generation(s) linger "
                       f"({self.limits.describe()}; --retire-rate would retire the oldest first)")
        else:
            out.append("a reload now would be allowed")
        return out

    def to_dict(self) -> dict[str, object]:
        cut = self.state.workers_connections if self.state.shutdown_timeout else 0
        return {**self.state.to_dict(), "max_generations": self.max_generations,
                "max_lingering_memory_bytes": self.limits.max_memory, "would_refuse": self.refused,
                "connections_cut_after_timeout": cut}
