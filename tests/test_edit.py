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
