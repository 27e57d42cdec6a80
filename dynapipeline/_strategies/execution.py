"""Execution strategies on the event loop: sequential, concurrent, semaphore-bounded.

The options (``chain``, ``return_exceptions``) pick a different engine dispatcher when
the strategy is built, so the default dispatchers run with no per-call check; a
semaphore's ``rate`` picks the paced dispatcher of ``pacing.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from dynapipeline._engine import Bounded, BoundedGather, Chained, Concurrent, ConcurrentGather, Sequential, Slots
from dynapipeline._model.checks import check_flag, check_int
from dynapipeline._model.pacing import TokenBucket
from dynapipeline._model.strategy import ExecutionStrategy, ItemRunner, rebuild_strategy
from dynapipeline._strategies.pacing import Paced
from dynapipeline.errors import ConfigurationError

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

    ``rate=n``: at most ``n`` starts per second, a token bucket on starts (``burst=b``:
    ``b`` may start at once after a pause; 1 by default). Like the slots, the rate
    belongs to this instance: every group it runs and every stream step that uses it
    (each item is one start) share it, from any event loop in any thread. A rate
    never lifts ``max_concurrent``: a member takes a slot, then a token. A copy in a
    worker process (a pickled group) has its own slots and its own bucket.
    """

    def __init__(self, max_concurrent: int, *, return_exceptions: bool = False, rate: float | None = None,
                 burst: int | None = None) -> None:
        owner = "SemaphoreExecutionStrategy"
        # sys.maxsize: the engine counts slots in a C integer.
        check_int(owner, "max_concurrent", max_concurrent, least=1, most=sys.maxsize)
        self.return_exceptions = check_flag(owner, "return_exceptions", return_exceptions)
        if burst is not None and rate is None:
            raise ConfigurationError(f"{owner}: field 'burst' needs 'rate'")
        self.max_concurrent = max_concurrent
        self._slots = Slots(max_concurrent)
        if rate is not None:
            # Pacing cannot hook the engine's workers (they keep their slot): a dispatcher of its own.
            self.bucket = TokenBucket(rate, 1 if burst is None else burst, owner=owner)
            self.dispatch = Paced(self._slots, self.bucket, return_exceptions).dispatch  # type: ignore[method-assign]
        else:
            dispatcher = BoundedGather(self._slots) if return_exceptions else Bounded(self._slots)
            self.dispatch = dispatcher.dispatch  # type: ignore[method-assign]

    @property
    def rate(self) -> float | None:
        """Starts per second allowed by this instance, or None (no rate)."""
        return None if self.bucket is None else self.bucket.rate

    @property
    def burst(self) -> int | None:
        """Starts allowed at once after a pause (with a rate), or None (no rate)."""
        return None if self.bucket is None else self.bucket.burst

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy in a worker process has its own limit and bucket: neither can be shared across processes.
        options: dict[str, Any] = {"return_exceptions": self.return_exceptions}
        if self.bucket is not None:
            options.update(rate=self.bucket.rate, burst=self.bucket.burst)
        return (rebuild_strategy, (type(self), (self.max_concurrent,), options))

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return self.max_concurrent, None

    @property
    def in_flight(self) -> int:
        """Members of any group currently holding one of this instance's slots (with a rate: waiting for
        their token, or running)."""
        return int(self._slots.used)

    def __repr__(self) -> str:
        extra = ", return_exceptions=True" if self.return_exceptions else ""
        if self.bucket is not None:
            extra += f", rate={self.bucket.rate:g}, burst={self.bucket.burst}"
        return f"SemaphoreExecutionStrategy(max_concurrent={self.max_concurrent}{extra})"
