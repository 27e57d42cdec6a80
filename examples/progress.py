"""A progress display on a stream: per-step counts and rates while 300 items flow through two steps.

In a terminal the table is redrawn in place (with rich: ``pip install
'dynapipeline[progress]'``); piped or in a log (not a terminal) it prints one line
per step every ``interval`` seconds, and a last one at the end. The same works
for a pipeline or a group (rows: cycles and runs per component), e.g. an
infinite loop: ``dynapipeline run examples/stop_on_event.py:build --progress``.
Run: ``python examples/progress.py``.
"""

import asyncio

import dynapipeline
from dynapipeline import Progress, Stage, Stream
from dynapipeline.execution import SemaphoreExecutionStrategy


class Fetch(Stage):
    """Pretends to download an item (5 ms)."""

    async def execute(self, n):
        await asyncio.sleep(0.005)
        return n


class Parse(Stage):
    """Pretends to parse it (2 ms); every 50th item is malformed."""

    async def execute(self, n):
        await asyncio.sleep(0.002)
        if n % 50 == 49:
            raise ValueError(f"item {n} is malformed")
        return n * 2


def build():
    return Stream(name="ingest", steps=[dynapipeline.Step(Fetch(name="fetch"), SemaphoreExecutionStrategy(8)),
                                        Parse(name="parse")],
                  source=range(300), on_error="skip", maxsize=50)


async def main():
    stream = build()
    async with Progress(stream, interval=0.25):
        results = await stream.run()
    print(f"{len(results)} parsed, {len(stream.errors)} skipped")


if __name__ == "__main__":
    dynapipeline.run(main())
