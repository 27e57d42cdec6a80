"""Sequential dispatch of no-op stages beside a raw ``await`` loop."""

import asyncio

import pytest

from dynapipeline import Stage, StageGroup
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class Noop(Stage):
    async def execute(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.benchmark(group="sequential-1000")
def test_engine_sequential(benchmark, loop):
    stages = [Noop(name=f"s{i}") for i in range(1000)]
    group = StageGroup(name="g", stages=stages, cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=SequentialExecutionStrategy())
    result = benchmark(lambda: loop.run_until_complete(group.run()))
    assert result == [None] * 1000


@pytest.mark.benchmark(group="sequential-1000")
def test_raw_sequential(benchmark, loop):
    stages = [Noop(name=f"s{i}") for i in range(1000)]

    async def raw():
        return [await s.execute() for s in stages]

    assert benchmark(lambda: loop.run_until_complete(raw())) == [None] * 1000
