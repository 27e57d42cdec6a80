"""Chained results and return_exceptions beside their raw-asyncio twins.

One group per (case, n, loop, engine mode), each with ``engine`` (a StageGroup run by
the strategy) and ``raw`` (the same stage objects driven by hand-written asyncio):

- chain: ``SequentialExecutionStrategy(chain=True)`` against ``x = await s.execute(x)`` in a loop;
- gather: ``ConcurrentExecutionStrategy(return_exceptions=True)`` against
  ``asyncio.gather(..., return_exceptions=True)``;
- semaphore(8) gather: ``SemaphoreExecutionStrategy(8, return_exceptions=True)`` against
  ``asyncio.Semaphore(8)`` + ``gather(..., return_exceptions=True)``.

Every third stage raises, so the gather cases measure the failure path too. Compare
with the default strategies in ``test_asyncio_bench.py`` (same stage count).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from bench_support import LOOPS, MODE, loop_runner

from dynapipeline import Stage, StageGroup
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

CASES = ("chain", "gather", "semaphore(8) gather")
SIZES = (1000,)


class PassOn(Stage):
    """Returns its input: what is measured is the engine passing it on."""

    async def execute(self, value: Any = None) -> Any:
        return value


class MaybeRaise(Stage):
    """Raises when ``fails``, else returns None."""

    fails: bool = False

    async def execute(self) -> Any:
        if self.fails:
            raise ValueError(self.name)
        return None


def _make(case: str, n: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
    if case == "chain":
        stages: list[Any] = [PassOn(name=f"s{i}") for i in range(n)]
        strategy: Any = SequentialExecutionStrategy(chain=True)

        async def raw() -> list[Any]:
            results = []
            value = 0
            for s in stages:
                value = await s.execute(value)
                results.append(value)
            return results

        group = StageGroup(name="bench", stages=stages, cycle_strategy=OnceCycleStrategy(),
                           execution_strategy=strategy)

        async def engine() -> Any:
            return await group.run(0)

        return engine, raw
    stages = [MaybeRaise(name=f"s{i}", fails=(i % 3 == 0)) for i in range(n)]
    if case == "gather":
        strategy = ConcurrentExecutionStrategy(return_exceptions=True)

        async def raw() -> list[Any]:
            return await asyncio.gather(*[s.execute() for s in stages], return_exceptions=True)

    else:
        strategy = SemaphoreExecutionStrategy(8, return_exceptions=True)

        async def raw() -> list[Any]:
            sem = asyncio.Semaphore(8)

            async def one(s: Stage) -> Any:
                async with sem:
                    return await s.execute()

            return await asyncio.gather(*[one(s) for s in stages], return_exceptions=True)

    group = StageGroup(name="bench", stages=stages, cycle_strategy=OnceCycleStrategy(), execution_strategy=strategy)
    return group.run, raw


_built: dict[tuple[str, int], tuple[Any, Any]] = {}


def _params() -> list[Any]:
    return [
        pytest.param(case, n, loop, side, marks=pytest.mark.benchmark(group=f"{case} n={n} {loop} {MODE}"),
                     id=f"{case}-{n}-{loop}-{side}")
        for case in CASES for n in SIZES for loop in LOOPS for side in ("engine", "raw")
    ]


@pytest.mark.parametrize(("case", "n", "loop", "side"), _params())
def test_flow(benchmark: Any, case: str, n: int, loop: str, side: str) -> None:
    if (case, n) not in _built:
        _built[case, n] = _make(case, n)
    engine, raw = _built[case, n]
    runner = loop_runner(loop)
    benchmark.extra_info.update(case=case, n=n, loop=loop, mode=MODE, side=side)
    result = benchmark(runner.run, engine if side == "engine" else raw)
    assert len(result) == n
    if case != "chain":
        assert sum(isinstance(r, ValueError) for r in result) == (n + 2) // 3
