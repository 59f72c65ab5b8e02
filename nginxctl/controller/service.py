"""`nginxctl watch` as a service: its options checked, its metrics served, the controller run until stopped."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from typing import TextIO

from ..errors import EnvironmentProblem, UsageError
from .log import DecisionLog
from .loop import Connect, Controller
from .metrics import Metrics, parse_address, serve
from .model import WatchOptions

MIN_RESYNC = 1.0
STOP_REPORT = 20.0   # seconds after SIGTERM/SIGINT: a stop still going says where it waits


def write_stacks(stream: TextIO) -> None:
    """Every thread's stack, innermost call first. Called with the GIL held (a Python signal handler, a timer
    thread), so no thread's frames change under it: faulthandler's dump walks them without the GIL from the C
    handler and can crash the process while a thread is running."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"Thread {names.get(ident, hex(ident))} (most recent call first):")
        calls = reversed(traceback.extract_stack(frame))
        lines.extend(f'  File "{call.filename}", line {call.lineno} in {call.name}' for call in calls)
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def run_watch(options: WatchOptions, *, connect: Connect, log_format: str = "text", metrics: str | None = None) -> int:
    """`nginxctl watch`: check the options, serve the metrics (when an address is given), run the controller
    until SIGTERM/SIGINT. Returns the exit code. Raises UsageError, EnvironmentProblem, InventoryError, LockBusy."""
    if options.resync < MIN_RESYNC:
        raise UsageError(f"--resync {options.resync:g}s: at least {MIN_RESYNC:g}s (each resync reads what every "
                         "target has loaded)")
    if options.max_wait < options.quiet_period:
        raise UsageError(f"--max-wait ({options.max_wait:g}s) must not be shorter than --quiet-period "
                         f"({options.quiet_period:g}s)")
    registry = Metrics()
    server = None
    if metrics is not None:
        host, port = parse_address(metrics)
        try:
            server = serve(registry, host, port)
            registry.served = True
        except OSError as exc:
            raise EnvironmentProblem(f"cannot serve metrics on {metrics} ({exc.strerror})") from None
    controller = Controller(options, connect=connect, log=DecisionLog(log_format), metrics=registry)

    # a stop still going STOP_REPORT seconds after SIGTERM/SIGINT writes every thread's stack to stderr: where it
    # waits
    report = threading.Timer(STOP_REPORT, write_stacks, (sys.stderr,))
    report.daemon = True

    def on_stop(signum: int, _frame: object) -> None:
        if report.ident is None:   # the first signal starts it; a second one does not again
            report.start()
        controller.stop(f"{signal.Signals(signum).name} received")

    before = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    # `kill -USR1` a watch that seems stuck: every thread's stack goes to stderr (the log stream), and it runs on
    before[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda _signum, _frame: write_stacks(sys.stderr))
    try:
        return controller.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        report.cancel()   # stopped in time: nothing to say where it waited
        for sig, handler in before.items():
            signal.signal(sig, handler)
