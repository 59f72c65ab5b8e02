"""One test per inventory rule: the exact located message for each mistake (pure core, no Docker)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from nginxctl.capacity import Machine
from nginxctl.errors import InventoryError
from nginxctl.inventory import parse_inventory
from nginxctl.inventory.yamlsource import MAX_BYTES
from nginxctl.render import render, template_env


def problems(text: str, machine: Machine | None = None) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(textwrap.dedent(text), "inventory.yaml", machine=machine)
    return [str(p) for p in info.value.problems]


def one(text: str, machine: Machine | None = None) -> str:
    found = problems(text, machine)
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
    assert one("- a\n- b\n") == "inventory.yaml:1:1: expected a mapping with an 'upstreams:' key, got a list"


@pytest.mark.parametrize(("text", "expected"), [
    ("defaults: 5\n" + GOOD, "inventory.yaml:1:11: defaults: expected a mapping, got 5"),
    ("nginx: 5\n" + GOOD, "inventory.yaml:1:8: nginx: expected a mapping, got 5"),
    ("target: 5\n" + GOOD, "inventory.yaml:1:9: target: expected a mapping, got 5"),
    ("target: false\n" + GOOD, "inventory.yaml:1:9: target: expected a mapping, got false"),
    ("nginx: [1]\n" + GOOD, "inventory.yaml:1:8: nginx: expected a mapping, got a list"),
    ("defaults: text\n" + GOOD, "inventory.yaml:1:11: defaults: expected a mapping, got 'text'"),
    ("upstreams:\n  pool: 5\n", "inventory.yaml:2:9: upstreams.pool: expected a mapping, got 5"),
    ("upstreams: 5\n", "inventory.yaml:1:12: upstreams: expected a mapping of NAME: group with at least one "
                       "group, got 5"),
    (GOOD.replace("[127.0.0.1:7001]", "[5]"), "inventory.yaml:4:15: upstreams.pool.servers[0]: expected a "
                                               "server address or a mapping, got 5"),
    (GOOD + "    vars: 5\n", "inventory.yaml:5:11: upstreams.pool.vars: expected a mapping of NAME: VALUE "
                            "(values for custom templates), got 5"),
    ("vars: [a]\n" + GOOD, "inventory.yaml:1:7: vars: expected a mapping of NAME: VALUE (values for custom "
                           "templates), got a list"),
    ("5\n", "inventory.yaml:1:1: expected a mapping with an 'upstreams:' key, got 5"),
])
def test_a_non_mapping_where_a_mapping_belongs_is_located(text, expected):
    assert one(text) == expected


def test_empty_sections_are_empty_mappings():
    parse_inventory("defaults:\nnginx:\ntarget:\n" + GOOD)


@pytest.mark.parametrize("value", [5, "x", [], {}, None, True, 1.5, [1], {"a": 1}, "３"])
@pytest.mark.parametrize("where", ["defaults", "nginx", "target", "upstreams", "upstreams.pool",
                                   "upstreams.pool.servers", "upstreams.pool.servers[0]", "upstreams.pool.listen",
                                   "upstreams.pool.vars", "vars", "nginx.worker_processes", "target.container",
                                   "upstreams.pool.servers[0].address", "upstreams.pool.zone_size",
                                   "upstreams.pool.proxy_timeout", "upstreams.pool.hash_key"])
def test_any_value_anywhere_loads_or_is_a_located_error(where, value):
    """Never a traceback: every value of every type, in every place, is accepted or refused with a line."""
    doc: dict = {"upstreams": {"pool": {"listen": 6666, "servers": [{"address": "127.0.0.1:7001"}]}}}
    *parents, last = where.replace("[0]", ".0").split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    try:
        parse_inventory(yaml.safe_dump(doc), "inventory.yaml")
    except InventoryError as exc:
        assert exc.problems and all(p.location.line for p in exc.problems)


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


@pytest.mark.parametrize("value", [513, 100000, 2 ** 63])
def test_worker_processes_beyond_what_nginx_can_run_and_reload_is_refused_located(value):
    assert one(f"nginx: {{worker_processes: {value}}}\n" + GOOD) == (
        "inventory.yaml:1:27: nginx.worker_processes: expected 'auto' or an integer >= 1 and <= 512 (nginx runs at "
        "most 1024 processes, and a reload starts the new workers before the old ones leave), got " + str(value))
    assert parse_inventory("nginx: {worker_processes: 512}\n" + GOOD).nginx.worker_processes == 512


def test_derived_workers_beyond_what_nginx_can_run_are_refused_without_a_machine_too():
    assert one("nginx: {max_connections: 10000000}\n" + GOOD) == (
        "inventory.yaml:1:26: nginx.max_connections: max_connections 10000000 needs 1505 workers at 20000 open files "
        "per process, beyond the 512 nginx can run and reload: lower max_connections, or raise fd_limit if the host "
        "allows more")


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


# --- untrusted text: alias bombs, size, nesting ---

def alias_bomb(levels: int) -> str:
    """A "billion laughs": each level repeats the one above 10 times, so `levels` 9 is 10^9 values."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + GOOD


def test_an_alias_bomb_is_refused_before_it_expands():
    bomb = alias_bomb(9)
    assert len(bomb) < 1000
    assert one(bomb) == ("inventory.yaml:6:5: expected at most 1,000,000 values once YAML aliases are expanded, "
                         "got more from here: each *name repeats all that &name marks, and nested aliases multiply "
                         "(an alias bomb)")


def test_a_merge_key_bomb_is_refused_before_it_expands():
    lines = ["m0: &m0 {a: 1, b: 2}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}" for i in range(1, 30)]
    assert "expected at most 1,000,000 values once YAML aliases are expanded" in one("\n".join(lines) + "\n" + GOOD)


def test_aliases_within_the_limit_load():
    inv = parse_inventory("upstreams:\n  a: {listen: 1, servers: &s [127.0.0.1:7001, 127.0.0.1:7002]}\n"
                          "  b: {listen: 2, servers: *s}\n")
    assert [len(g.servers) for g in inv.upstreams] == [2, 2]


def test_a_recursive_alias_is_refused():
    assert one("x: &x [*x]\n" + GOOD) == ("inventory.yaml:1:4: expected a tree, got an alias to a node that "
                                          "contains it (a recursive structure)")


def test_deep_nesting_is_refused():
    assert one("x: " + "[" * 70 + "]" * 70 + "\n" + GOOD) == \
        "inventory.yaml:1:68: expected at most 64 levels of nesting, got more"


def test_a_file_beyond_the_size_limit_is_refused():
    text = GOOD + "# " + "x" * MAX_BYTES + "\n"
    assert one(text) == \
        f"inventory.yaml:1:1: expected a file of at most 8,388,608 bytes (8 MiB), got {len(text):,} bytes"


def test_an_integer_of_more_digits_than_python_converts_is_refused_located():
    assert one(GOOD + "    backlog: " + "9" * 5000 + "\n").startswith(
        "inventory.yaml:5:14: upstreams.pool.backlog: expected an integer >= 1 and <= 65535, got '99999")


def test_merge_keys_override_without_a_duplicate_key_error():
    inv = parse_inventory("upstreams:\n  a: &base {listen: 1, balance: least_conn, servers: [127.0.0.1:1]}\n"
                          "  b:\n    <<: *base\n    listen: 2\n    balance: random\n", "x")
    assert [(g.balance, g.listen[0].port) for g in inv.upstreams] == [("least_conn", 1), ("random", 2)]
    assert "duplicate key 'listen'" in one("upstreams:\n  a: &base {listen: 1, servers: [127.0.0.1:1]}\n"
                                           "  b:\n    <<: *base\n    listen: 2\n    listen: 3\n")


LOADERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])


@pytest.fixture(params=LOADERS, ids=lambda loader: loader.__name__)
def loader(request, monkeypatch):
    """Each YAML parser the loader may use: libyaml's when PyYAML has it, else PyYAML's own."""
    from nginxctl.inventory import yamlsource

    monkeypatch.setattr(yamlsource, "yaml_loader", lambda: request.param)
    return request.param


# YAML 1.1 reads these plain keys as booleans, null or numbers; a name is what the user wrote.
@pytest.mark.parametrize("name", ["yes", "no", "on", "off", "y", "n", "true", "False", "null", "Null", "NULL"])
def test_a_group_name_yaml_reads_as_a_boolean_or_null_is_the_text_written(loader, name):
    inv = parse_inventory(f"upstreams:\n  {name}: {{listen: 6666, servers: [127.0.0.1:7001]}}\n"
                          f"  pool: {{listen: 6667, servers: [127.0.0.1:7002]}}\n", "inventory.yaml")
    assert [g.name for g in inv.upstreams] == [name, "pool"]
    assert f"upstream {name} {{" in render(inv, template_env())


def test_names_are_taken_as_written_in_every_mapping_of_names(loader):
    inv = parse_inventory("vars: {on: x, No: y}\nupstreams:\n  pool:\n    listen: 6666\n"
                          "    servers: [127.0.0.1:7001]\n    vars: {off: z}\n", "inventory.yaml")
    assert inv.vars == {"on": "x", "No": "y"} and inv.upstreams[0].vars == {"off": "z"}


@pytest.mark.parametrize("name", ["1", "0x1f", "1.5", "~", "2024-01-01"])
def test_a_group_name_yaml_reads_as_a_number_or_null_is_refused_as_written_and_located(loader, name):
    found = one(f"upstreams:\n  {name}: {{listen: 6666, servers: [127.0.0.1:7001]}}\n")
    assert found.startswith(f"inventory.yaml:2:3: upstreams.{name}: expected an upstream name: a letter or "
                            f"'_' then letters, digits, '_' or '-' (at most 63), got '{name}'"), found


def test_duplicate_names_are_compared_as_written(loader):
    """`yes` and `true` are one key in YAML 1.1 (both True), two names here; `pool` twice is a duplicate."""
    inv = parse_inventory("upstreams:\n  yes: {listen: 1, servers: [127.0.0.1:1]}\n"
                          "  true: {listen: 2, servers: [127.0.0.1:1]}\n", "inventory.yaml")
    assert [g.name for g in inv.upstreams] == ["yes", "true"]
    assert "duplicate key 'yes'" in one("upstreams:\n  yes: {listen: 1, servers: [127.0.0.1:1]}\n"
                                        "  'yes': {listen: 2, servers: [127.0.0.1:1]}\n")


def test_a_merge_of_something_else_than_a_mapping_is_located():
    assert one(GOOD + "    <<: 5\n") == ("inventory.yaml:5:9: upstreams.pool: expected a mapping (or a list of "
                                     "mappings) after '<<', got '5'")


# --- bounds: nginx's own limits (tests/test_property.py checks them against nginx -t) ---

MAX_MS = "15250284452w3d7h12m55s807ms"  # 2^63 - 1 ms
MAX_S = "292471208677y6M2w1d15h30m7s"  # 2^63 - 1 s


@pytest.mark.parametrize(("key", "value"), [
    ("proxy_timeout", MAX_MS), ("proxy_timeout", "9223372036854775807ms"), ("proxy_timeout", 9223372036854775),
    ("proxy_connect_timeout", "9223372036854775s"), ("proxy_next_upstream_timeout", "0"),
    ("proxy_buffer_size", "9223372036854775807"), ("proxy_buffer_size", "9007199254740991k"),
    ("proxy_buffer_size", "8796093022207m"), ("zone_size", "32k"), ("zone_size", 32768),
])
def test_values_at_nginx_limits_load(key, value):
    parse_inventory(GOOD + f"    {key}: {value}\n", "inventory.yaml")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("proxy_timeout", "99999999999999999999s", "a duration of at most 9223372036854775807ms (nginx's limit, about "
                                               "292 million years), got '99999999999999999999s'"),
    ("proxy_timeout", "15250284452w3d7h12m55s808ms", "a duration of at most 9223372036854775807ms"),
    ("proxy_connect_timeout", "9223372036854776s", "a duration of at most 9223372036854775807ms"),
    ("proxy_next_upstream_timeout", 9223372036854776, "a duration of at most 9223372036854775807ms"),
    ("proxy_timeout", "1y", "a duration such as 30s, 500ms, 10m, 1h30m or a number of seconds (units w d h m s ms, "
                            "largest first; nginx takes no y or M in this one), got '1y'"),
    ("proxy_timeout", "1M", "a duration such as 30s, 500ms, 10m, 1h30m or a number of seconds (units w d h m s ms, "
                            "largest first; nginx takes no y or M in this one), got '1M'"),
    ("proxy_buffer_size", "9223372036854775808", "a size of at most 9223372036854775807 bytes (nginx's limit; k and "
                                                 "m units only), got 9223372036854775808"),
    ("proxy_buffer_size", "9007199254740992k", "a size of at most 9223372036854775807 bytes"),
    ("proxy_buffer_size", "8796093022208m", "a size of at most 9223372036854775807 bytes"),
    ("proxy_buffer_size", "1g", "a size such as 16k, 1m or a number of bytes, got '1g'"),
    ("zone_size", "32767", "a size of at least 32k (nginx refuses a zone smaller than 8 memory pages), got 32767"),
    ("proxy_next_upstream_tries", 2 ** 63, "an integer >= 0 and <= 9223372036854775807, got 9223372036854775808"),
])
def test_values_beyond_nginx_limits_are_refused(key, value, expected):
    msg = one(GOOD + f"    {key}: {value}\n")
    assert msg.startswith(f"inventory.yaml:5:{len(key) + 7}: upstreams.pool.{key}: expected {expected}"), msg


def test_fail_timeout_is_whole_seconds_up_to_nginx_limit():
    parse_inventory(GOOD.replace("[127.0.0.1:7001]", f"[{{address: 127.0.0.1:7001, fail_timeout: {MAX_S}}}]"))
    assert one(GOOD.replace("[127.0.0.1:7001]", "[{address: 127.0.0.1:7001, fail_timeout: 500ms}]")) == (
        "inventory.yaml:4:55: upstreams.pool.servers[0].fail_timeout: expected a duration in whole seconds such as "
        "10s, 1m, 2h or a number of seconds (units y M w d h m s, largest first; nginx reads this one in seconds, "
        "so no ms), got '500ms'")
    beyond = "[{address: 127.0.0.1:7001, fail_timeout: 292471208677y6M2w1d15h30m8s}]"
    assert one(GOOD.replace("[127.0.0.1:7001]", beyond)).endswith(
        "expected a duration of at most 9223372036854775807s (nginx's limit), got '292471208677y6M2w1d15h30m8s'")


def test_max_conns_beyond_nginx_limit_is_refused():
    assert one(GOOD.replace("[127.0.0.1:7001]", "[{address: 127.0.0.1:7001, max_conns: 9223372036854775808}]")) == (
        "inventory.yaml:4:52: upstreams.pool.servers[0].max_conns: expected an integer >= 0 and <= "
        "9223372036854775807, got 9223372036854775808")


# --- ASCII digits only ---

def test_a_non_ascii_digit_in_a_port_is_refused():
    assert one(GOOD.replace("[127.0.0.1:7001]", '["127.0.0.1:３0402"]')) == (
        "inventory.yaml:4:15: upstreams.pool.servers[0]: expected a port from 1 to 65535, got '３0402'")


@pytest.mark.parametrize(("key", "value"), [
    ("listen", "'６６６６'"), ("listen", "'127.0.0.1:６６６６'"), ("proxy_timeout", "'３0s'"),
    ("proxy_timeout", "'５'"),
    ("proxy_buffer_size", "'１6k'"), ("zone_size", "'６4k'"), ("proxy_timeout", "'²s'"), ("listen", "'²'"),
])
def test_non_ascii_digits_are_refused_everywhere(key, value):
    text = GOOD.replace("listen: 6666", f"listen: {value}") if key == "listen" else GOOD + f"    {key}: {value}\n"
    msg = one(text)
    assert f"upstreams.pool.{key}: expected" in msg and msg.startswith("inventory.yaml:"), msg


def test_weight_in_non_ascii_digits_is_refused():
    assert one(GOOD.replace("[127.0.0.1:7001]", "[{address: 127.0.0.1:7001, weight: '５'}]")) == (
        "inventory.yaml:4:49: upstreams.pool.servers[0].weight: expected an integer >= 1 and <= 1000, got '５'")


def test_an_ipv6_scope_is_refused():
    assert "no %scope after an IPv6 address" in one(GOOD.replace("[127.0.0.1:7001]", "['[::1%;]:80']"))


# --- durations: one parser, bare numbers are seconds ---

@pytest.mark.parametrize(("value", "rendered"), [("'5'", "5s"), ("5", "5s"), ("0", "0s"), ("'0'", "0s"),
                                                 ("1h30m", "1h30m"), ("500ms", "500ms")])
def test_durations_with_units_and_bare_seconds(value, rendered):
    assert str(parse_inventory(GOOD + f"    proxy_timeout: {value}\n").upstreams[0].proxy_timeout) == rendered


# --- capacity against the machine nginx runs on ---

SMALL = Machine(cpus=2, memory_bytes=4 * 1024 ** 3)


def test_an_intent_beyond_the_machine_is_refused():
    found = problems("nginx: {max_connections: 10000000}\n" + GOOD, machine=SMALL)
    assert found == [
        "inventory.yaml:1:26: nginx.max_connections: max_connections 10000000 needs 1505 workers at 20000 open "
        "files per process; this machine has 2 CPU(s), so nginxctl runs at most 8 workers (4 per CPU, at least 4): "
        "lower max_connections, raise fd_limit if the host allows more, or set worker_processes yourself",
        "inventory.yaml:1:26: nginx.max_connections: max_connections 10000000 with 16k buffers needs up to 327148 MiB "
        "of worker memory (plus 64 KiB of shared zones), beyond the 4096 MiB of memory of the machine nginx runs on: "
        "set nginx.workload: idle (4k buffers) or a smaller proxy_buffer_size, lower max_connections, or set "
        "nginx.memory_limit to the memory nginx may really use"]


def test_without_a_machine_only_the_inventory_limits_apply():
    inv = parse_inventory("nginx: {max_connections: 1000000}\n" + GOOD)
    assert inv.nginx.worker_processes == 151
    assert inv.nginx.notes[0] == ("max_connections 1000000 needs 2000000 sockets; at 20000 open files per process "
                                  "that is 151 workers (worker_processes 151)")


def test_the_worker_bound_is_four_per_cpu_and_at_least_four():
    assert [Machine(cpus, 1).max_workers for cpus in (1, 2, 3, 16)] == [4, 8, 12, 64]
    fits = parse_inventory("nginx: {max_connections: 50000}\n" + GOOD, machine=SMALL)
    assert (fits.nginx.worker_processes, fits.nginx.notes[0].endswith("at most 8 workers (4 per CPU, at least 4)")) \
        == (8, True)
    msg = one("nginx: {max_connections: 60000}\n" + GOOD, machine=SMALL)
    assert msg.startswith("inventory.yaml:1:26: nginx.max_connections: max_connections 60000 needs 10 workers")


def test_explicit_worker_processes_are_not_bounded_by_the_machine():
    inv = parse_inventory("nginx: {max_connections: 60000, worker_processes: 10, workload: idle}\n" + GOOD,
                          machine=SMALL)
    assert inv.nginx.worker_processes == 10


def test_memory_limit_wins_over_the_machine_memory():
    text = "nginx: {max_connections: 200000, worker_processes: 32, memory_limit: 8192m}\n" + GOOD
    assert parse_inventory(text, machine=SMALL).nginx.max_connections == 200000
    assert "beyond the 4096 MiB of memory of the machine" in one(text.replace(", memory_limit: 8192m", ""),
                                                                  machine=SMALL)


def test_a_group_intent_beyond_the_machine_is_located_at_the_group():
    found = problems(GOOD + "    max_connections: 10000000\n", machine=SMALL)
    assert len(found) == 2
    assert found[0].startswith("inventory.yaml:5:22: upstreams.pool.max_connections: max_connections 10000000 needs "
                               "1505 workers")
    assert found[1].startswith("inventory.yaml:5:22: upstreams.pool.max_connections: max_connections 10000000 with "
                               "16k buffers needs up to 327148 MiB")


def test_zones_beyond_the_machine_memory_are_refused_at_the_biggest():
    text = GOOD + "    zone_size: 8192m\n  small:\n    listen: 6667\n    servers: [127.0.0.1:1]\n"
    assert one(text, machine=SMALL) == (
        "inventory.yaml:5:16: upstreams.pool.zone_size: the groups' shared zones need 8192 MiB, beyond the 4096 MiB "
        "of memory of the machine nginx runs on: lower zone_size, or set nginx.memory_limit to the memory nginx may "
        "really use")
    parse_inventory(text)  # no machine: nothing to compare with


def test_a_yaml_base_60_number_is_not_silently_a_duration():
    found = one(GOOD.replace("[127.0.0.1:7001]", "[127.0.0.1:7001]\n    proxy_timeout: 1:30"))
    assert "upstreams.pool.proxy_timeout" in found and "got '1:30'" in found, found


def test_a_discovering_group_needs_no_servers_but_etcd_needs_endpoints():
    inv = parse_inventory("upstreams:\n  pool: {listen: 6666, discover: docker}\n", "inventory.yaml")
    assert inv.upstreams[0].discover == "docker" and inv.upstreams[0].servers == ()
    found = one("upstreams:\n  pool: {listen: 6666, discover: {etcd: /ns/pool/}}\n")
    expected = "inventory.yaml:2:34: upstreams.pool.discover: discover: {etcd: ...} needs the etcd "
    assert found.startswith(expected), found
    inv = parse_inventory("discovery: {etcd: {endpoints: [http://127.0.0.1:2379]}}\nupstreams:\n"
                          "  pool: {listen: 6666, discover: {etcd: /ns/pool/}, servers: []}\n", "inventory.yaml")
    assert (inv.upstreams[0].discover_prefix, inv.discovery_etcd_endpoints) == ("/ns/pool/", ("http://127.0.0.1:2379",))


@pytest.mark.parametrize("value, expected", [
    ("etcd", "expected docker, or a mapping {etcd: /key/prefix/}"),
    ("{etcd: 'ns pool'}", "expected an etcd key prefix starting with /"),
    ("{consul: /x/}", "expected docker, or a mapping {etcd: /key/prefix/}"),
    ("[docker, {etcd: /x/}]", "expected one source per group, docker or {etcd: /key/prefix/}, not a list (a group "
                              "discovers from one source; list fixed backends under servers:), got a list"),
    ("[docker]", "expected one source per group, docker or {etcd: /key/prefix/}, not a list"),
])
def test_discover_values(value, expected):
    found = one(f"discovery: {{etcd: {{endpoints: [http://127.0.0.1:2379]}}}}\nupstreams:\n"
                f"  pool: {{listen: 6666, discover: {value}}}\n")
    assert "upstreams.pool.discover" in found and expected in found, found


@pytest.mark.parametrize("value", ["{etcd: {endpoints: []}}", "{etcd: {endpoints: [127.0.0.1:2379]}}",
                                   "{etcd: {endpoints: ['http://x:99999']}}", "{zookeeper: {}}"])
def test_discovery_endpoints(value):
    found = one(f"discovery: {value}\nupstreams:\n  pool: {{listen: 6666, servers: [127.0.0.1:1]}}\n")
    assert found.startswith("inventory.yaml:1:") and "discovery" in found, found


def test_a_group_with_neither_servers_nor_discover():
    assert "missing required key 'servers' in group 'pool' (or 'discover'" in one(
        "upstreams:\n  pool: {listen: 6666}\n")


def test_targets_a_fleet_of_named_load_balancers():
    inv = parse_inventory("targets:\n  - {name: lb1, container: c1}\n  - {name: lb2, container: c2, "
                          "docker_host: 'tcp://127.0.0.1:2375'}\n" + GOOD, "inventory.yaml")
    assert [(t.name, t.container, t.docker_host) for t in inv.targets] == \
        [("lb1", "c1", None), ("lb2", "c2", "tcp://127.0.0.1:2375")]
    assert inv.target.container == "c1"


@pytest.mark.parametrize("targets, expected", [
    ("[{name: lb1, container: c1}, {name: lb1, container: c2}]", "targets[1].name: name 'lb1' is also target 1"),
    ("[{name: lb1, container: c1}, {name: lb2, container: c1}]", "targets[1].container: container"),
    ("[{name: lb1}]", "missing required key 'container' in a target"),
    ("[]", "expected a non-empty list of targets"),
    ("[{name: 'lb 1', container: c1}]", "targets[0].name: expected a target name"),
])
def test_bad_targets(targets, expected):
    found = one(f"targets: {targets}\n" + GOOD)
    assert expected in found, found


def test_target_and_targets_together():
    found = one("target: {container: c0}\ntargets: [{name: lb1, container: c1}]\n" + GOOD)
    assert "use either target: (one load balancer) or targets: (a fleet), not both" in found
