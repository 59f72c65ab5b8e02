"""In-place inventory edits for drain/undrain: comments and layout kept, refusals leave the file alone."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from nginxctl.edit import set_down
from nginxctl.errors import UsageError
from nginxctl.files import write_atomic
from nginxctl.inventory import parse_inventory

SHIPPED = (Path(__file__).parent.parent / "inventory.yaml").read_text()


def changed_lines(old: str, new: str) -> list[str]:
    return [line for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line[:1] in "+-"]


def test_drain_short_form_changes_one_line_and_keeps_comments():
    edit = set_down(SHIPPED, "echo", "127.0.0.1:9001", True)
    assert changed_lines(SHIPPED, edit.text) == ["-       - 127.0.0.1:9001",
                                                  "+       - {address: 127.0.0.1:9001, down: true}"]
    assert parse_inventory(edit.text).group("echo").servers[0].down  # type: ignore[union-attr]


def test_drain_mapping_form_adds_down_only():
    edit = set_down(SHIPPED, "netty_pool", "127.0.0.1:7001", True)
    assert changed_lines(SHIPPED, edit.text) == ["+         down: true"]


def test_undrain_restores_the_original_text():
    for group, server in (("echo", "127.0.0.1:9001"), ("netty_pool", "127.0.0.1:7001")):
        drained = set_down(SHIPPED, group, server, True).text
        assert set_down(drained, group, server, False).text == SHIPPED


def test_draining_a_drained_server_changes_nothing():
    drained = set_down(SHIPPED, "echo", "127.0.0.1:9001", True).text
    again = set_down(drained, "echo", "127.0.0.1:9001", True)
    assert (again.changed, again.text) == (False, drained)


def test_unknown_group_and_server():
    with pytest.raises(UsageError, match="no group 'nope' in the inventory"):
        set_down(SHIPPED, "nope", "127.0.0.1:1", True)
    with pytest.raises(UsageError, match=r"no server 127.0.0.1:1 in group 'echo' \(servers: 127.0.0.1:9001, "):
        set_down(SHIPPED, "echo", "127.0.0.1:1", True)


DISCOVERING = """\
discovery: {etcd: {endpoints: ['http://127.0.0.1:2379']}}
upstreams:
  web: {listen: 8080, discover: docker}
  netty: {listen: 6666, discover: {etcd: /services/netty/}, servers: [127.0.0.1:7001, 127.0.0.1:7002]}
"""


@pytest.mark.parametrize("group", ["web", "netty"])
def test_drain_of_a_discovered_server_is_refused_with_how_to_drain_it_at_its_source(group):
    with pytest.raises(UsageError) as info:
        set_down(DISCOVERING, group, "127.0.0.1:7005", True)
    message = str(info.value)
    head = ("127.0.0.1:7005 is not listed in group 'web', whose servers are discovered from docker: " if group == "web"
            else "no server 127.0.0.1:7005 in group 'netty' (servers: 127.0.0.1:7001, 127.0.0.1:7002); if it is a "
            "backend discovered from etcd (keys under /services/netty/): ")  # a typo is told from a discovered backend
    assert message.startswith(head + "drain marks down only the servers the inventory lists. "), message
    if group == "web":
        assert message.endswith(
            "Drain a discovered backend at its source: stop or remove its container (nginxctl watch, or the next apply "
            "--reload, takes it out); or, to send it no new connections while its open ones finish, add {address: "
            "127.0.0.1:7005, down: true} to the group's servers: (a listed server wins over a discovered one with the "
            "same address) and run this drain again"), message
    else:
        assert message.endswith(
            "Drain a discovered backend at its source: delete its key (nginxctl watch, or the next apply --reload, "
            "takes it out); or, to send it no new connections while its open ones finish, set its value to "
            "{\"address\": \"127.0.0.1:7005\", \"down\": true}"), message
    with pytest.raises(UsageError, match="^127.0.0.1:7005 is not listed in group 'web', whose servers are discovered "
                       "from docker: undrain changes only the servers the inventory lists"):
        set_down(DISCOVERING, "web", "127.0.0.1:7005", False)
    assert set_down(DISCOVERING, "netty", "127.0.0.1:7002", True).changed  # a listed server drains as always


def test_the_ways_given_to_drain_a_discovered_server_render_it_down():
    """What the refusal suggests works: a listed `down: true` server wins over the discovered one (Docker), and an
    etcd value with "down": true is rendered down."""
    from nginxctl.controller.merge import merge
    from nginxctl.controller.model import Candidate, Snapshot
    from nginxctl.controller.sources import etcd_fields, label_fields

    listed = DISCOVERING.replace("discover: docker}", "discover: docker, servers: [{address: 127.0.0.1:7005, down: "
                                 "true}]}")
    docker = Snapshot("docker", (Candidate("docker", "web", "c1", label_fields(
        {"nginxctl.group": "web", "nginxctl.port": "7005"}, "127.0.0.1")),))
    etcd = Snapshot("etcd", (Candidate("etcd", "netty", "/services/netty/x", etcd_fields(
        b'{"address": "127.0.0.1:7005", "down": true}')),))
    merged = merge(parse_inventory(listed), {"docker": docker, "etcd": etcd}).inventory
    assert [(s.address.text, s.down) for s in merged.group("web").servers] == [("127.0.0.1:7005", True)]  # type: ignore[union-attr]
    assert ("127.0.0.1:7005", True) in [(s.address.text, s.down) for s in merged.group("netty").servers]  # type: ignore[union-attr]


def test_last_live_server_refused_unless_forced_and_a_backup_takes_over():
    one = set_down(SHIPPED, "echo", "127.0.0.1:9001", True).text
    with pytest.raises(UsageError, match="last server of 'echo' taking new connections"):
        set_down(one, "echo", "127.0.0.1:9002", True)
    with pytest.raises(UsageError, match="no backup can take over"):
        set_down(one, "echo", "127.0.0.1:9002", True, force=True)
    netty = set_down(SHIPPED, "netty_pool", "127.0.0.1:7001", True).text
    with pytest.raises(UsageError, match="last server"):
        set_down(netty, "netty_pool", "127.0.0.1:7002", True)
    forced = set_down(netty, "netty_pool", "127.0.0.1:7002", True, force=True)
    assert "+     allow_no_primary: true" in changed_lines(netty, forced.text)
    parse_inventory(forced.text)  # primaries down, backup up, said on purpose: the backup serves
    back = set_down(forced.text, "netty_pool", "127.0.0.1:7002", False)
    assert back.text == netty


def test_write_refuses_a_file_changed_since_read(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("changed by someone else\n")
    with pytest.raises(UsageError, match="changed since nginxctl read it"):
        write_atomic(path, "new\n", expect="what we read\n")
    assert path.read_text() == "changed by someone else\n"
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.yaml"]


def test_write_refuses_a_read_only_file(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("x\n")
    path.chmod(0o444)
    with pytest.raises(UsageError, match="read-only"):
        write_atomic(path, "y\n", expect="x\n")
    assert path.read_text() == "x\n"


# Layouts an inventory is written in: each must come back byte-identical after drain then undrain.
LAYOUTS = {
    "aligned comments": """\
upstreams:
  pool:
    listen: 6666
    servers:
      - 127.0.0.1:35101   # A
      - 127.0.0.1:35102   # B
      - 127.0.0.1:35103         # C, aligned further
""",
    "flow sequence": "upstreams:\n  pool: {listen: 6666, servers: [127.0.0.1:1, 127.0.0.1:2]}\n",
    "flow sequence with spaces": "upstreams:\n  pool:\n    listen: 6666\n    servers: [ 127.0.0.1:1 ,  127.0.0.1:2 ]\n",
    "quoted": """\
upstreams:
  pool:
    listen: 6666
    servers:
      - "127.0.0.1:1"
      - '127.0.0.1:2'
      - '[::1]:7004'
""",
    "flow mappings": """\
upstreams:
  pool:
    listen: 6666
    servers:
      - {address: 127.0.0.1:1, weight: 5}
      - { address: "127.0.0.1:2", max_fails: 3 }   # spaced
      - {address: 127.0.0.1:3}
""",
    "block mappings": """\
upstreams:
  pool:
    listen: 6666
    servers:
      - address: 127.0.0.1:1
        weight: 5     # heavy
        max_fails: 3

      # the second one
      -
        address: 127.0.0.1:2
      - address: 127.0.0.1:3
        backup: true
""",
    "no indentation, no final newline": "upstreams:\n  pool:\n    listen: 6666\n    servers:\n    - 127.0.0.1:1\n"
                                        "    - address: 127.0.0.1:2\n      weight: 2",
    "crlf": "upstreams:\r\n  pool:\r\n    listen: 6666\r\n    servers:\r\n      - 127.0.0.1:1\r\n"
            "      - address: 127.0.0.1:2\r\n        weight: 2\r\n",
    "unicode comments": "# Über-Pool ✓\nupstreams:\n  pool:  # größter\n    listen: 6666\n    servers:\n"
                        "      - 127.0.0.1:1  # ünïcode\n      - {address: 127.0.0.1:2, weight: 2}  # ✓✓\n",
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_drain_then_undrain_gives_back_the_same_bytes(layout: str) -> None:
    text = LAYOUTS[layout]
    servers = parse_inventory(text).upstreams[0].servers
    for server in servers:
        if server.backup:
            continue
        drained = set_down(text, "pool", server.address.text, True)
        after = parse_inventory(drained.text).upstreams[0].servers
        assert [s.down for s in after] == [s is server for s in servers]
        assert len(changed_lines(text, drained.text)) <= 2  # the one line, before and after
        assert set_down(drained.text, "pool", server.address.text, False).text == text


@pytest.mark.parametrize("group", [
    "  pool:\n    listen: 6666\n    servers:\n      - 127.0.0.1:1   # main\n"
    "      - {address: 127.0.0.1:2, backup: true}\n",
    "  pool: {listen: 6666, servers: [127.0.0.1:1, {address: 127.0.0.1:2, backup: true}]}\n",
])
def test_forced_drain_of_the_last_primary_and_back_gives_the_same_bytes(group: str) -> None:
    text = "upstreams:\n" + group
    forced = set_down(text, "pool", "127.0.0.1:1", True, force=True)
    inv = parse_inventory(forced.text)
    assert inv.upstreams[0].allow_no_primary and inv.upstreams[0].servers[0].down
    assert set_down(forced.text, "pool", "127.0.0.1:1", False).text == text


def test_down_false_becomes_true_and_undrain_removes_it() -> None:
    text = ("upstreams:\n  pool:\n    listen: 6666\n    servers:\n"
            "      - {address: 127.0.0.1:1, weight: 2, down: false}\n      - 127.0.0.1:2\n")
    drained = set_down(text, "pool", "127.0.0.1:1", True).text
    assert changed_lines(text, drained) == ["-       - {address: 127.0.0.1:1, weight: 2, down: false}",
                                            "+       - {address: 127.0.0.1:1, weight: 2, down: true}"]
    assert set_down(drained, "pool", "127.0.0.1:1", False).text == text.replace(", down: false", "")


def test_a_server_list_shared_through_an_alias_is_not_edited() -> None:
    text = "upstreams:\n  other: {listen: 6667, servers: &s [127.0.0.1:1, 127.0.0.1:2]}\n  pool:\n" \
           "    listen: 6666\n    servers: *s\n"
    with pytest.raises(UsageError, match="cannot mark 127.0.0.1:1 of 'pool' down without rewriting other parts"):
        set_down(text, "pool", "127.0.0.1:1", True)
