"""Collecting an inventory's problems: a report that locates each one (file, line, key path), and one mapping
checked against its key table (unknown keys with a did-you-mean, values through their parsers, defaults)."""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import Problem
from . import grammar as gr
from .schema import Key
from .yamlsource import KeyPath, Positions, format_path


class Report:
    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        self.problems: list[Problem] = []

    def __call__(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(self.positions.locate(path, key=key), format_path(path), message))


def mapping(value: Any, path: KeyPath, keys: list[Key], report: Report, what: str,
             required: tuple[str, ...] = (), use_defaults: bool = True) -> dict[str, Any] | None:
    """Check one mapping against its key table; return parsed values (None: not a mapping)."""
    if not isinstance(value, dict):
        report(path, f"expected a mapping, got {gr.describe(value)}")
        return None
    by_name = {k.name: k for k in keys}
    out: dict[str, Any] = {}
    for name, raw in value.items():
        key = by_name.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(by_name)}"
            report(path + (name,), f"unknown key '{name}' in {what}{hint}", key=True)
            continue
        try:
            out[name] = key.parse(raw)
        except gr.Invalid as exc:
            report(path + (name,), str(exc))
    for name in required:
        if name not in value:
            report(path, f"missing required key '{name}' in {what}")
    if use_defaults:
        for key in keys:
            if key.default is not None and key.name not in out and key.name not in value:
                out[key.name] = key.parse(key.default)
    return out


def section(data: dict[str, Any], name: str, report: Report) -> dict[str, Any]:
    """A top-level mapping (`defaults`, `nginx`, `target`): absent or empty (null) is {}."""
    raw = data.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        report((name,), f"expected a mapping, got {gr.describe(raw)}")
        return {}
    return raw
