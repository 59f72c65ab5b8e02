"""The shape of the package, from its import graph (function-local imports included): no cycle between modules,
the controller never imports the command layer, and the commands that need no engine start without the SDKs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nginxctl

PACKAGE = Path(nginxctl.__file__).parent
COMMAND_LAYER = {"nginxctl.cli", "nginxctl.cliopts", "nginxctl.cliout", "nginxctl.__main__", "nginxctl.workflows",
                 "nginxctl.status", "nginxctl.drain", "nginxctl.reports", "nginxctl.vipstatus"}
HEAVY = ("docker", "requests", "prometheus_client", "etcd3gw", "watchdog")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """module -> the nginxctl modules it imports, anywhere in its body (resolved to modules, not names)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name and target.startswith("nginxctl"):
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    assert _cycles(graph) == []


def test_a_package_and_its_modules_are_not_a_cycle_either():
    # a package's __init__ re-exporting its modules is the one edge allowed into a package from inside it
    graph = _graph()
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    collapsed: dict[str, set[str]] = {}
    for module, edges in graph.items():
        owner = next((p for p in sorted(packages, key=len, reverse=True) if module.startswith(p + ".")
                      and p != "nginxctl"), module)
        collapsed.setdefault(owner, set()).update(
            next((p for p in sorted(packages, key=len, reverse=True) if e.startswith(p + ".") and p != "nginxctl"), e)
            for e in edges)
    for owner in collapsed:
        collapsed[owner].discard(owner)
    assert _cycles(collapsed) == []


def test_the_controller_never_imports_the_command_layer():
    graph = _graph()
    offenders = {m: sorted(graph[m] & COMMAND_LAYER) for m in graph
                 if m.startswith("nginxctl.controller") and graph[m] & COMMAND_LAYER}
    assert offenders == {}


def test_help_render_and_schema_start_without_the_sdks(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("upstreams:\n  a: {listen: 7000, servers: [127.0.0.1:7001]}\n")
    for argv in (["--help"], ["render", "-i", str(inventory)], ["schema"]):
        code = ("import sys, runpy; sys.argv = ['nginxctl', *sys.argv[1:]]\n"
                "try:\n    runpy.run_module('nginxctl', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules and "
                "type(sys.modules[m]).__name__ != '_LazyModule')\n"
                "print('LOADED', loaded, file=sys.stderr)")
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path,
                                timeout=60)
        assert "LOADED []" in result.stderr, (argv, result.stderr[-2000:])


def test_the_command_line_stays_thin():
    """Every command of cli.py loads, calls one library function and prints: a body of at most 20 lines, no
    import inside a function, and no module of the package past ~500 lines (split it by job instead)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    commands = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in f.decorator_list)]
    assert len(commands) >= 11
    for func in commands:
        first = func.body[1] if ast.get_docstring(func) else func.body[0]
        assert func.end_lineno - first.lineno + 1 <= 20, func.name
    for path in (PACKAGE / "cli.py", PACKAGE / "cliopts.py", PACKAGE / "cliout.py"):
        local = [n.lineno for f in ast.walk(ast.parse(path.read_text())) if isinstance(f, ast.FunctionDef)
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert local == [], (path.name, local)
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
