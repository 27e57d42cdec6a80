"""An infinite loop stopped by an ``asyncio.Event``: poll a sensor until it reports "done".

``InfiniteLoopStrategy(event=..., interval=...)`` runs the group's stages again
and again, sleeping ``interval`` seconds between cycles, until the event is set
(it checks before each cycle, so the cycle that sets it finishes). It keeps no
results, so memory stays flat however long it runs. Anything with ``is_set()``
works, a ``threading.Event`` set from another thread too.
Run: ``python examples/stop_on_event.py`` or ``dynapipeline run examples/stop_on_event.py:build``.
"""

import asyncio

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, OnceCycleStrategy


class ReadSensor(Stage):
    """Reads a (pretend) sensor; after 5 readings it sets the event that ends the loop."""

    done: asyncio.Event

    async def execute(self):
        async with self.context as ctx:
            ctx["readings"] += 1
            if ctx["readings"] == 5:
                self.done.set()


def build():
    done = asyncio.Event()
    poll = StageGroup(name="poll", stages=[ReadSensor(name="sensor", done=done)],
                      cycle_strategy=InfiniteLoopStrategy(event=done, interval=0.05),
                      execution_strategy=SequentialExecutionStrategy())
    return PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "watch", [poll], OnceCycleStrategy(),
                                             SequentialExecutionStrategy(), context_data={"readings": 0})


async def main():
    pipeline = build()
    [loop_result] = await pipeline.run()  # the pipeline's one group: an infinite loop returns None
    print(f"stopped after {pipeline.context['readings']} readings; the loop returned {loop_result}")


if __name__ == "__main__":
    dynapipeline.run(main())
