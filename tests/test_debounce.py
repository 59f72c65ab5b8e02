"""The controller's debounce policy on a fake clock: a quiet period with a ceiling."""

from __future__ import annotations

import pytest
from nginxctl.controller.debounce import Debouncer


def test_a_burst_of_20_changes_is_due_once_after_the_quiet_period():
    d = Debouncer(quiet=1.0, max_wait=10.0)
    for i in range(20):
        d.change(i * 0.1)
        assert not d.due(i * 0.1)
    assert d.deadline() == pytest.approx(2.9)
    assert not d.due(2.85) and d.due(2.95)
    assert d.take() == (0.0, 20)
    assert not d.pending and d.deadline() is None and not d.due(100.0)


def test_changes_that_never_stop_are_due_at_max_wait_after_the_first():
    d = Debouncer(quiet=1.0, max_wait=10.0)
    t = 5.0
    while not d.due(t):
        d.change(t)
        t += 0.5
    assert t == 15.0  # the first change at 5.0 plus max_wait
    first, count = d.take()
    assert (first, count) == (5.0, 20)


def test_a_change_after_taking_starts_a_new_burst():
    d = Debouncer(quiet=2.0, max_wait=3.0)
    d.change(0.0)
    d.take()
    d.change(10.0)
    assert d.deadline() == 12.0
