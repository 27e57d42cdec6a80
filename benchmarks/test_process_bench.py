"""Process and thread transports beside their raw twins (``run_in_executor`` on warm pools).

Groups:
- ``process-noop-1000``: 1,000 no-op stages of a locally defined class on a warm
  pool vs 1,000 raw ``loop.run_in_executor`` calls on a warm ``ProcessPoolExecutor``
  (divide the time by 1,000 for µs per stage / per call);
- ``process-cycles``: ``LoopCycleStrategy(50)`` over two no-op stages on processes
  (divide by 50 for the cost per cycle);
- ``process-cpu``: two CPU stages, sequential vs processes (warm pool). Size with
  ``DYNAPIPELINE_BENCH_CPU_LIMIT`` (primes below it per stage; default small so
  ``--benchmark-disable`` smoke runs stay quick; 1_000_000 ≈ 0.5-1 s per stage);
- ``thread-blocking``: four blocking 20 ms stages, threads vs raw ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from dynapipeline import Stage, StageGroup
from dynapipeline._transports.process.children import default_start_method
from dynapipeline.execution import (
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy, OnceCycleStrategy

CPU_LIMIT = int(os.environ.get("DYNAPIPELINE_BENCH_CPU_LIMIT", "30000"))


def noop() -> None:
    return None


def count_primes(limit: int) -> int:
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


def local_classes() -> tuple[type, type]:
    """Stage classes defined in a function, so they travel by value (like classes in ``__main__``)."""

    class Noop(Stage):
        def execute(self) -> None:
            return None

    class Primes(Stage):
        limit: int

        def execute(self) -> int:
            return count_primes(self.limit)

    return Noop, Primes


Noop, Primes = local_classes()


@pytest.fixture(scope="module")
def raw_pool():
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(default_start_method()))
    for future in [pool.submit(noop) for _ in range(4)]:  # warm both workers
        future.result()
    yield pool
    pool.shutdown()


def group(stages, strategy, cycles=None):
    return StageGroup(name="g", stages=stages, execution_strategy=strategy,
                      cycle_strategy=LoopCycleStrategy(cycles) if cycles is not None else OnceCycleStrategy())


@pytest.mark.benchmark(group="process-noop-1000")
def test_engine_process_noop_1000(benchmark, loop, procs):
    g = group([Noop(name=f"n{i}") for i in range(1000)], procs)
    loop.run_until_complete(g.run())  # the class reaches the workers once
    assert benchmark(lambda: loop.run_until_complete(g.run())) == [None] * 1000


@pytest.mark.benchmark(group="process-noop-1000")
def test_raw_run_in_executor_noop_1000(benchmark, loop, raw_pool):
    async def raw():
        return await asyncio.gather(*[loop.run_in_executor(raw_pool, noop) for _ in range(1000)])

    assert benchmark(lambda: loop.run_until_complete(raw())) == [None] * 1000


@pytest.mark.benchmark(group="process-cycles")
def test_engine_process_loop_50_cycles(benchmark, loop, procs):
    g = group([Noop(name="a"), Noop(name="b")], procs, cycles=50)
    loop.run_until_complete(g.run())
    assert benchmark(lambda: loop.run_until_complete(g.run())) == [[None, None]] * 50


@pytest.mark.benchmark(group="process-cpu")
def test_cpu_sequential(benchmark, loop):
    g = group([Primes(name="p1", limit=CPU_LIMIT), Primes(name="p2", limit=CPU_LIMIT)],
              SequentialExecutionStrategy())
    result = benchmark.pedantic(lambda: loop.run_until_complete(g.run()), rounds=3, iterations=1)
    assert result[0] == result[1] > 0


@pytest.mark.benchmark(group="process-cpu")
def test_cpu_processes_warm(benchmark, loop, procs):
    g = group([Primes(name="p1", limit=CPU_LIMIT), Primes(name="p2", limit=CPU_LIMIT)], procs)
    loop.run_until_complete(g.run())
    result = benchmark.pedantic(lambda: loop.run_until_complete(g.run()), rounds=3, iterations=1)
    assert result[0] == result[1] > 0


@pytest.mark.benchmark(group="process-cpu")
def test_cpu_raw_process_pool_warm(benchmark, loop, raw_pool):
    """The machine's own ceiling: the same work on a warm ProcessPoolExecutor."""

    async def raw():
        return await asyncio.gather(*[loop.run_in_executor(raw_pool, count_primes, CPU_LIMIT) for _ in range(2)])

    result = benchmark.pedantic(lambda: loop.run_until_complete(raw()), rounds=3, iterations=1)
    assert result[0] == result[1] > 0


@pytest.mark.benchmark(group="process-cpu")
def test_cpu_processes_including_pool_start(benchmark, loop):
    def cold():
        strategy = MultiprocessExecutionStrategy(2)
        try:
            g = group([Primes(name="p1", limit=CPU_LIMIT), Primes(name="p2", limit=CPU_LIMIT)], strategy)
            return loop.run_until_complete(g.run())
        finally:
            strategy.close()

    result = benchmark.pedantic(cold, rounds=3, iterations=1)
    assert result[0] == result[1] > 0


class Blocking(Stage):
    def execute(self) -> None:
        time.sleep(0.02)


@pytest.mark.benchmark(group="thread-blocking")
def test_engine_threads_blocking(benchmark, loop):
    strategy = MultithreadExecutionStrategy(4)
    g = group([Blocking(name=f"b{i}") for i in range(4)], strategy)

    async def run():
        async with strategy:
            return await g.run()

    assert benchmark(lambda: loop.run_until_complete(run())) == [None] * 4


@pytest.mark.benchmark(group="thread-blocking")
def test_raw_threads_blocking(benchmark, loop):
    pool = ThreadPoolExecutor(4)

    async def raw():
        return await asyncio.gather(*[loop.run_in_executor(pool, time.sleep, 0.02) for _ in range(4)])

    try:
        assert benchmark(lambda: loop.run_until_complete(raw())) == [None] * 4
    finally:
        pool.shutdown()
