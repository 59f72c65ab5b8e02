"""The JSON Schema editors use says what the loader says, and docs/inventory.md is generated from the same
table (pure, no Docker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from nginxctl.errors import InventoryError
from nginxctl.inventory import json_schema, parse_inventory
from nginxctl.inventory.schema import reference_document

ROOT = Path(__file__).parent.parent
VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def loads(doc: dict[str, Any]) -> bool:
    try:
        parse_inventory(yaml.safe_dump(doc), "inventory.yaml")
    except InventoryError:
        return False
    return True


def group() -> dict[str, Any]:
    return {"listen": 6666, "servers": ["127.0.0.1:7001"]}


@pytest.mark.parametrize("name", ["bad name", "9bad", "-x", "a.b", "x;y", "ok_but_then space", "pool\n", "ünïcode",
                                  "x" * 64, "", "a/b", "trailing-ok-but-leading space"[::-1]])
def test_a_group_name_the_loader_refuses_the_schema_refuses(name: str) -> None:
    doc = {"upstreams": {name: group()}}
    assert not loads(doc)
    assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize("name", ["pool", "_x", "a-b", "A9", "x" * 63])
def test_a_group_name_the_loader_takes_the_schema_takes(name: str) -> None:
    doc = {"upstreams": {name: group()}}
    assert loads(doc) and VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(("key", "value"), [("proxy_timeout", "1y"), ("proxy_timeout", "5 s"),
                                            ("proxy_timeout", "30s\n"), ("proxy_timeout", 9223372036854776),
                                            ("proxy_timeout", "３0s"), ("zone_size", "1g"), ("zone_size", 16384),
                                            ("proxy_buffer_size", 2 ** 63), ("backlog", 70000),
                                            ("proxy_next_upstream_tries", 2 ** 63)])
def test_a_value_the_loader_refuses_the_schema_refuses(key: str, value: Any) -> None:
    doc = {"upstreams": {"pool": {**group(), key: value}}}
    assert not loads(doc)
    assert not VALIDATOR.is_valid(doc)


@pytest.mark.parametrize(("key", "value"), [("proxy_timeout", "1h30m"), ("proxy_timeout", "5"), ("proxy_timeout", 0),
                                            ("proxy_timeout", "500ms"), ("zone_size", "32k"),
                                            ("proxy_buffer_size", "8796093022207m")])
def test_a_value_the_loader_takes_the_schema_takes(key: str, value: Any) -> None:
    doc = {"upstreams": {"pool": {**group(), key: value}}}
    assert loads(doc) and VALIDATOR.is_valid(doc)


def test_worker_processes_beyond_nginx_limit_in_the_schema_too() -> None:
    doc: dict[str, Any] = {"upstreams": {"pool": group()}, "nginx": {"worker_processes": 513}}
    assert not loads(doc) and not VALIDATOR.is_valid(doc)
    doc["nginx"]["worker_processes"] = 512
    assert loads(doc) and VALIDATOR.is_valid(doc)


def test_fail_timeout_in_seconds_in_the_schema_too() -> None:
    doc = {"upstreams": {"pool": {**group(), "servers": [{"address": "127.0.0.1:1", "fail_timeout": "500ms"}]}}}
    assert not loads(doc) and not VALIDATOR.is_valid(doc)
    doc["upstreams"]["pool"]["servers"][0]["fail_timeout"] = "1y"
    assert loads(doc) and VALIDATOR.is_valid(doc)


@pytest.mark.parametrize("section", ["defaults", "nginx", "target"])
def test_sections_are_mappings_in_the_schema_and_the_docs(section: str) -> None:
    assert not VALIDATOR.is_valid({"upstreams": {"pool": group()}, section: 5})
    assert f"| `{section}` | object |" in reference_document()


def test_discover_is_documented_as_the_one_source_it_takes() -> None:
    """The reference says what the loader and the schema take: `docker` or `{etcd: PREFIX}`, one source, no list."""
    row = next(line for line in reference_document().splitlines() if line.startswith("| `discover` |"))
    assert row.startswith("| `discover` | `docker` or `{etcd: /prefix/}` |"), row
    for value in (["docker"], ["docker", {"etcd": "/x/"}]):
        doc = {"discovery": {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}},
               "upstreams": {"pool": {"listen": 6666, "discover": value}}}
        assert not loads(doc) and not VALIDATOR.is_valid(doc)


def test_the_shipped_inventory_is_valid_for_the_schema() -> None:
    VALIDATOR.validate(yaml.safe_load((ROOT / "inventory.yaml").read_text()))


def test_docs_inventory_md_is_generated_from_the_schema() -> None:
    assert (ROOT / "docs" / "inventory.md").read_text() == reference_document(), (
        "regenerate: python -c \"from nginxctl.inventory.schema import reference_document as d; print(d(), end='')\" "
        "> docs/inventory.md")
