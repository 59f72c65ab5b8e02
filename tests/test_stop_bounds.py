"""A stopping watch is bounded: its sources stop together, and its locks are removed together, each within a
few seconds; one that hangs (a source's thread, a slow Docker engine) neither delays the others nor keeps the watch
from exiting, and is named."""

from __future__ import annotations

import io
import json
import queue
import threading

import docker.errors  # noqa: F401 (loaded, as in a watch, which has talked to the engine long before it stops)
from nginxctl.controller.log import DecisionLog
from nginxctl.controller.metrics import Metrics
from nginxctl.controller.service import write_stacks
from nginxctl.controller.sourceset import SourceSet
from nginxctl.nginx import TargetLock, release_all


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


class Container:
    """A lock container whose removal takes as long as the engine makes it (until `answered` is set)."""

    def __init__(self, answered: bool = True) -> None:
        self.answered = threading.Event()
        if answered:
            self.answered.set()
        self.removed = threading.Event()

    def remove(self, force: bool = False) -> None:
        self.answered.wait(60)
        self.removed.set()


class Live:
    def __init__(self, name: str) -> None:
        self.name = name


def lock(name: str, container: Container, background: bool = False) -> TargetLock:
    held = TargetLock(None, Live(name), release_in_background=background)  # type: ignore[arg-type]
    held._container = container  # type: ignore[assignment]
    return held


def test_locks_are_released_together_and_a_slow_engine_is_named_not_waited_for():
    slow, quick, background = Container(answered=False), Container(), Container(answered=False)
    lock("lb-bg", background, background=True).__exit__(None, None, None)   # a change lock, released off the loop
    try:
        assert release_all([lock("lb-slow", slow), lock("lb-quick", quick)], wait=0.2) == ["lb-bg", "lb-slow"]
        assert quick.removed.is_set() and not slow.removed.is_set()
    finally:
        slow.answered.set()
        background.answered.set()
    assert background.removed.wait(5) and slow.removed.wait(5)
    assert release_all([], wait=1) == []   # nothing pending once the engine has answered


def test_the_stack_dump_names_every_thread_while_they_run_and_leaves_them_running():
    # faulthandler's dump read a running thread's frames without the GIL and crashed a watch (exit -11);
    # write_stacks reads them with the GIL held, so threads busy in Python code are safe to walk, many times
    stop = threading.Event()
    counted = []

    def busy_in_python() -> None:
        while not stop.is_set():
            counted.append(sum(range(50)))

    worker = threading.Thread(target=busy_in_python, name="busy-worker")
    worker.start()
    try:
        for _ in range(200):
            stream = io.StringIO()
            write_stacks(stream)
        text = stream.getvalue()
        assert "Thread busy-worker (most recent call first):" in text
        assert " in busy_in_python" in text
        assert f"Thread {threading.current_thread().name} (most recent call first):" in text
        assert " in test_the_stack_dump_names_every_thread_while_they_run_and_leaves_them_running" in text
        before = len(counted)
        assert worker.is_alive()
    finally:
        stop.set()
        worker.join(5)
    assert len(counted) >= before > 0
