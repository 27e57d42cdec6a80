"""Asyncio execution strategies and cycle loops beside their raw-asyncio twins.

One group per (strategy, stage, n, loop, engine mode), each with two benchmarks:
``engine`` (a StageGroup run by the strategy) and ``raw`` (the same stage objects
driven by hand-written asyncio). The cases are those of ``python -m dynapipeline
bench`` (``dynapipeline._cli.bench.make_case``):

- sequential: ``await`` in a ``for`` loop;
- concurrent: ``asyncio.gather``;
- semaphore(8): ``asyncio.Semaphore(8)`` + ``gather``;
- cycles: ``LoopCycleStrategy(n)`` over one stage against ``for _ in range(n): await``.

Stages are no-ops, or yield once (``await asyncio.sleep(0)``). Compare within a
group: ``pytest benchmarks --benchmark-only --benchmark-group-by=group``.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench_support import LOOPS, MODE, loop_runner

from dynapipeline._cli.bench import CASES, KINDS, SIZES, Case, make_case

_cases: dict[tuple[str, str, int], Case] = {}


def _case(case: str, kind: str, n: int) -> Case:
    # Built once per session and shared by both sides and both loops.
    key = (case, kind, n)
    if key not in _cases:
        _cases[key] = make_case(case, kind, n)
    return _cases[key]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for kind in KINDS:
            for n in SIZES:
                for loop in LOOPS:
                    group = f"{case} {kind} n={n} {loop} {MODE}"
                    for side in ("engine", "raw"):
                        params.append(pytest.param(
                            case, kind, n, loop, side,
                            marks=pytest.mark.benchmark(group=group),
                            id=f"{case}-{kind}-{n}-{loop}-{side}",
                        ))
    return params


@pytest.mark.parametrize(("case", "kind", "n", "loop", "side"), _params())
def test_asyncio_strategy(benchmark: Any, case: str, kind: str, n: int, loop: str, side: str) -> None:
    built = _case(case, kind, n)
    fn = built.engine if side == "engine" else built.raw
    runner = loop_runner(loop)
    benchmark.extra_info.update(case=case, stage=kind, n=n, loop=loop, mode=MODE, side=side)
    result = benchmark(runner.run, fn)
    assert len(result) == n
