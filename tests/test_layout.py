"""The tree shows the architecture: each part imports only parts below it, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each part, and the parts it may import (besides itself). `handler.app` and the other entry points compose. Jobs'
# HTTP routes live with jobs and use the API's parsing and errors, and the API reads jobs' chunk sizing: a pair of
# parts that may use each other's modules, never in a circle of modules (the test below).
LAYERS = {
    "handler.gp": set(),
    "handler.analyses": {"handler.gp"},
    "handler.registry": {"handler.gp"},
    "handler.api": {"handler.gp", "handler.analyses", "handler.registry", "handler.config", "handler.jobs"},
    "handler.jobs": {"handler.gp", "handler.analyses", "handler.registry", "handler.config", "handler.api"},
    # Training publishes versions (handler.registry) and packages them with the manifest's schema (handler.api's)
    "handler.training": {"handler.gp", "handler.registry", "handler.config", "handler.api"},
}


def modules(package_root: Path, prefix: str) -> dict[str, Path]:
    found = {}
    for path in package_root.rglob("*.py"):
        parts = path.relative_to(package_root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name.startswith(prefix):
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every module of `known` that `path` imports, at the top or inside a function (a deferred import is one too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name in known}


def graph(root: Path, prefix: str) -> dict[str, set[str]]:
    found = modules(root, prefix)
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize(("folder", "prefix"), [("handler", "handler"), ("client/src/gpr_client", "gpr_client")])
def test_no_two_modules_import_each_other_even_through_others(folder: str, prefix: str):
    assert cycles(graph(ROOT / folder, prefix)) == []


def test_each_part_imports_only_the_parts_below_it():
    edges = graph(ROOT / "handler", "handler")
    upward = []
    for module, targets in edges.items():
        part = next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)
        if part is None:
            continue  # an entry point (handler.app, handler.explorer_app, handler.registry_admin_app) or settings
        for target in targets:
            target_part = next((p for p in LAYERS if target == p or target.startswith(p + ".")), target)
            if target_part != part and target_part not in LAYERS[part] and target != "handler":
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
