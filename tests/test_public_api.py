"""One public path per name: the public modules' ``__all__`` is exact, and everything else is private."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import dynapipeline

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
