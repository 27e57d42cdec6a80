"""Cycle strategies: once, N times, or until an event is set or the run drains."""

from __future__ import annotations

import math
import sys
from typing import Any

from dynapipeline._engine import Forever, Loop, Once
from dynapipeline._model.checks import as_float, check_int
from dynapipeline._model.strategy import CycleStrategy
from dynapipeline.errors import ConfigurationError

__all__ = ["InfiniteLoopStrategy", "InfinitLoopStrategy", "LoopCycleStrategy", "OnceCycleStrategy"]


class OnceCycleStrategy(CycleStrategy):
    """One cycle; the result is that cycle's result."""

    def __init__(self) -> None:
        self.run_cycles = Once().run  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(self), ())


class LoopCycleStrategy(CycleStrategy):
    """``cycles`` cycles (an int >= 0; 0 runs nothing); the result is the list of per-cycle results."""

    def __init__(self, cycles: int) -> None:
        # sys.maxsize: the engine counts cycles in a C integer.
        self.cycles: int = check_int("LoopCycleStrategy", "cycles", cycles, least=0, most=sys.maxsize)
        self.run_cycles = Loop(cycles).run  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return (type(self), (self.cycles,))

    def __repr__(self) -> str:
        return f"LoopCycleStrategy(cycles={self.cycles})"


class InfiniteLoopStrategy(CycleStrategy):
    """Repeats until ``event`` is set or the pipeline stops; keeps no results (returns None).

    ``event`` is anything with ``is_set()`` (``asyncio.Event``, ``threading.Event``).
    Every cycle ends by yielding to the event loop for ``interval`` seconds (0: one
    turn of the loop), so other tasks, ``stop()`` included, always get to run. ``interval``
    must be finite: an endless sleep would end nothing.
    """

    def __init__(self, event: Any = None, interval: float = 0) -> None:
        if event is not None and not callable(getattr(event, "is_set", None)):
            raise ConfigurationError(
                f"InfiniteLoopStrategy: field 'event' must have is_set() (an Event), got {type(event).__name__}"
            )
        seconds = as_float(interval)
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            raise ConfigurationError(
                f"InfiniteLoopStrategy: field 'interval' must be a finite number >= 0, got {interval!r}"
            )
        self.event = event
        self.interval = seconds
        self.run_cycles = Forever(event, seconds).run  # type: ignore[method-assign]

    def __reduce__(self) -> tuple[type, tuple[Any, float]]:
        return (type(self), (self.event, self.interval))

    def __repr__(self) -> str:
        return f"InfiniteLoopStrategy(event={self.event!r}, interval={self.interval})"


InfinitLoopStrategy = InfiniteLoopStrategy
"""The 0.1 spelling of ``InfiniteLoopStrategy`` (the same class), kept so 0.1 code runs unchanged."""
