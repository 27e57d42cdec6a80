"""A semaphore as a rate limit: 12 calls to a slow API, never more than 3 at once nor 10 per second.

``SemaphoreExecutionStrategy(max_concurrent=3, rate=10)`` caps how many stages are
in flight and how many start per second (a token bucket on starts; ``burst=`` lets
more start at once after a pause); it starts 3 workers, not 12 tasks. One instance
shared by several groups or stream steps shares its 3 slots and its rate between
them (one limit for the whole API).
Run: ``python examples/rate_limit.py`` or ``dynapipeline run examples/rate_limit.py:build``.
"""

import asyncio
import time

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import SemaphoreExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

LIMIT = 3
RATE = 10  # calls started per second


class CallApi(Stage):
    """Pretends to call an API that takes 0.3 s, counting the calls in flight in the shared context."""

    async def execute(self):
        async with self.context as ctx:
            ctx["in_flight"] += 1
            ctx["peak"] = max(ctx["peak"], ctx["in_flight"])
        await asyncio.sleep(0.3)
        async with self.context as ctx:
            ctx["in_flight"] -= 1
        return self.name


def build():
    api = SemaphoreExecutionStrategy(max_concurrent=LIMIT, rate=RATE)  # the limits belong to this instance
    calls = StageGroup(name="calls", stages=[CallApi(name=f"call {i}") for i in range(12)],
                       cycle_strategy=OnceCycleStrategy(), execution_strategy=api)
    return PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "rate limit", [calls], OnceCycleStrategy(),
                                             SequentialExecutionStrategy(),
                                             context_data={"in_flight": 0, "peak": 0})


async def main():
    pipeline = build()
    start = time.perf_counter()
    [results] = await pipeline.run()
    elapsed = time.perf_counter() - start
    print(f"{len(results)} calls, at most {pipeline.context['peak']} at once, {RATE} per second, "
          f"in {elapsed:.2f} s")
    print(f"results in call order: {results[0]!r} ... {results[-1]!r}")


if __name__ == "__main__":
    dynapipeline.run(main())
