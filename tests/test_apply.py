"""apply / diff / status / history / rollback against a real nginx container (an image with no shell)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import docker
import pytest
from nginxctl.history import sha
from nginxctl.nginx import LiveNginx, TargetLock
from nginxctl.nginxtext import parse_version

from helpers import IMAGE, Held, cli, free_port, who

pytestmark = pytest.mark.integration


def apply(lb, *extra):  # type: ignore[no-untyped-def]
    return cli("apply", "-i", str(lb.inventory), "--reload", *extra)


def deployed(lb) -> str:  # type: ignore[no-untyped-def]
    return LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf").decode()


def test_test_image_has_no_shell(docker_client):
    """The suite runs nginx from an image with nothing but nginx: nginxctl may not rely on a shell."""
    container = docker_client.containers.create(IMAGE, entrypoint=["/bin/sh"], command=["-c", "true"],
                                                network_mode="none")
    try:
        with pytest.raises(docker.errors.APIError, match="/bin/sh"):
            container.start()
    finally:
        container.remove(force=True)


def test_apply_twice_second_changes_nothing_and_does_not_reload(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    first = apply(lb)
    assert first.returncode == 0, first.stderr
    workers = lb.workers()
    second = apply(lb)
    assert second.returncode == 0, second.stderr
    assert "no changes" in second.stdout
    assert lb.workers() == workers


def test_dry_run_shows_diff_and_changes_nothing(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    before = deployed(lb)
    result = cli("apply", "-i", str(lb.inventory), "--dry-run", "--reload")
    assert result.returncode == 0, result.stderr
    assert f"+        server {a.address};" in result.stdout
    assert deployed(lb) == before


def test_diff_exit_codes(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    changed = cli("diff", "-i", str(lb.inventory))
    assert changed.returncode == 1 and f"+        listen 127.0.0.1:{port};" in changed.stdout
    assert apply(lb).returncode == 0
    same = cli("diff", "-i", str(lb.inventory))
    assert (same.returncode, same.stdout) == (0, "")


def test_rejected_config_exit_1_nothing_changed_traffic_flows(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    before, workers = deployed(lb), lb.workers()
    _, bad = lb.group(["no-such-host.invalid:80"])
    lb.write({"pool": group, "broken": bad})
    result = apply(lb)
    assert result.returncode == 1, result.stderr
    assert "host not found in upstream" in result.stderr
    assert deployed(lb) == before
    assert lb.workers() == workers
    assert who(port) == "A"


def test_failed_reload_port_taken_exit_4_previous_config_restored(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    before = deployed(lb)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy_port = taken.getsockname()[1]
        _, clash = lb.group([a.address], port=busy_port)
        lb.write({"pool": group, "clash": clash})
        result = apply(lb)
        assert result.returncode == 4, result.stderr
        assert "previous config restored, verified, and running" in result.stderr
        assert "FAILED" not in result.stderr and "Address already in use" in result.stderr
        assert f"{lb.inventory}:" in result.stderr
        assert f"upstreams.clash.listen: 127.0.0.1:{busy_port} is held by another process" in result.stderr
        assert deployed(lb) == before
        assert who(port) == "A"
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["deployed_sha256"] == sha(before) and status["drift"] is True
        assert status["loaded"] == sha(before) and status["reload_pending"] is False  # drift, nothing pending
        assert status["last_apply"] == "done"
        rows = json.loads(cli("history", "-c", lb.name, "-f", "json").stdout)["entries"]
        assert [r["sha256"] for r in rows if r["current"]] == [sha(before)]
    finally:
        taken.close()


def test_long_connections_opened_before_reload_keep_working(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address, b.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    held = [Held(port) for _ in range(6)]
    try:
        _, other = lb.group([a.address])
        lb.write({"pool": group, "other": other})
        assert apply(lb).returncode == 0
        for h in held:
            assert h.echo(b"still here\n") == b"still here\n"
        status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
        assert status["lingering_generations"], status
        assert sum(g["connections"] for g in status["lingering_generations"]) == 6
    finally:
        for h in held:
            h.close()


def serving_a_then_inventory_says_b(lb, backends):  # type: ignore[no-untyped-def]
    """Apply a group with server A; then rewrite the inventory to server B (not applied yet).
    Returns (port, the config deployed for A)."""
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    first = deployed(lb)
    group["servers"] = [b.address]
    lb.write({"pool": group})
    return port, first


def test_rollback_restores_and_serves_previous_config(lb, backends):
    port, first = serving_a_then_inventory_says_b(lb, backends)
    assert apply(lb).returncode == 0
    assert who(port) == "B"
    hist = cli("history", "--container", lb.name, "--format", "json", "-i", str(lb.inventory))
    rows = json.loads(hist.stdout)["entries"]
    assert [r["current"] for r in rows][:1] == [True] and len(rows) >= 3  # bootstrap, first, second
    result = cli("rollback", "--container", lb.name, "-i", str(lb.inventory))
    assert result.returncode == 0, result.stderr
    assert deployed(lb) == first
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["drift"] is True and status["reload_pending"] is False  # the inventory says B; nginx runs A
    assert {who(port) for _ in range(4)} == {"A"}
    to_id = rows[0]["id"]
    again = cli("rollback", "--container", lb.name, "--to", str(to_id), "-i", str(lb.inventory))
    assert again.returncode == 0, again.stderr
    assert {who(port) for _ in range(4)} == {"B"}


def test_status_reports_versions_processes_and_drift(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address, {"address": "127.0.0.1:1", "backup": True}], balance="least_conn")
    lb.write({"pool": group})
    drift = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert drift["drift"] is True
    assert apply(lb).returncode == 0
    result = cli("status", "-i", str(lb.inventory), "--format", "json")
    assert result.returncode == 0
    st = json.loads(result.stdout)
    version = parse_version(LiveNginx.attach(lb.client, lb.name).exec(["-v"]).output)
    assert version[0].isdigit() and st["nginx_version"] == version and st["drift"] is False
    assert st["master_pid"] and len(st["worker_pids"]) == 2
    assert st["deployed_sha256"] == st["inventory_config_sha256"]
    # the servers of the config nginx runs, each with its state there
    assert st["groups"][0]["servers"][1] == {"address": "127.0.0.1:1", "flags": ["backup"], "state": "backup",
                                             "reason": None, "connections": 0, "old_generation_connections": 0,
                                             "fair_share": None}
    assert st["pending"] == {"added": [], "removed": [], "changed": [], "config": False}
    text = cli("status", "-i", str(lb.inventory))
    assert text.returncode == 0 and "drift       no" in text.stdout


def test_container_missing_exit_3(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("target: {container: nginxctl-test-does-not-exist}\nupstreams:\n"
                   "  a: {listen: 7000, servers: [127.0.0.1:7001]}\n")
    result = cli("apply", "-i", str(inv), "--reload")
    assert result.returncode == 3
    assert "container nginxctl-test-does-not-exist does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_docker_unreachable_exit_3(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("upstreams:\n  a: {listen: 7000, servers: [127.0.0.1:7001]}\n")
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    for args in (["validate"], ["apply", "--container", "x", "--reload"], ["status", "--container", "x"]):
        result = cli(*args, "-i", str(inv), env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert "Docker is not reachable" in result.stderr and "Traceback" not in result.stderr


def test_concurrent_apply_waits_for_the_lock_then_gives_up(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    live = LiveNginx.attach(lb.client, lb.name)
    with TargetLock(lb.client, live):
        result = apply(lb, "--lock-timeout", "1")
    assert result.returncode == 3
    assert "another nginxctl is changing" in result.stderr
    assert apply(lb).returncode == 0


def test_stale_lock_of_a_dead_process_is_taken_over(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = LiveNginx.attach(lb.client, lb.name)
    lock = TargetLock(lb.client, live)
    lb.client.containers.create(live.image, name=lock.name, entrypoint=["/nonexistent-lock"], command=[],
                                labels={"nginxctl.role": "lock", "nginxctl.host": socket.gethostname(),
                                        "nginxctl.pid": str(dead.pid), "nginxctl.time": "9999999999",
                                        "nginxctl.target": lb.name})
    result = apply(lb, "--lock-timeout", "1")
    assert result.returncode == 0, result.stderr


def test_installed_but_not_reloaded_is_finished_by_the_next_apply(lb, backends):
    """What a kill -9 between install and reload leaves: the next apply --reload completes it."""
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    installed = cli("apply", "-i", str(lb.inventory))
    assert installed.returncode == 0 and "not reloaded" in installed.stdout
    workers = lb.workers()
    finished = apply(lb)
    assert finished.returncode == 0, finished.stderr
    assert lb.workers().isdisjoint(workers)
    assert who(port) == "A"


@pytest.mark.parametrize("kill_at", ["current workers hold", "testing the new config", "reloading nginx"])
def test_kill_9_mid_apply_leaves_old_or_new_and_next_apply_recovers(lb, backends, kill_at):
    """Killed as it says `kill_at` (a moment picked by what it says, not by counting lines)."""
    port, old = serving_a_then_inventory_says_b(lb, backends)
    proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "apply", "-i", str(lb.inventory), "--reload"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd="/",
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if kill_at in line:
            break
    assert kill_at in "".join(seen), seen
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    now = deployed(lb)
    assert now == old or sha(now) == json.loads(
        cli("status", "-i", str(lb.inventory), "--format", "json").stdout)["inventory_config_sha256"]
    recovered = apply(lb)
    assert recovered.returncode == 0, recovered.stderr
    assert who(port) == "B"
    assert LiveNginx.attach(lb.client, lb.name).processes().master is not None


def test_validate_with_container_uses_its_image_and_network(lb):
    port = free_port()
    lb.write({"pool": {"listen": f"127.0.0.1:{port}", "servers": ["localhost:9"]}})
    result = cli("validate", "-i", str(lb.inventory), "--container", lb.name, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["network"] == "container" and report["unchecked_names"] == []


def test_reload_refused_while_max_generations_linger(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    held = Held(port)
    try:
        _, other = lb.group([a.address])
        lb.write({"pool": group, "other": other})
        assert apply(lb).returncode == 0  # the held connection now lingers in an old generation
        before = deployed(lb)
        _, third = lb.group([a.address])
        lb.write({"pool": group, "other": other, "third": third})
        refused = apply(lb, "--max-generations", "1")
        assert refused.returncode == 4, refused.stderr
        assert "refused: 1 old worker generation(s) still shutting down" in refused.stderr
        assert "1 connection(s)" in refused.stderr and "nothing changed" in refused.stderr
        assert deployed(lb) == before
        assert held.echo() == b"ping\n"
    finally:
        held.close()


def test_history_is_a_bounded_ring(lb, backends, monkeypatch):
    """The archive API cannot delete files: the history keeps the newest HISTORY_SLOTS configs."""
    from nginxctl import history as history_module
    from nginxctl.apply import Deployer

    monkeypatch.setattr(history_module, "HISTORY_SLOTS", 3)
    a = backends("A")
    port, group = lb.group([a.address])
    deployer = Deployer(LiveNginx.attach(lb.client, lb.name))
    for minutes in range(61, 66):
        group["proxy_timeout"] = f"{minutes}m"
        lb.write({"pool": group}, nginx={"load_modules": ["/usr/lib/nginx/modules/ngx_stream_module.so"]})
        rendered = cli("render", "-i", str(lb.inventory), "--full").stdout
        assert deployer.apply(rendered, reload=True).reloaded
    entries = deployer.history.entries()
    assert [e.id for e in entries] == [6, 5, 4]  # 1 was the image's bootstrap config
    assert "proxy_timeout 64m;" in deployer.history.read(entries[1])
    assert who(port) == "A"


def test_apply_without_reload_leaves_a_reload_pending_that_diff_and_status_report(lb, backends):
    port, first = serving_a_then_inventory_says_b(lb, backends)
    installed = cli("apply", "-i", str(lb.inventory))
    assert installed.returncode == 0 and "not reloaded" in installed.stdout
    diff = cli("diff", "-i", str(lb.inventory))
    assert diff.returncode == 1, diff.stdout  # the file matches; nginx does not run it
    expected = f"# {lb.name}: the file matches the inventory, but nginx runs sha256:{sha(first)[:12]}"
    assert diff.stdout.startswith(expected)
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    # nginx still runs A: what the inventory wants is pending (drift), and the installed file awaits a reload
    assert status["drift"] is True and status["reload_pending"] is True and status["loaded"] == sha(first)
    assert status["pending"]["added"] and status["pending"]["removed"]
    assert who(port) == "A"
    assert apply(lb).returncode == 0
    assert cli("diff", "-i", str(lb.inventory)).returncode == 0
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["reload_pending"] is False and status["loaded"] == status["inventory_config_sha256"]
    assert who(port) == "B"


def test_a_restarted_container_loaded_the_installed_file(lb, backends):
    """nginx reads its file at start: after a restart the installed config is what runs."""
    port, _ = serving_a_then_inventory_says_b(lb, backends)
    assert cli("apply", "-i", str(lb.inventory)).returncode == 0
    lb.container.restart(timeout=5)
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["reload_pending"] is False and status["loaded"] == status["deployed_sha256"]
    assert cli("diff", "-i", str(lb.inventory)).returncode == 0
    again = apply(lb)  # nothing to reload; the unfinished apply is recorded as done, its config as current
    assert again.returncode == 0 and "already runs this config" in again.stdout
    status = json.loads(cli("status", "-i", str(lb.inventory), "--format", "json").stdout)
    assert status["last_apply"] == "done"
    rows = json.loads(cli("history", "-c", lb.name, "-f", "json").stdout)["entries"]
    assert [r["sha256"] for r in rows if r["current"]] == [status["deployed_sha256"]]


def test_history_marks_only_the_config_nginx_runs_as_current(lb, backends):
    a, b = backends("A"), backends("B")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    group["servers"] = [b.address]
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    group["servers"] = [a.address]
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    rows = json.loads(cli("history", "-c", lb.name, "-f", "json").stdout)["entries"]
    assert [r["current"] for r in rows] == [True, False, False, False]
    assert rows[0]["sha256"] == rows[2]["sha256"]  # the same config ran twice; one is current
    text = cli("history", "-c", lb.name).stdout
    assert text.count("current") == 1


def test_nginx_rejecting_the_config_in_apply_is_traced_to_the_inventory(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address, "no-such-host.invalid:80"])
    lb.write({"pool": group})
    result = apply(lb)
    assert result.returncode == 1, result.stderr
    assert f"{lb.inventory}:" in result.stderr and "upstreams.pool.servers[1]: nginx: host not found" in result.stderr
    as_json = json.loads(apply(lb, "--format", "json").stdout)
    assert as_json["ok"] is False and as_json["exit_code"] == 1
    error = as_json["errors"][0]
    assert (error["file"], error["path"]) == (str(lb.inventory), "upstreams.pool.servers[1]") and error["line"] > 0


def test_status_of_a_container_without_an_inventory(lb, backends, tmp_path):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("status", "--container", lb.name, "--format", "json", cwd=empty)
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["ok"] is True and st["master_pid"] and st["loaded"] == st["deployed_sha256"]
    assert st["drift"] is None and st["reload_pending"] is False
    text = cli("status", "--container", lb.name, cwd=empty)
    assert text.returncode == 0 and f"container   {lb.name}" in text.stdout and "loaded" in text.stdout


def test_stream_only_into_a_file_nginx_does_not_include_is_refused_before_writing(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    live = LiveNginx.attach(lb.client, lb.name)
    before = {p: live.read_file(p) for p in ("/etc/nginx/nginx.conf", "/etc/nginx/.nginxctl/state.json")}
    result = apply(lb, "--stream-only", "--config-path", "/etc/nginx/stray.conf")
    assert result.returncode == 2, result.stderr
    assert "/etc/nginx/stray.conf is not included by nginx's config" in result.stderr
    assert live.read_file("/etc/nginx/stray.conf") is None
    assert live.read_file("/etc/nginx/.stray.conf.nginxctl-new") is None
    assert {p: live.read_file(p) for p in before} == before


def test_dry_run_with_reload_previews_generations_and_the_max_generations_check(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group}, nginx={"worker_shutdown_timeout": "1h"})
    assert apply(lb).returncode == 0
    held = Held(port)
    try:
        _, other = lb.group([a.address])
        lb.write({"pool": group, "other": other}, nginx={"worker_shutdown_timeout": "1h"})
        assert apply(lb).returncode == 0
        _, third = lb.group([a.address])
        lb.write({"pool": group, "other": other, "third": third}, nginx={"worker_shutdown_timeout": "1h"})
        before = deployed(lb)
        result = apply(lb, "--dry-run", "--max-generations", "1", "--format", "json")
        assert result.returncode == 0, result.stdout
        preview = json.loads(result.stdout)["reload_preview"]
        assert preview["would_refuse"] is True and preview["max_generations"] == 1
        assert [g["connections"] for g in preview["lingering_generations"]] == [1]
        assert preview["worker_shutdown_timeout"] == "1h"
        text = apply(lb, "--dry-run", "--max-generations", "1")
        assert "a reload now would be refused: 1 old generation(s) linger" in text.stdout
        assert deployed(lb) == before
    finally:
        held.close()


def test_apply_reload_prints_the_lingering_summary_once(lb, backends):
    a = backends("A")
    port, group = lb.group([a.address])
    lb.write({"pool": group})
    assert apply(lb).returncode == 0
    _, other = lb.group([a.address])
    lb.write({"pool": group, "other": other})
    result = apply(lb)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("current workers hold") == 1, result.stderr


def test_a_container_gone_mid_command_is_an_environment_error_not_a_traceback(lb):
    """Every Docker call is mapped: signals, logs, processes, exec, archives on a removed container."""
    from nginxctl.errors import EnvironmentProblem

    live = LiveNginx.attach(lb.client, lb.name)
    master = live.processes().master
    lb.container.remove(force=True)
    calls = {"signal": lambda: live.signal_reload(master), "logs": lambda: live.log_since(("stderr", 1.0)),
             "processes": live.processes, "exec": lambda: live.exec(["-t"]),
             "read": lambda: live.stat_file("/etc/nginx/nginx.conf"),
             "write": lambda: live.put_files("/etc/nginx", {"x.conf": "x"}), "refresh": live.refresh}
    for name, call in calls.items():
        with pytest.raises(EnvironmentProblem) as caught:
            call()
            pytest.fail(f"{name}: no error")
        assert lb.name in str(caught.value), name


def test_a_config_path_nginx_does_not_load_is_refused_before_writing(lb, backends):
    a = backends("A")
    _, group = lb.group([a.address])
    lb.write({"pool": group})
    live = LiveNginx.attach(lb.client, lb.name)
    before = live.read_file("/etc/nginx/nginx.conf")
    for path in ("/etc/nginx/other.conf", "/etc/nginx/modules-enabled"):
        result = apply(lb, "--config-path", path)
        assert result.returncode == 2, result.stderr
        assert f"nginx in {lb.name} loads /etc/nginx/nginx.conf, not {path}" in result.stderr
    assert live.read_file("/etc/nginx/other.conf") is None
    assert live.read_file("/etc/nginx/nginx.conf") == before
    relative = apply(lb, "--config-path", "relative.conf")
    assert relative.returncode == 2 and "--config-path" in relative.stderr


def test_a_container_without_nginx_running_is_an_environment_error_before_writing(docker_client, tmp_path):
    import uuid

    name = f"nginxctl-test-{uuid.uuid4().hex[:10]}"
    box = docker_client.containers.run("nginxctl/nginx:latest", ["/bin/busybox", "sleep", "600"], name=name,
                                       detach=True, network_mode="none", labels={"nginxctl.test": "1"})
    try:
        inv = tmp_path / "inventory.yaml"
        inv.write_text(f"target: {{container: {name}}}\nupstreams:\n  a: {{listen: 7000, servers: [127.0.0.1:1]}}\n")
        result = cli("apply", "-i", str(inv), "--reload")
        assert result.returncode == 3, result.stderr
        assert f"no nginx master process runs in {name}" in result.stderr
        assert LiveNginx(docker_client, box).read_file("/etc/nginx/.nginxctl/state.json") is None
    finally:
        box.remove(force=True)
