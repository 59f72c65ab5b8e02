"""A group's `rebalance:` key (or `defaults.rebalance`): `nginxctl watch` rebalances the group by itself once
its membership has been stable for `after`. The values, each located at its key, and the groups it cannot
apply to."""

from __future__ import annotations

import re
from typing import Any

from . import grammar as gr
from .collect import Report, mapping
from .model import Rebalance
from .schema import REBALANCE_KEYS
from .yamlsource import KeyPath


def parse_rebalance(raw: Any, path: KeyPath, report: Report) -> Rebalance | None:
    """`rebalance:` at `path`: `false` is off (None), `true` or a mapping (its keys defaulted) is on. A wrong
    value is reported, located, and None returned."""
    if raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        report(path, "expected false, true or a mapping such as {rate: 20/s, tolerance: 10%, after: 30s}, got "
               f"{gr.describe(raw)}")
        return None
    before = len(report.problems)
    parsed = mapping(raw, path, REBALANCE_KEYS, report, "rebalance")
    if parsed is None or len(report.problems) > before:
        return None
    return Rebalance(**parsed)


def cannot_rebalance(group: dict[str, Any]) -> str | None:
    """Why a group (its parsed keys, defaults filled in) cannot be rebalanced, or None when it can."""
    if group.get("protocol") == "udp":
        return ("rebalance moves TCP connections; a UDP group holds none to move (its sessions end on their own "
                "after proxy_timeout): remove rebalance from this group")
    if group.get("balance") == "hash" and not group.get("consistent"):
        return ("rebalance needs balance: hash with consistent: true; with a plain hash nginx remaps almost every "
                "key when the servers change, so there is no fair share to restore and no small set to move")
    if group.get("balance") == "hash":
        # `hash_key` passed the grammar: every `$` starts a known variable, followed by no name character
        other = [name for name in re.findall(r"\$([A-Za-z0-9_]+)", str(group.get("hash_key") or ""))
                 if name not in gr.KEY_VARIABLES]
        if other:
            return (f"rebalance cannot tell the key of a held connection from ${other[0]}: a hash key it can "
                    f"compute is built from ${', $'.join(gr.KEY_VARIABLES)} and plain text")
    return None


def group_rebalance(raw_group: dict[str, Any], group: dict[str, Any], inherited: Rebalance | None,
                    path: KeyPath, report: Report) -> Rebalance | None:
    """The group's own `rebalance:` (checked against the group: an error where it cannot apply), else the
    defaults' (for a group it can apply to; the others are left alone)."""
    if "rebalance" not in raw_group:
        return inherited if inherited is not None and cannot_rebalance(group) is None else None
    at = path + ("rebalance",)
    setting = parse_rebalance(raw_group["rebalance"], at, report)
    why = cannot_rebalance(group) if setting is not None else None
    if why is not None:
        report(at, why)
        return None
    return setting
