"""`nginxctl watch` as a service: its options checked, its metrics served, the controller run until stopped."""

from __future__ import annotations

import faulthandler
import signal
import sys

from ..errors import EnvironmentProblem, UsageError
from .log import DecisionLog
from .loop import Connect, Controller
from .metrics import Metrics, parse_address, serve
from .model import WatchOptions

MIN_RESYNC = 1.0
STOP_REPORT = 20.0   # seconds after SIGTERM/SIGINT: a stop still going says where it waits


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

    def on_signal(signum: int, _frame: object) -> None:
        # a stop still going STOP_REPORT seconds later writes every thread's stack to stderr: where it waits
        faulthandler.dump_traceback_later(STOP_REPORT, file=sys.stderr)
        controller.stop(f"{signal.Signals(signum).name} received")

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # `kill -USR1` a watch that seems stuck: every thread's stack goes to stderr (the log stream), and it runs on
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    try:
        return controller.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        faulthandler.cancel_dump_traceback_later()   # stopped in time: nothing to say where it waited
        faulthandler.unregister(signal.SIGUSR1)
        for sig, handler in before.items():
            signal.signal(sig, handler)
