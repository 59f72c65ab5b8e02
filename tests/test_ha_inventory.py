"""`ha:` in the inventory: the virtual IP over a fleet, each rule with its exact located message (pure, no Docker)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import jsonschema
import pytest
import yaml
from nginxctl.errors import InventoryError
from nginxctl.inventory import json_schema, parse_inventory

VALIDATOR = jsonschema.Draft202012Validator(json_schema())

GOOD = """\
upstreams:
  pool:
    listen: 6666
    servers: [127.0.0.1:7001]
ha: {vip: 10.254.7.100/24, interface: eth0, virtual_router_id: 51, advert_interval: 1s}
targets:
  - {name: lb1, container: lb1}
  - {name: lb2, container: lb2}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(textwrap.dedent(text), "inventory.yaml")
    return [str(p) for p in info.value.problems]


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def with_ha(**ha: Any) -> str:
    """GOOD with some ha: keys changed, still on line 5 (JSON values are YAML flow values)."""
    values = {**yaml.safe_load(GOOD)["ha"], **ha}
    flow = ", ".join(f"{k}: {json.dumps(v)}" for k, v in values.items())
    return "\n".join(f"ha: {{{flow}}}" if line.startswith("ha:") else line for line in GOOD.splitlines()) + "\n"


def test_the_issue_example_loads_with_defaults_and_descending_priorities() -> None:
    inv = parse_inventory(GOOD, "inventory.yaml")
    assert inv.ha is not None
    assert (inv.ha.vip, inv.ha.address, inv.ha.family, inv.ha.interface, inv.ha.virtual_router_id) == \
        ("10.254.7.100/24", "10.254.7.100", "inet", "eth0", 51)
    assert (inv.ha.advert_seconds, inv.ha.nopreempt, inv.ha.health_port, inv.ha.fall, inv.ha.rise) == \
        (1, True, 61999, 2, 2)
    assert inv.ha.vrrp_version == 2 and not inv.ha.nonlocal_bind
    assert [t.priority for t in inv.targets] == [200, 190]
    assert VALIDATOR.is_valid(yaml.safe_load(GOOD))


def test_explicit_priority_wins_and_the_others_keep_their_place() -> None:
    text = GOOD + "  - {name: lb3, container: lb3, priority: 250}\n"
    assert [t.priority for t in parse_inventory(text, "inventory.yaml").targets] == [200, 190, 250]


def test_default_priorities_stay_distinct_and_positive_for_a_large_fleet() -> None:
    targets = "".join(f"  - {{name: lb{i}, container: lb{i}}}\n" for i in range(3, 60))
    priorities = [t.priority for t in parse_inventory(GOOD + targets, "inventory.yaml").targets]
    assert len(set(priorities)) == len(priorities) == 59 and min(p for p in priorities if p) >= 1
    assert priorities == sorted(priorities, reverse=True)


def test_an_ipv6_vip_is_vrrp_version_3() -> None:
    inv = parse_inventory(with_ha(vip="2001:db8::64/64"), "inventory.yaml")
    assert inv.ha is not None and (inv.ha.family, inv.ha.address, inv.ha.vrrp_version) == ("inet6", "2001:db8::64", 3)


@pytest.mark.parametrize("vip", ["10.254.7.100", "10.254.7.300/24", "10.254.7.100/33", "vip/24", "10.254.7.100/2 4",
                                 "10.254.7.100/24\n", 10])
def test_a_bad_cidr_is_located(vip: Any) -> None:
    msg = one(with_ha(vip=vip))
    assert msg.startswith("inventory.yaml:5:"), msg
    assert "ha.vip: expected the virtual IP with its prefix length, e.g. 10.254.7.100/24" in msg
    if vip not in ("10.254.7.300/24", "10.254.7.100/33"):  # the schema checks the form, the loader the numbers
        assert not VALIDATOR.is_valid(yaml.safe_load(with_ha(vip=vip)))


@pytest.mark.parametrize(("vip", "why"), [("10.254.7.0/24", "not its network or broadcast address"),
                                          ("10.254.7.255/24", "not its network or broadcast address"),
                                          ("127.0.0.5/8", "a unicast virtual IP"),
                                          ("224.0.0.18/24", "a unicast virtual IP")])
def test_a_vip_that_cannot_be_a_host_address_is_refused(vip: str, why: str) -> None:
    assert why in one(with_ha(vip=vip))


@pytest.mark.parametrize("vrid", [0, 256, -1, "51", True])
def test_a_router_id_outside_1_to_255_is_located(vrid: Any) -> None:
    msg = one(with_ha(virtual_router_id=vrid))
    assert msg.startswith("inventory.yaml:5:")
    assert "ha.virtual_router_id: expected an integer >= 1 and <= 255, got" in msg
    assert not VALIDATOR.is_valid(yaml.safe_load(with_ha(virtual_router_id=vrid)))


@pytest.mark.parametrize("interval", ["500ms", "0s", 0])
def test_an_interval_under_one_second_is_located(interval: Any) -> None:
    msg = one(with_ha(advert_interval=interval))
    assert "ha.advert_interval: expected an advert interval of at least 1s (VRRP version 2 counts whole seconds)" \
        in msg


@pytest.mark.parametrize("interval", ["1500ms", "256s", "5m"])
def test_an_interval_vrrp_cannot_carry_is_refused(interval: str) -> None:
    assert "ha.advert_interval: expected a whole number of seconds from 1s to 255s" in one(
        with_ha(advert_interval=interval))


def test_seconds_and_minutes_are_whole_seconds() -> None:
    inv = parse_inventory(with_ha(advert_interval="1m"), "inventory.yaml")
    assert inv.ha is not None and (inv.ha.advert_seconds, str(inv.ha.advert_interval)) == (60, "60s")
    assert "at most 40s with an IPv6 virtual IP" in one(with_ha(vip="2001:db8::64/64", advert_interval="41s"))


def test_ha_without_targets_is_located_and_says_what_to_do() -> None:
    text = GOOD.split("targets:")[0] + "target: {container: lb1}\n"
    assert one(text) == (
        "inventory.yaml:5:1: ha: ha: needs a fleet: a virtual IP moves between load balancers, so list at least "
        "two under targets: (instead of target:), e.g. targets: [{name: lb1, container: lb1}, {name: lb2, "
        "container: lb2}]")


def test_ha_with_one_target_is_located() -> None:
    text = GOOD.replace("  - {name: lb2, container: lb2}\n", "")
    assert one(text) == ("inventory.yaml:5:1: ha: ha: needs at least two targets, got one: add the load balancer "
                         "that takes the virtual IP over when this one fails, or remove ha:")


def test_ha_must_be_a_mapping_with_vip_and_router_id() -> None:
    assert "ha: expected a mapping" in one(GOOD.replace("ha: {vip", "ha: 5\nx: {vip").replace("\nx: {vip:", "\n#"))
    msgs = problems(GOOD.replace("vip: 10.254.7.100/24, ", "").replace("virtual_router_id: 51, ", ""))
    assert msgs == ["inventory.yaml:5:5: ha: missing required key 'vip' in ha",
                    "inventory.yaml:5:5: ha: missing required key 'virtual_router_id' in ha"]


def test_unknown_ha_key_suggests_the_right_one() -> None:
    assert "unknown key 'virtual_router' in ha; did you mean 'virtual_router_id'?" in problems(
        GOOD.replace("virtual_router_id: 51", "virtual_router_id: 51, virtual_router: 5"))[0]


def test_bad_interface_name_is_refused() -> None:
    assert "ha.interface: expected a network interface name of at most 15" in one(with_ha(interface="eth0; rm"))
    assert "ha.interface:" in one(with_ha(interface="a" * 16))


def test_priority_without_ha_is_located() -> None:
    text = GOOD.replace("ha: {vip: 10.254.7.100/24, interface: eth0, virtual_router_id: 51, advert_interval: 1s}\n",
                        "").replace("container: lb2}", "container: lb2, priority: 5}")
    assert one(text) == ("inventory.yaml:7:33: targets[1].priority: priority only applies with ha: (a virtual IP over "
                         "the fleet): remove it, or add ha: {vip: ..., virtual_router_id: ...}")


@pytest.mark.parametrize("priority", [0, 255, "high"])
def test_priority_range(priority: Any) -> None:
    assert "targets[1].priority: expected an integer >= 1 and <= 254" in one(
        GOOD.replace("container: lb2}", f"container: lb2, priority: {priority}}}"))


def test_two_targets_with_one_priority_are_refused() -> None:
    msg = one(GOOD.replace("container: lb2}", "container: lb2, priority: 200}"))
    assert msg.startswith("inventory.yaml:8:43: targets[1].priority: priority 200 is also the priority of target "
                          "'lb1': give each")


def test_a_refused_priority_is_said_once_not_compared_as_a_default() -> None:
    """lb1's 255 is out of range: that is the one problem (its default, 200, is not held against lb2's 200)."""
    text = GOOD.replace("container: lb1}", "container: lb1, priority: 255}").replace(
        "container: lb2}", "container: lb2, priority: 200}")
    assert "targets[0].priority: expected an integer >= 1 and <= 254" in one(text)


@pytest.mark.parametrize(("listen", "what"), [
    ("'[2001:db8::5]:7000'", "is an IPv6 address, but ha.vip 10.254.7.100/24 is IPv4"),
    ("10.254.0.11:7000", "names an address of one load balancer, but with ha: every target runs this config and "
     "clients dial the virtual IP 10.254.7.100")])
def test_a_listen_on_a_specific_address_that_is_not_the_vip_is_located_with_what_to_do(listen: str, what: str) -> None:
    text = GOOD.replace("listen: 6666", f"listen: [6666, {listen}]")
    assert one(text) == (
        f"inventory.yaml:3:13: upstreams.pool.listen: listen {yaml.safe_load(listen)} {what}: listen on the port alone "
        "(7000), or on the virtual IP (10.254.7.100:7000; nginxctl then lets nginx bind it with "
        "net.ipv4.ip_nonlocal_bind on every target, so a standby listens on an address it does not hold yet)")


def test_an_ipv6_vip_says_the_ipv6_way() -> None:
    text = with_ha(vip="2001:db8::64/64").replace("listen: 6666", "listen: 10.254.0.11:7000")
    msg = one(text)
    assert "is an IPv4 address, but ha.vip 2001:db8::64/64 is IPv6" in msg
    assert "or on the virtual IP ([2001:db8::64]:7000; nginxctl then lets nginx bind it with " \
        "net.ipv6.ip_nonlocal_bind" in msg


@pytest.mark.parametrize("listen", ["6666", "'*:6666'", "0.0.0.0:6666", "'[::]:6666'", "127.0.0.1:6666",
                                    "'[::1]:6666'", "unix:/run/x.sock"])
def test_ports_wildcards_loopback_and_unix_listens_are_fine(listen: str) -> None:
    inv = parse_inventory(GOOD.replace("listen: 6666", f"listen: {listen}"), "inventory.yaml")
    assert inv.ha is not None and not inv.ha.nonlocal_bind


def test_a_listen_on_the_vip_asks_for_nonlocal_bind() -> None:
    inv = parse_inventory(GOOD.replace("listen: 6666", "listen: 10.254.7.100:6666"), "inventory.yaml")
    assert inv.ha is not None and inv.ha.nonlocal_bind


def test_the_health_port_cannot_be_a_group_listen() -> None:
    assert one(GOOD.replace("listen: 6666", "listen: 61999")) == (
        "inventory.yaml:3:13: upstreams.pool.listen: listen 61999 takes port 61999, the default ha.health_port "
        "(nginx's health listener for keepalived): listen elsewhere, or set ha.health_port to a free port")
    assert "ha.health_port: port 7000 is also the listen of group 'pool' (127.0.0.1:7000)" in one(
        with_ha(health_port=7000).replace("listen: 6666", "listen: 127.0.0.1:7000"))
    # a udp group may share the number: another socket
    parse_inventory(GOOD.replace("listen: 6666", "listen: 61999\n    protocol: udp"), "inventory.yaml")


def test_every_problem_is_reported_at_once() -> None:
    text = with_ha(virtual_router_id=300, advert_interval="100ms").replace("container: lb2}", "container: lb2, "
                                                                          "priority: 0}")
    found = problems(text)
    assert len(found) == 3 and [m.split(": ")[1] for m in found] == ["targets[1].priority", "ha.virtual_router_id",
                                                                      "ha.advert_interval"]
