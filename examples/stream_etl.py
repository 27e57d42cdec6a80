"""A stream of 100,000 records: CPU parse on processes -> async enrich with a semaphore -> batched save.

Run: python examples/stream_etl.py [records]

- The source is a generator: records are pulled as the first step has room, never
  all at once (at most ``maxsize`` wait between two steps).
- ``parse`` is CPU work on 2 worker processes; records travel to them in chunks.
- ``enrich`` awaits (a stand-in for an HTTP call) with up to 32 records at once.
- ``save`` receives lists of up to 500 records, as a database bulk insert would.
- A malformed record is skipped (``on_error="skip"``) and kept in ``stream.errors``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy, SemaphoreExecutionStrategy


def records(n: int) -> Iterator[str]:
    """CSV lines, every 10,000th one malformed."""
    for i in range(n):
        yield f"{i},sensor-{i % 7},{i * 0.5:.1f}" if i % 10_000 != 9_999 else f"{i},broken"


class Parse(Stage):
    """CSV line -> dict (runs in a worker process)."""

    def execute(self, line: str) -> dict[str, Any]:
        ident, sensor, value = line.split(",")  # a malformed line raises ValueError: skipped
        return {"id": int(ident), "sensor": sensor, "value": float(value)}


class Enrich(Stage):
    """Adds a field an I/O call would provide."""

    async def execute(self, record: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # an awaited lookup
        return {**record, "site": "north" if record["id"] % 2 else "south"}


class Save(Stage):
    """Receives a batch (a list) and stores it; returns how many were stored."""

    async def execute(self, batch: list[dict[str, Any]]) -> int:
        await asyncio.sleep(0)  # an awaited bulk insert
        return len(batch)


async def main(n: int) -> None:
    processes = MultiprocessExecutionStrategy(max_workers=2)
    stream = Stream(
        name="etl",
        steps=[
            Step(Parse(name="parse"), processes),
            Step(Enrich(name="enrich"), SemaphoreExecutionStrategy(max_concurrent=32)),
            Step(Save(name="save"), batch=500, batch_timeout=0.5),
        ],
        maxsize=1000,
        on_error="skip",
    )
    async with processes:  # the worker processes live for this block
        started = time.perf_counter()
        saved = await stream.run(records(n))
        elapsed = time.perf_counter() - started
    print(f"{sum(saved):,} records saved in {len(saved)} batches, {len(stream.errors)} skipped, "
          f"{n / elapsed:,.0f} records/s")
    for name, counts in stream.progress.items():
        print(f"  {name:7} received={counts.received:,} done={counts.done:,} failed={counts.failed}")
    first = stream.errors[0]
    print(f"  first skipped: item {first.index} at step {first.step!r}: {first.error!r}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
