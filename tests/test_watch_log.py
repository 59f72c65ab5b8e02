"""What `nginxctl watch`'s decision log says when it stops with changes pending, and during an etcd outage at
start (one line, not one per retry), against a real nginx container and a real etcd."""

from __future__ import annotations

import time
from typing import Any

import pytest

from helpers import Etcd, Watch, free_port
from test_watch import etcd_group, replies, write

pytestmark = pytest.mark.integration


def wait_metric(w: Watch, name: str, at_least: float, timeout: float = 30.0) -> None:
    """Poll `name` on the watch's /metrics until it reaches `at_least`, reading its log meanwhile."""
    deadline = time.monotonic() + timeout
    while w.metrics().get((name, ()), 0.0) < at_least:
        assert time.monotonic() < deadline, f"{name} < {at_least} after {timeout}s; seen: {w.seen[-10:]}"
        try:
            w.wait(lambda e: False, timeout=0.2)  # nothing in the log ends this wait but the watch exiting
        except AssertionError as exc:
            if "watch exited" in str(exc):
                raise


def stop_lines(w: Watch) -> list[dict[str, Any]]:
    return [e for e in [*w.seen, *list(w.lines.queue)] if e["event"] == "stop"]


def test_sigterm_in_the_quiet_period_says_the_change_was_not_applied(lb, backends):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    w = Watch(inv, "--quiet-period", "60s", "--max-wait", "120s")
    try:
        w.reload()
        inv.write_text(inv.read_text().replace(a.address, b.address))
        wait_metric(w, "nginxctl_pending_changes", 1)  # seen, waiting for its quiet period
        assert w.stop() == 0
    finally:
        w.close()
    stop = stop_lines(w)
    assert len(stop) == 1 and stop[0].get("not_applied", 0) >= 1, stop
    assert f"{stop[0]['not_applied']} change(s) seen were not applied" in stop[0]["message"]
    assert "the target keeps the config it runs" in stop[0]["message"]
    assert replies(port) == {"A"}


def test_sigterm_with_nothing_pending_says_nothing_was_left(lb, backends):
    a = backends("A")
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}})
    w = Watch(inv, "--quiet-period", "300ms", "--max-wait", "3s")
    try:
        w.reload()
        assert w.stop() == 0
    finally:
        w.close()
    stop = stop_lines(w)
    assert len(stop) == 1 and stop[0].get("not_applied") is None and "not applied" not in stop[0]["message"]


def test_etcd_down_at_start_is_one_line_then_one_line_when_it_is_back(lb, backends, tmp_path):
    a = backends("A")
    port = free_port()
    etcd = Etcd(tmp_path / "etcd-data")  # its port is chosen; nothing listens there yet
    inv = etcd_group(lb, etcd, port, servers=[a.address])
    w = Watch(inv, "--quiet-period", "200ms", "--max-wait", "2s")
    try:
        w.wait(lambda e: e["event"] == "wait")
        # several retries of the source and of the pass (backoff 0.5, 1, 2, 4 s...)
        wait_metric(w, "nginxctl_reconciles_total", 4, timeout=60)
        etcd.start()
        etcd.client().put("/ns/netty_pool/b", "127.0.0.1:40777")
        w.wait(lambda e: e["event"] == "source" and "reachable again" in e["message"], timeout=30)
        w.wait(lambda e: e["event"] == "reload" and e.get("result") == "ok", timeout=60)
        seen = list(w.seen)
    finally:
        w.close()
        etcd.stop()
    lines = [(e["event"], e["message"]) for e in seen if e["event"] in ("source", "wait")]
    unreachable = [m for ev, m in lines if ev == "source" and "unreachable" in m]
    assert len(unreachable) == 1, lines
    assert "retrying" in unreachable[0]
    assert len([m for ev, m in lines if ev == "wait"]) == 1, lines
    assert len([m for ev, m in lines if "reachable again" in m]) == 1, lines
