"""The watch's sources stop together and within a bound: one that hangs in its stop neither delays the others'
nor keeps the watch from exiting, and the `stop` line names it."""

from __future__ import annotations

import io
import json
import queue
import threading

from nginxctl.controller.log import DecisionLog
from nginxctl.controller.metrics import Metrics
from nginxctl.controller.sourceset import SourceSet


class Quick:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped.set()


class Hung:
    """A source whose stop blocks until the test lets it go (a thread stuck in a read that nothing wakes)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.entered.set()
        self.release.wait(60)


class Failing(Quick):
    def stop(self) -> None:
        raise OSError("already gone")


def test_a_source_hung_in_its_stop_is_named_and_left_behind_while_the_others_stop():
    stream = io.StringIO()
    sources = SourceSet(queue.SimpleQueue(), DecisionLog("json", stream), Metrics())
    hung, first, last = Hung(), Quick(), Quick()
    for source in (first, hung, Failing(), last):
        sources.add(source)
    try:
        assert sources.stop(wait=0.2) == ["Hung"]
        assert hung.entered.is_set() and first.stopped.is_set() and last.stopped.is_set()
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert line["event"] == "stop" and line["level"] == "warning" and line["stuck"] == ["Hung"]
        assert "Hung did not stop within 0.2s" in line["message"]
    finally:
        hung.release.set()


def test_sources_that_stop_are_not_reported():
    stream = io.StringIO()
    sources = SourceSet(queue.SimpleQueue(), DecisionLog("json", stream), Metrics())
    quick = [Quick(), Quick()]
    for source in quick:
        sources.add(source)
    assert sources.stop() == []
    assert all(q.stopped.is_set() for q in quick)
    assert stream.getvalue() == ""
