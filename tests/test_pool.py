"""`status` sees the pool: connections per server and per worker generation (sock_diag), fair shares, servers
removed from the config that old workers still hold; the pure share arithmetic."""

from __future__ import annotations

import json
import socket

import pytest
from nginxctl.nginxtext import emerg_lines, parse_upstreams, with_servers_down
from nginxctl.share import converged, fair_shares, minimum, plan, skew

from helpers import Devices, cli, free_port, read_line, wait_for, write_inventory


def _status(lb) -> dict:  # type: ignore[no-untyped-def]
    result = cli("status", "-i", str(lb.inventory), "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _servers(data: dict, group: str = "pool") -> dict[str, dict]:
    (g,) = [g for g in data["groups"] if g["name"] == group]
    return {s["address"]: s for s in g["servers"]}


def _greetings(port: int, count: int) -> list[str]:
    """What `count` fresh clients through nginx's `port` are greeted with, one after the other (the backend)."""
    answers = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            answers.append(read_line(conn))
    return answers


def _apply(lb) -> None:  # type: ignore[no-untyped-def]
    result = cli("apply", "--reload", "-q", "-i", str(lb.inventory))
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_status_counts_connections_per_server_and_generation(lb, backends):
    a, b, c = backends("A"), backends("B"), backends("C")
    port, g = lb.group([a.address, b.address])
    lb.write({"pool": g})
    _apply(lb)
    devices = Devices(port, 10)
    try:
        devices.wait(lambda d: d.counts() == {"A": 5, "B": 5}, 10, "round robin spreads 10 clients 5/5")
        servers = _servers(_status(lb))
        assert {k: (v["connections"], v["old_generation_connections"], v["fair_share"]) for k, v in servers.items()} \
            == {a.address: (5, 0, 5.0), b.address: (5, 0, 5.0)}

        g["servers"].append(c.address)   # a reload: the 10 connections stay, on the old generation
        lb.write({"pool": g})
        _apply(lb)
        data = _status(lb)
        servers = _servers(data)
        assert {k: (v["connections"], v["old_generation_connections"]) for k, v in servers.items()} \
            == {a.address: (5, 5), b.address: (5, 5), c.address: (0, 0)}
        assert [s["fair_share"] for s in servers.values()] == [3.33, 3.33, 3.33]
        (gen,) = data["lingering_generations"]
        assert gen["connections"] == 10 and gen["memory_bytes"] > 100_000
        assert data["client_connections"] == 0
        assert data["pool_seconds"] < 1.0

        g["servers"] = [a.address, c.address]   # B removed: its 5 stay on the old workers
        lb.write({"pool": g})
        _apply(lb)
        data = _status(lb)
        servers = _servers(data)
        assert servers[b.address]["state"] == "removed"
        assert (servers[b.address]["connections"], servers[b.address]["old_generation_connections"]) == (5, 5)
        assert servers[b.address]["fair_share"] is None
        assert servers[a.address]["connections"] == 5 and servers[a.address]["fair_share"] == 2.5
        text = cli("status", "-i", str(lb.inventory))
        assert "removed" in text.stdout and "█" in text.stdout or "▒" in text.stdout, text.stdout
    finally:
        devices.close()


@pytest.mark.integration
def test_a_removed_server_held_by_a_generation_many_reloads_old_is_still_counted(lb, backends):
    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address, b.address])
    groups = {"pool": g}
    lb.write(groups)
    _apply(lb)
    devices = Devices(port, 6)
    try:
        devices.wait(lambda d: d.counts() == {"A": 3, "B": 3}, 10, "round robin spreads 6 clients 3/3")
        g["servers"] = [a.address]   # B removed: its 3 stay on the oldest generation...
        for i in range(13):          # ...through more reloads than a fixed look-back at the history saw
            lb.write(groups)
            result = cli("apply", "--reload", "-q", "-i", str(lb.inventory), "--max-generations", "50")
            assert result.returncode == 0, result.stderr
            groups[f"more{i}"] = {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}
        data = _status(lb)
        servers = _servers(data)
        assert servers[b.address]["state"] == "removed", servers
        assert (servers[b.address]["connections"], servers[b.address]["old_generation_connections"]) == (3, 3)
        assert servers[a.address]["connections"] == 3
        (oldest,) = data["lingering_generations"]   # the generations between held nothing and are gone
        assert oldest["connections"] == 6           # A's 3 and B's 3
    finally:
        devices.close()


@pytest.mark.integration
def test_status_shows_the_connects_nginx_failed_to_a_dead_server_without_a_health_check(lb, backends):
    a = backends("A")
    dead = f"127.0.0.1:{free_port()}"          # nothing listens: nginx's connects are refused
    port, g = lb.group([a.address, dead])
    _, other = lb.group([dead, a.address])          # the same dead server in a group no client uses
    lb.write({"pool": g, "other": other})
    _apply(lb)
    answers = _greetings(port, 4)   # nginx passes each refused connect on to A: the clients see A
    assert answers == ["A"] * 4, answers
    data = _status(lb)
    assert _servers(data)[dead]["state"] == "up"          # as the loaded config has it...
    (failed,) = data["recent_failures"]                   # ...and what nginx saw: not A, not the group unused
    assert (failed["group"], failed["address"]) == ("pool", dead)
    assert failed["count"] >= 1 and "Connection refused" in failed["error"], failed
    assert failed["window_seconds"] == 60 and 0 <= failed["seconds_ago"] <= 60
    assert failed["taken_out_seconds_ago"] is not None   # max_fails 1: out for its fail_timeout (10 s)...
    assert failed["fail_timeout_seconds"] == 10
    assert failed["out_now"] is (failed["taken_out_seconds_ago"] < 10)   # ...and said whether it still is
    text = cli("status", "-i", str(lb.inventory))
    assert "nginx could not connect" in text.stdout and "Connection refused" in text.stdout, text.stdout
    assert failed["in_config"] is True
    g["servers"] = [a.address]   # taken out of the config: what nginx saw of it is still said, as no longer there
    lb.write({"pool": g, "other": other})
    _apply(lb)
    rows = _status(lb)["recent_failures"]
    assert [(f["group"], f["address"], f["in_config"]) for f in rows] == [("pool", dead, False)]
    assert f"{dead}  not in the loaded config: nginx could not connect" in cli("status", "-i", str(lb.inventory)).stdout


@pytest.mark.integration
def test_failed_connects_are_read_from_an_error_log_file_too(lb, backends):
    a = backends("A")
    dead = f"127.0.0.1:{free_port()}"
    port, g = lb.group([dead, a.address])
    lb.write({"pool": g}, nginx={"error_log": "/var/log/nginx/nginxctl-test.log"})
    _apply(lb)
    # round robin tries the dead server (listed first) and passes the client on to A
    assert _greetings(port, 4) == ["A"] * 4
    data = _status(lb)
    assert [(f["group"], f["address"]) for f in data["recent_failures"]] == [("pool", dead)], data["notes"]
    assert "Connection refused" in data["recent_failures"][0]["error"]


@pytest.mark.integration
def test_connections_to_an_ipv6_server_are_counted_beside_the_ipv4_ones(lb, backends):
    # the kernel is asked for the families the servers have: both here
    a, b = backends("A"), backends("B", host="::1")
    port, g = lb.group([a.address, b.address])
    lb.write({"pool": g})
    _apply(lb)
    devices = Devices(port, 6)
    try:
        devices.wait(lambda d: d.counts() == {"A": 3, "B": 3}, 10, "round robin spreads 6 clients 3/3")
        servers = _servers(_status(lb))
        assert {k: (v["connections"], v["fair_share"]) for k, v in servers.items()} \
            == {a.address: (3, 3.0), f"[::1]:{b.port}": (3, 3.0)}
    finally:
        devices.close()


@pytest.mark.integration
def test_a_target_reached_through_the_docker_api_alone_cannot_be_counted(lb, backends, docker_client):
    from nginxctl.nginx import LiveNginx
    from nginxctl.pool import PoolUnavailable, read_pool

    a = backends("A")
    _, g = lb.group([a.address])
    lb.write({"pool": g})
    _apply(lb)
    remote = LiveNginx(docker_client, docker_client.containers.get(lb.name), local=False)   # as a remote engine
    with pytest.raises(PoolUnavailable) as caught:
        read_pool(remote, "")
    assert caught.value.exit_code == 3 and "remote Docker engine" in str(caught.value)


@pytest.mark.integration
def test_watch_exports_connections_per_server_and_the_skew(lb, backends, watches):
    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address, b.address], balance="least_conn")
    lb.write({"pool": g})
    watch = watches(lb.inventory, "--resync", "1s")
    watch.reload()
    devices = Devices(port, 8)
    try:
        devices.wait(lambda d: d.counts() == {"A": 4, "B": 4}, 10, "least_conn spreads 8 clients 4/4")
        c = backends("C")
        g["servers"].append(c.address)
        lb.write({"pool": g})
        watch.reload()

        def gauges() -> tuple[dict[str, float], float | None]:
            samples = watch.metrics()
            held = {dict(labels)["server"]: v for (name, labels), v in samples.items()
                    if name == "nginxctl_backend_connections" and dict(labels)["group"] == "pool"}
            return held, samples.get(("nginxctl_group_skew", (("group", "pool"),)))

        wait_for(lambda: gauges()[0] == {a.address: 4, b.address: 4, c.address: 0}, 15, lambda: str(gauges()))
        assert gauges()[1] == pytest.approx(1.0)   # C holds none of its share of 8/3: 100% off
        d = backends("D")   # D added and B removed: its 4 clients stay on the old workers, and are counted
        g["servers"] = [a.address, c.address, d.address]
        lb.write({"pool": g})
        watch.reload()
        wait_for(lambda: gauges()[0] == {a.address: 4, b.address: 4, c.address: 0, d.address: 0}, 15,
                 lambda: str(gauges()))   # D there: read since the change; B there: removed, still held
        assert gauges()[1] == pytest.approx(2.0)   # over the up servers A, C, D: A holds 4 of a share of 4/3
    finally:
        devices.close()


@pytest.mark.integration
def test_counts_told_by_cgroup_or_uid_read_one_side_only(isolated, docker_client, tmp_path):
    """nginx's sockets told apart in the kernel by the container's cgroup (else, alone in its namespace, by its
    workers' uid): only one side's files are read (the smaller). The counts must be those of reading every
    worker's files."""
    from nginxctl.nginx import LiveNginx
    from nginxctl.pool import _sole_uid, cgroup_id, read_pool
    from nginxctl.sockdiag import in_netns

    from helpers import Backend, Held, free_port

    box = isolated()
    box.reload()
    pid = int(box.attrs["State"]["Pid"])
    a, b = in_netns(pid, lambda: (Backend("A", free_port()).start(), Backend("B", free_port()).start()))
    held: list[Held] = []
    try:
        port = free_port()
        data = {"nginx": {"worker_processes": 2}, "target": {"container": box.name},
                "upstreams": {"pool": {"listen": f"127.0.0.1:{port}", "servers": [a.address]}}}
        inventory = write_inventory(tmp_path / "inventory.yaml", data)
        assert cli("apply", "-i", str(inventory), "--reload", "-q").returncode == 0
        held += in_netns(pid, lambda: [Held(port) for _ in range(6)])
        data["upstreams"]["pool"]["servers"].append(b.address)   # the 6 go to an old generation
        write_inventory(inventory, data)
        assert cli("apply", "-i", str(inventory), "--reload", "-q").returncode == 0
        held += in_netns(pid, lambda: [Held(port) for _ in range(4)])   # 2 on A, 2 on B, current
        live = LiveNginx.attach(docker_client, box.name)
        procs = live.processes()
        assert procs.master is not None
        workers = [p.pid for p in procs.workers + procs.old_workers]
        assert cgroup_id(procs.master.pid) is not None   # the kernel filter is used here
        assert _sole_uid(workers, [procs.master.pid], procs.master.pid) is not None   # and the uid would do
        loaded = (live.read_file("/etc/nginx/nginx.conf") or b"").decode()
        by_uid = read_pool(live, loaded).group("pool")
        every_file = read_pool(live, loaded, pairs=True).group("pool")
        for pool in (by_uid, every_file):
            assert [(s.connections, s.old_connections) for s in pool] == [(8, 6), (2, 0)]
        status = json.loads(cli("status", "-i", str(inventory), "--format", "json").stdout)
        (gen,) = status["lingering_generations"]
        assert gen["connections"] == 6 and status["client_connections"] == 4
    finally:
        for h in held:
            h.close()
        a.stop()
        b.stop()


# -- the pure parts -------------------------------------------------------------------------------------------

def test_fair_shares_follow_weights_among_up_primaries():
    assert fair_shares({"A": 150, "B": 150, "C": 0}, {"A": 1, "B": 1, "C": 1}) == {"A": 100, "B": 100, "C": 100}
    assert fair_shares({"A": 100, "B": 100, "C": 0, "D": 40}, {"A": 2, "B": 1, "C": 1}) == \
        {"A": 100, "B": 50, "C": 50}   # D (down, backup or removed) has no share and is not counted
    assert fair_shares({}, {"A": 1}) == {"A": 0.0}


def test_the_minimum_of_the_issue_two_servers_of_150_and_a_third_added():
    counts, weights = {"A": 150, "B": 150, "C": 0}, {"A": 1, "B": 1, "C": 1}
    assert minimum(counts, weights, 0.10) == 90    # C lacks 90 below 100 - 10%; A and B hold 40 each above
    moves = plan(counts, weights, 0.10)
    assert moves.take == {"A": 45, "B": 45} and moves.give == {"C": 90} and moves.total == 90
    assert converged({"A": 105, "B": 105, "C": 90}, weights, 0.10)
    assert not converged({"A": 110, "B": 110, "C": 80}, weights, 0.10)


def test_a_plan_takes_from_the_furthest_above_and_never_pushes_a_server_out():
    weights = {"A": 2, "B": 1, "C": 1}
    moves = plan({"A": 100, "B": 100, "C": 0}, weights, 0.10)
    assert moves.minimum == 45 and moves.take == {"B": 45} and moves.give == {"C": 45}
    after = {s: n - moves.take.get(s, 0) + moves.give.get(s, 0) for s, n in moves.counts.items()}
    assert converged(after, weights, 0.10)
    # more above than below: the extra lands on servers under their share, none past its ceiling
    moves = plan({"A": 130, "B": 95, "C": 75}, {"A": 1, "B": 1, "C": 1}, 0.10)
    assert moves.minimum == 20 and moves.total == 20 and moves.take == {"A": 20}
    after = {s: n - moves.take.get(s, 0) + moves.give.get(s, 0) for s, n in moves.counts.items()}
    assert converged(after, {"A": 1, "B": 1, "C": 1}, 0.10)


@pytest.mark.parametrize("seed", range(40))
def test_every_plan_converges_in_exactly_the_minimum(seed):
    import random

    rng = random.Random(seed)
    weights = {f"s{i}": rng.randint(1, 4) for i in range(rng.randint(2, 6))}
    counts = {s: rng.randint(0, 300) for s in weights}
    tolerance = rng.choice([0.0, 0.05, 0.1, 0.25])
    moves = plan(counts, weights, tolerance)
    after = {s: n - moves.take.get(s, 0) + moves.give.get(s, 0) for s, n in counts.items()}
    assert moves.total == moves.minimum == minimum(counts, weights, tolerance)
    assert converged(after, weights, tolerance), (counts, weights, tolerance, after)
    assert all(counts[s] > fair_shares(counts, weights)[s] for s in moves.take)   # only over-share servers give


def test_skew_is_the_largest_relative_distance_from_the_share():
    assert skew({"A": 150, "B": 150, "C": 0}, {"A": 1, "B": 1, "C": 1}) == 1.0
    assert skew({"A": 110, "B": 100, "C": 90}, {"A": 1, "B": 1, "C": 1}) == pytest.approx(0.1)
    assert skew({}, {"A": 1}) == 0.0


def test_the_overlay_marks_only_that_groups_servers_down_and_keeps_the_rest():
    config = ("stream {\n    upstream pool {\n        zone pool 64k;\n        least_conn;\n"
              "        server 127.0.0.1:5001;\n        server 127.0.0.1:5002 weight=2;\n"
              "        server 127.0.0.1:5003 down;\n    }\n    upstream other {\n        server 127.0.0.1:5001;\n"
              "    }\n}\n")
    out = with_servers_down(config, "pool", {"127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"})
    assert [s.params for s in parse_upstreams(out)["pool"]] == [("down",), ("weight=2", "down"), ("down",)]
    assert parse_upstreams(out)["other"][0].params == ()
    assert out.replace(" down;", ";") == config.replace(" down;", ";")
    assert with_servers_down(config, "pool", set()) == config


def test_destroyed_sockets_alerts_are_not_a_failed_reload():
    lines = ["2026/12/04 19:00:00 [notice] 1#1: reconfiguring",
             "2026/12/04 19:00:00 [alert] 30#30: *12 recv() failed (103: Software caused connection abort) while "
             "proxying and reading from upstream, client: 127.0.0.1, server: 127.0.0.1:6000, upstream: "
             "\"127.0.0.1:7000\", bytes from/to client:0/0, bytes from/to upstream:0/0",
             "2026/12/04 19:00:00 [notice] 1#1: start worker process 40"]
    assert emerg_lines(lines) == []
