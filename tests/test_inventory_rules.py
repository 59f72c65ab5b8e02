"""One test per inventory rule: the exact located message for each mistake (pure core, no Docker)."""

from __future__ import annotations

import textwrap

import pytest
from nginxctl.errors import InventoryError
from nginxctl.inventory import parse_inventory


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(textwrap.dedent(text), "inventory.yaml")
    return [str(p) for p in info.value.problems]


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


GOOD = """\
upstreams:
  pool:
    listen: 6666
    servers: [127.0.0.1:7001]
"""


def test_valid_minimal_inventory_gets_defaults():
    inv = parse_inventory(GOOD, "inventory.yaml")
    group = inv.upstreams[0]
    assert (group.protocol, group.balance, str(group.proxy_timeout), str(group.zone_size)) == \
        ("tcp", "round_robin", "1h", "64k")


def test_yaml_syntax_error_is_located():
    assert one("upstreams:\n  pool: [\n") .startswith("inventory.yaml:3:1: YAML syntax error")


def test_duplicate_key_is_reported():
    msg = one("""\
        upstreams:
          pool:
            listen: 6666
            listen: 6667
            servers: [127.0.0.1:7001]
        """)
    assert msg.startswith("inventory.yaml:4:5: upstreams.pool.listen: duplicate key 'listen' (first set on line 3)")


def test_unknown_key_suggests_the_right_one():
    msg = one(GOOD.replace("    servers:", "    balanse: least_conn\n    servers:"))
    assert msg == ("inventory.yaml:4:5: upstreams.pool.balanse: unknown key 'balanse' in group 'pool'; "
                   "did you mean 'balance'?")


def test_wrong_type_names_expected_and_got():
    msg = one("""\
        upstreams:
          netty_pool:
            listen: 6666
            servers:
              - 127.0.0.1:7001
              - {address: 127.0.0.1:7002, weight: five}
        """)
    assert msg == ("inventory.yaml:6:43: upstreams.netty_pool.servers[1].weight: expected an integer >= 1 "
                   "and <= 1000, got 'five'")


def test_out_of_range_integer():
    bad = GOOD.replace("[127.0.0.1:7001]", "[{address: 127.0.0.1:7001, max_fails: -1}]")
    assert "expected an integer >= 0" in one(bad)


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000", "300.1.1.1:80", "[::1:80",
                                     "host_name:80", "unix:relative.sock", "-bad.host:80"])
def test_bad_server_address(address):
    msg = one(GOOD.replace("127.0.0.1:7001", f"'{address}'"))
    assert "upstreams.pool.servers[0]" in msg and "expected" in msg


@pytest.mark.parametrize("listen", ["0", "65536", "1.2.3:80", "[zz]:80", "unix:x"])
def test_bad_listen(listen):
    assert "upstreams.pool.listen: expected" in one(GOOD.replace("listen: 6666", f"listen: '{listen}'"))


@pytest.mark.parametrize("value", ["5 s", "1x", "s", "1m1h", "-1s", "1.5s"])
def test_bad_duration(value):
    msg = one(GOOD + f"    proxy_timeout: '{value}'\n")
    assert "upstreams.pool.proxy_timeout: expected a duration" in msg


@pytest.mark.parametrize("value", ["1s", "500ms", "10m", "1h30m", "2d", 30])
def test_good_durations(value):
    parse_inventory(GOOD + f"    proxy_timeout: {value!r}\n".replace("'", ""), "inventory.yaml")


@pytest.mark.parametrize("value", ["16 k", "16kb", "0", "1g", "k"])
def test_bad_size(value):
    assert "expected a size" in one(GOOD + f"    proxy_buffer_size: '{value}'\n")


def test_no_usable_server():
    msg = one(GOOD.replace("[127.0.0.1:7001]", "[{address: 127.0.0.1:7001, down: true}, "
                                               "{address: 127.0.0.1:7002, backup: true}]"))
    assert "upstreams.pool.servers: no usable server" in msg


def test_backups_serve_alone_only_when_allowed():
    servers = "[{address: 127.0.0.1:7001, down: true}, {address: 127.0.0.1:7002, backup: true}]"
    assert "no usable server" in one(GOOD.replace("[127.0.0.1:7001]", servers))
    parse_inventory(GOOD.replace("[127.0.0.1:7001]", servers) + "    allow_no_primary: true\n")
    only_backup = "[{address: 127.0.0.1:7002, backup: true}]"
    assert "no usable server" in one(GOOD.replace("[127.0.0.1:7001]", only_backup) + "    allow_no_primary: true\n")


def test_empty_server_list():
    assert "expected a non-empty list of servers" in one(GOOD.replace("[127.0.0.1:7001]", "[]"))


def test_same_listen_twice_across_groups():
    msg = one(GOOD + "  other:\n    listen: '*:6666'\n    servers: [127.0.0.1:7002]\n")
    assert msg.startswith("inventory.yaml:6:13: upstreams.other.listen: listen *:6666 (tcp) is already used "
                          "by group 'pool'")


def test_same_port_tcp_and_udp_is_allowed():
    parse_inventory(GOOD + "  dns:\n    listen: 6666\n    protocol: udp\n    servers: [127.0.0.1:53]\n", "x")


@pytest.mark.parametrize("balance", ["hash", "random", "random_two_least_conn"])
def test_backup_rejected_with_hash_and_random(balance):
    key = "    hash_key: $remote_addr\n" if balance == "hash" else ""
    text = GOOD.replace("[127.0.0.1:7001]", "[127.0.0.1:7001, {address: 127.0.0.1:7002, backup: true}]")
    msg = one(text + f"    balance: {balance}\n" + key)
    assert f"upstreams.pool.servers[1].backup: backup servers do not work with balance: {balance}" in msg


def test_hash_needs_hash_key():
    assert "balance: hash needs hash_key" in one(GOOD + "    balance: hash\n")


def test_hash_key_without_hash():
    assert "hash_key only applies to balance: hash" in one(GOOD + "    hash_key: $remote_addr\n")


def test_proxy_responses_on_tcp():
    assert "proxy_responses only applies to protocol: udp" in one(GOOD + "    proxy_responses: 1\n")


@pytest.mark.parametrize("key", ["so_keepalive: true", "backlog: 100", "proxy_protocol: true"])
def test_tcp_only_options_on_udp(key):
    assert "only applies to protocol: tcp" in one(GOOD + f"    protocol: udp\n    {key}\n")


def test_next_upstream_tries_without_next_upstream():
    msg = one(GOOD + "    proxy_next_upstream: false\n    proxy_next_upstream_tries: 2\n")
    assert "proxy_next_upstream_tries has no effect with proxy_next_upstream: false" in msg


def test_duplicate_server_in_a_group():
    msg = one(GOOD.replace("[127.0.0.1:7001]", "[127.0.0.1:7001, 127.0.0.1:7001]"))
    assert "server 127.0.0.1:7001 is listed twice" in msg


def test_unix_socket_path_too_long():
    assert "at most 107 bytes" in one(GOOD.replace("127.0.0.1:7001", "unix:/" + "a" * 120))


def test_bad_upstream_name():
    assert "expected an upstream name" in one(GOOD.replace("pool:", "'bad name':"))


def test_missing_required_keys():
    found = problems("upstreams:\n  pool: {protocol: tcp}\n")
    assert any("missing required key 'listen'" in p for p in found)
    assert any("missing required key 'servers'" in p for p in found)


def test_empty_file():
    assert "the inventory is empty" in one("")


def test_comments_only_file_is_empty():
    assert "the inventory is empty" in one("# nothing here\n")


def test_not_a_mapping():
    assert "expected the inventory (a mapping" in one("- a\n- b\n")


def test_defaults_apply_and_group_wins():
    inv = parse_inventory("defaults: {proxy_timeout: 5m, balance: least_conn}\n" + GOOD +
                          "  b:\n    listen: 6667\n    proxy_timeout: 1s\n    servers: [127.0.0.1:1]\n", "x")
    assert [(str(g.proxy_timeout), g.balance) for g in inv.upstreams] == [("5m", "least_conn"),
                                                                          ("1s", "least_conn")]


def test_listen_and_servers_cannot_be_defaults():
    assert "'servers' cannot be a default" in one("defaults: {servers: [127.0.0.1:1]}\n" + GOOD)


def test_all_problems_are_reported_at_once():
    found = problems("""\
        upstreams:
          a:
            listen: 99999
            servers: [nope]
          b:
            listen: 7000
            balance: hashh
            servers: [127.0.0.1:1]
        """)
    assert len(found) == 3


def test_worker_processes_must_be_auto_or_positive():
    assert "expected 'auto' or an integer >= 1" in one("nginx: {worker_processes: 0}\n" + GOOD)


def test_max_connections_beyond_fd_limit_is_an_error():
    msg = one("nginx: {worker_processes: 1, max_connections: 40000}\n" + GOOD)
    assert "beyond the open-file limit of 20000 per process: raise worker_processes to at least 7" in msg


def test_max_connections_beyond_memory_limit_is_an_error():
    msg = one("nginx: {max_connections: 100000, memory_limit: 1m, worker_processes: 16}\n" + GOOD)
    assert "beyond memory_limit" in msg


def test_digest_ignores_comments_and_layout():
    a = parse_inventory(GOOD, "x").digest
    b = parse_inventory("# comment\n" + GOOD.replace("[127.0.0.1:7001]", "\n      - 127.0.0.1:7001"), "x").digest
    assert a == b


def test_worker_connections_must_exceed_listening_sockets():
    groups = "".join(f"  g{i}:\n    listen: {7000 + i}\n    servers: [127.0.0.1:1]\n" for i in range(20))
    msg = one("nginx: {worker_connections: 20}\nupstreams:\n" + groups)
    assert "worker_connections 20 is not enough for 20 listening sockets" in msg


def test_derived_worker_connections_count_the_listening_sockets():
    groups = "".join(f"  g{i}:\n    listen: {7000 + i}\n    servers: [127.0.0.1:1]\n" for i in range(20))
    inv = parse_inventory("upstreams:\n" + groups)
    assert inv.nginx.worker_connections == 8192 + 20
    capped = parse_inventory("nginx: {max_connections: 100, worker_processes: 1}\nupstreams:\n" + groups)
    assert capped.nginx.worker_connections == 300 + 20
