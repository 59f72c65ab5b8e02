"""YAML text -> plain Python data plus the 1-based line/column of every key and value.

PyYAML keeps the last of two equal keys without a word; this walker reports them. It builds
the data from PyYAML's node graph so that each key path keeps the position it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import InventoryError, Location, Problem

KeyPath = tuple[Any, ...]
# libyaml's parser when PyYAML has it (about 5x faster on large inventories), with the same marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def format_path(path: KeyPath) -> str:
    """('upstreams', 'pool', 'servers', 1, 'weight') -> 'upstreams.pool.servers[1].weight'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Positions:
    """Where each value (and each mapping key) of a document sits."""

    source: str
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> Location:
        """The position of `path` (of its key when `key`), else of its nearest known ancestor."""
        if key and path in self.keys:
            return Location(self.source, *self.keys[path])
        while path and path not in self.values:
            path = path[:-1]
        if path in self.values:
            return Location(self.source, *self.values[path])
        return Location(self.source)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Walker:
    def __init__(self, loader: Any, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.problems: list[Problem] = []

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, bool, float)) or key is None:
                    self.problems.append(Problem(
                        Location(self.positions.source, *_mark(key_node)), format_path(path),
                        "expected a plain key (text), got a complex key"))
                    continue
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    first = self.positions.keys[path + (key,)]
                    self.problems.append(Problem(
                        Location(self.positions.source, *_mark(key_node)), format_path(path + (key,)),
                        f"duplicate key '{key}' (first set on line {first[0]}); YAML would silently keep "
                        "only the last one: remove one of them"))
                    continue
                self.positions.keys[path + (key,)] = _mark(key_node)
                out[key] = self.walk(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def parse_yaml(text: str, source: str) -> tuple[Any, Positions, list[Problem]]:
    """Parse one YAML document into (data, positions, duplicate-key problems).

    Raises InventoryError for syntax errors. A duplicate key is reported and its first value kept,
    so that the rest of the document is still checked.
    """
    positions = Positions(source)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions, []
        walker = _Walker(loader, positions)
        data = walker.walk(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise InventoryError([Problem(loc, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise InventoryError([Problem(Location(source), "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return data, positions, walker.problems
