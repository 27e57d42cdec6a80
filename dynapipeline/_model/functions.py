"""Plain callables as stages: what ``Step(fn)`` and a bare callable in ``Stream(steps=[...])`` make.

A function step is a ``Stage`` underneath (one engine: the same runner, timing,
retries, handlers, reports and transports), of one of four classes chosen by
what the callable is, so that every place that asks "is ``execute`` async, a
generator?" gets the callable's own answer:

====================  =======================  ===========================================
callable              stage class              a stream step passes on
====================  =======================  ===========================================
``def``               ``FunctionStage``        its return value
``async def``         ``AsyncFunctionStage``   its awaited value
generator function    ``GeneratorStage``       each value it yields (a flat-map)
async generator       ``AsyncGeneratorStage``  each value it yields (a flat-map)
====================  =======================  ===========================================

``functools.partial`` objects and callable objects are classified by what they
wrap or by their ``__call__``; a class (``int``) is a plain function. The runner
calls the callable itself (no extra call per item); ``execute`` forwards to it
for whoever calls a stage's ``execute`` by hand.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import PrivateAttr

from dynapipeline._model.component import Stage, collecting
from dynapipeline.errors import ConfigurationError

__all__ = ["AsyncFunctionStage", "AsyncGeneratorStage", "FunctionStage", "GeneratorStage", "auto_name",
           "function_stage"]


class FunctionStage(Stage):
    """A stage whose work is a plain callable, ``fn(item)``: what ``Step(fn)`` builds for a ``def``."""

    fn: Any
    setup_fn: Any = None  # Step(fn, setup=...): a zero-argument callable, sync or async
    teardown_fn: Any = None  # Step(fn, teardown=...)
    _auto: bool = PrivateAttr(default=False)  # named after the callable, not by name=: a stream may rename it
    _kind: ClassVar[int] = 0  # as ``collecting`` counts: 0 plain, 1 generator, 2 async generator

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _plain_target(self) -> Callable[..., Any]:
        # The callable itself, so that a function step costs no more than a Stage's method per item.
        fn = self.fn
        target = fn if _is_routine(fn) else fn.__call__
        return collecting(target, self._kind)

    def _flattens(self) -> bool:
        return self._kind != 0

    def _lifecycle(self) -> tuple[Any, Any] | None:
        fields = self.__dict__
        setup, teardown = fields.get("setup_fn"), fields.get("teardown_fn")
        return None if setup is None and teardown is None else (setup, teardown)

    def _label(self) -> str:
        return f"Step {self.__dict__.get('name')!r}"


class AsyncFunctionStage(FunctionStage):
    """``Step(fn)`` for an ``async def`` (or a callable object whose ``__call__`` is one)."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self.fn(*args, **kwargs)


class GeneratorStage(FunctionStage):
    """``Step(fn)`` for a generator function: each value it yields flows on (none: the item is filtered out)."""

    _kind: ClassVar[int] = 1

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        yield from self.fn(*args, **kwargs)


class AsyncGeneratorStage(FunctionStage):
    """``Step(fn)`` for an async generator function: each value it yields flows on."""

    _kind: ClassVar[int] = 2

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        async for value in self.fn(*args, **kwargs):
            yield value


def function_stage(fn: Any, name: str | None, policy: dict[str, Any]) -> FunctionStage:
    """The stage that runs ``fn``, named ``name`` or after ``fn``; ``policy``: its timeout, retries, setup fields."""
    if not callable(fn):
        raise ConfigurationError(f"Step: field 'stage' must be a Stage or a callable, got {type(fn).__name__}")
    for field in ("setup", "teardown"):
        hook = policy.pop(field, None)
        if hook is not None and not callable(hook):
            raise ConfigurationError(f"Step: field {field!r} must be a zero-argument callable (sync or async), "
                                     f"got {type(hook).__name__}")
        if hook is not None:
            policy[f"{field}_fn"] = hook
    auto = name is None
    if name is None:
        name = auto_name(fn)
    elif not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"Step: field 'name' must be a non-empty string, got {name!r}")
    cls = _CLASSES[_kind_of(fn)]
    stage = cls(name=name, fn=fn, **policy)
    stage._auto = auto
    return stage


def auto_name(fn: Any) -> str:
    """The name a function step gets when none is given: ``parse`` for ``def parse``, ``lambda`` for a lambda.

    A ``functools.partial`` is named after what it wraps; a callable object after its class.
    """
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__name__", None) if _is_routine(target) or isinstance(target, type) else None
    if not isinstance(name, str) or not name:
        name = type(target).__name__
    return "lambda" if name == "<lambda>" else name


def _is_routine(fn: Any) -> bool:
    """A function, method, builtin, partial or class: called as it is (not through an object's ``__call__``)."""
    return inspect.isroutine(fn) or isinstance(fn, (functools.partial, type))


def _kind_of(fn: Any) -> str:
    target = fn
    while isinstance(target, functools.partial):  # a partial of a callable object: what its class's __call__ is
        target = target.func
    if not _is_routine(target):
        target = type(target).__call__
    if inspect.isasyncgenfunction(target):
        return "async generator"
    if inspect.isgeneratorfunction(target):
        return "generator"
    if inspect.iscoroutinefunction(target):
        return "async"
    return "plain"


_CLASSES: dict[str, type[FunctionStage]] = {
    "plain": FunctionStage,
    "async": AsyncFunctionStage,
    "generator": GeneratorStage,
    "async generator": AsyncGeneratorStage,
}
