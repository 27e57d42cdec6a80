"""Execution strategies on the event loop: sequential, concurrent, semaphore-bounded.

The options (``chain``, ``return_exceptions``) pick a different engine dispatcher when
the strategy is built, so the default dispatchers run with no per-call check.
"""

from __future__ import annotations

import sys
from typing import Any

from dynapipeline._engine import Bounded, BoundedGather, Chained, Concurrent, ConcurrentGather, Sequential, Slots
from dynapipeline._model.checks import check_flag, check_int
from dynapipeline._model.strategy import ExecutionStrategy, ItemRunner, rebuild_strategy

__all__ = ["ConcurrentExecutionStrategy", "SemaphoreExecutionStrategy", "SequentialExecutionStrategy"]


class SequentialExecutionStrategy(ExecutionStrategy):
    """One member after another; the first error stops the rest and propagates.

    ``chain=True``: each member gets the previous member's result as its first
    positional argument. The first member gets the run's arguments; each later
    member gets ``(previous_result, *args[1:])`` (the previous result replaces the
    first positional argument; with no positional arguments it becomes the only
    one). Keyword arguments reach every member unchanged. The result is still the
    list of every member's result, so nothing is lost; the chain's output is its
    last item. A group passes on its own result: for ``OnceCycleStrategy`` the list
    of its members' results, for ``LoopCycleStrategy`` the list of per-cycle lists,
    for ``InfiniteLoopStrategy`` ``None``. With a cycle strategy, each cycle's chain
    starts again from the run's arguments. Only this strategy takes ``chain``
    (members that run at once have no previous result): passing it to another
    strategy is a ``TypeError``.
    """

    def __init__(self, *, chain: bool = False) -> None:
        self.chain = check_flag("SequentialExecutionStrategy", "chain", chain)
        self.dispatch = (Chained() if chain else Sequential()).dispatch  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_strategy, (type(self), (), {"chain": self.chain}))

    def __repr__(self) -> str:
        return "SequentialExecutionStrategy(chain=True)" if self.chain else "SequentialExecutionStrategy()"


class ConcurrentExecutionStrategy(ExecutionStrategy):
    """All members at once; the first error cancels and awaits the others, then propagates.

    ``return_exceptions=True`` (the ``asyncio.gather`` convention): a member that
    raises an ``Exception`` has it returned in its place in the result list (its
    handlers' ``on_error`` have run) and the others run to completion. A
    ``BaseException`` that is not an ``Exception`` (cancellation,
    ``KeyboardInterrupt``) still cancels the others and propagates.

    As a stream step: as many items at once as the stream's ``maxsize`` allows, with
    a worker task per item in flight, not per ``maxsize`` (``return_exceptions``
    does not apply: a stream has its own per-item error policy).
    """

    def __init__(self, *, return_exceptions: bool = False) -> None:
        self.return_exceptions = check_flag("ConcurrentExecutionStrategy", "return_exceptions", return_exceptions)
        self.dispatch = (ConcurrentGather() if return_exceptions else Concurrent()).dispatch  # type: ignore[method-assign]

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return maxsize, None

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_strategy, (type(self), (), {"return_exceptions": self.return_exceptions}))

    def __repr__(self) -> str:
        return "ConcurrentExecutionStrategy(return_exceptions=True)" if self.return_exceptions \
            else "ConcurrentExecutionStrategy()"


class SemaphoreExecutionStrategy(ExecutionStrategy):
    """At most ``max_concurrent`` members in flight.

    The limit belongs to this instance: groups that share the instance share the
    limit. Only ``min(n, max_concurrent)`` worker tasks are created per dispatch.
    ``return_exceptions=True``: a member's ``Exception`` is returned in its place
    and the others run on (see ``ConcurrentExecutionStrategy``).
    As a stream step: up to ``max_concurrent`` items at once (the step's own limit;
    ``return_exceptions`` does not apply there).
    """

    def __init__(self, max_concurrent: int, *, return_exceptions: bool = False) -> None:
        # sys.maxsize: the engine counts slots in a C integer.
        check_int("SemaphoreExecutionStrategy", "max_concurrent", max_concurrent, least=1, most=sys.maxsize)
        self.return_exceptions = check_flag("SemaphoreExecutionStrategy", "return_exceptions", return_exceptions)
        self.max_concurrent = max_concurrent
        self._slots = Slots(max_concurrent)
        dispatcher = BoundedGather(self._slots) if return_exceptions else Bounded(self._slots)
        self.dispatch = dispatcher.dispatch  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy in a worker process has its own limit: slots cannot be shared across processes.
        return (rebuild_strategy, (type(self), (self.max_concurrent,),
                                   {"return_exceptions": self.return_exceptions}))

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return self.max_concurrent, None

    @property
    def in_flight(self) -> int:
        """Members of any group currently holding one of this instance's slots."""
        return int(self._slots.used)

    def __repr__(self) -> str:
        extra = ", return_exceptions=True" if self.return_exceptions else ""
        return f"SemaphoreExecutionStrategy(max_concurrent={self.max_concurrent}{extra})"
