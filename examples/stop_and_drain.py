"""``stop()`` cuts a run short; ``stop(drain=True)`` lets the cycle in flight finish.

A loop of two steps (``load`` then ``save``) runs until stopped, here from a
timer: ``pipeline.stop()`` cancels the stage running now (a ``save`` may never
follow its ``load``), while ``pipeline.stop(drain=True)`` ends the loop after the
current cycle, so every ``load`` has its ``save``. Either way ``run()`` returns
``None`` without raising, and ``stop()`` may be called from any thread.
Run: ``python examples/stop_and_drain.py``.
"""

import asyncio

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, OnceCycleStrategy


class Step(Stage):
    """Works 0.05 s; records in the context's log each finished run, and the run cut by a cancellation."""

    async def execute(self):
        log = self.context["log"]  # the list itself: appending needs no lock (one event loop)
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            log.append(f"{self.name} cut")
            raise
        log.append(self.name)


async def run_and_stop(drain):
    log = []
    loop = StageGroup(name="loop", stages=[Step(name="load"), Step(name="save")],
                      cycle_strategy=InfiniteLoopStrategy(), execution_strategy=SequentialExecutionStrategy())
    pipeline = PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "etl", [loop], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy(), context_data={"log": log})
    # 0.175 s: in the middle of a stage (the 4th one: the 2nd cycle's save).
    asyncio.get_running_loop().call_later(0.175, lambda: pipeline.stop(drain=drain))
    result = await pipeline.run()
    cut = [entry for entry in log if entry.endswith(" cut")]
    loads, saves = log.count("load"), log.count("save")
    print(f"stop(drain={drain}): run() returned {result}; {loads} loads, {saves} saves, cut: {cut or 'nothing'}")


async def main():
    await run_and_stop(drain=False)
    await run_and_stop(drain=True)


if __name__ == "__main__":
    dynapipeline.run(main())
