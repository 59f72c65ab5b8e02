"""Lingering worker generations under `watch`: counted for the metrics, and the oldest one retired a step at a
time between passes when a reload is refused past the limits (`--max-generations`, `--max-lingering-memory`).

The loop owns the timing: it calls `step()` when `due` has come and retries its pass when a step says so. A
retirement never holds the loop: each step closes only what the pace allows now, and a health take-out waives
the limits instead of waiting behind it (`Deployer.waive_limits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import GenerationsLingering, NginxctlError
from ..fleet import Member
from ..observe import reload_state
from ..retire import Retirement
from ..retireplan import retire_seconds
from .log import DecisionLog, Logged
from .metrics import Metrics
from .model import WatchOptions

RETIRE_REPORT = 5.0   # a `retire` progress line at most this often
WAIT_REPORT = 30.0    # with --retire-rate 0, the `wait` line of a held change again this often


def limits(exc: GenerationsLingering) -> str:
    """The limit a refused reload ran into, as the option that sets it."""
    if exc.reason == "memory" and exc.max_memory is not None:
        return (f"--max-lingering-memory {exc.max_memory / (1 << 20):.0f} MiB (they hold "
                f"{(exc.memory or 0) / (1 << 20):.1f} MiB)")
    return f"--max-generations {exc.limit} ({exc.count} linger)"


class Generations:
    """The watch's view of its targets' lingering generations and the one retirement it may run."""

    def __init__(self, options: WatchOptions, log: DecisionLog, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        self.options = options
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.retirement: Retirement | None = None   # an old generation being retired, a step per turn
        self.due: float | None = None               # when the next step is due
        self.reported = 0.0
        self.wait_reported: float | None = None     # the last `wait` line of a held change (--retire-rate 0)

    @property
    def retiring(self) -> bool:
        return self.retirement is not None

    def observe(self, members: Sequence[Member]) -> None:
        """The lingering generations' count and memory on the first target, for the metrics (cheap: /proc)."""
        if not members:
            return
        try:
            state = reload_state(members[0].deployer.live, None, connections=False)
        except NginxctlError:
            return
        self.metrics.lingering.set(len(state.generations))
        self.metrics.lingering_memory_limit.set(self.options.max_memory or 0)
        self.metrics.lingering_memory.set(state.lingering_memory or 0)

    def refused(self, exc: GenerationsLingering, message: str, members: Sequence[Member], held: float) -> str:
        """A reload refused past the limits (the change held for `held` seconds): start retiring the oldest
        generation (--retire-rate), or with --retire-rate 0 say loudly what the change waits for. Returns what
        `status` shows as held."""
        oldest = exc.generations[0] if exc.generations else None
        if oldest is None:
            return message
        what = (f"generation 1 of {exc.count} (workers {', '.join(map(str, oldest.pids))}) holds "
                f"{'an unknown number of' if oldest.connections is None else oldest.connections} connection(s)")
        rate = self.options.retire_rate
        if not rate:
            now = self.clock()
            said = f"{what}; past {limits(exc)} and --retire-rate 0: the change waits until they close"
            if self.wait_reported is None or now - self.wait_reported >= WAIT_REPORT:
                self.wait_reported = now
                self.log(Logged.WAIT, f"change held for {held:.0f}s: {said}", generation_pids=oldest.pids,
                         connections=oldest.connections, waited=round(held, 1), lingering=exc.count,
                         memory_bytes=exc.memory, level="warning")
            return f"reload deferred: {said}"
        if self.retirement is None:
            member = next((m for m in members if m.deployer.live.name == exc.target),
                          members[0] if members else None)
            if member is None:
                return message
            try:
                self.retirement = Retirement(member.deployer.live, oldest, rate, self.clock,
                                             member.deployer.known_configs())
            except NginxctlError as cannot:   # e.g. a remote engine: its sockets cannot be seen from here
                now = self.clock()
                if self.wait_reported is None or now - self.wait_reported >= WAIT_REPORT:   # not every retry
                    self.wait_reported = now
                    self.log(Logged.RETIRE, f"cannot retire the oldest generation: {cannot}; the change waits for it "
                             f"to leave (held for {held:.0f}s)", waited=round(held, 1), level="warning")
                return f"{message}; cannot retire the oldest generation: {cannot}"
            seconds = retire_seconds(oldest.connections, rate)
            self.due = self.reported = self.clock()
            self.metrics.retiring.set(1)
            self.log(Logged.RETIRE, f"retiring the oldest generation, past {limits(exc)}: {what}; closing them at "
                     f"{rate:g}/s" + (f" (about {seconds:.1f}s)" if seconds is not None else "")
                     + ", then reloading", generation_pids=oldest.pids, connections=oldest.connections,
                     rate=rate, reason=exc.reason, lingering=exc.count, memory_bytes=exc.memory)
        return f"{message}; retiring the oldest generation (workers {', '.join(map(str, oldest.pids))}) at {rate:g}/s"

    def step(self, members: Sequence[Member]) -> bool:
        """One step of the retirement in progress (bounded: what the pace allows now). True when the loop
        should retry its pass now: the generation is gone, or the retirement stopped."""
        retirement = self.retirement
        assert retirement is not None
        eof, reset = retirement.closed, retirement.resets
        try:
            done = retirement.step()
        except (NginxctlError, OSError) as exc:
            self.log(Logged.RETIRE, f"retirement stopped: {exc}; retrying the change", level="warning")
            self.end()
            return True
        self.metrics.retired.labels("eof").inc(retirement.closed - eof)
        self.metrics.retired.labels("reset").inc(retirement.resets - reset)
        now = self.clock()
        if done:
            self.log(Logged.RETIRE, f"{retirement.describe().replace('retiring', 'retired')}; its workers have left, "
                     "reloading", closed=retirement.closed, resets=retirement.resets,
                     seconds=round(now - retirement.started, 3))
            self.end()
            self.observe(members)
            return True
        if now > retirement.deadline:
            self.log(Logged.RETIRE, f"{retirement.describe()}: not gone by its deadline; trying again", level="warning")
            self.end()
            return True
        if now - self.reported >= RETIRE_REPORT:
            self.reported = now
            self.log(Logged.RETIRE, retirement.describe(), closed=retirement.closed, resets=retirement.resets,
                     left=retirement.left)
            self.observe(members)
        self.due = retirement.next_at()
        return False

    def end(self) -> None:
        if self.retirement is not None:
            self.retirement.close()
        self.retirement = None
        self.due = None
        self.metrics.retiring.set(0)
