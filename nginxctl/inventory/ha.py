"""The inventory's `ha:` section: a virtual IP over the fleet (keepalived/VRRP), each target's priority, and
the rules that tie the groups' `listen` to the virtual IP's family."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import grammar as gr
from .collect import Report, mapping, section
from .model import HA, Group, NamedTarget
from .schema import HA_KEYS, HA_PRIORITY_TOP
from .yamlsource import KeyPath

_WILDCARDS = {None, "*", "0.0.0.0", "[::]"}
_LOOPBACK = {"127.0.0.1", "[::1]"}


def default_priorities(count: int) -> list[int]:
    """200, 190, 180, ... in the order of `targets:`; closer together beyond 20 targets, never below 1."""
    step = max(1, min(10, (HA_PRIORITY_TOP - 1) // max(1, count - 1)))
    return [max(1, HA_PRIORITY_TOP - step * i) for i in range(count)]


def ha_section(data: dict[str, Any], fleet: list[NamedTarget], groups: list[Group], report: Report) \
        -> tuple[HA | None, list[NamedTarget]]:
    """`ha:`: the virtual IP over the fleet, and each target's VRRP priority (its own or the default order)."""
    raw_targets: list[Any] = data["targets"] if isinstance(data.get("targets"), list) else []
    if "ha" not in data:
        for i, item in enumerate(raw_targets):
            if isinstance(item, dict) and "priority" in item:
                report(("targets", i, "priority"), "priority only applies with ha: (a virtual IP over the fleet): "
                       "remove it, or add ha: {vip: ..., virtual_router_id: ...}", key=True)
        return None, fleet
    before = len(report.problems)
    raw = section(data, "ha", report)
    parsed = mapping(raw, ("ha",), HA_KEYS, report, "ha", ("vip", "virtual_router_id")) if raw else None
    if not raw and before == len(report.problems):
        report(("ha",), "expected a mapping {vip: 10.254.7.100/24, virtual_router_id: 51, ...}, got "
               f"{gr.describe(data.get('ha'))}")
    if "targets" not in data:
        report(("ha",), "ha: needs a fleet: a virtual IP moves between load balancers, so list at least two under "
               "targets: (instead of target:), e.g. targets: [{name: lb1, container: lb1}, {name: lb2, container: "
               "lb2}]", key=True)
    elif len(raw_targets) == 1:
        report(("ha",), "ha: needs at least two targets, got one: add the load balancer that takes the virtual IP "
               "over when this one fails, or remove ha:", key=True)
    if parsed is None or len(report.problems) > before:
        return None, fleet
    vip, address, family = parsed.pop("vip")
    ha = HA(vip=vip, address=address, family=family, **parsed)
    if family == "inet6" and ha.advert_seconds > 40:
        report(("ha", "advert_interval"), f"expected an advert interval of at most 40s with an IPv6 virtual IP (VRRP "
               f"version 3 carries centiseconds in 12 bits), got {ha.advert_interval}")
    other = "IPv6" if family == "inet" else "IPv4"
    for group in groups:
        for listen in group.listen:
            if listen.kind not in ("inet", "inet6") or listen.host in _WILDCARDS or listen.host in _LOOPBACK:
                if listen.port == ha.health_port and group.protocol == "tcp" and listen.host not in ("[::]", "[::1]"):
                    if "health_port" in raw:
                        report(("ha", "health_port"), f"port {ha.health_port} is also the listen of group "
                               f"'{group.name}' ({listen.text}): choose another health_port (the health listener "
                               "is nginxctl's)")
                    else:
                        report(("upstreams", group.name, "listen"), f"listen {listen.text} takes port "
                               f"{ha.health_port}, the default ha.health_port (nginx's health listener for "
                               "keepalived): listen elsewhere, or set ha.health_port to a free port")
                continue
            bare = listen.host.strip("[]") if listen.host else ""
            if bare == address:
                ha = replace(ha, nonlocal_bind=True)
                continue
            port = listen.port
            on_vip = address if family == "inet" else f"[{address}]"
            sysctl = f"net.{'ipv4' if family == 'inet' else 'ipv6'}.ip_nonlocal_bind"
            advice = (f"listen on the port alone ({port}), or on the virtual IP ({on_vip}:{port}; nginxctl then lets "
                      f"nginx bind it with {sysctl} on every target, so a standby listens on an address it does not "
                      "hold yet)")
            if (listen.kind == "inet") != (family == "inet"):
                why = f"is an {other} address, but ha.vip {vip} is {'IPv4' if family == 'inet' else 'IPv6'}"
            else:
                why = (f"names an address of one load balancer, but with ha: every target runs this config and "
                       f"clients dial the virtual IP {address}")
            report(("upstreams", group.name, "listen"), f"listen {listen.text} {why}: {advice}")
    priorities = default_priorities(len(fleet))
    out: list[NamedTarget] = []
    owner: dict[int, str] = {}
    for i, target in enumerate(fleet):
        explicit = target.priority is not None
        written = i < len(raw_targets) and isinstance(raw_targets[i], dict) and "priority" in raw_targets[i]
        priority: int = target.priority if target.priority is not None else priorities[i]
        if written and not explicit:   # its value was refused (said already): no default to compare
            out.append(target)
            continue
        if priority in owner:
            where: KeyPath = ("targets", i, "priority") if explicit else ("targets", i)
            report(where, f"priority {priority} is also the priority of target '{owner[priority]}'"
                   f"{'' if explicit else ' (this one is the default for its place in targets:)'}: give each "
                   "target its own priority, or none (200, 190, ... in the order of targets:)")
        owner.setdefault(priority, target.name)
        out.append(replace(target, priority=priority))
    return ha, out
