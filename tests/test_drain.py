"""drain / undrain against real nginx with real long-lived connections."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from nginxctl import drain as drain_mod
from nginxctl.errors import Interrupted
from nginxctl.nginx import LiveNginx, TargetLock, connect

from helpers import Held, cli, who

pytestmark = pytest.mark.integration


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
        busy = drain(lb, "pool", b.address, "--lock-timeout", "0")
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


def test_drain_wait_counts_connections_to_a_server_given_by_host_name(lb, backends):
    a, b = backends("A"), backends("B")
    named = f"localhost:{b.port}"
    port, group = lb.group([a.address, named])
    lb.write({"pool": group})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    held = [Held(port) for _ in range(4)]
    try:
        assert sorted(h.name for h in held) == ["A", "A", "B", "B"]
        timed_out = drain(lb, "pool", named, "--wait", "--timeout", "1")
        assert timed_out.returncode == 1, timed_out.stdout + timed_out.stderr
        assert f"2 connection(s) to {named} remain (worker " in timed_out.stdout
        assert "still open after 1s" in timed_out.stderr
    finally:
        for h in held:
            h.close()


def test_drain_then_undrain_gives_back_the_inventory_byte_for_byte(lb, backends):
    a, b = backends("A"), backends("B")
    port = lb.group([])[0]
    text = (f"# the pool\ntarget: {{container: {lb.name}}}\nnginx: {{worker_processes: 1}}\nupstreams:\n"
            f"  pool:\n    listen: 127.0.0.1:{port}   # clients dial this\n    servers:\n"
            f"      - {a.address}     # A\n      - {b.address}   # B, aligned by hand\n")
    lb.inventory.write_text(text)
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    assert drain(lb, "pool", b.address).returncode == 0
    assert "down: true" in lb.inventory.read_text()
    undone = cli("undrain", "pool", b.address, "-i", str(lb.inventory))
    assert undone.returncode == 0, undone.stderr
    assert lb.inventory.read_text() == text


@pytest.mark.parametrize("stop_at, inventory_put_back", [
    ("testing the new config", True),         # nothing installed yet: the inventory goes back
    ("reloading nginx", False),               # installed, not reloaded: both say down, nginx runs the old
])
def test_ctrl_c_in_drain_says_what_was_and_was_not_done(lb, backends, stop_at, inventory_put_back):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    before = lb.inventory.read_text()

    def progress(message: str) -> None:  # Ctrl-C arrives while nginxctl says `stop_at`
        if stop_at in message:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        drain_mod.drain(lb.inventory, "pool", b.address, connect=connect, progress=progress)
    report = str(caught.value)
    assert report.startswith("interrupted") and "not done: reload and verify" in report
    assert caught.value.exit_code == 130
    if inventory_put_back:
        assert lb.inventory.read_text() == before
        assert "put back as it was" in report and "new config installed" not in report
    else:
        assert "down: true" in lb.inventory.read_text()
        assert "`down: true` written" in report and "new config installed" in report
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["reload_pending"] is True
    assert {who(port) for _ in range(4)} == {"A", "B"}  # nginx still runs the config before the drain


def test_drain_wait_stops_when_another_command_undrains_the_server(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    assert cli("apply", "-i", str(lb.inventory), "--reload").returncode == 0
    held = [Held(port) for _ in range(4)]
    try:
        waiting = subprocess.Popen([sys.executable, "-m", "nginxctl", "drain", "pool", b.address, "-i",
                                    str(lb.inventory), "--wait", "--timeout", "2m"], stderr=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, cwd="/")
        assert waiting.stderr is not None
        for line in waiting.stderr:  # until it says it waits
            if "waiting: 2 connection(s)" in line:
                break
        undone = cli("undrain", "pool", b.address, "-i", str(lb.inventory))
        assert undone.returncode == 0, undone.stderr
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1, err
        assert f"stopped waiting: {b.address} is no longer drained" in err
    finally:
        for h in held:
            h.close()
