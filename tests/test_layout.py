"""The transports' layout: each backend in one place, a shared remote core, no import cycles, short modules.

Read from the sources (every import counts, those under ``TYPE_CHECKING`` and
inside functions too), so a cycle or a wrong-way import fails here before it
shows up as an import-order bug.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dynapipeline

PACKAGE = Path(dynapipeline.__file__).parent
TRANSPORTS = PACKAGE / "_transports"
MAX_LINES = 450  # a longer module says why in its docstring's first lines ("Long: ...")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(TRANSPORTS.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The transport modules ``path`` imports (``from package import module`` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    """One import cycle among ``nodes``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node] & nodes):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _backend(name: str) -> str:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 else "_transports"


def test_the_graph_sees_imports_under_type_checking_and_in_functions(tmp_path):
    modules = {"dynapipeline._transports.a": tmp_path / "a.py", "dynapipeline._transports.b": tmp_path / "b.py"}
    modules["dynapipeline._transports.a"].write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dynapipeline._transports import b\n")
    modules["dynapipeline._transports.b"].write_text(
        "def f():\n    from dynapipeline._transports.a import x\n")
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    assert graph == {"dynapipeline._transports.a": {"dynapipeline._transports.b"},
                     "dynapipeline._transports.b": {"dynapipeline._transports.a"}}
    assert _cycle(graph, set(graph)) is not None


def test_no_import_cycle_within_a_backend():
    graph = _graph()
    for backend in {_backend(name) for name in graph}:
        members = {name for name in graph if _backend(name) == backend}
        assert _cycle(graph, members) is None, f"import cycle in {backend}: {_cycle(graph, members)}"


def test_no_import_cycle_across_the_transports():
    graph = _graph()
    inits = {name for name in graph if _modules()[name].name == "__init__.py"}
    assert _cycle(graph, set(graph) - inits) is None


def test_backends_share_only_the_remote_core():
    """Dask and processes meet in ``_remote``; the core knows neither backend; threads need no remote code."""
    for name, targets in _graph().items():
        backend = _backend(name)
        for target in targets:
            other = _backend(target)
            if backend == "dask":
                assert other != "process", f"{name} imports {target}"
            if backend == "process":
                assert other != "dask", f"{name} imports {target}"
            if backend == "_remote":
                assert other in ("_remote", "_transports") and not target.endswith("strategy"), \
                    f"{name} imports {target}"
            if name == "dynapipeline._transports.threads":
                assert other != "_remote", f"{name} imports {target}"


def test_long_modules_say_why():
    modules = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES:
            assert any(line.startswith("Long: ") for line in lines[:5]), \
                f"{name} has {len(lines)} lines and no 'Long: <reason>' line at its top"
