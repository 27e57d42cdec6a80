"""The upstream README's example, written against our API: same imports, same factory call.

Runs a SIMPLE pipeline of two groups of three 1-second stages: the sequential
group takes about 3 s, the concurrent group about 1 s.
"""

import asyncio

from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class SleepyCounter(Stage):
    """Bumps a shared counter under the context lock, then waits a second."""

    async def execute(self, *args, **kwargs):
        print(f"  {self.name}: counter is {self.context['counter']}")
        async with self.context as ctx:
            ctx["counter"] += 1
        await asyncio.sleep(1)
        return f"{self.name} done"


async def main():
    readers = [SleepyCounter(name=f"reader {i}") for i in range(1, 4)]
    writers = [SleepyCounter(name=f"writer {i}") for i in range(1, 4)]

    one_by_one = StageGroup(
        name="one by one",
        stages=readers,
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=SequentialExecutionStrategy(),
    )
    all_at_once = StageGroup(
        name="all at once",
        stages=writers,
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=ConcurrentExecutionStrategy(),
    )

    factory = PipelineFactory()
    pipeline = factory.create_pipeline(
        pipeline_type=PipeLineType.SIMPLE,
        name="readme pipeline",
        groups=[one_by_one, all_at_once],
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=SequentialExecutionStrategy(),
        context_data={"counter": 1},
    )

    print("Running the SIMPLE pipeline:")
    results = await pipeline.run()
    print(f"results: {results}")
    print(f"final counter: {pipeline.context['counter']}")
    print(f"sequential group took {one_by_one.execution_time:.2f} s (expect ~3)")
    print(f"concurrent group took {all_at_once.execution_time:.2f} s (expect ~1)")
    print(f"pipeline took {pipeline.execution_time:.2f} s (expect ~4)")
    return results


if __name__ == "__main__":
    asyncio.run(main())
