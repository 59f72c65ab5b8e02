"""Generated inventories: each one renders a config that real `nginx -t` accepts, or is rejected with
exit code 2 and a located message. nginx runs in one container for the whole test (faster than one
per example); each config is tested by exec of its nginx binary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nginxctl.errors import InventoryError
from nginxctl.inventory import parse_inventory
from nginxctl.nginx import LiveNginx
from nginxctl.render import render, template_env

from helpers import IMAGE

ADDRESSES = ["127.0.0.1:7001", "127.0.0.2:7002", "localhost:7003", "[::1]:7004", "unix:/run/s.sock",
             "10.0.0.5:6666", "127.0.0.1:0", "bad host:1", "127.0.0.1", "300.0.0.1:80", "a;b:80", 7]
DURATIONS = ["1s", "500ms", "10m", "1h30m", 30, "5 s", "1x", "-1s", True]
SIZES = ["4k", "16k", "1m", 8192, "16kb", "0"]
BALANCES = ["round_robin", "least_conn", "hash", "random", "random_two_least_conn", "fastest"]

server = st.one_of(
    st.sampled_from(ADDRESSES),
    st.fixed_dictionaries({"address": st.sampled_from(ADDRESSES)}, optional={
        "weight": st.sampled_from([1, 3, 0, "five"]), "max_fails": st.sampled_from([0, 3, -1]),
        "fail_timeout": st.sampled_from(DURATIONS), "max_conns": st.sampled_from([0, 100]),
        "backup": st.booleans(), "down": st.booleans()}),
)
group = st.fixed_dictionaries(
    {"listen": st.one_of(st.integers(min_value=20000, max_value=20100),
                         st.sampled_from(["127.0.0.1:20200", "[::1]:20201", "10.9.8.7:20202", "*:20203",
                                          "unix:/run/l.sock", "0", "x:1"])),
     "servers": st.lists(server, min_size=1, max_size=4)},
    optional={"protocol": st.sampled_from(["tcp", "udp", "sctp"]), "balance": st.sampled_from(BALANCES),
              "hash_key": st.sampled_from(["$remote_addr", "$remote_addr:$server_port", "$nope", "a b"]),
              "consistent": st.booleans(), "proxy_timeout": st.sampled_from(DURATIONS),
              "proxy_connect_timeout": st.sampled_from(DURATIONS), "proxy_buffer_size": st.sampled_from(SIZES),
              "proxy_responses": st.sampled_from([1, 2]), "reuseport": st.booleans(),
              "so_keepalive": st.booleans(), "backlog": st.sampled_from([128, 0]),
              "proxy_next_upstream": st.booleans(), "proxy_next_upstream_tries": st.sampled_from([0, 2]),
              "proxy_protocol": st.booleans(), "proxy_socket_keepalive": st.booleans()})
inventories = st.fixed_dictionaries(
    {"upstreams": st.dictionaries(st.sampled_from(["pool", "dns", "db", "a-b", "_x", "9bad"]), group,
                                  min_size=1, max_size=3)},
    optional={"nginx": st.fixed_dictionaries({}, optional={
        "worker_processes": st.sampled_from(["auto", 2, 0]),
        "worker_shutdown_timeout": st.sampled_from(DURATIONS),
        "max_connections": st.sampled_from([100, 10000, 10 ** 7])})})


@pytest.fixture(scope="module")
def nginx_box(docker_client: Any) -> Iterator[LiveNginx]:
    container = docker_client.containers.run(
        IMAGE, name=f"nginxctl-prop-{uuid.uuid4().hex[:8]}", detach=True, network_mode="none",
        sysctls={"net.ipv4.ip_nonlocal_bind": "1", "net.ipv6.ip_nonlocal_bind": "1"})
    try:
        container.reload()
        yield LiveNginx(docker_client, container)
    finally:
        container.remove(force=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=inventories)
def test_generated_inventory_renders_what_nginx_accepts_or_is_rejected_located(nginx_box, doc):
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        inv = parse_inventory(text, "inventory.yaml")
    except InventoryError as exc:
        event("rejected")
        assert exc.exit_code == 2
        assert exc.problems and all(p.location.line is not None for p in exc.problems), str(exc)
        return
    config = render(inv, template_env(), full=True,
                    modules=("/usr/lib/nginx/modules/ngx_stream_module.so",))
    nginx_box.put_files("/tmp", {"candidate.conf": config})
    result = nginx_box.exec(["-t", "-c", "/tmp/candidate.conf"])
    event("accepted by nginx -t")
    assert result.exit_code == 0, f"{text}\n---\n{config}\n---\n{result.output}"
