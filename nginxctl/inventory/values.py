"""Parsers of the inventory's values, one per kind of key: each returns the parsed value or raises
`grammar.Invalid` saying what was expected. Some return their JSON Schema type too, for `schema`'s key table."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from ..capacity import NGINX_MAX_WORKERS, NGINX_WORKER_LIMIT
from . import grammar as g

Parser = Callable[[Any], Any]


def integer(minimum: int, maximum: int = g.NGX_MAX_INT) -> tuple[Parser, dict[str, Any]]:
    """An integer in [minimum, maximum]; without a maximum, nginx's own (ngx_atoi stops at 2^63 - 1)."""
    def parse(value: Any) -> int:
        expected = f"an integer >= {minimum} and <= {maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise g.Invalid(expected, value)
        if not minimum <= value <= maximum:
            raise g.Invalid(expected, value)
        return value

    return parse, {"type": "integer", "minimum": minimum, "maximum": maximum}


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise g.Invalid("true or false", value)
    return value


def one_of(*choices: str) -> tuple[Parser, dict[str, Any]]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise g.Invalid("one of " + ", ".join(choices), value)
        return str(value)

    return parse, {"enum": list(choices)}


def worker_processes(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= NGINX_MAX_WORKERS:
        raise g.Invalid(f"'auto' or an integer >= 1 and <= {NGINX_MAX_WORKERS} ({NGINX_WORKER_LIMIT})", value)
    return value


# nginx refuses a zone smaller than 8 memory pages (ngx_stream_upstream_zone): 32k with 4k pages.
ZONE_MINIMUM = 8 * 4096


def zone_size(value: Any) -> g.Size:
    return g.parse_size(value, minimum=ZONE_MINIMUM, why="nginx refuses a zone smaller than 8 memory pages")


def error_log(value: Any) -> str:
    if value == "stderr":
        return "stderr"
    return g.check_path(value, "'stderr' or an absolute file path")


def listen_list(value: Any) -> tuple[g.Address, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise g.Invalid("at least one listen address", value)
    return tuple(g.parse_listen(v) for v in items)


def modules(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise g.Invalid("a list of module paths", value)
    out = []
    for item in value:
        path = g.check_path(item, "a module path")
        if not path.endswith(".so"):
            raise g.Invalid("a module path ending in .so", item)
        out.append(path)
    return tuple(out)


def image(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value):
        raise g.Invalid("a Docker image reference such as nginx:stable", value)
    return value


def container(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", value):
        raise g.Invalid("a container name or id", value)
    return value


def docker_host(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(unix|tcp|ssh|npipe)://[^\s]*", value):
        raise g.Invalid("a Docker host URL such as unix:///var/run/docker.sock or ssh://user@lb1", value)
    return value


def path_text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise g.Invalid("a path (text)", value)
    return value


def variables(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise g.Invalid("a mapping of NAME: VALUE (values for custom templates)", value)
    return {g.check_name(k, "a variable name"): g.parse_token(v) for k, v in value.items()}


_ETCD_PREFIX = re.compile(r"/[A-Za-z0-9._/@+:=-]*\Z")
_ENDPOINT = re.compile(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})/?\Z")


def probe_text(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > 1024:
        raise g.Invalid("text of 1 to 1024 bytes (quote it; \\r\\n in double quotes are CR LF)", value)
    return value


def discover(value: Any) -> tuple[str, str | None]:
    """`docker`, or `{etcd: /prefix/}` -> (source, prefix)."""
    expected = "docker, or a mapping {etcd: /key/prefix/}"
    if isinstance(value, list):
        raise g.Invalid("one source per group, docker or {etcd: /key/prefix/}, not a list (a group discovers from "
                        "one source; list fixed backends under servers:)", value)
    if value == "docker":
        return ("docker", None)
    if isinstance(value, dict) and list(value) == ["etcd"]:
        prefix = value["etcd"]
        if not isinstance(prefix, str) or not _ETCD_PREFIX.match(prefix) or len(prefix) < 2:
            raise g.Invalid("an etcd key prefix starting with / (letters, digits and ._/@+:=-), e.g. "
                            "/services/netty_pool/", prefix)
        return ("etcd", prefix)
    raise g.Invalid(expected, value)


def discovery(value: Any) -> tuple[str, ...]:
    """`{etcd: {endpoints: [http://127.0.0.1:2379]}}` -> the endpoints."""
    expected = "a mapping {etcd: {endpoints: [http://HOST:PORT, ...]}}"
    if not isinstance(value, dict) or set(value) - {"etcd"}:
        raise g.Invalid(expected, value)
    etcd = value.get("etcd")
    if not isinstance(etcd, dict) or set(etcd) != {"endpoints"}:
        raise g.Invalid(expected, etcd)
    endpoints = etcd["endpoints"]
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not endpoints:
        raise g.Invalid("a non-empty list of etcd endpoints http://HOST:PORT", endpoints)
    for endpoint in endpoints:
        m = _ENDPOINT.match(endpoint) if isinstance(endpoint, str) else None
        if not m or not 1 <= int(m.group(3)) <= 65535:
            raise g.Invalid("an etcd endpoint http://HOST:PORT or https://HOST:PORT", endpoint)
    return tuple(e.rstrip("/") for e in endpoints)


def vip(value: Any) -> tuple[str, str, str]:
    """`10.254.7.100/24` or `2001:db8::64/64` -> (canonical address/prefix, address, family)."""
    expected = ("the virtual IP with its prefix length, e.g. 10.254.7.100/24 (the address the clients dial and the "
                "length of the network it is on)")
    if not isinstance(value, str) or "/" not in value or not re.fullmatch(r"[0-9A-Fa-f.:]+/[0-9]{1,3}", value):
        raise g.Invalid(expected, value)
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise g.Invalid(expected, value) from None
    ip = iface.ip
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_reserved:
        raise g.Invalid("a unicast virtual IP (not multicast, loopback, link-local, reserved or 0.0.0.0)", value)
    net = iface.network
    if net.num_addresses > 2 and ip in (net.network_address, getattr(net, "broadcast_address", None)):
        raise g.Invalid(f"an address inside {net.with_prefixlen}, not its network or broadcast address", value)
    family = "inet" if ip.version == 4 else "inet6"
    return iface.with_prefixlen, str(ip), family


def interface(value: Any) -> str:
    # Linux names: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace; these characters are always safe.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}", value):
        raise g.Invalid("a network interface name of at most 15 letters, digits and _.- (e.g. eth0), as named in "
                        "the target's network namespace", value)
    return value


def advert_interval(value: Any) -> g.Duration:
    duration = g.parse_duration(value)
    if duration.ms < 1000:
        raise g.Invalid("an advert interval of at least 1s (VRRP version 2 counts whole seconds)", value)
    if duration.ms % 1000 or duration.ms > 255_000:
        raise g.Invalid("a whole number of seconds from 1s to 255s (VRRP version 2 carries whole seconds in "
                        "8 bits)", value)
    return g.Duration(f"{duration.ms // 1000}s", duration.ms)


# `rebalance:` (the CLI's --rate and --tolerance take the same words; written in an inventory, plain decimals only,
# so that the JSON Schema's patterns say exactly what loads)
_RATE_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:/s)?\Z")
_PERCENT_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?%?\Z")


def rate(value: Any) -> float:
    if isinstance(value, str) and not _RATE_TEXT.match(value):
        raise g.Invalid("closes per second such as 20/s or 20", value)
    return g.parse_rate(value)


def percent(value: Any) -> float:
    if isinstance(value, str) and not _PERCENT_TEXT.match(value):
        raise g.Invalid("a percentage such as 10% or 10", value)
    return g.parse_percent(value)


def settle_time(value: Any) -> g.Duration:
    duration = g.parse_duration(value)
    if duration.ms < 1000:
        raise g.Invalid("a duration of at least 1s, such as 30s", value)
    return duration
