"""Active health checks for `nginxctl watch` (open-source nginx has only passive ones).

`Tracker` is the pure part: consecutive results per server -> up or down, with `fails` and `passes`.
`probe` makes one check (a TCP connect, or send and expect; UDP: a datagram and its reply). `Checker`
runs the checks on a bounded pool, each server at its group's interval, and tells the loop when a
server changes state (never for a check that changes nothing: no reload while nothing changes).
Checks are made from where `watch` runs: see docs/controller.md for when that differs from nginx.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..inventory.model import HealthCheck

MAX_CONCURRENT = 32


@dataclass
class ServerHealth:
    up: bool = True
    fails: int = 0            # failed checks in a row
    passes: int = 0           # passed checks in a row
    since: float | None = None   # when it went down (wall clock)
    last_error: str | None = None
    checks: int = 0


@dataclass
class Tracker:
    """(group, address) -> health. `record` returns True when the server changed state."""

    servers: dict[tuple[str, str], ServerHealth] = field(default_factory=dict)

    def record(self, key: tuple[str, str], ok: bool, check: HealthCheck, now: float, error: str | None = None) -> bool:
        state = self.servers.setdefault(key, ServerHealth())
        state.checks += 1
        if ok:
            state.passes += 1
            state.fails = 0
            if not state.up and state.passes >= check.passes:
                state.up, state.since, state.last_error = True, None, None
                return True
            return False
        state.fails += 1
        state.passes = 0
        state.last_error = error
        if state.up and state.fails >= check.fails:
            state.up, state.since = False, now
            return True
        return False

    def down(self) -> frozenset[tuple[str, str]]:
        return frozenset(k for k, s in self.servers.items() if not s.up)

    def seed(self, key: tuple[str, str], since: float | None, error: str | None) -> None:
        """A server known down before this process started (the state a previous watch published): down until
        it passes `passes` checks, not up until it fails `fails` of them."""
        self.servers[key] = ServerHealth(up=False, since=since, last_error=error)

    def keep(self, keys: set[tuple[str, str]]) -> None:
        """Forget servers no longer in the config."""
        for key in list(self.servers):
            if key not in keys:
                del self.servers[key]


def probe(address: str, check: HealthCheck, udp: bool = False) -> str | None:
    """One check of `address` (HOST:PORT, [IPv6]:PORT or unix:/path). None: passed; else why it failed."""
    timeout = check.timeout.ms / 1000
    deadline = time.monotonic() + timeout
    try:
        if address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            target: object = address[5:]
        else:
            host, _, port = address.rpartition(":")
            info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM if udp else
                                      socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], info[1])
            target = info[4]
        with sock:
            sock.settimeout(timeout)
            sock.connect(target)  # type: ignore[arg-type]
            if check.send is None:
                return None
            sock.sendall(check.send.encode())
            if check.expect is None:
                return None
            got = b""
            want = check.expect.encode()
            while want not in got:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"no {check.expect!r} within {check.timeout}"
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    return f"closed before sending {check.expect!r}" + (f" (got {got[:40]!r})" if got else "")
                got += chunk
                if len(got) > 65536:
                    return f"no {check.expect!r} in the first 64 KiB of the reply"
            return None
    except TimeoutError:
        return f"timed out after {check.timeout}" if check.send is None else f"no reply within {check.timeout}"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except (ValueError, IndexError) as exc:
        return f"cannot check {address}: {exc}"


@dataclass(frozen=True)
class CheckTarget:
    group: str
    address: str
    check: HealthCheck
    udp: bool


class Checker:
    """Runs every target's checks at its interval on a bounded pool; `on_change(down)` is called (from a
    checker thread) when a server goes down or comes back, and `on_result(target, ok)` after each check."""

    def __init__(self, on_change: Callable[[], None], on_result: Callable[[CheckTarget, bool, str | None], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_change = on_change
        self.on_result = on_result
        self.clock = clock
        self.tracker = Tracker()
        self.targets: dict[tuple[str, str], CheckTarget] = {}
        self.due: dict[tuple[str, str], float] = {}
        self.running: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENT, thread_name_prefix="nginxctl-check")
        self.thread = threading.Thread(target=self._run, name="nginxctl-health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def seed(self, rows: list[dict[str, object]]) -> None:
        """Start from the health decisions a previous watch published (see `Tracker.seed`)."""
        with self.lock:
            for row in rows:
                if row.get("state") == "down":
                    since = row.get("since")
                    self.tracker.seed((str(row["group"]), str(row["address"])),
                                      float(since) if isinstance(since, (int, float)) else None,
                                      str(row.get("last_error") or "") or None)

    def set_targets(self, targets: list[CheckTarget]) -> None:
        """The servers to check now (after each merge); new ones are checked at once."""
        with self.lock:
            wanted = {(t.group, t.address): t for t in targets}
            self.targets = wanted
            for key in list(self.due):
                if key not in wanted:
                    del self.due[key]
            now = self.clock()
            for key in wanted:
                self.due.setdefault(key, now)
            changed = set(self.tracker.down())
            self.tracker.keep(set(wanted))
            forgot = changed - set(self.tracker.down())
        self.wake.set()
        if forgot:
            self.on_change()

    def down(self) -> frozenset[tuple[str, str]]:
        with self.lock:
            return self.tracker.down()

    def health(self) -> dict[tuple[str, str], ServerHealth]:
        with self.lock:
            return {k: ServerHealth(**vars(v)) for k, v in self.tracker.servers.items()}

    def _run(self) -> None:
        while not self.stopping.is_set():
            now = self.clock()
            with self.lock:
                ready = [k for k, t in self.due.items() if t <= now and k not in self.running]
                for key in ready:
                    self.running.add(key)
                    target = self.targets[key]
                    self.due[key] = now + target.check.interval.ms / 1000
                    self.pool.submit(self._check, target)
                upcoming = [t for k, t in self.due.items() if k not in self.running]
            self.wake.clear()
            self.wake.wait(max(0.0, min(upcoming) - self.clock()) if upcoming else None)

    def _check(self, target: CheckTarget) -> None:
        key = (target.group, target.address)
        try:
            error = probe(target.address, target.check, target.udp)
            with self.lock:
                if key not in self.targets:
                    return
                changed = self.tracker.record(key, error is None, target.check, time.time(), error)
            self.on_result(target, error is None, error)
            if changed:
                self.on_change()
        finally:
            with self.lock:
                self.running.discard(key)
            self.wake.set()
