"""The packages form layers: no import cycle between them, and the bottom ones import nothing above.

Walks every ``import`` (top-level and function-local) of every module with :mod:`ast`, so a
lazy import inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom first, as in the README's package table: a package imports only packages before it.
PACKAGES = ("topics", "common", "placement", "models", "inference", "devices", "edge_agent", "sim", "archive",
            "cloud_trainer", "cli", "bench")


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found & set(PACKAGES)


def package_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]``: the files of package ``a`` that import package ``b``."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for other in _imported_packages(path) - {package}:
                graph[package].setdefault(other, []).append(str(path.relative_to(root)))
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the package graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in graph:
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    cycle = find_cycle(graph)
    detail = "" if cycle is None else "; ".join(
        f"{a} -> {b} in {graph[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False))
    assert cycle is None, f"import cycle {' -> '.join(cycle or [])}: {detail}"


def test_each_package_imports_only_layers_below_it() -> None:
    graph = package_graph()
    for level, package in enumerate(PACKAGES):
        upward = {other: files for other, files in graph[package].items() if PACKAGES.index(other) > level}
        assert not upward, f"{package} imports a layer above it: {upward}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph: dict[str, dict[str, list[str]]] = {"a": {"b": ["a.py"]}, "b": {"c": ["b.py"]}, "c": {"a": ["c.py"]}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    del graph["c"]["a"]
    assert find_cycle(graph) is None


def test_bottom_packages_import_no_service_code() -> None:
    graph = package_graph()
    services = {"edge_agent", "cloud_trainer", "cli", "bench"}
    for bottom in ("common", "topics", "placement", "devices", "models"):
        assert services.isdisjoint(graph[bottom]), f"{bottom} imports {sorted(services & set(graph[bottom]))}"
    assert set(graph["topics"]) == set(), "the contract imports nothing of ours"
    assert set(graph["common"]) <= {"topics"}, "the settings layer imports only the contract (model names)"
    assert set(graph["placement"]) <= {"topics", "common"}, "placement decides; it runs nothing (no models, no I/O)"


def test_the_product_does_not_import_bench() -> None:
    graph = package_graph()
    for package in PACKAGES:
        if package != "bench":
            assert "bench" not in graph[package], f"{package} imports bench: {graph[package].get('bench')}"


def test_dc_and_simulators_import_no_edge_service() -> None:
    """The DC and the simulators share code with the edge a layer down (``inference``), not by
    importing the edge service."""
    graph = package_graph()
    for package in ("cloud_trainer", "sim"):
        assert "edge_agent" not in graph[package], f"{package} imports edge_agent: {graph[package]['edge_agent']}"
