"""What status makes of nginx's passive checks (nginxctl.failures): each failure counted for the group whose
listen logged it, whether fail_timeout still keeps the server out, a group with no live server said."""

from __future__ import annotations

import time

from nginxctl.failures import failure_rows
from nginxctl.nginxtext import LoadedGroup, LogFailures, UpstreamFailures
from nginxctl.view import ServerView


def test_a_server_shared_by_two_groups_is_blamed_only_where_its_clients_failed():
    now = time.time()
    views = {"pool": [ServerView("127.0.0.1:9", "up", flags=("max_fails=2", "fail_timeout=5s"))],
             "other": [ServerView("127.0.0.1:9", "up"), ServerView("127.0.0.1:10", "up")]}
    groups = {"pool": LoadedGroup("round_robin", ("127.0.0.1:8000",)), "other": LoadedGroup("round_robin", ("8001",)),
              "dns": LoadedGroup("round_robin", ("127.0.0.1:8000",), "udp")}   # same port, UDP: not blamed
    views["dns"] = [ServerView("127.0.0.1:9", "up")]
    found = LogFailures({("127.0.0.1:8000", "127.0.0.1:9"): UpstreamFailures(2, now - 1, "connect() failed", now - 7)},
                        {"0.0.0.0:8001": 3})
    notes: list[str] = []
    (row,) = failure_rows(views, groups, None, found, notes)
    assert (row["group"], row["address"], row["count"], row["error"]) == ("pool", "127.0.0.1:9", 2, "connect() failed")
    assert row["taken_out_seconds_ago"] == 7 and row["fail_timeout_seconds"] == 5 and row["out_now"] is False
    assert notes == ["nginx found no live server in other for 3 client(s) in the last 60s: they were refused"]


def test_the_take_out_is_current_within_nginxs_default_fail_timeout():
    now = time.time()
    found = LogFailures({("127.0.0.1:8000", "127.0.0.1:9"): UpstreamFailures(1, now - 2, "timed out", now - 2)})
    groups = {"pool": LoadedGroup("round_robin", ("127.0.0.1:8000",))}
    (row,) = failure_rows({"pool": [ServerView("127.0.0.1:9", "up")]}, groups, None, found, [])
    assert row["fail_timeout_seconds"] == 10 and row["out_now"] is True
    assert failure_rows({"pool": [ServerView("127.0.0.1:9", "up")]}, groups, None, LogFailures(), []) == []
