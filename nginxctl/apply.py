"""The change procedure on one target: diff, test, keep history, install, reload, verify, restore.

Works on a `LiveNginx` (nginx in a running container) and rendered text; reads no inventory file.
What the target has run and runs now is kept by `history`; old workers and connections come from
`observe`. With `ha:`, the target's keepalived.conf goes in with its config, after nginx runs it (the check
keepalived makes asks nginx's health listener), as one history entry, and keepalived is reloaded only when
its keepalived.conf changed.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .clock import poll_until
from .errors import (
    ApplyFailure,
    ConfigRejected,
    EnvironmentProblem,
    GenerationsLingering,
    Journal,
    ReloadFailed,
    RestoreFailed,
    Step,
    UsageError,
)
from .history import Entry, History, Phase, State, current_entry, loaded_now, select_rollback, sha
from .host import started_at
from .inventory.model import HA
from .nginx import (
    CompanionChange,
    FileInfo,
    LiveNginx,
    TargetLock,
    companion_config,
    companion_state,
    ensure_companion,
)
from .nginxtext import (
    Process,
    Processes,
    error_log_of,
    includes,
    main_config,
    parse_docker_time,
    reload_finished,
    reload_lines,
    shutdown_timeout_of,
    staged_name,
)
from .observe import ReloadState, reload_state
from .published import Published
from .reload import ReloadPreview, ReloadResult, reload_and_verify
from .retire import retire
from .retireplan import Excess, Limits, excess

Progress = Callable[[str], None]
FAILED_RELOAD_SETTLE = 6.0  # nginx retries a busy bind() five times, 500 ms apart
RETIRE_ROUNDS = 3


def unified_diff(old: str | None, new: str, old_label: str, new_label: str) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                        old_label, new_label))


@dataclass
class Outcome:
    target: str
    changed: bool
    reloaded: bool
    diff: str
    previous_hash: str | None
    new_hash: str
    loaded_before: str | None = None
    messages: list[str] = field(default_factory=list)
    reload: ReloadResult | None = None
    preview: ReloadPreview | None = None
    generations: ReloadState | None = None
    companion: CompanionChange | None = None   # what the keepalived.conf beside it came to (`ha:`)

    @property
    def keepalived_changed(self) -> bool:
        return self.companion is not None and self.companion.action != "unchanged"


@dataclass
class Deployer:
    """Applies configs to one target."""

    live: LiveNginx
    config_path: str = "/etc/nginx/nginx.conf"
    stream_only: bool = False
    progress: Progress = lambda _: None
    lock_wait: float = 30.0
    max_generations: int | None = None
    max_memory: int | None = None            # bytes the lingering workers may hold after a reload
    retire_rate: float | None = None         # retire the oldest generations at this rate when over the limits
    waive_limits: bool = False               # reload even past the limits (the controller's health take-outs)
    wait_generations: float | None = None
    journal: Journal = field(default_factory=Journal)
    release_lock_in_background: bool = False
    count_connections: bool = True   # the controller's passes skip it: nobody reads it there
    record_history: bool = True      # False: a runtime overlay (rebalance), kept out of the history rollback reads
    keepalived_image: str = HA.image  # what the keepalived companion runs when one is made (`ha:`)
    _held: bool = False
    _checked: bool = False

    @property
    def history(self) -> History:
        return History(self.live, self.config_path)

    def deployed(self) -> str | None:
        raw = self.live.read_file(self.config_path)
        return raw.decode() if raw is not None else None

    def keepalived_conf(self) -> str | None:
        """The keepalived.conf beside the target (`ha:`; None: no companion). Raises EnvironmentProblem."""
        return companion_config(self.live.client, self.live.name)

    def keepalived_state(self) -> tuple[str | None, str]:
        """The keepalived.conf beside the target and why its companion cannot serve it ("" when it can: see
        `companion_stale`). Raises EnvironmentProblem."""
        return companion_state(self.live.client, self.live.container)

    def loaded(self, state: State | None = None, info: FileInfo | None = None,
               procs: Processes | None = None) -> str | None:
        """The hash of the config nginx runs now, as far as it is known (see `history.loaded_now`). Pass what
        was already read (the state, the config file, the processes) to read it once."""
        state = state or self.history.state()
        info = info or self.live.stat_file(self.config_path)
        procs = procs or self.live.processes()
        master = self.live.master(procs)
        started = parse_docker_time(self.live.started_at)
        older = None if info is None or info.mtime is None or started is None else info.mtime <= started
        return loaded_now(state, master, sha(info.content) if info else None, older, procs.worker_pids,
                          self._older_than_workers(info, procs))

    def _older_than_workers(self, info: FileInfo | None, procs: Processes) -> bool | None:
        """Whether the config file was written before the current workers started (then their reload read it);
        None when that cannot be known here (no local view of the processes)."""
        if info is None or info.mtime is None or self.live.root is None or not procs.workers:
            return None
        starts = [started_at(p.pid) for p in procs.workers]
        if any(t is None for t in starts):
            return None
        # a start time is counted in clock ticks (10 ms), rounded down: a file saved in the tick the workers
        # started in counts as older (a script that writes then HUPs does it within one)
        return info.mtime.timestamp() <= min(t for t in starts if t is not None) + 1 / os.sysconf("SC_CLK_TCK")

    def loaded_config(self) -> tuple[str | None, str | None]:
        """(hash, text) of the config nginx runs: the text when the installed file or a history entry holds
        it, else None (the hash too when what runs is unknown)."""
        loaded, text, _ = self.observed()
        return loaded, text

    def observed(self) -> tuple[str | None, str | None, str | None]:
        """(hash, text) of the config nginx runs (see `loaded_config`), and the hash of the installed file."""
        info = self.live.stat_file(self.config_path)
        installed = sha(info.content) if info is not None else None
        loaded = self.loaded(info=info)
        if loaded is None:
            return None, None, installed
        if info is not None and installed == loaded:
            return loaded, info.content.decode(errors="replace"), installed
        entry = next((e for e in self.history.entries() if e.hash == loaded), None)
        return loaded, self.history.read(entry) if entry is not None else None, installed

    def diff(self, rendered: str) -> str:
        return unified_diff(self.deployed(), rendered, f"{self.live.name}:{self.config_path}", "rendered")

    def test_staged(self) -> None:
        """`nginx -t` of the staged config with the container's own binary, modules and network.
        Raises ConfigRejected."""
        directory = self.config_path.rsplit("/", 1)[0]
        result = self.live.exec(["-t", "-c", f"{directory}/{staged_name(self.config_path)}"])
        if result.exit_code != 0:
            raise ConfigRejected(result)

    def check_target_file(self, master: Process | None) -> None:
        """The file nginxctl writes must be one nginx reads: the master's own config file (whole-config
        targets), or a file that config includes (stream-only). Checked once per attach; raises
        UsageError before anything is written."""
        if self._checked:
            return
        if not self.stream_only:
            main = main_config(master.cmd if master else "", self.live.build())
            if main != self.config_path:
                raise UsageError(f"nginx in {self.live.name} loads {main}, not {self.config_path}: installing there "
                                 f"would change nothing nginx runs. Use --config-path {main}, or --stream-only for a "
                                 "file its config includes; nothing was written")
        else:
            self.check_included()
        self._checked = True

    def running(self) -> Processes:
        """nginx's processes in the target. Raises EnvironmentProblem when no master runs (nothing to change)."""
        procs = self.live.processes()
        if procs.master is None:
            raise EnvironmentProblem(f"no nginx master process runs in {self.live.name}",
                                     "start nginx in it (is the container's command nginx?); nothing was written")
        return procs

    def precheck(self, rendered: str) -> None:
        """Test `rendered` with the target's own nginx without installing it (a fleet tests every target
        before changing any). Raises ConfigRejected, UsageError, EnvironmentProblem."""
        self.check_target_file(self.running().master)
        if self.stream_only:
            return  # an included file cannot be tested alone: apply tests it in place, restoring on failure
        directory = self.config_path.rsplit("/", 1)[0]
        self.live.put_files(directory, {staged_name(self.config_path): rendered})
        self.test_staged()

    def check_included(self) -> None:
        """For a stream-only target: nginx's main config must include `config_path`, or installing it
        would change nothing nginx runs. Raises UsageError before anything is written."""
        dump = self.live.exec(["-T"])
        if not includes(dump.stdout, self.config_path, dump.output):
            raise UsageError(f"{self.config_path} is not included by nginx's config in {self.live.name}: add "
                             f"`include {self.config_path};` to nginx.conf, or deploy the whole nginx.conf "
                             "(--full-config); nothing was written")

    @contextlib.contextmanager
    def locked(self, purpose: str = "apply") -> Iterator[None]:
        """Hold the target's lock across several steps (drain: edit the inventory, then apply)."""
        if self._held:
            yield
            return
        with TargetLock(self.live.client, self.live, wait=self.lock_wait, progress=self.progress, purpose=purpose,
                        release_in_background=self.release_lock_in_background):
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def preview(self, deployed: str | None) -> ReloadPreview:
        state = reload_state(self.live, shutdown_timeout_of(deployed))
        return ReloadPreview(state, self.max_generations, bool(self._excess(state)), self.limits)

    def apply(self, rendered: str, *, reload: bool, dry_run: bool = False, keepalived: str | None = None) -> Outcome:
        """Install `rendered` (and with `reload`, reload and verify it), or change nothing. With `keepalived` and
        `reload`, that keepalived.conf goes in beside it once nginx runs it (its companion created, recreated or
        reloaded as needed), recorded with it as one history entry.

        Raises ConfigRejected (nothing changed), GenerationsLingering (nothing changed), ApplyFailure
        (previous config restored), RestoreFailed, UsageError, EnvironmentProblem, LockBusy.
        """
        if dry_run:
            return self._plan(rendered, reload=reload, dry_run=True)[0]
        with self.locked():
            return self._apply_locked(rendered, reload=reload, keepalived=keepalived if reload else None)

    def _plan(self, rendered: str, *, reload: bool, dry_run: bool) -> tuple[Outcome, str | None, State]:
        info = self.live.stat_file(self.config_path)
        deployed = info.content.decode() if info is not None else None
        state = self.history.state()
        procs = self.running()
        loaded = self.loaded(state, info, procs)
        diff = unified_diff(deployed, rendered, f"{self.live.name}:{self.config_path}", "rendered")
        outcome = Outcome(self.live.name, deployed != rendered, False, diff,
                          sha(deployed) if deployed is not None else None, sha(rendered), loaded)
        if dry_run and reload:
            outcome.preview = self.preview(deployed)
        if outcome.changed or outcome.loaded_before != outcome.new_hash:
            self.check_target_file(procs.master)
        return outcome, deployed, state

    def _apply_locked(self, rendered: str, *, reload: bool, keepalived: str | None) -> Outcome:
        outcome, deployed, state = self._plan(rendered, reload=reload, dry_run=False)
        new = sha(rendered)
        pending = outcome.loaded_before != new
        master = self.live.master()
        # the workers that loaded what runs stay recorded through every phase: a reload by hand is seen later
        base = State(loaded=outcome.loaded_before, master=master,
                     workers=state.workers if state.master == master else None)
        beside = self.keepalived_conf() if keepalived is not None else None   # what keepalived runs before
        if not outcome.changed and not (reload and pending):
            if keepalived is not None:
                outcome.companion = self._companion(keepalived)
            outcome.messages.append(("no changes to the nginx config: nginx not reloaded" if outcome.keepalived_changed
                                     else "no changes: nothing installed, no reload") if not pending else
                                    "already installed, not loaded by nginx: use --reload")
            stale = state.phase is not Phase.DONE or state.loaded != new or state.master != master
            if not pending and (keepalived is not None or stale):
                # nginx runs it (loaded at a restart, say): record that (with the keepalived.conf beside it before
                # and now), and mark the history's current entry
                entries = self.history.entries()
                files = self.history.record(rendered, entries, keepalived=beside) if beside is not None else {}
                files.update(self.history.record(rendered, entries, keepalived=keepalived))
                if files or stale:
                    self.history.write({**files, **self.history.state_file(base.with_(
                        phase=Phase.DONE, hash=new, previous=state.previous))})
            return outcome
        if reload:
            gens = self._check_generations(deployed)
            outcome.generations = gens
        history = self.history
        entries = history.entries()
        previous = sha(deployed or "")
        if outcome.changed:
            files = history.state_file(base.with_(phase=Phase.INSTALLING, hash=new, previous=previous))
            files[staged_name(self.config_path)] = rendered
            if deployed is not None and self.record_history and not self._overlaid(deployed):
                files.update(history.record(deployed, entries, keepalived=beside))
            history.write(files)
            self.journal.did(Step.STAGE, "new config staged beside the old one (nothing nginx reads changed)")
            if not self.stream_only:
                self.progress("testing the new config with the container's nginx")
                try:
                    self.test_staged()
                except ConfigRejected:
                    history.write(history.state_file(base.with_(phase=Phase.DONE, hash=previous)))
                    raise
            self.live.commit_staged(self.config_path)
            self.journal.did(Step.INSTALL,
                             f"new config installed at {self.config_path} (nginx still runs the previous one)")
            if self.stream_only:
                self._test_in_place(deployed, base)
        if not reload:
            # nginx already runs it (a file put back under it): done, not "installed, not loaded"
            phase = Phase.DONE if outcome.loaded_before == new else Phase.INSTALLED
            history.write(history.state_file(base.with_(phase=phase, hash=new, previous=previous)))
            outcome.messages.append("installed; not reloaded (use --reload)" if phase is Phase.INSTALLED else
                                    "installed again; nginx already runs it (no reload)")
            return outcome
        self.progress("reloading nginx and verifying the new config runs")
        history.write(history.state_file(base.with_(phase=Phase.RELOADING, hash=new, previous=previous)))
        try:
            outcome.reload = reload_and_verify(self.live, rendered, self.config_path, error_log_of(deployed))
        except ReloadFailed as failure:
            if deployed is None or not outcome.changed:
                history.write(history.state_file(base.with_(phase=Phase.DONE, hash=new, previous=previous,
                                                            loaded=None)))
                raise ApplyFailure(failure.reason, failure.details, self.live.name) from None
            self._restore(deployed, failure, base)
        self.journal.did(Step.RELOAD, "reloaded and verified: nginx runs the new config")
        assert outcome.reload is not None
        outcome.reloaded = True
        try:
            if keepalived is not None:
                outcome.companion = self._companion(keepalived)
        finally:  # nginx runs it either way; the entry names a keepalived.conf only once it is in place
            installed = keepalived if outcome.companion is not None else None
            history.write({**(history.record(rendered, entries, keepalived=installed) if self.record_history else {}),
                           **history.state_file(State(Phase.DONE, new, previous, new, self.live.master(),
                                                      tuple(sorted(outcome.reload.new_workers))))})
        return outcome

    def _companion(self, keepalived: str) -> CompanionChange:
        """keepalived.conf beside the target: its companion made, or reloaded only when the file changed."""
        change = ensure_companion(self.live.client, self.live.container, self.keepalived_image, keepalived)
        self.progress(str(change))
        return change

    def _test_in_place(self, previous: str | None, base: State) -> None:
        """Stream-only: the included file cannot be tested alone; test nginx.conf with it in place,
        and put the previous file back when nginx rejects it."""
        result = self.live.exec(["-t"])
        if result.exit_code != 0:
            self.live.install_file(self.config_path, previous or "")
            self.history.write(self.history.state_file(base.with_(phase=Phase.DONE, hash=sha(previous or ""))))
            raise ConfigRejected(result)

    def _restore(self, previous: str, failure: ReloadFailed, base: State) -> None:
        self.progress("the new config did not take; restoring the previous one")
        self._settle(failure)
        self.live.install_file(self.config_path, previous)
        try:
            restored = reload_and_verify(self.live, previous, self.config_path, error_log_of(previous))
        except (ReloadFailed, EnvironmentProblem) as again:
            reason = again.reason if isinstance(again, ReloadFailed) else str(again)
            self.history.write(self.history.state_file(base.with_(phase=Phase.RESTORE_FAILED, hash=sha(previous),
                                                                  loaded=None)))
            raise RestoreFailed(failure.reason, [*failure.details, f"restoring: {reason}"], self.live.name) from None
        self.history.write(self.history.state_file(State(Phase.DONE, sha(previous), sha(previous), sha(previous),
                                                         self.live.master(), tuple(sorted(restored.new_workers)))))
        raise ApplyFailure(failure.reason, failure.details, self.live.name)

    def _settle(self, failure: ReloadFailed) -> None:
        """Let a failed reload finish (nginx retries a busy bind() for ~2.5 s) before signalling again,
        so that its late lines cannot be mistaken for the restore's."""
        if failure.cursor is not None:
            cursor = failure.cursor
            poll_until(lambda: (reload_finished(reload_lines(self.live.log_since(cursor))[0]), None),
                       FAILED_RELOAD_SETTLE, interval=0.1)

    def _overlaid(self, text: str) -> bool:
        """`text` is a rebalance's overlay (one is published and `text` is not its normal config): runtime state,
        like health decisions, that the history never keeps (`rollback` must not return to it)."""
        overlay = Published(self.live, self.history.base).overlay()
        return overlay is not None and overlay.get("normal_sha256") not in (None, sha(text))

    @property
    def limits(self) -> Limits:
        return Limits(self.max_generations, self.max_memory)

    def _excess(self, state: ReloadState) -> Excess:
        return excess(self.limits, [g.memory for g in state.generations], state.current_memory)

    def _check_generations(self, deployed: str | None) -> ReloadState:
        """Whether a reload fits the limits (the lingering generations' count and memory); when it does not:
        wait for them (`wait_generations`), retire the oldest (`retire_rate`), reload anyway (`waive_limits`:
        the controller's health take-outs), or refuse. Raises GenerationsLingering (nothing changed)."""
        state = reload_state(self.live, shutdown_timeout_of(deployed), connections=self.count_connections)
        for line in state.summary():
            self.progress(line)
        over = self._excess(state)
        if not over:
            return state
        if self.waive_limits:
            self.progress(f"{len(state.generations)} old generation(s) linger, past {self.limits.describe()}: "
                          "reloading anyway (a health take-out is never held back)")
            return state
        if self.wait_generations:
            def check() -> tuple[bool, ReloadState]:
                now = reload_state(self.live, state.shutdown_timeout)
                return not self._excess(now), now

            polled = poll_until(check, self.wait_generations, interval=1.0, on_wait=lambda s: self.progress(
                f"waiting for old workers to drain: {len(s.generations)} lingering generation(s), past "
                f"{self.limits.describe()} for a reload"))
            state = polled.value
            if polled.done:
                return state
        if self.retire_rate:
            for _ in range(RETIRE_ROUNDS):  # a round more when generations were added meanwhile (a hand reload)
                state = reload_state(self.live, state.shutdown_timeout)
                over = self._excess(state)
                if not over:
                    return state
                retire(self.live, state.generations[:over.count], self.retire_rate, self.progress,
                       configs=self.known_configs())
        if not self.count_connections or self.retire_rate:  # refusing: say what the lingering workers hold
            state = reload_state(self.live, state.shutdown_timeout)
            over = self._excess(state)
            if not over:
                return state
        raise GenerationsLingering(len(state.generations), self.max_generations,
                                   [g.describe() for g in state.generations], memory=state.lingering_memory,
                                   max_memory=self.max_memory, reason=over.reason, generations=state.generations,
                                   excess=over.count, target=self.live.name)

    def known_configs(self) -> list[str]:
        """The configs this target may run or have run (its file and its history): what an old generation runs
        is among them."""
        history = self.history
        texts = [history.read(e) for e in history.entries()] + [self.deployed()]
        return [t for t in texts if t]

    def rollback(self, to: int | None, *, reload: bool = True) -> tuple[Entry, Outcome]:
        """Re-apply an earlier config from the history (default: the one before the current), with the
        keepalived.conf recorded with it (`ha:`). Raises UsageError when there is none, and what `apply` raises."""
        entries = self.history.entries()
        current = self.loaded() or sha(self.deployed() or "")
        try:
            target = select_rollback(entries, current, to, self._keepalived_running(entries))
        except LookupError as exc:
            raise UsageError(f"{exc} on {self.live.name}") from None
        text, keepalived = self.history.read(target), self.history.read_keepalived(target)
        if text is None or (target.keepalived and keepalived is None):
            raise UsageError(f"history entry {target.id} is no longer stored on {self.live.name}")
        return target, self.apply(text, reload=reload, keepalived=keepalived)

    def _keepalived_running(self, entries: list[Entry]) -> str | None:
        """The hash of the keepalived.conf beside the target, when its history speaks of keepalived at all."""
        if not any(e.keepalived for e in entries):
            return None
        conf = self.keepalived_conf()
        return sha(conf) if conf is not None else None

    def history_rows(self) -> list[tuple[Entry, bool]]:
        """The history, newest first, with the one entry nginx (and keepalived beside it) runs marked."""
        entries = self.history.entries()
        running = self.loaded() or (sha(self.deployed() or "") if entries else None)
        current = current_entry(entries, running, self._keepalived_running(entries))
        return [(e, e.id == current) for e in entries]

