"""The inventory's `rebalance:` key (watch rebalances a group by itself): its defaults, every mistake located
(file:line, key path, what was expected), the groups it cannot apply to, `defaults.rebalance`, and the JSON
Schema saying what the loader says (pure core, no Docker)."""

from __future__ import annotations

import textwrap
from typing import Any

import jsonschema
import pytest
import yaml
from nginxctl.errors import InventoryError
from nginxctl.inventory import json_schema, parse_inventory

VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def load(text: str) -> dict[str, Any]:
    inv = parse_inventory(textwrap.dedent(text), "inventory.yaml")
    return {g.name: g.rebalance for g in inv.upstreams}


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(textwrap.dedent(text), "inventory.yaml")
    return [str(p) for p in info.value.problems]


def pool(rebalance: str, **more: str) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in more.items())
    return f"upstreams:\n  pool:\n    listen: 6666\n    servers: [127.0.0.1:7001]\n{extra}    rebalance: {rebalance}\n"


def test_a_mapping_takes_the_defaults_for_what_it_omits():
    setting = load(pool("{after: 5s}"))["pool"]
    assert (setting.rate, setting.tolerance, setting.after.text, setting.after.ms) == (20.0, 0.1, "5s", 5000)
    setting = load(pool("{rate: 50/s, tolerance: 5%, after: 1m}"))["pool"]
    assert (setting.rate, setting.tolerance, setting.after.ms) == (50.0, 0.05, 60000)
    assert load(pool("{rate: 7, tolerance: 25}"))["pool"].tolerance == 0.25   # bare numbers: /s and %
    assert load(pool("true"))["pool"] == load(pool("{}"))["pool"]   # true: every default
    assert load(pool("false"))["pool"] is None
    assert load("upstreams:\n  pool: {listen: 6666, servers: [127.0.0.1:7001]}\n")["pool"] is None   # absent: off


@pytest.mark.parametrize(("value", "where", "message"), [
    ("{rate: 0}", "5:23: upstreams.pool.rebalance.rate", "expected more than 0 closes per second, got 0"),
    ("{rate: -5/s}", "5:23: upstreams.pool.rebalance.rate", "expected closes per second such as 20/s or 20, got "
                                                           "'-5/s'"),
    ("{rate: fast}", "5:23: upstreams.pool.rebalance.rate", "expected closes per second such as 20/s or 20"),
    ("{tolerance: 150%}", "5:28: upstreams.pool.rebalance.tolerance",
     "expected a percentage between 0% and 100%, got '150%'"),
    ("{tolerance: -1}", "5:28: upstreams.pool.rebalance.tolerance", "expected a percentage between 0% and 100%"),
    ("{tolerance: ten}", "5:28: upstreams.pool.rebalance.tolerance", "expected a percentage such as 10% or 10"),
    ("{after: 500ms}", "5:24: upstreams.pool.rebalance.after", "expected a duration of at least 1s, such as 30s, "
                                                              "got '500ms'"),
    ("{after: 0}", "5:24: upstreams.pool.rebalance.after", "expected a duration of at least 1s"),
    ("{after: soon}", "5:24: upstreams.pool.rebalance.after", "expected a duration such as 30s"),
    ("{rat: 5}", "5:17: upstreams.pool.rebalance.rat", "unknown key 'rat' in rebalance; did you mean 'rate'?"),
    ("5", "5:16: upstreams.pool.rebalance", "expected false, true or a mapping such as {rate: 20/s, "
                                            "tolerance: 10%, after: 30s}, got 5"),
])
def test_each_mistake_is_located_at_its_key(value, where, message):
    found = problems(pool(value))
    assert len(found) == 1, found
    assert found[0].startswith(f"inventory.yaml:{where}: {message}"), found[0]


def test_every_mistake_is_reported_at_once():
    found = problems(pool("{rate: 0, tolerance: 101%, after: 10ms}"))
    assert [p.split(": ")[1] for p in found] == ["upstreams.pool.rebalance.rate", "upstreams.pool.rebalance.tolerance",
                                                 "upstreams.pool.rebalance.after"]


def test_a_udp_group_cannot_be_rebalanced_and_says_why():
    found = problems(pool("{after: 5s}", protocol="udp"))
    assert found == ["inventory.yaml:6:16: upstreams.pool.rebalance: rebalance moves TCP connections; a UDP group "
                     "holds none to move (its sessions end on their own after proxy_timeout): remove rebalance from "
                     "this group"]


def test_a_plain_hash_group_cannot_be_rebalanced_a_consistent_one_can():
    found = problems(pool("true", balance="hash", hash_key="$remote_addr"))
    assert len(found) == 1 and found[0].startswith("inventory.yaml:7:16: upstreams.pool.rebalance: rebalance needs "
                                                   "balance: hash with consistent: true")
    assert load(pool("true", balance="hash", hash_key="$remote_addr", consistent="true"))["pool"] is not None
    found = problems(pool("true", balance="hash", hash_key="$binary_remote_addr", consistent="true"))
    assert len(found) == 1 and "cannot tell the key of a held connection from $binary_remote_addr" in found[0]


def test_defaults_apply_to_the_groups_they_can_and_a_group_may_opt_out():
    found = load("""\
        defaults:
          rebalance: {rate: 10/s, after: 1m}
        upstreams:
          pool: {listen: 6666, servers: [127.0.0.1:7001]}
          own: {listen: 6667, servers: [127.0.0.1:7001], rebalance: {after: 2s}}
          off: {listen: 6668, servers: [127.0.0.1:7001], rebalance: false}
          dns: {listen: 53, protocol: udp, servers: [127.0.0.1:53]}
          sticky: {listen: 6669, balance: hash, hash_key: $remote_addr, servers: [127.0.0.1:7001]}
        """)
    assert found["pool"] is not None and (found["pool"].rate, found["pool"].after.ms) == (10.0, 60000)
    assert found["own"] is not None and (found["own"].rate, found["own"].after.ms) == (20.0, 2000)
    assert found["off"] is None and found["dns"] is None and found["sticky"] is None


def test_a_wrong_default_is_reported_once_at_the_defaults():
    found = problems("""\
        defaults: {rebalance: {after: 0s}}
        upstreams:
          a: {listen: 6666, servers: [127.0.0.1:7001]}
          b: {listen: 6667, servers: [127.0.0.1:7001]}
        """)
    assert found == ["inventory.yaml:1:31: defaults.rebalance.after: expected a duration of at least 1s, such as "
                     "30s, got '0s'"]


def _doc(value: Any) -> dict[str, Any]:
    return {"upstreams": {"pool": {"listen": 6666, "servers": ["127.0.0.1:7001"], "rebalance": value}}}


def _loads(doc: dict[str, Any]) -> bool:
    try:
        parse_inventory(yaml.safe_dump(doc), "inventory.yaml")
    except InventoryError:
        return False
    return True


@pytest.mark.parametrize("value", [True, False, {}, {"rate": "20/s"}, {"rate": 0.5}, {"rate": "7"},
                                   {"tolerance": "10%"}, {"tolerance": 0}, {"tolerance": "100"}, {"tolerance": 12.5},
                                   {"after": "1s"}, {"after": 30}, {"after": "1m30s"}])
def test_what_the_loader_takes_the_schema_takes(value):
    assert _loads(_doc(value)) and VALIDATOR.is_valid(_doc(value))


@pytest.mark.parametrize("value", [None, 5, "yes", {"rate": 0}, {"rate": "0/s"}, {"rate": "0.0"}, {"rate": -1},
                                   {"rate": "2e1"}, {"rate": "20 /s"}, {"tolerance": 101}, {"tolerance": "150%"},
                                   {"tolerance": "-1"}, {"after": 0}, {"after": "1 s"}, {"after": "1y"},
                                   {"other": 1}])
def test_what_the_loader_refuses_the_schema_refuses(value):
    assert not _loads(_doc(value)) and not VALIDATOR.is_valid(_doc(value))
