"""The two strategy interfaces the components are built against (concrete ones: _strategies/, _transports/)."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, ClassVar

from dynapipeline._model.checks import kind_of
from dynapipeline._model.lifecycle import current_scope, run_in_scope
from dynapipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from dynapipeline._model.pacing import TokenBucket

__all__ = ["CycleStrategy", "ExecutionStrategy", "ItemRunner", "Succeeded", "chunk_items", "rebuild_strategy",
           "runners_of"]

# While a tracer records: the stream indices of the values an ``ItemRunner.call`` gets (its trace names them).
chunk_items: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("dynapipeline_chunk_items",
                                                                                default=None)


class Succeeded(list):  # type: ignore[type-arg]
    """``ItemRunner.call``'s answer when every item succeeded: their results in order, not ``(True, r)`` pairs."""

    __slots__ = ()


class ItemRunner:
    """How a stream step runs its stage off the event loop (threads, processes): one call per chunk of items.

    ``call(values)`` returns one ``(ok, result_or_exception)`` pair per value, in
    order, or, when every item succeeded, a ``Succeeded`` list of their results
    (no pair built per item); a failure of one item never fails the others. ``chunk`` is the most
    items one call takes (processes batch items; threads take one). ``width``,
    when ``open`` sets it, is the most calls worth making at once (it lowers the
    step's count of workers, say to what a cluster can run); lowered later, the
    step adds no more workers beyond it. ``grows``: ``width`` may rise later, up to
    the step's own count (which ``width`` then does not lower); the step adds
    workers again as all are busy. ``releases``: a call of one item may
    replace it in ``values`` by None once shipped (a large item in shared memory),
    and the step drops its own reference too, so that no other copy stays.
    """

    chunk: int = 1
    width: int | None = None
    grows: bool = False
    releases: bool = False

    async def open(self) -> None:
        """Acquire what the step's run needs (a pool)."""

    async def call(self, values: list[Any]) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what ``open`` acquired; also called after a failure or cancellation."""


class ExecutionStrategy:
    """How the members of a group or pipeline run within one cycle.

    Subclasses provide ``dispatch(runners, args, kwargs)``: an awaitable returning
    the results in member order. ``offloads`` marks strategies that run members
    off the event loop's thread (threads, processes), which SIMPLE pipelines reject.
    ``bucket``: a rate limit on starts that a stream step with this strategy takes a
    token from before each item (``SemaphoreExecutionStrategy(rate=...)``), or None.
    """

    offloads: ClassVar[bool] = False
    ships_members: ClassVar[bool] = False  # members are pickled to other processes (a Stream cannot be)
    bucket: TokenBucket | None = None

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    async def execute(self, components: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Run the components once with this strategy; results in component order.

        Called outside a run, the call is the run: stages set up for it are torn down at its end (``lifecycle``).
        """
        runners = runners_of(components, type(self).__name__)
        if current_scope.get() is None:
            return await run_in_scope(self.dispatch(runners, args, kwargs))  # type: ignore[no-any-return]
        return await self.dispatch(runners, args, kwargs)

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        """How a stream step with this strategy runs ``stage``: how many items at once, and off the loop how.

        The default is one item at a time on the event loop (``None``: the step calls
        the stage's runner itself).
        """
        return 1, None

    async def __aenter__(self) -> ExecutionStrategy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release resources held across runs (pools); nothing for asyncio strategies."""

    def __deepcopy__(self, memo: dict[int, Any]) -> ExecutionStrategy:
        # A strategy is shared, not copied: a deep copy of a group keeps its strategy
        # instance (and so its semaphore limit or its pool).
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CycleStrategy:
    """How often the members run: subclasses provide ``run_cycles(dispatch, runners, args, kwargs)``."""

    async def run_cycles(self, dispatch: Any, runners: tuple[Any, ...], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def run(self, execution_strategy: ExecutionStrategy, components: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the components with ``execution_strategy`` as often as this strategy says."""
        if not isinstance(execution_strategy, ExecutionStrategy):
            raise ConfigurationError(
                f"{type(self).__name__}.run: field 'execution_strategy' must be an ExecutionStrategy, "
                f"got {kind_of(execution_strategy)}"
            )
        runners = runners_of(components, type(self).__name__)
        if current_scope.get() is None:  # called outside a run: the call is the run (``lifecycle``)
            return await run_in_scope(self.run_cycles(execution_strategy.dispatch, runners, args, kwargs))
        return await self.run_cycles(execution_strategy.dispatch, runners, args, kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> CycleStrategy:
        return self  # stateless between runs: shared by copies

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def runners_of(components: Any, where: str) -> tuple[Any, ...]:
    """The engine runners of a list of components, with a clear error for anything else."""
    runners = []
    for index, component in enumerate(components):
        # On an instance this is the dict of private attributes; on a class, a slot descriptor.
        private = getattr(component, "__pydantic_private__", None)
        runner = private.get("_runner") if isinstance(private, dict) else None
        if runner is None:
            raise ConfigurationError(
                f"{where}: component #{index} is {_a(kind_of(component))}, not a Stage, StageGroup or Pipeline"
            )
        runners.append(runner)
    return tuple(runners)


def rebuild_strategy(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``cls(*args, **kwargs)``: how a strategy with keyword-only options is unpickled (``__reduce__``)."""
    return cls(*args, **kwargs)


def _a(kind: str) -> str:
    return kind if kind.startswith("the class ") else f"a {kind}"
