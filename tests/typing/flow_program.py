"""A user's flow, type-checked with ``mypy --strict`` (``make test``): every line's type is inferred; it also runs.

Each annotated assignment states the type mypy must infer for the flow so far (an inference that
differs fails the check); ``tests/test_typing.py`` reveals the same types and shows a wrong chain rejected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

from dynapipeline import Flow, Stage, Stream, flow
from dynapipeline.execution import MultiprocessExecutionStrategy, SemaphoreExecutionStrategy


@dataclass(frozen=True)
class Record:
    ident: int
    ok: bool
    site: str = ""


def parse(line: str) -> Record:
    ident, flag = line.split(",")
    return Record(int(ident), flag == "ok")


async def enrich(record: Record) -> Record:
    await asyncio.sleep(0)
    return Record(record.ident, record.ok, "north" if record.ident % 2 else "south")


def save(batch: list[Record]) -> int:
    return len(batch)


def words(line: str) -> list[str]:
    return line.split(",")


async def words_later(line: str) -> list[str]:
    await asyncio.sleep(0)
    return line.split(",")


def characters(line: str) -> Iterator[str]:
    yield from line


async def idents(record: Record) -> AsyncIterator[int]:
    yield record.ident


async def is_ok(record: Record) -> bool:
    return record.ok


def maybe_parse(line: str) -> Record | None:
    return parse(line) if line.endswith("ok") else None


def parsed(record: Record | None) -> TypeGuard[Record]:
    return record is not None


class Shout(Stage):
    def execute(self, text: str) -> str:
        return text.upper()


async def main() -> None:
    lines = [f"{i},{'ok' if i % 10 else 'bad'}" for i in range(1000)]
    async with MultiprocessExecutionStrategy(2) as processes:
        source: Flow[str] = flow(lines)
        records: Flow[Record] = source.map(parse, on=processes)
        good: Flow[Record] = records.filter(lambda r: r.ok)
        enriched: Flow[Record] = good.map(enrich, on=SemaphoreExecutionStrategy(32), on_error="skip")
        batches: Flow[list[Record]] = enriched.batch(100, timeout=0.5)
        saved: Flow[int] = batches.map(save)
        totals: list[int] = await saved.run()
        assert sum(totals) == 900, totals

    first: Record | None = None
    async for record in flow(lines).map(parse):
        first = record
        break
    assert first == Record(0, False)
    async with flow(lines).map(parse).filter(is_ok).iterate() as items:
        async for item in items:
            ok: bool = item.ok
            assert ok

    stream: Stream = flow(lines).map(parse).to_stream(name="etl")
    assert len(await stream.run()) == 1000

    fields: Flow[str] = flow(lines).flat_map(words)
    fields_later: Flow[str] = flow(lines).flat_map(words_later)
    letters: Flow[str] = flow(lines).flat_map(characters)
    numbers: Flow[int] = flow(lines).map(parse).flat_map(idents)
    lengths: Flow[int] = fields.map(len).map(lambda n: n + 1)
    loud: Flow[Any] = fields_later.map(Shout(name="shout"))
    maybe: Flow[Record | None] = flow(lines).map(maybe_parse)
    narrowed: Flow[Record] = maybe.filter(parsed)
    kept: Flow[Record | None] = maybe.filter(lambda r: r is not None)  # a lambda does not narrow
    assert len(await narrowed.run()) == len(await kept.run()) == 900
    counts: list[int] = await lengths.run()
    assert len(counts) == 2000 and len(await letters.run()) > 4000 and len(await numbers.run()) == 1000
    assert (await loud.run())[:2] == ["0", "BAD"]


if __name__ == "__main__":  # worker processes import this module
    asyncio.run(main())
