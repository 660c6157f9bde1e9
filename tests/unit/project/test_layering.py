"""The house rules on imports, read from the source (every import statement, also those inside functions
and under TYPE_CHECKING -- a lazy import is still a dependency):

- production code never imports the sandbox (``driver.sim``), not even through another module; the only
  module that may name it is the command line's composition root (``driver.cli``), and only inside the
  functions that run a sandbox command, so ``accel-dra plugin`` never loads it;
- no two packages under ``driver/`` import each other, directly or around a longer loop.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from tests.support import paths

ROOT = paths.REPO
PACKAGE = ROOT / "driver"
SANDBOX = "driver.sim"
#: May import the sandbox, lazily: it wires the subcommands together.
COMPOSITION_ROOT = frozenset({"driver.cli", "driver.__main__"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """``driver.x.y`` -> the module it is (``driver.x.y`` or, for a name in a module, ``driver.x``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, *, top_level_only: bool = False) -> tuple[tuple[str, int], ...]:
    """The driver modules ``module`` imports, with the line of each import."""
    return _imports(module, top_level_only)


@cache
def _imports(module: str, top_level_only: bool) -> tuple[tuple[str, int], ...]:
    return tuple(_scan(module, top_level_only))


def _scan(module: str, top_level_only: bool) -> Iterator[tuple[str, int]]:
    path = modules()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if target == "driver" or target.startswith("driver."):
                found = _resolve(target)
                if found is not None and found != module:
                    yield found, node.lineno


def chain_to_sandbox(start: str) -> list[str] | None:
    """The import chain from ``start`` to a sandbox module (``module:line`` steps), if there is one."""
    parent: dict[str, tuple[str, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for target, line in imports(current):
            if target in parent:
                continue
            parent[target] = (current, line)
            if target == SANDBOX or target.startswith(SANDBOX + "."):
                chain, step = [target], parent[target]
                while step is not None:
                    chain.append(f"{step[0]}:{step[1]}")
                    step = parent[step[0]]
                return list(reversed(chain))
            queue.append(target)
    return None


def test_production_code_never_imports_the_sandbox() -> None:
    offenders = {}
    for module in sorted(modules()):
        if module == SANDBOX or module.startswith(SANDBOX + ".") or module in COMPOSITION_ROOT:
            continue
        chain = chain_to_sandbox(module)
        if chain is not None:
            offenders[module] = " -> ".join(chain)
    assert not offenders, "production modules reach driver.sim:\n" + "\n".join(offenders.values())


def test_the_command_line_names_the_sandbox_only_inside_functions() -> None:
    for module in COMPOSITION_ROOT:
        eager = [t for t, _ in imports(module, top_level_only=True)]
        assert not [t for t in eager if t.startswith(SANDBOX)], f"{module} imports the sandbox at import time"


def test_starting_the_plugin_command_loads_no_sandbox_module() -> None:
    code = (
        "import json, sys\n"
        "from driver.cli import build_parser\n"
        "build_parser(['plugin', '--help-not-parsed'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('driver.sim') or m == 'jsonpatch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def package_of(module: str) -> str:
    """``driver.plugin.app`` -> ``driver.plugin``; a top-level module (``driver.config``) is its own unit."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, dict[str, str]]:
    """package -> {imported package: one import that makes the edge, as ``module:line``}."""
    graph: dict[str, dict[str, str]] = {}
    for module in modules():
        source = package_of(module)
        for target, line in imports(module):
            dest = package_of(target)
            if dest not in (source, "driver"):
                graph.setdefault(source, {}).setdefault(dest, f"{module}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_packages_import_each_other() -> None:
    graph = package_graph()
    problems = []
    for component in cycles(graph):
        edges = [
            f"  {a} -> {b} ({graph[a][b]})" for a in component for b in component if b in graph.get(a, {})
        ]
        problems.append(" <-> ".join(component) + "\n" + "\n".join(edges))
    assert not problems, "packages in an import loop:\n" + "\n".join(problems)


def test_the_cycle_finder_finds_a_loop_of_three() -> None:
    graph = {"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ""}, "b": {}}) == []
