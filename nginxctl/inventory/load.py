"""Inventory text -> validated `Inventory`, or one InventoryError listing every problem found.

Pure: takes the text, a name for messages and, for capacity, the machine nginx runs on (data);
reads no file. Rules are checked in one pass and all failures are collected, so a user fixing a
file sees every problem at once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import capacity
from ..errors import InventoryError, Location, Problem
from . import grammar as gr
from .collect import Report, mapping, section
from .ha import ha_section
from .model import Group, HealthCheck, Inventory, NamedTarget, NginxSettings, Server, Target
from .rebalance import group_rebalance, parse_rebalance
from .schema import (
    FLEET_TARGET_KEYS,
    GROUP_KEYS,
    HEALTH_KEYS,
    NGINX_KEYS,
    NOT_DEFAULTABLE,
    SERVER_KEYS,
    TARGET_KEYS,
    TOP_KEYS,
)
from .yamlsource import KeyPath, Positions, parse_yaml

BACKUP_UNSUPPORTED = {"hash", "random", "random_two_least_conn"}


def _server(raw: Any, path: KeyPath, report: Report) -> Server | None:
    if isinstance(raw, str):  # `- 10.0.0.5:6666` is short for {address: 10.0.0.5:6666}
        try:
            return Server(address=gr.parse_server_address(raw))
        except gr.Invalid as exc:
            report(path, str(exc))
            return None
    if not isinstance(raw, dict):
        report(path, f"expected a server address or a mapping, got {gr.describe(raw)}")
        return None
    parsed = mapping(raw, path, SERVER_KEYS, report, "a server", ("address",))
    if parsed is None or "address" not in parsed:
        return None
    return Server(**parsed)


def _group(name: str, raw: Any, defaults: dict[str, Any], path: KeyPath, report: Report) -> Group | None:
    before = len(report.problems)
    parsed = mapping(raw, path, GROUP_KEYS, report, f"group '{name}'", ("listen",), use_defaults=False)
    if parsed is None:
        return None
    raw_keys = set(raw)
    discover = parsed.pop("discover", None)
    raw_health = parsed.pop("health_check", None)
    parsed.pop("rebalance", None)
    if raw_health is None and "health_check" in defaults and "health_check" not in raw:
        raw_health = defaults["health_check"]
        health_path: KeyPath = ("defaults", "health_check")
    else:
        health_path = path + ("health_check",)
    if "servers" not in raw_keys and "discover" not in raw_keys:
        report(path, f"missing required key 'servers' in group '{name}' (or 'discover', for servers found at "
               "run time)")
    merged = {**{k: v for k, v in defaults.items() if k not in ("health_check", "rebalance")}, **parsed}
    for key in GROUP_KEYS:  # the table's defaults come last: inventory `defaults:` win over them
        if key.default is not None and key.name not in merged and key.name not in raw_keys:
            merged[key.name] = key.parse(key.default)
    servers_raw = merged.pop("servers", None)
    servers: list[Server] = []
    if "servers" in raw_keys:
        if servers_raw in (None, []) and discover is not None:
            pass  # a discovering group may list no server of its own
        elif not isinstance(servers_raw, list) or not servers_raw:
            report(path + ("servers",), f"expected a non-empty list of servers, got {gr.describe(servers_raw)}")
        else:
            for i, item in enumerate(servers_raw):
                server = _server(item, path + ("servers", i), report)
                if server is not None:
                    servers.append(server)
    if len(report.problems) > before:
        return None  # a key of the group is wrong: cross-key rules would only echo it
    if merged.get("proxy_timeout") is None:
        merged["proxy_timeout"] = gr.parse_duration("30s" if merged["protocol"] == "udp" else "1h")
    health = _health(raw_health, health_path, merged.get("protocol", "tcp"), report) if raw_health is not None \
        else None
    rebalance = group_rebalance(raw, merged, defaults.get("rebalance"), path, report)
    if len(report.problems) > before:
        return None
    group = Group(name=name, servers=tuple(servers), health_check=health, discover=discover[0] if discover else None,
                  discover_prefix=discover[1] if discover else None, rebalance=rebalance, **merged)
    for rule in GROUP_RULES:
        rule(group, raw, path, report)
    return group


def _health(raw: Any, path: KeyPath, protocol: str, report: Report) -> HealthCheck | None:
    """A group's health_check mapping, with its own rules, each located at its key."""
    before = len(report.problems)
    parsed = mapping(raw, path, HEALTH_KEYS, report, "the health check")
    if parsed is None or len(report.problems) > before:
        return None
    keys = set(raw)
    if "interval" in parsed and "timeout" in parsed and parsed["timeout"].ms >= parsed["interval"].ms:
        report(path + ("timeout" if "timeout" in keys else "interval",),
               f"timeout ({parsed['timeout']}) must be shorter than interval ({parsed['interval']}): a check must end "
               "before the next one starts")
    if parsed["timeout"].ms < 10:
        report(path + ("timeout",), f"expected a timeout of at least 10ms, got {parsed['timeout']}")
    if parsed.get("interval") is not None and parsed["interval"].ms < 100:
        report(path + ("interval",), f"expected an interval of at least 100ms, got {parsed['interval']}")
    if "expect" in parsed and "send" not in parsed:
        report(path + ("expect",), "expect needs send: the check sends `send` and waits for a reply containing "
               "`expect` (without both, a check is a TCP connect)")
    if protocol == "udp" and not ("send" in parsed and "expect" in parsed):
        report(path, "a udp group is checked only with send and expect (a datagram and its reply): a UDP "
               "'connect' proves nothing")
    if len(report.problems) > before:
        return None
    return HealthCheck(**parsed)


# --- rules across keys: each one is a mistake nginx -t lets through or reports without a location ---

def _rule_usable_server(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    if group.discover is not None:
        return  # its usable servers come and go at run time (nginxctl watch)
    if len(group.servers) != len(raw.get("servers") or []) or any(s.usable for s in group.servers):
        return
    if group.allow_no_primary and any(not s.backup for s in group.servers) \
            and any(s.backup and not s.down for s in group.servers):
        return  # every primary drained on purpose: nginx sends new connections to the backups
    report(path + ("servers",), "no usable server: every server is backup or down; at least one must "
           "be neither, or nginx has nowhere to send new connections (allow_no_primary: true lets "
           "backups serve alone while every primary is down)")


def _rule_backup_balance(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    if group.balance in BACKUP_UNSUPPORTED:
        for i, server in enumerate(group.servers):
            if server.backup:
                report(path + ("servers", i, "backup"),
                       f"backup servers do not work with balance: {group.balance} (nginx ignores or rejects "
                       "them depending on directive order); use least_conn or round_robin, or drop backup")


def _rule_hash_key(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    if group.balance == "hash" and not group.hash_key:
        report(path + ("balance",), "balance: hash needs hash_key, e.g. hash_key: $remote_addr")
    if group.balance != "hash":
        for key in ("hash_key", "consistent"):
            if key in raw and (key != "consistent" or group.consistent):
                report(path + (key,), f"{key} only applies to balance: hash (this group balances "
                       f"{group.balance}); remove it or set balance: hash")


def _rule_udp_only_tcp_only(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    if group.protocol == "tcp" and group.proxy_responses is not None:
        report(path + ("proxy_responses",), "proxy_responses only applies to protocol: udp; nginx would "
               "ignore it here")
    if group.protocol == "udp":
        for key in ("backlog", "so_keepalive", "proxy_protocol"):
            if raw.get(key) not in (None, False):
                report(path + (key,), f"{key} only applies to protocol: tcp")


def _rule_next_upstream(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    if group.proxy_next_upstream is False:
        for key in ("proxy_next_upstream_tries", "proxy_next_upstream_timeout"):
            if key in raw:
                report(path + (key,), f"{key} has no effect with proxy_next_upstream: false")


def _rule_duplicate_servers(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    seen: dict[str, int] = {}
    for i, server in enumerate(group.servers):
        text = server.address.text
        if text in seen:
            report(path + ("servers", i), f"server {text} is listed twice (also servers[{seen[text]}]); nginx "
                   "would silently double its share: list it once and use weight")
        seen.setdefault(text, i)


def _rule_duplicate_listens(group: Group, raw: Any, path: KeyPath, report: Report) -> None:
    seen: set[tuple[Any, ...]] = set()
    for address in group.listen:
        key = gr.listen_key(address, group.protocol)
        if key in seen:
            report(path + ("listen",), f"listen {address.text} is given twice in this group")
        seen.add(key)


GROUP_RULES: list[Callable[[Group, Any, KeyPath, Report], None]] = [
    _rule_usable_server, _rule_backup_balance, _rule_hash_key, _rule_udp_only_tcp_only,
    _rule_next_upstream, _rule_duplicate_servers, _rule_duplicate_listens,
]


def _rule_listens_unique(groups: list[Group], report: Report) -> None:
    owner: dict[tuple[Any, ...], str] = {}
    for group in groups:
        for address in group.listen:
            key = gr.listen_key(address, group.protocol)
            if key in owner and owner[key] != group.name:
                report(("upstreams", group.name, "listen"),
                       f"listen {address.text} ({group.protocol}) is already used by group '{owner[key]}'; "
                       "two groups cannot share one address, port and protocol")
            owner.setdefault(key, group.name)


def inventory_digest(data: Any) -> str:
    """sha256 of the inventory as data: comments, layout and key order do not change it, and neither
    does a new nginxctl version adding fields to the model."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _nginx_reads(data: dict[str, Any]) -> dict[str, Any]:
    """The inventory without what nginx's config does not depend on: where it runs (`target:`, `targets:`), the
    keepalived beside it (`ha:`: what nginx sees of it is rendered in the config itself) and how the watch
    rebalances (`rebalance:` of a group or of `defaults:`). Editing only those is no reload."""
    def bare(section: Any) -> Any:
        return {k: v for k, v in section.items() if k != "rebalance"} if isinstance(section, dict) else section

    out = {k: v for k, v in data.items() if k not in ("target", "targets", "ha")}
    if isinstance(out.get("upstreams"), dict):
        out["upstreams"] = {name: bare(group) for name, group in out["upstreams"].items()}
    if "defaults" in out:
        out["defaults"] = bare(out["defaults"])
    return out


def _safe_source(source: str) -> str:
    name = source.replace("\\", "/").rsplit("/", 1)[-1] or "inventory"
    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", name)


def _capacity_path(setting: str, parsed: dict[str, Any], groups: list[Group]) -> KeyPath:
    """Where a capacity problem about `setting` is reported: the key the user set, else its section."""
    if setting == "zone_size":
        group = max(groups, key=lambda g: g.zone_size.bytes if g.zone_size else 0, default=None)
        return ("upstreams", group.name, "zone_size") if group else ("upstreams",)
    if setting == "max_connections" and "max_connections" not in parsed:
        group = next((g for g in groups if g.max_connections), None)
        return ("upstreams", group.name, "max_connections") if group else ("nginx",)
    return ("nginx", setting) if setting in parsed else ("nginx",)


def _nginx(raw: dict[str, Any], groups: list[Group], report: Report, machine: capacity.Machine | None) \
        -> NginxSettings:
    before = len(report.problems)
    parsed = mapping(raw, ("nginx",), NGINX_KEYS, report, "the nginx settings")
    if parsed is None or len(report.problems) > before:
        return NginxSettings()
    intent = parsed.get("max_connections")
    group_intent = [g.max_connections for g in groups if g.max_connections]
    if intent is None and group_intent:
        intent = sum(group_intent)
    buffer = capacity.BUFFER_BY_WORKLOAD[parsed["workload"]]
    buffer_size = gr.parse_size(buffer) if buffer else None
    biggest = max([g.proxy_buffer_size.bytes for g in groups if g.proxy_buffer_size]
                  + [buffer_size.bytes if buffer_size else capacity.NGINX_DEFAULT_BUFFER])
    try:
        plan = capacity.plan(
            max_connections=intent, worker_processes=parsed["worker_processes"],
            worker_connections=parsed.get("worker_connections"),
            worker_rlimit_nofile=parsed.get("worker_rlimit_nofile"), fd_limit=parsed["fd_limit"],
            buffer_bytes=biggest, memory_limit=parsed["memory_limit"].bytes if "memory_limit" in parsed else None,
            listeners=sum(len(g.listen) for g in groups),
            zone_bytes=sum(g.zone_size.bytes for g in groups if g.zone_size), machine=machine)
    except capacity.CapacityError as exc:
        for setting, message in exc.problems:
            report(_capacity_path(setting, parsed, groups), message)
        return NginxSettings()
    parsed.update(worker_processes=plan.worker_processes, worker_connections=plan.worker_connections,
                  worker_rlimit_nofile=plan.worker_rlimit_nofile, max_connections=intent,
                  proxy_buffer_size=buffer_size, notes=plan.notes)
    return NginxSettings(**parsed)


def _fleet(data: dict[str, Any], report: Report) -> list[NamedTarget]:
    """`targets:`: a list of named targets, names and containers unique; not together with `target:`."""
    raw = data.get("targets")
    if raw is None:
        return []
    if data.get("target"):
        report(("targets",), "use either target: (one load balancer) or targets: (a fleet), not both", key=True)
    if not isinstance(raw, list) or not raw:
        report(("targets",), f"expected a non-empty list of targets ({{name: lb1, container: lb1}}), got "
               f"{gr.describe(raw)}")
        return []
    out: list[NamedTarget] = []
    seen: dict[tuple[str, Any], int] = {}
    for i, item in enumerate(raw):
        parsed = mapping(item, ("targets", i), FLEET_TARGET_KEYS, report, "a target", ("name", "container"))
        if parsed is None or "name" not in parsed or "container" not in parsed:
            continue
        for key in (("name", parsed["name"]), ("container", (parsed["container"], parsed.get("docker_host")))):
            if key in seen:
                report(("targets", i, key[0]), f"{key[0]} {parsed[key[0]]!r} is also target {seen[key] + 1}: each "
                       "load balancer once")
            seen[key] = i
        out.append(NamedTarget(**parsed))
    return out


def parse_inventory(text: str, source: str = "inventory.yaml", *, machine: capacity.Machine | None = None) \
        -> Inventory:
    """Validate inventory text. Raises InventoryError with every problem, located in `source`.

    Capacity is planned with the inventory's own limits (nginx.fd_limit, nginx.memory_limit); `machine`
    (where nginx runs) also refuses intents beyond its memory or its CPUs (at most Machine.max_workers derived
    workers): the same as `check_capacity(parse_inventory(text, source), machine)`.
    """
    data, positions, duplicates = parse_yaml(text, source)
    report = Report(positions)
    report.problems.extend(duplicates)
    if data is None or data == "":
        raise InventoryError([Problem(Location(source, 1, 1), "", "the inventory is empty: expected a mapping "
                                      "with an 'upstreams:' key (see `nginxctl schema` or the README)")])
    if not isinstance(data, dict):
        report((), f"expected a mapping with an 'upstreams:' key, got {gr.describe(data)}")
        raise InventoryError(report.problems)
    top = mapping(data, (), TOP_KEYS, report, "the inventory", ("upstreams",))
    assert top is not None

    raw_defaults = section(data, "defaults", report)
    for name in NOT_DEFAULTABLE & set(raw_defaults):
        report(("defaults", name), f"'{name}' cannot be a default: each group sets its own", key=True)
    defaults = mapping({k: v for k, v in raw_defaults.items() if k not in NOT_DEFAULTABLE}, ("defaults",),
                        [k for k in GROUP_KEYS if k.name not in NOT_DEFAULTABLE], report, "the defaults",
                        use_defaults=False) or {}
    if "rebalance" in defaults:   # checked once here; each group it applies to takes it (`group_rebalance`)
        defaults["rebalance"] = parse_rebalance(defaults["rebalance"], ("defaults", "rebalance"), report)

    groups: list[Group] = []
    upstreams = data.get("upstreams")
    if "upstreams" in data:
        if not isinstance(upstreams, dict) or not upstreams:
            report(("upstreams",), f"expected a mapping of NAME: group with at least one group, "
                   f"got {gr.describe(upstreams)}")
        else:
            for name, raw in upstreams.items():
                path: KeyPath = ("upstreams", name)
                try:
                    gr.check_name(name, "an upstream name")
                except gr.Invalid as exc:
                    report(path, str(exc), key=True)
                    continue
                group = _group(name, raw, defaults, path, report)
                if group is not None:
                    groups.append(group)
            _rule_listens_unique(groups, report)

    nginx = _nginx(section(data, "nginx", report), groups, report, machine)
    target_raw = mapping(section(data, "target", report), ("target",), TARGET_KEYS, report, "the target")
    fleet = _fleet(data, report)
    ha, fleet = ha_section(data, fleet, groups, report)
    if report.problems:
        raise InventoryError(report.problems)
    endpoints = top.get("discovery", ())
    for group in groups:
        if group.discover == "etcd" and not endpoints:
            report(("upstreams", group.name, "discover"), "discover: {etcd: ...} needs the etcd endpoints: add "
                   "discovery: {etcd: {endpoints: [http://127.0.0.1:2379]}} at the top of the inventory")
    if report.problems:
        raise InventoryError(report.problems)
    target = fleet[0] if fleet else Target(**(target_raw or {}))
    content = {"upstreams": groups, "nginx": nginx, "target": target, "targets": tuple(fleet),
               "templates": top.get("templates"), "vars": top.get("vars", {}), "discovery_etcd_endpoints": endpoints,
               "ha": ha}
    inv = Inventory(source=_safe_source(source), digest=inventory_digest(data), positions=positions, data=data,
                    config_digest=inventory_digest(_nginx_reads(data)), **content)
    return inv if machine is None else check_capacity(inv, machine)


def check_capacity(inv: Inventory, machine: capacity.Machine) -> Inventory:
    """The inventory with its capacity planned for `machine` (where nginx runs: the Docker engine's, or this
    machine's for `render`): intents beyond its memory or its CPUs are refused. The second of two steps
    (parse, then check against a machine): the text is not parsed again. Raises InventoryError, located."""
    if inv.data is None or inv.positions is None:
        return inv
    report = Report(inv.positions)
    nginx = _nginx(section(inv.data, "nginx", report), list(inv.upstreams), report, machine)
    if report.problems:
        raise InventoryError(report.problems)
    return replace(inv, nginx=nginx)


def parse_server(fields: Any, source: str) -> Server:
    """One server given as data (a discovered backend: Docker labels, an etcd value), through the same
    grammar as an inventory's server. Raises InventoryError naming `source`."""
    report = Report(Positions(source))
    server = _server(fields, (), report)
    if report.problems or server is None:
        raise InventoryError(report.problems or [Problem(Location(source), "", "not a server")])
    return server
