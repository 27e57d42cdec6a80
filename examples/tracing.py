"""Tracing a run: every stage, group and pipeline run inside ``Tracer`` becomes a slice of a trace file.

    python examples/tracing.py [trace.json]

Without a path it writes a new file in the system's temporary folder (and prints its path).

Open the file at https://ui.perfetto.dev (or in ``chrome://tracing``): the three
downloads overlap on the event loop's thread, the two parsers run on worker
threads, and arrows lead from the dispatch to each thread's run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup, Tracer
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy, OnceCycleStrategy


class Download(Stage):
    seconds: float

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        await asyncio.sleep(self.seconds)
        return f"{self.name}: {int(self.seconds * 1000)} kB"


class Parse(Stage):
    def execute(self, *args: Any, **kwargs: Any) -> int:
        time.sleep(0.03)  # a blocking parser: a plain def, run on a thread
        return 42


async def main(path: str) -> None:
    pipeline = PipelineFactory().create_pipeline(
        PipeLineType.ADVANCED, "etl",
        [StageGroup(name="download", stages=[Download(name=f"file {i}", seconds=0.02 * (i + 1)) for i in range(3)],
                    cycle_strategy=LoopCycleStrategy(2), execution_strategy=ConcurrentExecutionStrategy()),
         StageGroup(name="parse", stages=[Parse(name="parse a"), Parse(name="parse b")],
                    cycle_strategy=OnceCycleStrategy(), execution_strategy=MultithreadExecutionStrategy(2))],
        OnceCycleStrategy(), SequentialExecutionStrategy())
    async with Tracer(path) as tracer:  # a plain `with` works as well
        await pipeline.run()
    slices = [event for event in tracer.events if event["ph"] == "X"]
    print(f"{len(slices)} slices written to {path}; open it at https://ui.perfetto.dev")
    with open(path) as file:
        assert json.load(file)["traceEvents"] == tracer.events
    print(pipeline.report())


def temporary_path() -> str:
    """A new file in the temporary folder: running the example leaves nothing in the folder it runs from."""
    handle, path = tempfile.mkstemp(prefix="dynapipeline-trace-", suffix=".json")
    os.close(handle)
    return path


if __name__ == "__main__":
    dynapipeline.run(main(sys.argv[1] if len(sys.argv) > 1 else temporary_path()))
