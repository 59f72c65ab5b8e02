"""The one polling loop (nginxctl.clock), on a fake clock: no sleeping."""

from __future__ import annotations

from nginxctl.clock import poll_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_poll_returns_when_the_check_says_yes():
    clock, calls = FakeClock(), []

    def check() -> tuple[bool, int]:
        calls.append(clock.now)
        return len(calls) == 3, len(calls)

    polled = poll_until(check, 10, interval=1, clock=clock, sleep=clock.sleep)
    assert (polled.done, polled.value, clock.sleeps) == (True, 3, [1, 1])


def test_poll_gives_up_at_the_deadline_after_a_last_check():
    clock, seen = FakeClock(), []
    polled = poll_until(lambda: (False, clock.now), 2.5, interval=1, clock=clock, sleep=clock.sleep,
                        on_wait=seen.append)
    assert not polled.done and polled.value == 2.5
    assert clock.sleeps == [1, 1, 0.5] and seen == [0.0, 1.0, 2.0]


def test_poll_with_no_time_checks_once():
    clock = FakeClock()
    polled = poll_until(lambda: (False, "x"), 0, clock=clock, sleep=clock.sleep)
    assert (polled.done, polled.value, clock.sleeps) == (False, "x", [])
