"""Data flowing between stages: groups that chain, and a failed fetch kept in its place.

fetch (three sources at once; one fails) -> transform (clean, then scale: chained
stages) -> summarise. Runs in well under a second.
"""

import asyncio

from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import ConcurrentExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class Fetch(Stage):
    """Pretends to download a day's readings from one source; a source with none does not answer."""

    readings: list[int] = []

    async def execute(self, *, day):
        await asyncio.sleep(0.05)
        if not self.readings:
            raise ConnectionError(f"{self.name} did not answer for {day}")
        return self.readings


class Clean(Stage):
    """Gets the fetch group's result: one item per source, a reading list or the source's exception."""

    async def execute(self, fetched, *, day):
        for item in fetched:
            if isinstance(item, Exception):
                print(f"  skipped: {item!r}")
        return [r for item in fetched if not isinstance(item, Exception) for r in item]


class Scale(Stage):
    """Gets Clean's result (chained within the group)."""

    factor: float = 0.5

    async def execute(self, readings, *, day):
        return [r * self.factor for r in readings]


class Summarise(Stage):
    """Gets the transform group's result: the list of its members' results; the last is the chain's output."""

    async def execute(self, transformed, *, day):
        cleaned, scaled = transformed
        return f"{day}: {len(cleaned)} readings, scaled total {sum(scaled)}"


async def main():
    fetch = StageGroup(
        name="fetch",
        stages=[Fetch(name="north", readings=[4, 8]), Fetch(name="south"), Fetch(name="east", readings=[2, 6])],
        cycle_strategy=OnceCycleStrategy(),
        # A failed source does not cancel the others: its exception takes its place in the list.
        execution_strategy=ConcurrentExecutionStrategy(return_exceptions=True),
    )
    transform = StageGroup(
        name="transform",
        stages=[Clean(name="clean"), Scale(name="scale")],
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=SequentialExecutionStrategy(chain=True),  # clean's result is scale's input
    )
    summarise = StageGroup(
        name="summarise",
        stages=[Summarise(name="summary")],
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=SequentialExecutionStrategy(),
    )
    pipeline = PipelineFactory().create_pipeline(
        pipeline_type=PipeLineType.SIMPLE,
        name="readings",
        groups=[fetch, transform, summarise],
        cycle_strategy=OnceCycleStrategy(),
        execution_strategy=SequentialExecutionStrategy(chain=True),  # each group gets the previous group's result
    )
    # Keyword arguments reach every stage unchanged; the previous result is each one's first positional argument.
    fetched, transformed, summary = await pipeline.run(day="2024-06-01")
    print(f"fetched: {fetched}")
    print(f"transformed: {transformed}")
    print(f"summary: {summary[0]}")


if __name__ == "__main__":
    asyncio.run(main())
