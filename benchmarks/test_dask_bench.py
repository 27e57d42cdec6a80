"""The Dask transport beside a hand-written Dask loop and the process transport (2 workers each).

Groups:
- ``dask-noop-1000``: 1,000 no-op stages of a locally defined class in one group
  on ``DaskExecutionStrategy(client=...)`` vs 1,000 raw ``client.submit(f, i,
  pure=False)`` + ``client.gather`` vs ``MultiprocessExecutionStrategy(2)``
  (divide by 1,000 for µs per stage / per task);
- ``dask-cpu``: the CPU example's stages (``examples/dask_cluster.py``), sequential
  vs Dask; the ratio of the two is its speed-up. Size with
  ``DYNAPIPELINE_BENCH_CPU_LIMIT`` (default small, so ``--benchmark-disable``
  smoke runs stay quick).

The cluster is a ``LocalCluster(n_workers=2, threads_per_worker=1)`` of processes,
and the client is asynchronous, on the benchmark's loop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from dynapipeline import Stage, StageGroup
from dynapipeline.execution import (
    DaskExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from dask_cluster import CountPrimes  # noqa: E402

CPU_LIMIT = int(os.environ.get("DYNAPIPELINE_BENCH_CPU_LIMIT", "30000"))


def noop(i: int) -> int:
    return i


def local_noop() -> type:
    """A stage class defined in a function, so it travels by value (like a class in ``__main__``)."""

    class Noop(Stage):
        def execute(self) -> None:
            return None

    return Noop


Noop = local_noop()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


@pytest.fixture(scope="module")
def client(loop, cluster):
    async def connect():
        return await Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)

    c = loop.run_until_complete(connect())
    yield c
    loop.run_until_complete(c.close())


def group(stages, strategy):
    return StageGroup(name="g", stages=stages, execution_strategy=strategy, cycle_strategy=OnceCycleStrategy())


@pytest.mark.benchmark(group="dask-noop-1000")
def test_engine_dask_noop_1000(benchmark, loop, client):
    g = group([Noop(name=f"n{i}") for i in range(1000)], DaskExecutionStrategy(client=client))
    loop.run_until_complete(g.run())  # the class reaches the workers once
    assert benchmark(lambda: loop.run_until_complete(g.run())) == [None] * 1000


@pytest.mark.benchmark(group="dask-noop-1000")
def test_raw_dask_submit_gather_noop_1000(benchmark, loop, client):
    async def raw():
        return await client.gather([client.submit(noop, i, pure=False) for i in range(1000)])

    assert benchmark(lambda: loop.run_until_complete(raw())) == list(range(1000))


@pytest.mark.benchmark(group="dask-noop-1000")
def test_engine_processes_noop_1000(benchmark, loop, procs):
    g = group([Noop(name=f"n{i}") for i in range(1000)], procs)
    loop.run_until_complete(g.run())
    assert benchmark(lambda: loop.run_until_complete(g.run())) == [None] * 1000


def cpu_stages() -> list[CountPrimes]:
    return [CountPrimes(name=f"p{i}", limit=CPU_LIMIT) for i in range(4)]


@pytest.mark.benchmark(group="dask-cpu")
def test_cpu_sequential(benchmark, loop):
    g = group(cpu_stages(), SequentialExecutionStrategy())
    result = benchmark.pedantic(lambda: loop.run_until_complete(g.run()), rounds=3, iterations=1)
    assert len(set(result)) == 1 and result[0] > 0


@pytest.mark.benchmark(group="dask-cpu")
def test_cpu_dask(benchmark, loop, client):
    g = group(cpu_stages(), DaskExecutionStrategy(client=client))
    loop.run_until_complete(g.run())
    result = benchmark.pedantic(lambda: loop.run_until_complete(g.run()), rounds=3, iterations=1)
    assert len(set(result)) == 1 and result[0] > 0
