"""A ``multiprocessing.Pool.imap`` script and an mpire script, each converted to a flow line by line.

Run: python examples/from_pool_and_mpire.py

Each script parses CSV lines on 2 worker processes, drops the malformed ones and
saves the records in batches of 100. Its flow does the same; the comment at the
end of each flow line is the script line it replaces. Both run, and must agree.
mpire is optional: without it, its script is skipped (its flow still runs).

What the flow adds: the source is pulled as the first step has room (a
generator of 10 million lines is never held); records flow on to the next
step as they come, in source order; an ``async def`` step (an HTTP call, a
database write) runs on the event loop beside the processes; an error names its
item (``on_error="skip"`` keeps it in ``stream.errors`` instead of a ``None``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeGuard

from dynapipeline import flow
from dynapipeline.execution import MultiprocessExecutionStrategy


@dataclass(frozen=True)
class Record:
    ident: int
    value: float


def parse(line: str) -> Record | None:
    """CPU work, in a worker process; None for a malformed line (the scripts cannot skip an error)."""
    ident, value = line.split(",")
    try:
        return Record(int(ident), float(value))
    except ValueError:
        return None


def parsed(record: Record | None) -> TypeGuard[Record]:
    """``r is not None`` as a function whose type says so: the flow after ``filter(parsed)`` is of ``Record``."""
    return record is not None


def save(batch: list[Record]) -> int:
    """A bulk insert: how many records were stored."""
    return len(batch)


def batched(items: Iterable[Record], n: int) -> Iterator[list[Record]]:
    """``itertools.batched`` (Python 3.12+), as lists."""
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def lines() -> list[str]:
    return [f"{i},{i / 2}" if i % 10 else f"{i},oops" for i in range(1000)]


# -- multiprocessing.Pool.imap ------------------------------------------------------------------------------
def pool_script(source: list[str]) -> list[int]:
    with multiprocessing.Pool(2) as pool:
        records = (r for r in pool.imap(parse, source, chunksize=100) if r is not None)
        return [save(batch) for batch in batched(records, 100)]


async def pool_flow(source: list[str]) -> list[int]:
    async with MultiprocessExecutionStrategy(2) as processes:   # with multiprocessing.Pool(2) as pool:
        return await (
            flow(source)                                        #     ... source ...
            .map(parse, on=processes)                           #     pool.imap(parse, source, chunksize=100)
            .filter(parsed)                                     #     (r for r in ... if r is not None)
            .batch(100)                                         #     batched(records, 100)
            .map(save)                                          #     [save(batch) for batch in ...]
            .run()                                              #     return [...]
        )


# -- mpire --------------------------------------------------------------------------------------------------
def mpire_script(source: list[str]) -> list[int]:
    from mpire import WorkerPool  # type: ignore[attr-defined]  # (mpire does not list it in __all__)

    with WorkerPool(n_jobs=2) as pool:
        records = [r for r in pool.imap(parse, source, chunk_size=100) if r is not None]
    return [save(records[i:i + 100]) for i in range(0, len(records), 100)]


async def mpire_flow(source: list[str]) -> list[int]:
    async with MultiprocessExecutionStrategy(2) as processes:   # with WorkerPool(n_jobs=2) as pool:
        results = flow(source).map(parse, on=processes)         #     pool.imap(parse, source, chunk_size=100)
        records = results.filter(parsed)                        #     [r for r in ... if r is not None]
        batches = records.batch(100)                            # records[i:i + 100] for i in range(0, ..., 100)
        return await batches.map(save).run()                    # return [save(...) for ...]


def main() -> None:
    source = lines()
    by_pool = pool_script(source)
    assert asyncio.run(pool_flow(source)) == by_pool
    print(f"Pool.imap script and its flow: {sum(by_pool)} records saved in {len(by_pool)} batches")
    try:
        import mpire  # noqa: F401
    except ImportError:
        print("mpire is not installed: its script is skipped")
        return
    by_mpire = mpire_script(source)
    assert asyncio.run(mpire_flow(source)) == by_mpire == by_pool
    print(f"mpire script and its flow: {sum(by_mpire)} records saved in {len(by_mpire)} batches")


if __name__ == "__main__":  # worker processes import this module
    main()
