"""Execution strategies on the event loop: sequential, concurrent, semaphore-bounded."""

from __future__ import annotations

import sys
from typing import Any

from dynapipeline._engine import Bounded, Concurrent, Sequential, Slots
from dynapipeline._model.strategy import ExecutionStrategy, ItemRunner
from dynapipeline.errors import ConfigurationError

__all__ = ["ConcurrentExecutionStrategy", "SemaphoreExecutionStrategy", "SequentialExecutionStrategy"]


class SequentialExecutionStrategy(ExecutionStrategy):
    """One member after another; the first error stops the rest and propagates."""

    def __init__(self) -> None:
        self.dispatch = Sequential().dispatch  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(self), ())


class ConcurrentExecutionStrategy(ExecutionStrategy):
    """All members at once; the first error cancels and awaits the others, then propagates.

    As a stream step: as many items at once as the stream's ``maxsize`` allows.
    """

    def __init__(self) -> None:
        self.dispatch = Concurrent().dispatch  # type: ignore[method-assign]

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return maxsize, None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(self), ())


class SemaphoreExecutionStrategy(ExecutionStrategy):
    """At most ``max_concurrent`` members in flight.

    The limit belongs to this instance: groups that share the instance share the
    limit. Only ``min(n, max_concurrent)`` worker tasks are created per dispatch.
    As a stream step: up to ``max_concurrent`` items at once (the step's own limit).
    """

    def __init__(self, max_concurrent: int) -> None:
        # sys.maxsize: the engine counts slots in a C integer.
        if (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                or not 1 <= max_concurrent <= sys.maxsize):
            raise ConfigurationError(
                f"SemaphoreExecutionStrategy: field 'max_concurrent' must be an int >= 1, got {max_concurrent!r}"
            )
        self.max_concurrent = max_concurrent
        self._slots = Slots(max_concurrent)
        self.dispatch = Bounded(self._slots).dispatch  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[type, tuple[int]]:
        # A copy in a worker process has its own limit: slots cannot be shared across processes.
        return (type(self), (self.max_concurrent,))

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return self.max_concurrent, None

    @property
    def in_flight(self) -> int:
        """Members of any group currently holding one of this instance's slots."""
        return int(self._slots.used)

    def __repr__(self) -> str:
        return f"SemaphoreExecutionStrategy(max_concurrent={self.max_concurrent})"
