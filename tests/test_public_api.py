"""One public path per name: the public modules' ``__all__`` is exact, and everything else is private."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import dynapipeline

PACKAGE = Path(dynapipeline.__file__).parent
PUBLIC = (
    "dynapipeline",
    "dynapipeline.contexts",
    "dynapipeline.errors",
    "dynapipeline.execution",
    "dynapipeline.execution.cycle_strategies",
    "dynapipeline.otel",
)


@pytest.mark.parametrize("name", PUBLIC)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    defined = {
        attr for attr, value in vars(module).items()
        if not attr.startswith("_") and not isinstance(value, ModuleType) and attr != "annotations"
    }
    assert set(module.__all__) - {"__version__"} == defined
    for attr in module.__all__:
        assert getattr(module, attr) is not None


def test_each_public_name_has_one_public_path() -> None:
    seen: dict[str, str] = {}
    for name in PUBLIC:
        for attr in importlib.import_module(name).__all__:
            assert attr not in seen, f"{attr} is public in both {seen[attr]} and {name}"
            seen[attr] = name


def test_every_other_module_is_private() -> None:
    for info in pkgutil.walk_packages(dynapipeline.__path__, "dynapipeline."):
        if info.name in PUBLIC or info.name == "dynapipeline.__main__":
            continue
        parts = info.name.split(".")[1:]
        assert any(part.startswith("_") for part in parts), f"{info.name} is importable under a public name"


def test_the_0_1_spelling_is_the_same_class() -> None:
    from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, InfinitLoopStrategy

    assert InfinitLoopStrategy is InfiniteLoopStrategy
    assert InfiniteLoopStrategy.__name__ == "InfiniteLoopStrategy"


def test_errors_lists_only_errors() -> None:
    import dynapipeline.errors as errors

    for name in errors.__all__:
        value = getattr(errors, name)
        assert isinstance(value, type) and issubclass(value, Exception), f"dynapipeline.errors.{name} is not an error"


def _private_packages() -> list[Path]:
    return sorted(init for init in PACKAGE.rglob("__init__.py")
                  if any(part.startswith("_") and part != "__init__.py" for part in init.relative_to(PACKAGE).parts))


def test_private_packages_exist() -> None:
    names = {init.parent.name for init in _private_packages()}
    assert {"_engine", "_model", "_strategies", "_transports", "_cli", "_observe"} <= names


@pytest.mark.parametrize("init", _private_packages(), ids=lambda init: str(init.parent.relative_to(PACKAGE)))
def test_private_package_init_reexports_nothing(init: Path) -> None:
    # Internal code imports each name from the one module that defines it. The engine's
    # __init__ is the exception: it picks the compiled or the pure engine at import.
    if init.parent.name == "_engine":
        return
    body = ast.parse(init.read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str), f"{init.relative_to(PACKAGE)} holds more than its docstring"


# Each room of the package and its rank; a module imports only from rooms of its rank or lower.
# The command line is a user of the library like any other, so it ranks with the public modules.
RANKS = {
    "errors": 0,
    "_engine": 1, "_loops": 1, "_table": 1,
    "_model": 2,
    "_strategies": 3,
    "_transports": 4,
    "_observe": 5,
    "_cli": 6, "__init__": 6, "__main__": 6, "contexts": 6, "execution": 6, "otel": 6,
}
ALLOWED_UPWARD: set[tuple[str, str]] = set()  # none: every layer imports only downward


def _room(parts: tuple[str, ...]) -> str:
    return parts[0].removesuffix(".py") if parts else "__init__"


def test_nothing_imports_upward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path.relative_to(PACKAGE).parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] != "dynapipeline":
                    continue
                target = parts[1] if len(parts) > 1 else "__init__"
                if RANKS[target] > RANKS[room] and (room, target) not in ALLOWED_UPWARD:
                    upward.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module}")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_numpy_is_never_imported_by_the_package() -> None:
    """numpy is a test dependency: shared-memory transfer finds arrays by protocol 5's buffers, not by importing it."""
    script = """
import asyncio, sys
from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy

class Length(Stage):
    def execute(self, item):
        return len(item)

async def main():
    async with MultiprocessExecutionStrategy(1) as processes:
        out = await Stream(name="s", steps=[Step(Length(name="length"), processes)]).run([b"x" * (2 << 20)])
    assert out == [2 << 20], out

if __name__ == "__main__":
    asyncio.run(main())
    assert "numpy" not in sys.modules, "the package imported numpy"
    print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
