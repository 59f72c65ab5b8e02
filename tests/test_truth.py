"""The controller tells the truth and keeps control (issue 12), against real nginx, real Docker backends, real etcd:
one bad discovered backend blocks nothing; one owner per target (`apply`, `rollback`, `drain` refused while a watch
runs, `--force` is drift the watch corrects); `status` and `diff` describe what nginx runs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from nginxctl.history import sha
from nginxctl.nginx import LiveNginx

from helpers import Held, cli, free_port, wait_for
from test_fleet import fleet
from test_watch import QUIET, replies, write

pytestmark = pytest.mark.integration


def status(inv: Any, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("status", "-i", str(inv), "--format", "json", *args)
    return result.returncode, json.loads(result.stdout)


def servers(st: dict[str, Any], group: str) -> dict[str, tuple[str, str | None]]:
    g = next(g for g in st["groups"] if g["name"] == group)
    return {s["address"]: (s["state"], s["reason"]) for s in g["servers"]}


def test_an_unresolvable_discovered_backend_is_left_out_and_the_rest_applies(lb, backends, backend_containers,
                                                                              watches):
    static = backends("S")
    port = free_port()
    group = f"pool{uuid.uuid4().hex[:8]}"
    inv = write(lb, {group: {"listen": f"127.0.0.1:{port}", "servers": [static.address], "discover": "docker"}})
    # passes the grammar, but nginx cannot resolve it: `nginx -t` rejects the whole config
    backend_containers("BAD", {"nginxctl.group": group, "nginxctl.port": "40105",
                               "nginxctl.address": "nosuchhost.invalid"})
    w = watches(inv, *QUIET)
    w.reload()
    skip = next(e for e in w.seen if e["event"] == "skip" and e.get("server") == "nosuchhost.invalid:40105")
    assert "host not found" in skip["message"] and skip["group"] == group
    assert replies(port) == {"S"}
    port_d1 = free_port()
    backend_containers("D1", {"nginxctl.group": group, "nginxctl.port": str(port_d1)}, port=port_d1)
    event = w.reload()
    assert event["added"] == [f"{group}/127.0.0.1:{port_d1}"]  # against what nginx had loaded
    assert replies(port, 8) == {"S", "D1"}
    m = w.metrics()
    assert m[("nginxctl_discovered_skipped", (("source", "docker"),))] == 1
    assert m[("nginxctl_pending_changes", ())] == 0
    assert not [e for e in w.seen if e["event"] == "reload" and e.get("result") == "rejected"]
    assert w.stop() == 0


def test_one_owner_apply_rollback_drain_refused_while_a_watch_runs_and_force_is_corrected(lb, backends, watches,
                                                                                         tmp_path):
    a, a2, b = backends("A"), backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, a2.address]}})
    w = watches(inv, *QUIET, "--resync", "1s")
    w.reload()
    refused = cli("apply", "-i", str(inv), "--reload")
    assert refused.returncode == 3
    assert "controlled by nginxctl watch" in refused.stderr and "--force" in refused.stderr
    as_json = json.loads(cli("apply", "-i", str(inv), "--reload", "--format", "json").stdout)
    assert as_json["exit_code"] == 3 and as_json["errors"][0]["type"] == "WatchOwnsTarget"
    assert cli("rollback", "--container", lb.name).returncode == 3
    before = inv.read_text()
    drained = cli("drain", "pool", a.address, "-i", str(inv))
    assert drained.returncode == 3 and inv.read_text() == before  # nothing edited
    assert cli("apply", "-i", str(inv), "--reload", "--dry-run").returncode == 0  # a preview changes nothing

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"target": {"container": lb.name}, "nginx": {"worker_processes": 1},
                                     "upstreams": {"pool": {"listen": f"127.0.0.1:{port}",
                                                            "servers": [b.address]}}}))
    forced = cli("apply", "-i", str(other), "--reload", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "drift to it" in forced.stderr
    drift = w.wait(lambda e: e["event"] == "drift")
    assert drift["target"] == lb.name
    w.reload()
    assert replies(port) == {"A"}
    code, st = status(inv)
    assert code == 0 and st["drift"] is False and st["watch"]["pid"] == w.proc.pid
    assert w.stop() == 0
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0  # the watch is gone: apply works again


def test_a_reload_by_hand_is_drift_the_watch_corrects_within_the_resync(lb, backends, watches):
    a = backends("A")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    w = watches(inv, *QUIET, "--resync", "1s")
    w.reload()
    live = LiveNginx.attach(lb.client, lb.name)
    conf = live.read_file("/etc/nginx/nginx.conf").decode()
    live.install_file("/etc/nginx/nginx.conf", conf.replace(f"listen 127.0.0.1:{port}",
                                                            f"listen 127.0.0.1:{free_port()}"))
    live.signal_reload()
    # the file was written before the workers the reload started: nginx runs it (or, within a clock tick, unknown)
    drift = w.wait(lambda e: e["event"] == "drift", timeout=30)
    assert drift["loaded"] == sha(live.read_file("/etc/nginx/nginx.conf") or b"")[:12] or drift["loaded"] is None
    w.reload()
    assert replies(port) == {"A"}
    assert w.stop() == 0


def test_status_knows_a_reload_by_hand_loaded_the_file(lb, backends):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    live = LiveNginx.attach(lb.client, lb.name)
    conf = live.read_file("/etc/nginx/nginx.conf").decode().replace(a.address, b.address)
    live.install_file("/etc/nginx/nginx.conf", conf)
    workers = live.processes().worker_pids
    live.signal_reload()
    wait_for(lambda: live.processes().worker_pids.isdisjoint(workers), 20, "no new workers after the HUP")
    code, st = status(inv)
    assert st["loaded"] == sha(conf) and st["reload_pending"] is False
    assert servers(st, "pool") == {b.address: ("up", None)} and st["pending"]["added"] == [f"pool/{a.address}"]
    assert replies(port) == {"B"}


def test_a_file_copied_in_without_a_reload_is_a_difference_and_the_watch_reinstalls(lb, backends, watches):
    a = backends("A")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, {"address": a.address.replace(
        str(a.port), str(free_port())), "backup": True}]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    live = LiveNginx.attach(lb.client, lb.name)
    good = live.read_file("/etc/nginx/nginx.conf")
    assert good is not None
    live.install_file("/etc/nginx/nginx.conf", good.decode().replace(f"{a.address};", f"{a.address} weight=7;"))
    diff = cli("diff", "-i", str(inv))
    assert diff.returncode == 1 and "weight=7" in diff.stdout  # the file differs: exit 1, as the README says
    w = watches(inv, *QUIET, "--resync", "1s")
    w.wait(lambda e: e["event"] == "drift", timeout=30)
    wait_for(lambda: live.read_file("/etc/nginx/nginx.conf") == good, 30, "the watch did not reinstall the file")
    assert w.stop() == 0


def test_status_of_a_container_without_nginx_is_exit_3(docker_client):
    box = docker_client.containers.run("nginxctl/nginx:latest", ["300"], entrypoint=["/bin/busybox", "sleep"],
                                       detach=True,
                                       network_mode="none", name=f"nginxctl-test-{uuid.uuid4().hex[:10]}",
                                       labels={"nginxctl.test": "1"})
    try:
        result = cli("status", "--container", box.name)
        assert result.returncode == 3 and "no nginx master" in result.stderr
    finally:
        box.remove(force=True)


def test_status_shows_the_listen_and_balance_nginx_runs(lb, backends, watches, tmp_path):
    a = backends("A")
    port, other_port = free_port(), free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"target": {"container": lb.name}, "nginx": {"worker_processes": 1},
                                     "upstreams": {"pool": {"listen": f"127.0.0.1:{other_port}",
                                                            "balance": "least_conn", "servers": [a.address]}}}))
    assert cli("apply", "-i", str(other), "--reload").returncode == 0
    _, st = status(inv)
    group = next(g for g in st["groups"] if g["name"] == "pool")
    assert group["listen"] == [f"127.0.0.1:{other_port}"] and group["balance"] == "least_conn"
    assert st["drift"] is True and st["pending"]["config"] is True


def test_dry_run_refuses_what_nginx_refuses(lb, backends):
    a = backends("A")
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address, "nosuchhost.invalid:7"]}})
    before = LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf")
    result = cli("apply", "-i", str(inv), "--reload", "--dry-run")
    assert result.returncode == 1 and "host not found" in result.stderr
    assert LiveNginx.attach(lb.client, lb.name).read_file("/etc/nginx/nginx.conf") == before


def test_fleet_diff_and_history_with_a_target_down_report_the_others(lb, isolated, backends):
    a = backends("A")
    box = isolated()
    inv = fleet(lb, box, {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    box.stop(timeout=1)
    for command in ("diff", "history"):
        result = cli(command, "-i", str(inv), "--format", "json")
        assert result.returncode == 3, (command, result.stderr)
        doc = json.loads(result.stdout)
        assert {t["name"] for t in doc["targets"]} == {"lb1", "lb2"}
        assert next(t for t in doc["targets"] if t["name"] == "lb2")["reachable"] is False


def test_status_while_a_change_is_held_back_lists_what_nginx_runs_and_the_pending_change(lb, backends, watches):
    a, b, c = backends("A"), backends("B"), backends("C")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    w = watches(inv, *QUIET, "--max-generations", "1", "--retire-rate", "0")  # held, not retired
    w.reload()
    held = Held(port)  # pins the current generation once it is old
    try:
        write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, b.address]}})
        w.reload()
        write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, b.address, c.address]}})
        w.wait(lambda e: e["event"] == "reload" and e.get("result") == "refused")
        code, st = status(inv)
        assert code == 0
        assert servers(st, "pool") == {a.address: ("up", None), b.address: ("up", None)}  # what nginx runs
        assert st["pending"]["added"] == [f"pool/{c.address}"] and st["drift"] is True
        assert "reload deferred" in st["watch"]["held"] and "--max-generations 1" in st["watch"]["held"]
        assert w.metrics()[("nginxctl_pending_changes", ())] >= 1
        text = cli("status", "-i", str(inv)).stdout
        assert f"pending     + pool/{c.address}" in text and "held back since" in text
    finally:
        held.close()
    w.reload()
    code, st = status(inv)
    assert st["drift"] is False and st["watch"]["held"] is None
    assert w.stop() == 0


def test_status_during_an_etcd_outage_shows_the_servers_nginx_runs(lb, backends, etcd):
    a = backends("A")
    port = free_port()
    inv = write(lb, {"netty_pool": {"listen": f"127.0.0.1:{port}", "discover": {"etcd": "/ns/netty_pool/"}}},
                discovery={"etcd": {"endpoints": [etcd.endpoint]}})
    etcd.client().put(f"/ns/netty_pool/{a.address}", a.address)
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    etcd.stop()
    code, st = status(inv)
    assert code == 0
    assert servers(st, "netty_pool") == {a.address: ("up", None)}
    assert st["drift"] is False and st["pending"]["removed"] == []
    assert any("etcd" in n and "not reachable" in n for n in st["notes"])
    text = cli("status", "-i", str(inv)).stdout
    assert "127.0.0.1:9" not in text.replace(a.address, "") and "etcd" in text
    assert cli("diff", "-i", str(inv)).returncode == 0


def test_a_down_server_says_why_drain_or_inventory(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}",
                              "servers": [a.address, b.address, {"address": c.address, "down": True}]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    assert cli("drain", "pool", b.address, "-i", str(inv)).returncode == 0
    _, st = status(inv)
    assert servers(st, "pool") == {a.address: ("up", None), b.address: ("down", "drain"),
                                   c.address: ("down", "inventory")}
    assert cli("undrain", "pool", b.address, "-i", str(inv)).returncode == 0
    _, st = status(inv)
    assert servers(st, "pool")[b.address] == ("up", None)


def test_fleet_status_with_a_target_down_reports_the_others(lb, isolated, backends, docker_client):
    a = backends("A")
    box = isolated()
    port = free_port()
    inv = fleet(lb, box, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    box.stop(timeout=1)
    result = cli("status", "-i", str(inv), "--format", "json")
    assert result.returncode == 3
    st = json.loads(result.stdout)
    by_name = {t["name"]: t for t in st["targets"]}
    assert by_name["lb1"]["drift"] is False and servers(by_name["lb1"], "pool") == {a.address: ("up", None)}
    assert by_name["lb2"]["reachable"] is False and st["exit_code"] == 3
    text = cli("status", "-i", str(inv))
    assert text.returncode == 3 and "== lb1" in text.stdout and "unreachable" in text.stdout


def test_status_after_a_forced_apply_shows_what_nginx_runs_against_what_the_watch_wants(lb, backends, watches,
                                                                                       tmp_path):
    a, a2, b = backends("A"), backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address, a2.address]}})
    w = watches(inv, *QUIET, "--resync", "1h")  # no resync during the test: the drift stays to be seen
    w.reload()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"target": {"container": lb.name}, "nginx": {"worker_processes": 1},
                                     "upstreams": {"pool": {"listen": f"127.0.0.1:{port}",
                                                            "servers": [b.address]}}}))
    assert cli("apply", "-i", str(other), "--reload", "--force").returncode == 0
    code, st = status(inv)
    assert code == 0 and st["wanted_by"] == "watch"
    assert servers(st, "pool") == {b.address: ("up", None)}  # what nginx runs now, not what anyone wants
    assert sorted(st["pending"]["added"]) == sorted([f"pool/{a.address}", f"pool/{a2.address}"])
    assert st["pending"]["removed"] == [f"pool/{b.address}"] and st["drift"] is True
    diff = cli("diff", "-i", str(inv))
    assert diff.returncode == 1, (diff.stdout, w.seen)
    assert w.stop() == 0


def test_the_first_reload_line_says_what_changed_on_nginx(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [{"address": a.address, "weight": 3}, b.address]}})
    w = watches(inv, *QUIET)
    first = w.reload()  # against what nginx had loaded before the watch started, not against nothing
    assert first["added"] == [f"pool/{b.address}"] and first["removed"] == []
    assert first["changed"] == [f"pool/{a.address}: up -> up weight=3"]
    write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [{"address": a.address, "weight": 1}, b.address]}})
    event = w.reload()
    assert event["changed"] == [f"pool/{a.address}: up weight=3 -> up weight=1"] and event["added"] == []
    assert w.stop() == 0


def test_an_etcd_group_added_while_watching_gets_its_backends(lb, backends, etcd, watches):
    a, b = backends("A"), backends("B")
    port, port2 = free_port(), free_port()
    groups = {"static": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}
    inv = write(lb, groups, discovery={"etcd": {"endpoints": [etcd.endpoint]}})
    w = watches(inv, *QUIET)
    w.reload()
    groups["live"] = {"listen": f"127.0.0.1:{port2}", "discover": {"etcd": "/ns/live/"}}
    write(lb, groups, discovery={"etcd": {"endpoints": [etcd.endpoint]}})
    w.wait(lambda e: e["event"] == "source" and "following" in e["message"])
    etcd.client().put(f"/ns/live/{b.address}", b.address)
    w.wait(lambda e: e["event"] == "reload" and e.get("result") == "ok" and f"live/{b.address}" in e.get("added", []),
           timeout=30)
    assert replies(port2) == {"B"}
    assert w.stop() == 0


def test_a_hung_etcd_is_noticed_and_its_backends_kept(lb, backends, etcd, watches):
    import signal

    a = backends("A")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "discover": {"etcd": "/ns/hung/"}}},
                discovery={"etcd": {"endpoints": [etcd.endpoint]}})
    etcd.client().put(f"/ns/hung/{a.address}", a.address)
    w = watches(inv, *QUIET)
    w.reload()
    assert etcd.proc is not None
    etcd.proc.send_signal(signal.SIGSTOP)  # alive, listening, answering nothing
    try:
        w.wait(lambda e: e["event"] == "source" and "unreachable" in e["message"], timeout=30)
        assert w.metrics()[("nginxctl_source_stale", (("source", "etcd"),))] == 1
        assert replies(port) == {"A"}  # its last backends are kept
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    w.wait(lambda e: e["event"] == "source" and "reachable again" in e["message"], timeout=60)
    assert w.stop() == 0


def test_a_reload_by_hand_after_a_reinstall_is_still_seen(lb, backends):
    from nginxctl.apply import Deployer

    a, b = backends("A"), backends("B")
    port = free_port()
    inv = write(lb, {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}})
    assert cli("apply", "-i", str(inv), "--reload").returncode == 0
    live = LiveNginx.attach(lb.client, lb.name)
    good = (live.read_file("/etc/nginx/nginx.conf") or b"").decode()
    live.install_file("/etc/nginx/nginx.conf", good + "# copied in by hand\n")
    Deployer(live).apply(good, reload=False)  # what the watch does: the file put back, no reload
    _, st = status(inv)
    assert st["last_apply"] == "done" and st["reload_pending"] is False
    edited = good.replace(a.address, b.address)
    live.install_file("/etc/nginx/nginx.conf", edited)
    workers = live.processes().worker_pids
    live.signal_reload()
    wait_for(lambda: live.processes().worker_pids.isdisjoint(workers), 20, "no new workers after the HUP")
    _, st = status(inv)
    assert st["loaded"] == sha(edited) and servers(st, "pool") == {b.address: ("up", None)}
    assert st["drift"] is True and replies(port) == {"B"}
