"""`watch` rebalances a group by itself (`rebalance:`) against a real nginx container, real backends and a fleet of
long-lived clients that reconnect when their connection is closed: a server added, the watch moves the connections
once the membership has been stable for `after`, and says so in its decision log and its metrics."""

from __future__ import annotations

import json

import pytest

from helpers import Devices, cli

pytestmark = pytest.mark.integration


def test_the_watch_rebalances_a_scale_out_by_itself(lb, backends, watches):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, group = lb.group([a.address, b.address], rebalance={"rate": "50/s", "tolerance": "10%", "after": "1s"})
    lb.write({"pool": group})
    watch = watches(lb.inventory, "--quiet-period", "300ms", "--max-wait", "3s")
    watch.reload()
    devices = Devices(port, 60)
    try:
        devices.wait(lambda d: d.counts() == {"A": 30, "B": 30}, 20, "clients spread over A and B")
        # the watch's first timer (it started 1s before): whatever it found, it is done before the scale-out
        watch.wait(lambda e: e["event"] == "rebalance" and e.get("phase") in ("done", "failed"), 30)
        devices.wait(lambda d: d.counts() == {"A": 30, "B": 30}, 20, "clients back on A and B")

        group["servers"].append(c.address)
        lb.write({"pool": group})
        added = watch.reload()
        assert added["added"] == [f"pool/{c.address}"]
        start = watch.wait(lambda e: e["event"] == "rebalance" and e.get("phase") in ("start", "done", "failed"), 30)
        assert start["phase"] == "start", start
        # 60 held, shares 20: A and B hold 8 each above 22, C lacks 18 below 18: the minimum is 18
        assert start["group"] == "pool" and start["to_move"] == 18, start
        assert start["counts"] == {a.address: 30, b.address: 30, c.address: 0}, start
        done = watch.wait(lambda e: e["event"] == "rebalance" and e.get("phase") in ("done", "failed", "cancelled"),
                          60)
        assert done["phase"] == "done", done
        assert 18 <= done["moved"] <= 1.15 * 18 and done["minimum"] == 18, done
        assert all(abs(n - 20) <= 2 for n in done["after"].values()), done

        devices.wait(lambda d: d.connected() == 60, 10, "every client back")
        assert all(abs(n - 20) <= 2 for n in devices.counts().values()), devices.counts()
        assert devices.resets == 0 and devices.eofs == done["moved"]   # orderly closes, and only those
        metrics = watch.metrics()
        assert metrics[("nginxctl_rebalance_moves_total", (("group", "pool"),))] == done["moved"] > 0
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["overlay"] is None and status["drift"] is False   # the normal config runs again
        assert all(s["state"] == "up" for g in status["groups"] for s in g["servers"])
        assert not [e for e in watch.seen if e["event"] == "drift"]   # its own overlay was never drift
        assert watch.stop() == 0
    finally:
        devices.close()
