"""The virtual IP's truth without Docker: `ip addr` output and keepalived's state file parsed, the netlink dump
parsed, the split-brain and no-holder report (text and JSON), the `vip` line and the holder gauge of `watch`."""

from __future__ import annotations

import io
import json
import os
import socket
import struct

import pytest
from nginxctl.controller.log import DecisionLog
from nginxctl.controller.metrics import Metrics
from nginxctl.controller.vipwatch import VipWatch
from nginxctl.ifaddr import (
    IFA_ADDRESS,
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWADDR,
    NoSuchInterface,
    dump_request,
    interface_addresses,
    parse_addresses,
)
from nginxctl.inventory import parse_inventory
from nginxctl.vipview import DOWN, UNKNOWN, MemberVip, VipView, has_address, moved, parse_ip_addr, parse_state

IPROUTE2 = """\
2: eth0    inet 10.254.0.11/16 brd 10.254.255.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.254.7.100/16 scope global secondary eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::64/64 scope global nodad \\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
"""
BUSYBOX = """\
2: br9    inet 10.254.99.1/16 scope global br9\\       valid_lft forever preferred_lft forever
2: br9    inet 10.254.99.100/16 scope global secondary br9\\       valid_lft forever preferred_lft forever
"""


def test_ip_addr_output_of_iproute2_and_busybox() -> None:
    assert parse_ip_addr(IPROUTE2) == ["10.254.0.11", "10.254.7.100", "2001:db8::64", "fe80::1"]
    assert parse_ip_addr(BUSYBOX) == ["10.254.99.1", "10.254.99.100"]
    assert parse_ip_addr("") == [] and parse_ip_addr("ip: can't find device 'eth9'\n") == []


def test_an_address_is_held_only_exactly_and_ipv6_compares_canonically() -> None:
    found = parse_ip_addr(IPROUTE2)
    assert has_address(found, "10.254.7.100")
    assert not has_address(found, "10.254.7.10") and not has_address(found, "10.254.0.1")
    assert has_address(found, "2001:DB8:0::64") and not has_address(found, "2001:db8::65")
    assert has_address(["fe80::1%eth0"], "fe80::1")


@pytest.mark.parametrize(("text", "state"), [
    ("MASTER\n", "MASTER"), (b"BACKUP\n", "BACKUP"), ("FAULT", "FAULT"), ("MASTER 200\n", "MASTER"),
    ("STOP\n", None), ("", None), (None, None), ("MAST", None), ("master\n", None), (b"\xff\xfe", None)])
def test_the_state_file(text: str | bytes | None, state: str | None) -> None:
    assert parse_state(text) == state


# -- netlink ------------------------------------------------------------------------------------------------------

def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _addr(family: int, index: int, **attrs: bytes) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, index)
    body += b"".join(_attr({"address": IFA_ADDRESS, "local": IFA_LOCAL}[k], v) for k, v in attrs.items())
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR, 2, 1, 0) + body


def _done() -> bytes:
    return struct.pack("=IHHII", 20, NLMSG_DONE, 2, 1, 0) + struct.pack("=i", 0)


def test_the_netlink_dump_keeps_the_interfaces_own_addresses() -> None:
    v4 = socket.inet_pton(socket.AF_INET, "10.254.7.100")
    peer = socket.inet_pton(socket.AF_INET, "10.254.9.9")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::64")
    data = (_addr(socket.AF_INET, 2, address=peer, local=v4) + _addr(socket.AF_INET, 3, local=v4)
            + _addr(socket.AF_INET6, 2, address=v6))
    assert parse_addresses(data, 2) == (["10.254.7.100", "2001:db8::64"], False)
    assert parse_addresses(data + _done(), 3) == (["10.254.7.100"], True)
    assert parse_addresses(_done(), 2) == ([], True)


def test_a_netlink_error_is_raised_and_the_request_is_a_dump() -> None:
    error = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(OSError, match="EPERM"):
        parse_addresses(error, 2)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", dump_request())
    assert (length, kind, flags & 0x300) == (24, 22, 0x300)


def test_the_kernel_answers_for_this_namespace() -> None:
    """Our own namespace (no setns): the loopback's address, and an interface that is not there."""
    assert "127.0.0.1" in interface_addresses(os.getpid(), "lo")
    with pytest.raises(NoSuchInterface):
        interface_addresses(os.getpid(), "nginxctl-no0")


# -- the report ---------------------------------------------------------------------------------------------------

def view(*members: MemberVip) -> VipView:
    return VipView("10.254.7.100/24", "10.254.7.100", "eth0", members)


ONE = view(MemberVip("lb1", "MASTER", True, 1e9, via="netlink"), MemberVip("lb2", "BACKUP", False, 1e9))
BOTH = view(MemberVip("lb1", DOWN, True, why="keepalived is exited"), MemberVip("lb2", "MASTER", True, 1e9))
NONE = view(MemberVip("lb1", "FAULT", False, 1e9), MemberVip("lb2", "FAULT", False, 1e9))
UNREAD = view(MemberVip("lb1", DOWN, None, why="Docker is not reachable"), MemberVip("lb2", "FAULT", False))


def test_one_holder_is_quiet() -> None:
    assert ONE.holders == ["lb1"] and not ONE.split_brain and ONE.error is None
    assert ONE.lines() == ["vip         10.254.7.100/24 on eth0: held by lb1",
                           "  lb1  MASTER   holds 10.254.7.100  since 2001-09-09T01:46:40Z",
                           "  lb2  BACKUP   since 2001-09-09T01:46:40Z"]
    assert ONE.to_dict() == {
        "vip": "10.254.7.100/24", "interface": "eth0", "holders": ["lb1"],
        "targets": {"lb1": "MASTER", "lb2": "BACKUP"}, "split_brain": False, "error": None, "unreadable": [],
        "members": {"lb1": {"state": "MASTER", "holds": True, "since": 1e9, "why": None, "read_via": "netlink"},
                    "lb2": {"state": "BACKUP", "holds": False, "since": 1e9, "why": None, "read_via": None}}}


def test_two_holders_is_a_split_brain_said_loudly() -> None:
    assert BOTH.split_brain and BOTH.holders == ["lb1", "lb2"]
    data = json.loads(json.dumps(BOTH.to_dict()))
    assert data["split_brain"] is True and data["holders"] == ["lb1", "lb2"]
    assert data["error"].startswith("split brain: lb1 and lb2 all hold 10.254.7.100 on eth0")
    lines = BOTH.lines()
    assert lines[0] == "vip         10.254.7.100/24 on eth0: held by lb1, lb2"
    assert lines[1].startswith("WARNING     split brain: lb1 and lb2 all hold 10.254.7.100")
    assert ("  lb1  down     holds 10.254.7.100 (and no keepalived runs there to give it up)  (keepalived is exited)"
            in lines)
    assert "yet keepalived says FAULT" in view(MemberVip("lb1", "FAULT", True)).lines()[-1]


def test_no_holder_is_said_loudly_and_an_unreadable_target_is_named() -> None:
    assert NONE.error is not None and NONE.error.startswith("no target holds 10.254.7.100 on eth0")
    assert NONE.lines()[:2] == ["vip         10.254.7.100/24 on eth0: held by no target", f"WARNING     {NONE.error}"]
    assert not NONE.split_brain and NONE.to_dict()["holders"] == []
    assert UNREAD.unreadable == ["lb1"]
    assert UNREAD.error == "no target is known to hold 10.254.7.100 on eth0 (lb1 could not be read)"
    assert UNREAD.lines()[0].endswith("held by no target known")
    assert "  lb1  down     holding unknown  (Docker is not reachable)" in UNREAD.lines()
    assert view(MemberVip("lb1", UNKNOWN, False)).states() == {"lb1": "unknown"}


def test_a_move_is_a_change_of_holders_or_of_what_cannot_be_read() -> None:
    assert moved(None, ONE) and moved(ONE, NONE) and moved(NONE, BOTH) and moved(NONE, UNREAD)
    same = view(MemberVip("lb1", "MASTER", True), MemberVip("lb2", "FAULT", False))
    assert not moved(ONE, same)


# -- watch: the gauge and the line --------------------------------------------------------------------------------

INVENTORY = """\
upstreams: {pool: {listen: 6666, servers: [10.254.1.5:7000]}}
ha: {vip: 10.254.7.100/24, virtual_router_id: 51}
targets: [{name: lb1, container: lb1}, {name: lb2, container: lb2}]
"""


def test_watch_sets_the_gauge_and_logs_each_move(monkeypatch: pytest.MonkeyPatch) -> None:
    views = [ONE, ONE, NONE, BOTH, UNREAD]
    monkeypatch.setattr("nginxctl.controller.vipwatch.read_vip", lambda clients, inv: views.pop(0))
    stream = io.StringIO()
    metrics = Metrics()
    inv = parse_inventory(INVENTORY, "inventory.yaml")
    watch = VipWatch(metrics, DecisionLog("json", stream), lambda host: None, lambda: inv)  # type: ignore[arg-type,return-value]

    def gauge() -> dict[str, float]:
        return {s.labels["target"]: s.value for f in metrics.registry.collect() if f.name == "nginxctl_vip_holder"
                for s in f.samples}

    assert watch.read_once() == 1.0 and gauge() == {"lb1": 1, "lb2": 0}
    watch.read_once()   # the same holders: no line
    watch.read_once()
    assert gauge() == {"lb1": 0, "lb2": 0}
    watch.read_once()
    assert gauge() == {"lb1": 1, "lb2": 1}
    watch.read_once()
    assert gauge() == {"lb2": 0}   # lb1 could not be read: no series, rather than a guess
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["from"], e["to"]) for e in lines] == [
        ("vip", None, ["lb1"]), ("vip", ["lb1"], []), ("vip", [], ["lb1", "lb2"]), ("vip", ["lb1", "lb2"], [])]
    assert lines[0]["message"] == "the virtual IP 10.254.7.100/24 is on lb1" and "level" not in lines[0]
    assert lines[0]["states"] == {"lb1": "MASTER", "lb2": "BACKUP"}
    assert lines[1]["message"].startswith("the virtual IP 10.254.7.100/24 left lb1: no target holds it")
    assert lines[1]["level"] == "warning"
    assert lines[2]["split_brain"] is True and "split brain" in lines[2]["message"]
    assert lines[3]["unreadable"] == ["lb1"]


def test_watch_without_ha_reads_nothing() -> None:
    metrics = Metrics()
    inv = parse_inventory(INVENTORY.replace("ha: {vip: 10.254.7.100/24, virtual_router_id: 51}\n", ""), "i.yaml")

    def refuse(host: str | None) -> None:
        raise AssertionError("no engine is asked without ha:")

    watch = VipWatch(metrics, DecisionLog("json", io.StringIO()), refuse, lambda: inv)  # type: ignore[arg-type]
    assert watch.read_once() == 5.0


def test_a_vip_line_says_what_changed_in_words_that_are_true() -> None:
    """Only who can be read changed: 'still on'; a second holder: 'now on ... too', never 'moved from lb1 to lb1'."""
    stream = io.StringIO()
    watch = VipWatch(Metrics(), DecisionLog("json", stream), lambda host: None,  # type: ignore[arg-type,return-value]
                     lambda: None)
    one = view(MemberVip("lb1", "MASTER", True), MemberVip("lb2", "BACKUP", False))
    unread = view(MemberVip("lb1", "MASTER", True), MemberVip("lb2", "unknown", None))
    both = view(MemberVip("lb1", "MASTER", True), MemberVip("lb2", "MASTER", True))
    watch._say(one, unread)
    watch._say(one, both)
    first, second = (json.loads(line)["message"] for line in stream.getvalue().splitlines())
    assert first.startswith("the virtual IP 10.254.7.100/24 is still on lb1")
    assert second.startswith("the virtual IP 10.254.7.100/24 is now on lb1, lb2 too (it stayed on lb1)")
