"""Streams beside their hand-written and peer equivalents.

Groups (run with ``make bench-suite`` or ``pytest benchmarks/test_stream_bench.py --benchmark-only``):

- ``stream-async-<loop>``: a 3-step no-op ``Stream`` over 100,000 items vs three tasks
  linked by ``asyncio.Queue(1000)`` written by hand (the ``bench`` command's
  ``stream`` row measures the same pair), on asyncio's loop and on uvloop. Divide by
  100,000 for µs per item.
- ``stream-process``: one tiny step over 100,000 items on 2 processes: our
  ``MultiprocessExecutionStrategy(2)`` step vs ``multiprocessing.Pool(2).imap``
  (chunksize 500: the stdlib's raw chunked map, the limit), ``mpire.WorkerPool(2).imap``,
  ``aiomultiprocess.Pool(2).map`` and ``pypeln.process.map(workers=2)``. Pools are
  warm (started before timing, our step's stage already in its workers), as a
  long-running pipeline's would be. Our step and ``Pool.imap`` run the same number
  of rounds (``PROCESS_ROUNDS``): the fastest of N rounds depends on N, and
  pytest-benchmark's own choice (from a first call) gave ``Pool.imap`` three times
  as many.
- ``stream-cpu``: 200 items of ~10 ms of CPU each: one process vs a 2-process step.
- ``stream-recycling``: the ``stream-cpu`` step on 2 processes, without recycling vs
  ``max_tasks_per_worker=25`` (issue 18: recycling every 25 items costs a CPU step at
  most 10% of its throughput); 200 items, so 8 replacements. Its stages come from
  ``light_stages`` (a replaced worker imports its stages' module again: this module's
  imports, pytest's included, would cost ~70 ms per replacement).
- ``recycling-replacement``: one replacement's cost, on the critical path: 20 one-item
  dispatches in a row on 1 worker, without recycling vs ``max_tasks_per_worker=1`` (each
  dispatch then waits for the retired worker's replacement to say hello); the difference
  divided by 20 is the time from a worker's retiring reply to its replacement's first job.
- ``stream-function``: a 1-step no-op stream over 100,000 items on the loop, its step a plain
  function (``Stream(steps=[tiny])``) vs the same work as a ``Stage`` (issue 17: a function
  step costs no more than a Stage step).

Peers missing from the environment are skipped (they are in the ``dev`` extra).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import light_stages
import pytest
from bench_support import LOOPS, loop_runner

from dynapipeline import Stage, Step, Stream
from dynapipeline._cli.bench import make_case
from dynapipeline._transports.process.children import default_start_method
from dynapipeline.execution import MultiprocessExecutionStrategy

ITEMS = 100_000
PROCESS_ROUNDS = 30  # stream-process: rounds of our step and of Pool.imap, the same for both (see above)
CPU_ITEMS = 200
CPU_SECONDS = 0.010


def tiny(x: int) -> int:
    return x + 1


async def atiny(x: int) -> int:
    return x + 1


def burn(x: int) -> int:
    """About ``CPU_SECONDS`` of pure-Python work."""
    end = time.process_time() + CPU_SECONDS
    n = 0
    while time.process_time() < end:
        n += 1
    return x


class Tiny(Stage):
    def execute(self, item: int) -> int:
        return item + 1


class Burn(Stage):
    def execute(self, item: int) -> int:
        return burn(item)


# -- async -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name", [pytest.param(name, marks=pytest.mark.benchmark(group=f"stream-async-{name}"))
                                       for name in LOOPS])
@pytest.mark.parametrize("side", ["engine", "raw"])
def test_stream_async(benchmark: Any, loop_name: str, side: str) -> None:
    case = make_case("stream", "noop", ITEMS)
    fn = case.engine if side == "engine" else case.raw
    runner = loop_runner(loop_name)
    out = benchmark(lambda: runner.run(fn))
    assert len(out) == ITEMS


# -- a function step vs a Stage step ----------------------------------------------------------------
@pytest.mark.benchmark(group="stream-function")
@pytest.mark.parametrize("side", ["function", "stage"])
def test_stream_function_step(benchmark: Any, loop: Any, side: str) -> None:
    step = tiny if side == "function" else Tiny(name="tiny")
    stream = Stream(name="bench", steps=[step])
    out = benchmark(lambda: loop.run_until_complete(stream.run(range(ITEMS))))
    assert out == list(range(1, ITEMS + 1))


# -- processes -------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="stream-process")
def test_stream_process_dynapipeline(benchmark: Any, loop: Any, procs: Any) -> None:
    stream = Stream(name="bench", steps=[Step(Tiny(name="tiny"), procs)])
    loop.run_until_complete(stream.run(range(ITEMS)))  # warm: the stage goes to the workers before timing
    out = benchmark.pedantic(lambda: loop.run_until_complete(stream.run(range(ITEMS))), rounds=PROCESS_ROUNDS)
    assert out == list(range(1, ITEMS + 1))


@pytest.mark.benchmark(group="stream-process")
def test_stream_process_pool_imap(benchmark: Any) -> None:
    with multiprocessing.get_context(default_start_method()).Pool(2) as pool:
        pool.map(tiny, range(100))  # warm
        out = benchmark.pedantic(lambda: list(pool.imap(tiny, range(ITEMS), chunksize=500)), rounds=PROCESS_ROUNDS)
    assert out == list(range(1, ITEMS + 1))


@pytest.mark.benchmark(group="stream-process")
def test_stream_process_mpire(benchmark: Any) -> None:
    mpire = pytest.importorskip("mpire")
    with mpire.WorkerPool(n_jobs=2, keep_alive=True) as pool:
        pool.map(tiny, range(100))  # warm
        out = benchmark(lambda: list(pool.imap(tiny, range(ITEMS))))
    assert out == list(range(1, ITEMS + 1))


@pytest.mark.benchmark(group="stream-process")
def test_stream_process_aiomultiprocess(benchmark: Any, loop: Any) -> None:
    aiomultiprocess = pytest.importorskip("aiomultiprocess")

    async def start() -> Any:
        return aiomultiprocess.Pool(2)  # its pool binds to the running loop

    pool = loop.run_until_complete(start())
    try:
        loop.run_until_complete(pool.map(atiny, range(100)))  # warm
        out = benchmark.pedantic(lambda: loop.run_until_complete(pool.map(atiny, range(ITEMS))), rounds=1)
    finally:
        pool.close()
        loop.run_until_complete(pool.join())
    assert out == list(range(1, ITEMS + 1))


@pytest.mark.benchmark(group="stream-process")
def test_stream_process_pypeln(benchmark: Any) -> None:
    pl = pytest.importorskip("pypeln")
    # pypeln starts its workers per call (it has no warm pool); ~4 k items/s: 20,000 items keep the run short.
    n = 20_000
    out = benchmark.pedantic(lambda: list(pl.process.map(tiny, range(n), workers=2, maxsize=1000)), rounds=1)
    assert sorted(out) == list(range(1, n + 1))
    benchmark.extra_info["items"] = n


# -- CPU ------------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="stream-cpu")
def test_stream_cpu_one_process(benchmark: Any, loop: Any) -> None:
    stream = Stream(name="bench", steps=[Burn(name="burn")])
    out = benchmark.pedantic(lambda: loop.run_until_complete(stream.run(range(CPU_ITEMS))), rounds=2)
    assert out == list(range(CPU_ITEMS))


@pytest.mark.benchmark(group="stream-cpu")
def test_stream_cpu_two_processes(benchmark: Any, loop: Any, procs: Any) -> None:
    stream = Stream(name="bench", steps=[Step(Burn(name="burn"), procs)])
    out = benchmark.pedantic(lambda: loop.run_until_complete(stream.run(range(CPU_ITEMS))), rounds=2)
    assert out == list(range(CPU_ITEMS))


# -- recycling workers (issue 18) -------------------------------------------------------------------
@pytest.mark.benchmark(group="stream-recycling")
@pytest.mark.parametrize("every", [None, 25], ids=["never", "every-25"])
def test_stream_cpu_recycling(benchmark: Any, loop: Any, every: int | None) -> None:
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=every)
    try:
        loop.run_until_complete(strategy.start())
        stream = Stream(name="bench", steps=[Step(light_stages.Burn(name="burn"), strategy)])
        loop.run_until_complete(stream.run(range(CPU_ITEMS)))  # warm: the stage reached the workers once
        out = benchmark.pedantic(lambda: loop.run_until_complete(stream.run(range(CPU_ITEMS))), rounds=3)
    finally:
        strategy.close()
    assert out == list(range(CPU_ITEMS))


REPLACEMENTS = 20


@pytest.mark.benchmark(group="recycling-replacement")
@pytest.mark.parametrize("every", [None, 1], ids=["never", "every-1"])
def test_recycling_replacement(benchmark: Any, loop: Any, every: int | None) -> None:
    strategy = MultiprocessExecutionStrategy(1, max_tasks_per_worker=every)
    stage = light_stages.Tiny(name="tiny")

    async def one_by_one() -> list[Any]:
        return [await strategy.execute([stage], i) for i in range(REPLACEMENTS)]

    try:
        loop.run_until_complete(strategy.start())
        loop.run_until_complete(one_by_one())
        out = benchmark.pedantic(lambda: loop.run_until_complete(one_by_one()), rounds=5)
    finally:
        strategy.close()
    assert out == [[i + 1] for i in range(REPLACEMENTS)]
