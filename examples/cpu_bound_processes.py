"""CPU-bound stages: sequential in the parent vs a warm process pool (MultiprocessExecutionStrategy).

Every stage does the same work (counts the primes below LIMIT), so the ideal
speed-up is the number of workers. Run: ``python examples/cpu_bound_processes.py
[LIMIT]`` (default 1_000_000: roughly 0.5-1 s per stage on a laptop-class core).
"""

from __future__ import annotations

import os
import sys
import time

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import MultiprocessExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class CountPrimes(Stage):
    """Counts primes below ``limit`` by trial division: pure CPU work, a plain ``def``."""

    limit: int

    def execute(self) -> int:
        count = 0
        for n in range(2, self.limit):
            if n % 2 == 0 and n != 2:
                continue
            d = 3
            prime = True
            while d * d <= n:
                if n % d == 0:
                    prime = False
                    break
                d += 2
            count += prime
        return count


def stages(limit: int, parts: int) -> list[CountPrimes]:
    return [CountPrimes(name=f"primes-{i}", limit=limit) for i in range(parts)]


def pipeline(strategy: object, limit: int, parts: int) -> dynapipeline.Pipeline:
    group = StageGroup(name="count", stages=stages(limit, parts), cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=strategy)
    return PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "primes", [group], OnceCycleStrategy(),
                                             SequentialExecutionStrategy())


async def main(limit: int) -> None:
    workers = os.cpu_count() or 1
    parts = max(2, workers)
    t0 = time.perf_counter()
    (sequential,) = await pipeline(SequentialExecutionStrategy(), limit, parts).run()
    t_seq = time.perf_counter() - t0

    async with MultiprocessExecutionStrategy(workers) as processes:
        t0 = time.perf_counter()
        (cold,) = await pipeline(processes, limit, parts).run()  # includes starting the pool
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        (warm,) = await pipeline(processes, limit, parts).run()  # the pool is warm now
        t_warm = time.perf_counter() - t0

    assert sequential == cold == warm
    print(f"primes below {limit}: {sequential[0]} ({parts} identical stages, {workers} workers)")
    print(f"sequential: {t_seq:.3f} s")
    print(f"processes, including pool start: {t_cold:.3f} s (speed-up {t_seq / t_cold:.2f}x)")
    print(f"processes, warm pool: {t_warm:.3f} s (speed-up {t_seq / t_warm:.2f}x)")


if __name__ == "__main__":
    dynapipeline.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
