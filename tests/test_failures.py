"""What status makes of nginx's passive checks (nginxctl.failures): each failure counted for the group whose
listen logged it, whether fail_timeout still keeps the server out, a group with no live server said."""

from __future__ import annotations

import time

from nginxctl.failures import failure_rows
from nginxctl.nginxtext import LoadedGroup, LogFailures, UpstreamFailures
from nginxctl.reports import StatusReport
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


def test_a_server_gone_from_the_loaded_config_is_still_reported_where_its_clients_failed():
    now = time.time()
    groups = {"pool": LoadedGroup("round_robin", ("127.0.0.1:8000",))}
    found = LogFailures({("127.0.0.1:8000", "127.0.0.1:9"): UpstreamFailures(1, now - 1, "connect() failed"),
                         ("127.0.0.1:8000", "127.0.0.1:7"): UpstreamFailures(2, now - 3, "connect() failed", now - 3)})
    rows = failure_rows({"pool": [ServerView("127.0.0.1:9", "up")]}, groups, None, found, [])
    assert [(r["address"], r["in_config"], r["count"]) for r in rows] == [("127.0.0.1:9", True, 1),
                                                                          ("127.0.0.1:7", False, 2)]
    # nginx's passive check no longer applies to a server out of the config: neither out nor back in
    assert (rows[1]["taken_out_seconds_ago"], rows[1]["fail_timeout_seconds"], rows[1]["out_now"]) == (3, None, None)
    # beside a host name nginx resolved (its addresses unknown here), what is left may be that server's: not said
    named = {"pool": [ServerView("127.0.0.1:9", "up"), ServerView("backend.internal:7", "up")]}
    assert [r["address"] for r in failure_rows(named, groups, None, found, [])] == ["127.0.0.1:9"]


def _report(**data: object) -> list[str]:
    base = {"container": "lb", "nginx_version": "1.22.1", "master_pid": 1, "worker_pids": [7],
            "deployed_sha256": "ab" * 32, "config_path": "/etc/nginx/nginx.conf", "loaded": "ab" * 32,
            "reload_pending": False, "drift": None, "last_apply": "done", "notes": [], "groups": [],
            "recent_failures": [], "health": None}
    return StatusReport({**base, **data}, [], None).lines()


def test_status_text_says_a_failing_server_gone_from_the_config_and_a_stopped_watchs_health_as_past():
    failed = {"group": "pool", "address": "127.0.0.1:7", "in_config": False, "count": 2, "window_seconds": 60,
              "seconds_ago": 3, "error": "connect() failed (111: Connection refused)", "taken_out_seconds_ago": None,
              "fail_timeout_seconds": None, "out_now": None}
    group = {"name": "pool", "protocol": "tcp", "listen": ["127.0.0.1:8000"], "balance": "round_robin",
             "servers": [{"address": "127.0.0.1:9", "state": "up", "flags": [], "connections": 1}]}
    text = "\n".join(_report(groups=[group], recent_failures=[failed]))
    assert ("  127.0.0.1:7  not in the loaded config: nginx could not connect 2 time(s) in the last 60s, last 3s ago: "
            "connect() failed (111: Connection refused)\n") in text + "\n"
    taken = {**failed, "taken_out_seconds_ago": 3, "fail_timeout_seconds": None, "out_now": None}
    text = "\n".join(_report(groups=[group], recent_failures=[taken]))
    assert "refused); its passive check took it out 3s ago (max_fails)\n" in text + "\n"   # not "back in now"
    kept = {**taken, "address": "127.0.0.1:9", "in_config": True, "fail_timeout_seconds": 10, "out_now": True}
    assert "took it out 3s ago (max_fails), out now (fail_timeout 10s)" in "\n".join(
        _report(groups=[group], recent_failures=[kept]))
    health = {"stale": True, "watch_pid": 42, "servers": [{"group": "pool", "address": "127.0.0.1:9", "state": "up"}]}
    text = "\n".join(_report(health=health))
    assert "which no longer runs: nothing checks the servers now" in text
    assert "1 server(s) all passing at its last checks" in text and "checked by watch" not in text
    assert "1 server(s) checked by watch (pid 42), all passing" in "\n".join(_report(health={**health, "stale": False}))
