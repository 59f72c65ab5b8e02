"""drain / undrain against real nginx with real long-lived connections."""

from __future__ import annotations

import json

from nginxctl.nginx import LiveNginx, TargetLock

from helpers import Held, cli, who


def drain(lb, *args):  # type: ignore[no-untyped-def]
    return cli("drain", *args, "-i", str(lb.inventory))


def test_drain_marks_down_reloads_and_reports_held_connections_until_they_close(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    held = [Held(port) for _ in range(4)]
    on_b = [h for h in held if h.name == "B"]
    try:
        timed_out = drain(lb, "pool", b.address, "--wait", "--timeout", "1s")
        assert timed_out.returncode == 1, timed_out.stderr
        assert f"2 connection(s) to {b.address} remain (worker " in timed_out.stdout
        assert "down: true" in lb.inventory.read_text()
        assert [who(port) for _ in range(6)] == ["A"] * 6  # new connections avoid the drained server
        assert all(h.echo() == b"ping\n" for h in on_b)  # held ones keep working
        for h in on_b:
            h.close()
        assert b.wait_connections(0)
        done = drain(lb, "pool", b.address, "--wait", "--timeout", "30s")
        assert done.returncode == 0, done.stderr
        assert f"no connection to {b.address} remains" in done.stdout
        assert "inventory unchanged" in done.stdout  # already drained: no edit, no reload
        undone = cli("undrain", "pool", b.address, "-i", str(lb.inventory))
        assert undone.returncode == 0, undone.stderr
        assert "down" not in lb.inventory.read_text()
        assert {who(port) for _ in range(4)} == {"A", "B"}
    finally:
        for h in held:
            h.close()


def test_drain_unknown_server_or_last_server_leaves_inventory_untouched(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    before = lb.inventory.read_text()
    unknown = drain(lb, "pool", "127.0.0.1:1")
    assert unknown.returncode == 2 and "no server 127.0.0.1:1 in group 'pool'" in unknown.stderr
    last = drain(lb, "pool", a.address)
    assert last.returncode == 2 and "last server of 'pool'" in last.stderr
    assert lb.inventory.read_text() == before


def test_drain_while_another_apply_runs_is_refused_inventory_untouched(lb, backends):
    a, b = backends("A"), backends("B")
    _, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    before = lb.inventory.read_text()
    with TargetLock(lb.client, LiveNginx.attach(lb.client, lb.name)):
        busy = drain(lb, "pool", b.address)
    assert busy.returncode == 3 and "another nginxctl is changing" in busy.stderr
    assert lb.inventory.read_text() == before


def test_drain_of_a_read_only_inventory_changes_nothing(lb, backends):
    a, b = backends("A"), backends("B")
    _, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    before = lb.inventory.read_text()
    lb.inventory.chmod(0o444)
    result = drain(lb, "pool", b.address)
    assert result.returncode == 2 and "read-only" in result.stderr
    assert lb.inventory.read_text() == before
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["last_apply"] == "none"


def test_drain_whose_apply_fails_restores_the_inventory(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address, "127.0.0.1:9"])
    _, broken = lb.group(["no-such-host.invalid:80"])
    lb.write({"pool": group, "broken": broken})
    before = lb.inventory.read_text()
    result = drain(lb, "pool", "127.0.0.1:9")
    assert result.returncode == 1 and "host not found" in result.stderr
    assert f"{lb.inventory} restored" in result.stderr
    assert lb.inventory.read_text() == before
