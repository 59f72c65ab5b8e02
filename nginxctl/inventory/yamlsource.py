"""YAML text -> plain Python data plus the 1-based line/column of every key and value.

PyYAML keeps the last of two equal keys without a word; this walker reports them. It builds
the data from PyYAML's node graph so that each key path keeps the position it came from.

Inventories come from pull requests, so the text is untrusted: a few hundred bytes of nested
aliases ("billion laughs") expand to 10^9 values. The node graph PyYAML composes shares each
aliased node, so its expanded size is counted first, linearly, and a document beyond the
limits below is refused before anything is expanded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InventoryError, Location, Problem
from ..lazy import lazy_import

KeyPath = tuple[Any, ...]
# libyaml's parser when PyYAML has it (about 5x faster on large inventories), with the same marks.
if TYPE_CHECKING:
    import yaml
else:
    yaml = lazy_import("yaml")  # `nginxctl --help` and `schema` parse no YAML


def yaml_loader() -> Any:
    """libyaml's loader when PyYAML has it (same marks, faster), else the pure-Python one."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"

# An inventory of 10,000 groups with 10 servers each is 2.6 MB and 230,000 values: these limits
# leave room for several times that, and refuse an alias bomb as soon as its graph is counted.
MAX_BYTES = 8 * 1024 * 1024
MAX_NODES = 1_000_000
MAX_DEPTH = 64  # the inventory's own structure is 6 levels deep


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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a node graph that expands to more than MAX_NODES values, nests deeper than MAX_DEPTH, or
    contains itself through an alias. Linear in the graph: each shared node is counted once and its
    expanded size remembered. Raises InventoryError located at the offending node."""
    def refuse(node: yaml.Node, message: str) -> InventoryError:
        return InventoryError([Problem(Location(source, *_mark(node)), "", message)])

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_NODES:
                raise refuse(node, f"expected at most {MAX_NODES:,} values once YAML aliases are expanded, "
                             "got more from here: each *name repeats all that &name marks, and nested aliases "
                             "multiply (an alias bomb)")
            sizes[id(node)] = size
            continue
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise refuse(node, f"expected at most {MAX_DEPTH} levels of nesting, got more")
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise refuse(child, "expected a tree, got an alias to a node that contains it (a recursive "
                             "structure)")
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))


class _Walker:
    def __init__(self, loader: Any, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.problems: list[Problem] = []

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(Location(self.positions.source, *_mark(node)), format_path(path), message))

    def _pairs(self, node: yaml.MappingNode, path: KeyPath) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """The mapping's (key, value, merged) pairs: `<<` merges first, in the order in which the last one
        wins (an earlier merged mapping wins over a later one), then the mapping's own keys, which win."""
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        own: list[tuple[yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in reversed(sources):
                if isinstance(source, yaml.MappingNode):
                    merged.extend((k, v, True) for k, v, _ in self._pairs(source, path))
                else:
                    self._problem(source, path, "expected a mapping (or a list of mappings) after '<<', got "
                                  + ("a list" if isinstance(source, yaml.SequenceNode) else repr(source.value)))
        return merged + own

    def _scalar(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") \
                and ":" in str(node.value):
            # YAML 1.1 reads 1:30 as the base-60 number 90: keep the text, which no value grammar accepts
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError:
            # e.g. an integer of more than 4300 digits, a date like 2024-13-01: keep the text, which the
            # key's own rule then refuses with what it expects
            return node.value

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            own: set[str] = set()
            for key_node, value_node, merged in self._pairs(node, path):
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(key_node, path, "expected a plain key (text), got a complex key")
                    continue
                # Every key is a name (a group, a setting, a variable): the text as written. YAML 1.1 would
                # read `yes`/`on` as true, `null`/`~` as None and `0x1f` as 31. Constructing the key still
                # refuses a tag PyYAML does not know, as it does for values.
                self._scalar(key_node)
                key = key_node.value
                if not merged and key in own:
                    first = self.positions.keys[path + (key,)]
                    self._problem(key_node, path + (key,), f"duplicate key '{key}' (first set on line "
                                  f"{first[0]}); YAML would silently keep only the last one: remove one of them")
                    continue
                if not merged:  # a key of the mapping itself overrides what `<<` merged in
                    own.add(key)
                self.positions.keys[path + (key,)] = _mark(key_node)
                out[key] = self.walk(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node)


def parse_yaml(text: str, source: str) -> tuple[Any, Positions, list[Problem]]:
    """Parse one YAML document into (data, positions, duplicate-key problems).

    Raises InventoryError for syntax errors and for text beyond the limits (MAX_BYTES, MAX_NODES,
    MAX_DEPTH). A duplicate key is reported and its first value kept, so that the rest of the document
    is still checked.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise InventoryError([Problem(Location(source, 1, 1), "", f"expected a file of at most {MAX_BYTES:,} "
                                      f"bytes ({MAX_BYTES // 1024 ** 2} MiB), got {size:,} bytes")])
    positions = Positions(source)
    loader = yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions, []
        check_expansion(node, source)
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
