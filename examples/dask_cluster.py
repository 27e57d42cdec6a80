"""CPU-bound stages on a Dask cluster: sequential in this process vs DaskExecutionStrategy.

The same stages as ``cpu_bound_processes.py`` (each counts the primes below
LIMIT), run on a ``LocalCluster`` of 2 worker processes, so the ideal speed-up
is 2 on a machine with 2 free cores. Run: ``python examples/dask_cluster.py [LIMIT]``
(default 1_000_000: about 2 s of work per stage, so the cluster's per-task cost is small
beside it). Needs the ``dask`` extra: ``pip install dynapipeline[dask]``.

On a real cluster, connect to its scheduler instead of starting a LocalCluster
(dynapipeline must be installed on the workers)::

    strategy = DaskExecutionStrategy(address="tcp://scheduler:8786")
"""

from __future__ import annotations

import sys
import time

from distributed import Client, LocalCluster

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import DaskExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

WORKERS = 2


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


def pipeline(strategy: object, limit: int, parts: int) -> dynapipeline.Pipeline:
    group = StageGroup(name="count", stages=[CountPrimes(name=f"primes-{i}", limit=limit) for i in range(parts)],
                       cycle_strategy=OnceCycleStrategy(), execution_strategy=strategy)
    return PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "primes", [group], OnceCycleStrategy(),
                                             SequentialExecutionStrategy())


async def main(limit: int, address: str) -> None:
    parts = 2 * WORKERS
    t0 = time.perf_counter()
    (sequential,) = await pipeline(SequentialExecutionStrategy(), limit, parts).run()
    t_seq = time.perf_counter() - t0

    async with Client(address, asynchronous=True) as client:
        strategy = DaskExecutionStrategy(client=client)
        t0 = time.perf_counter()
        (first,) = await pipeline(strategy, limit, parts).run()  # the stage class reaches the workers
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        (warm,) = await pipeline(strategy, limit, parts).run()
        t_warm = time.perf_counter() - t0

    assert sequential == first == warm
    print(f"primes below {limit}: {sequential[0]} ({parts} identical stages, {WORKERS} Dask workers)")
    print(f"sequential: {t_seq:.3f} s")
    print(f"dask, first run: {t_first:.3f} s (speed-up {t_seq / t_first:.2f}x)")
    print(f"dask, warm: {t_warm:.3f} s (speed-up {t_seq / t_warm:.2f}x)")


if __name__ == "__main__":
    # Worker processes import this module: start the cluster only under this guard.
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dynapipeline.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, cluster.scheduler_address))
