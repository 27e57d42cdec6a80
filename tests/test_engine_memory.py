"""Memory stays flat over a long InfinitLoopStrategy run (slow: ``pytest -m slow tests``)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psutil
import pytest

from dynapipeline import Stage, StageGroup
from dynapipeline.execution import SemaphoreExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy

CYCLES = 1_000_000
LIMIT_MB = 5.0


class CountTo(Stage):
    """Sets ``event`` once it has run ``limit`` times."""

    event: Any
    limit: int
    runs: int = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        if self.runs >= self.limit:
            self.event.set()
        return self.runs


def _rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


async def _run(strategy: Any, cycles: int) -> float:
    event = asyncio.Event()
    stage = CountTo(name="count", event=event, limit=cycles)
    group = StageGroup(name="forever", stages=[stage], cycle_strategy=InfinitLoopStrategy(event),
                       execution_strategy=strategy)
    # Warm up allocator free lists and caches before the baseline reading.
    stage.limit = 10_000
    await group.run()
    event.clear()
    stage.limit = stage.runs + cycles
    before = _rss_mb()
    assert await group.run() is None
    grown = _rss_mb() - before
    assert stage.runs == stage.limit
    assert stage.stats.count == stage.limit
    return grown


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [SequentialExecutionStrategy, lambda: SemaphoreExecutionStrategy(4)],
                         ids=["sequential", "semaphore"])
async def test_forever_rss_flat_over_a_million_cycles(strategy: Any) -> None:
    grown = await _run(strategy(), CYCLES)
    assert grown < LIMIT_MB, f"RSS grew by {grown:.2f} MB over {CYCLES:,} cycles"
