"""Real `nginx -t` is the judge: generated inventories render a config nginx accepts or are refused with
located messages, and every bound the loader puts on a duration, a size or a count is nginx's own: the
value at the bound passes `nginx -t`, the value just above is refused by the loader and by nginx.

nginx runs in one container for the whole module (faster than one per example); each config is tested
by exec of its nginx binary (the image has no shell)."""

from __future__ import annotations

import io
import re
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nginxctl.errors import InventoryError
from nginxctl.inventory import grammar, parse_inventory
from nginxctl.render import render, template_env

from helpers import IMAGE

pytestmark = pytest.mark.integration

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
MAX = 2 ** 63 - 1  # NGX_MAX_INT_T_VALUE and NGX_MAX_SIZE_T_VALUE on 64-bit builds


class Box:
    """An nginx container that tests configs with its own `nginx -t`."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def test(self, config: str) -> tuple[bool, str]:
        data = config.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("candidate.conf")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        assert self.container.put_archive("/tmp", buf.getvalue())
        result = self.container.exec_run(["nginx", "-t", "-c", "/tmp/candidate.conf"])
        return result.exit_code == 0, result.output.decode(errors="replace")


@pytest.fixture(scope="module")
def box(docker_client: Any) -> Iterator[Box]:
    container = docker_client.containers.run(
        IMAGE, name=f"nginxctl-prop-{uuid.uuid4().hex[:8]}", detach=True, network_mode="none",
        sysctls={"net.ipv4.ip_nonlocal_bind": "1", "net.ipv6.ip_nonlocal_bind": "1"})
    try:
        yield Box(container)
    finally:
        container.remove(force=True)


def full_config(text: str) -> str:
    return render(parse_inventory(text, "inventory.yaml"), template_env(), full=True, modules=(STREAM_MODULE,))


# --- generated inventories ---------------------------------------------------------------------------------

ADDRESSES = ["127.0.0.1:7001", "127.0.0.2:7002", "localhost:7003", "[::1]:7004", "unix:/run/s.sock",
             "10.0.0.5:6666", "127.0.0.1:0", "bad host:1", "127.0.0.1", "300.0.0.1:80", "a;b:80", 7,
             "127.0.0.1:７001", "[::1%eth0]:80"]
DURATIONS = ["1s", "500ms", "10m", "1h30m", 30, "5", "0", "5 s", "1x", "-1s", True, "1y", "1M", "3w",
             "9223372036854775807ms", "9223372036854775808ms", "99999999999999999999s", "３s"]
SECONDS = ["30s", 10, "1y", "500ms", "292471208677y6M2w1d15h30m7s", "292471208677y6M2w1d15h30m8s"]
SIZES = ["4k", "16k", "1m", 8192, "16kb", "0", "9223372036854775807", "9223372036854775808", "8796093022208m"]
ZONES = ["32k", "64k", "1m", "32767", "16k"]
COUNTS = [0, 2, MAX, MAX + 1]
BALANCES = ["round_robin", "least_conn", "hash", "random", "random_two_least_conn", "fastest"]

server = st.one_of(
    st.sampled_from(ADDRESSES),
    st.fixed_dictionaries({"address": st.sampled_from(ADDRESSES)}, optional={
        "weight": st.sampled_from([1, 3, 0, "five", "３"]), "max_fails": st.sampled_from([0, 3, -1, MAX, MAX + 1]),
        "fail_timeout": st.sampled_from(SECONDS), "max_conns": st.sampled_from([0, 100, MAX, MAX + 1]),
        "backup": st.booleans(), "down": st.booleans()}),
)
group = st.fixed_dictionaries(
    {"listen": st.one_of(st.integers(min_value=20000, max_value=20100),
                         st.sampled_from(["127.0.0.1:20200", "[::1]:20201", "10.9.8.7:20202", "*:20203",
                                          "unix:/run/l.sock", "0", "x:1", "２0204"])),
     "servers": st.lists(server, min_size=1, max_size=4)},
    optional={"protocol": st.sampled_from(["tcp", "udp", "sctp"]), "balance": st.sampled_from(BALANCES),
              "hash_key": st.sampled_from(["$remote_addr", "$remote_addr:$server_port", "$nope", "a b"]),
              "consistent": st.booleans(), "proxy_timeout": st.sampled_from(DURATIONS),
              "proxy_connect_timeout": st.sampled_from(DURATIONS), "proxy_buffer_size": st.sampled_from(SIZES),
              "zone_size": st.sampled_from(ZONES), "proxy_responses": st.sampled_from([1, 2, MAX, MAX + 1]),
              "reuseport": st.booleans(), "so_keepalive": st.booleans(), "backlog": st.sampled_from([128, 0]),
              "proxy_next_upstream": st.booleans(), "proxy_next_upstream_tries": st.sampled_from(COUNTS),
              "proxy_next_upstream_timeout": st.sampled_from(DURATIONS),
              "proxy_protocol": st.booleans(), "proxy_socket_keepalive": st.booleans()})
inventories = st.fixed_dictionaries(
    {"upstreams": st.dictionaries(st.sampled_from(["pool", "dns", "db", "a-b", "_x", "9bad"]), group,
                                  min_size=1, max_size=3)},
    optional={"nginx": st.fixed_dictionaries({}, optional={
        "worker_processes": st.sampled_from(["auto", 2, 0]),
        "worker_shutdown_timeout": st.sampled_from(DURATIONS),
        "max_connections": st.sampled_from([100, 10000, 10 ** 7])})})


def resolves(doc: Any, path: str) -> bool:
    """Whether a key path such as `upstreams.pool.servers[1].weight` names a value of the document."""
    node = doc
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        if index:
            if not isinstance(node, list) or int(index) >= len(node):
                return False
            node = node[int(index)]
        else:
            if not isinstance(node, dict) or name not in node:
                return False
            node = node[name]
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=inventories)
def test_generated_inventory_renders_what_nginx_accepts_or_is_refused_located(box: Box, doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        inv = parse_inventory(text, "inventory.yaml")
    except InventoryError as exc:
        event("refused by the loader")
        lines = text.count("\n") + 1
        for problem in exc.problems:  # each names a line of the file and a key path that exists in it
            assert problem.location.line is not None and 1 <= problem.location.line <= lines, str(problem)
            assert resolves(doc, problem.path), str(problem)
        return
    config = render(inv, template_env(), full=True, modules=(STREAM_MODULE,))
    accepted, output = box.test(config)
    event("accepted by nginx -t")
    assert accepted, f"{text}\n---\n{config}\n---\n{output}"


# --- nginx's limits, at the bound and just above -----------------------------------------------------------

GOOD = "upstreams:\n  pool:\n    listen: 6666\n    servers: [127.0.0.1:7001]\n"
UDP = "upstreams:\n  pool:\n    listen: 6666\n    protocol: udp\n    servers: [127.0.0.1:7001]\n"


def group_key(key: str, base: str = GOOD) -> Any:
    return lambda value: base + f"    {key}: {value}\n"


def server_key(key: str) -> Any:
    return lambda value: GOOD.replace("[127.0.0.1:7001]", f"[{{address: 127.0.0.1:7001, {key}: {value}}}]")


def nginx_key(key: str) -> Any:
    return lambda value: f"nginx: {{{key}: {value}}}\n" + GOOD


# (inventory for a value, the value at nginx's bound, the value just above it, the rendered form of both)
BOUNDS = {
    "proxy_timeout ms": (group_key("proxy_timeout"), "9223372036854775807ms", "9223372036854775808ms"),
    "proxy_timeout s": (group_key("proxy_timeout"), "9223372036854775s", "9223372036854776s"),
    "proxy_timeout bare": (group_key("proxy_timeout"), "9223372036854775", "9223372036854776"),
    "proxy_timeout mixed": (group_key("proxy_timeout"), "15250284452w3d7h12m55s807ms", "15250284452w3d7h12m55s808ms"),
    "proxy_connect_timeout": (group_key("proxy_connect_timeout"), "15250284452w", "15250284453w"),
    "proxy_next_upstream_timeout": (group_key("proxy_next_upstream_timeout"), "106751991167d", "106751991168d"),
    "worker_shutdown_timeout": (nginx_key("worker_shutdown_timeout"), "2562047788015h", "2562047788016h"),
    "fail_timeout": (server_key("fail_timeout"), "292471208677y6M2w1d15h30m7s", "292471208677y6M2w1d15h30m8s"),
    "fail_timeout bare": (server_key("fail_timeout"), str(MAX), str(MAX + 1)),
    "proxy_buffer_size": (group_key("proxy_buffer_size"), str(MAX), str(MAX + 1)),
    "proxy_buffer_size k": (group_key("proxy_buffer_size"), "9007199254740991k", "9007199254740992k"),
    "proxy_buffer_size m": (group_key("proxy_buffer_size"), "8796093022207m", "8796093022208m"),
    "max_conns": (server_key("max_conns"), str(MAX), str(MAX + 1)),
    "max_fails": (server_key("max_fails"), "1000", "1001"),  # ours: nginx takes more, but 1000 is plenty
    "proxy_next_upstream_tries": (group_key("proxy_next_upstream_tries"), str(MAX), str(MAX + 1)),
    "proxy_responses": (group_key("proxy_responses", UDP), str(MAX), str(MAX + 1)),
}
# nginx's own bounds, as opposed to ones nginxctl chose tighter
NGINX_REFUSES_ABOVE = set(BOUNDS) - {"max_fails"}


@pytest.mark.parametrize("case", sorted(BOUNDS))
def test_the_bound_is_nginx_own(box: Box, case: str) -> None:
    inventory, at, above = BOUNDS[case]
    config = full_config(inventory(at))
    accepted, output = box.test(config)
    assert accepted, f"{case} {at}: {output}"
    with pytest.raises(InventoryError) as info:
        parse_inventory(inventory(above), "inventory.yaml")
    assert [p.location.line for p in info.value.problems] != [None]
    assert "expected" in str(info.value) and above in str(info.value)
    if case in NGINX_REFUSES_ABOVE:  # the same config with the value just above: nginx refuses it too
        rendered_at = at + "s" if at.isdigit() and "timeout" in case else at  # nginx reads a bare time as s
        assert config.count(rendered_at) == 1, config
        accepted, output = box.test(config.replace(rendered_at, above))
        assert not accepted, f"{case}: nginx took {above}"


def test_the_smallest_zone_is_nginx_own(box: Box) -> None:
    assert box.test(full_config(GOOD + "    zone_size: 32k\n"))[0]
    accepted, output = box.test(full_config(GOOD + "    zone_size: 32k\n").replace("32k;", "32767;"))
    assert not accepted and 'zone "pool" is too small' in output
    with pytest.raises(InventoryError, match="expected a size of at least 32k"):
        parse_inventory(GOOD + "    zone_size: 32767\n")


def test_y_and_m_units_nginx_refuses_in_millisecond_times(box: Box) -> None:
    config = full_config(GOOD + "    proxy_timeout: 1w\n")
    for unit in ("1y", "1M"):
        assert not box.test(config.replace("proxy_timeout 1w;", f"proxy_timeout {unit};"))[0]
        with pytest.raises(InventoryError, match="nginx takes no y or M in this one"):
            parse_inventory(GOOD + f"    proxy_timeout: {unit}\n")
    fail = full_config(server_key("fail_timeout")("1y"))
    assert box.test(fail)[0]
    assert not box.test(fail.replace("fail_timeout=1y", "fail_timeout=500ms"))[0]


UNITS_MS = list(grammar.MS_UNITS.items())


@st.composite
def durations(draw: Any) -> str:
    """Durations in nginx's grammar, each part either small or near the largest value of its unit."""
    parts = draw(st.lists(st.sampled_from(range(len(UNITS_MS))), min_size=1, max_size=3, unique=True))
    out = ""
    for i in sorted(parts):
        unit, scale = UNITS_MS[i]
        top = MAX // scale
        out += f"{draw(st.one_of(st.integers(0, 1000), st.integers(max(0, top - 2), top + 2)))}{unit}"
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=durations())
def test_the_loader_takes_a_duration_exactly_when_nginx_does(box: Box, value: str) -> None:
    config = full_config(GOOD + "    proxy_timeout: 4321s\n").replace("proxy_timeout 4321s;", f"proxy_timeout {value};")
    try:
        grammar.parse_duration(value)
        loads = True
    except grammar.Invalid:
        loads = False
    event("within the bound" if loads else "beyond the bound")
    assert box.test(config)[0] == loads, value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unit=st.sampled_from(["", "k", "m"]), offset=st.integers(-3, 3))
def test_the_loader_takes_a_size_exactly_when_nginx_does(box: Box, unit: str, offset: int) -> None:
    value = f"{MAX // grammar.SIZE_UNITS[unit] + offset}{unit}"
    config = full_config(GOOD + "    proxy_buffer_size: 4321\n").replace("proxy_buffer_size 4321;",
                                                                          f"proxy_buffer_size {value};")
    try:
        grammar.parse_size(value)
        loads = True
    except grammar.Invalid:
        loads = False
    assert box.test(config)[0] == loads, value
