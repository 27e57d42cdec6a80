"""One run of a stream: the feeder, a queue per step, the steps' workers, and what ``iterate()`` yields.

::

    source ──feed──► queue 0 ──► step 0 ──► queue 1 ──► step 1 ──► ... ──► sink (run) or out queue (iterate)
      │                 │ each queue: ChunkQueue(maxsize items, in chunks); its one sender (the feeder, or the
      │                 └ step before) closes it when done: the workers behind it drain it, then end
      └ pulled lazily: a sync source a chunk at a time, only for the room queue 0 has; an async source
        item by item (each joins the open chunk at once); a drain stops the pulling

Invariants:

- ``go()`` runs the feeder and every step as tasks of one ``run_tasks``: the first
  error (or a cancellation) cancels them all and is raised; however the run ends,
  ``settle()`` counts what was left in the queues as cancelled and lets it go.
- An error of the source fails the run whatever ``on_error`` says, noted with how
  many items it gave.
- A step's outputs go on one at a time (``Emit.one``) or a chunk's at once
  (``Emit.all``, which still waits for room so that a queue never holds more
  than ``maxsize`` items).
- ``iterate()``: a supervisor task runs the run and closes the out queue when it ends;
  on an error it empties that queue first, so the consumer learns of the failure at
  once. Closing the consumer's generator cancels the supervisor and waits for the
  run's teardown (workers, threads, processes) before it returns.

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import operator
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from dynapipeline._engine import current_control, run_tasks
from dynapipeline._model.lifecycle import Scope, current_scope
from dynapipeline._model.queues import CHUNK, Chunk, ChunkQueue, QueueShutDown, Span
from dynapipeline._model.stream_step import Counts, Failed, StepRun

if TYPE_CHECKING:
    from dynapipeline._model.stream import ItemError, Stream

__all__ = ["Emit", "Run", "outputs"]

_second = operator.itemgetter(1)
_DRAIN_POLL = 0.02  # seconds between looks at a drain while an async source has no next item


async def outputs(stream: Stream, args: tuple[Any, ...]) -> AsyncGenerator[Any, None]:
    """The last step's outputs as they come (``Stream.iterate``); closing the generator stops the run."""
    out = ChunkQueue(stream.maxsize)
    run = Run(stream, stream._source_from(args), None, out)
    scope, context = _scope_for_iterate()
    supervisor = asyncio.get_running_loop().create_task(_supervise(run, out), context=context)
    try:
        while True:
            try:
                chunk = out.get_nowait(CHUNK) if out.count else await out.get(CHUNK)
            except QueueShutDown:
                break
            for item in chunk:
                if supervisor.done() and not supervisor.cancelled() and supervisor.exception() is not None:
                    break  # the run failed: the consumer learns of it now, not after the rest of the chunk
                yield item
        await supervisor  # raises the run's error, if any
    finally:
        try:
            await _end_supervisor(supervisor)
        finally:
            if scope is not None:
                await scope.aclose()  # the iteration was the run: its stages' teardowns


async def _end_supervisor(supervisor: asyncio.Task[None]) -> None:
    """Cancel the run if it is still going and wait for it; retrieve a failure the consumer did not learn of."""
    if not supervisor.done():
        supervisor.cancel()
        try:
            await supervisor
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise
    elif not supervisor.cancelled():
        supervisor.exception()  # retrieved, so not logged


def _scope_for_iterate() -> tuple[Scope | None, contextvars.Context]:
    """The scope ``iterate()`` opens when no run's is active (None if one is), and the context its run runs in.

    Set in a copy of the context, never from the generator itself: a contextvar an async
    generator sets would leak into whoever iterates it.
    """
    context = contextvars.copy_context()
    if current_scope.get() is not None:
        return None, context
    scope = Scope(threading.get_ident())
    context.run(current_scope.set, scope)
    return scope, context


async def _supervise(run: Run, out: ChunkQueue) -> None:
    try:
        await run.go()
    except Exception:
        out.clear()  # the consumer only needs to learn of the failure now
        raise
    finally:
        out.shutdown()


class Run:
    """One run of a stream: its queues, counts and tasks."""

    def __init__(self, stream: Stream, source: Any, sink: Any, out: ChunkQueue | None = None) -> None:
        self.stream = stream
        self.source = source
        self.awaiting_source = False  # the feeder waits for the source's next item (not for room in the queue)
        steps = stream._steps
        self.queues = tuple(ChunkQueue(stream.maxsize) for _ in steps)
        self.counts = tuple(Counts() for _ in steps)
        stream._queues = self.queues
        stream._counts = self.counts
        self.errors: list[ItemError] = []
        stream._errors = self.errors
        self.steps: list[StepRun] = []
        for i, step in enumerate(steps):
            emit: Callable[[int, Any], Awaitable[None]]
            emit_all: Callable[[Chunk], Awaitable[None]]
            close: Callable[[], None]
            outq = self.queues[i + 1] if i + 1 < len(steps) else None
            if outq is not None:
                emit, emit_all, close = _putter(outq), outq.put_many, outq.shutdown
            elif out is not None:
                emit, emit_all, close = _putter(out, unwrap=True), _unwrapping(out), _nothing_to_close
            else:
                emit, emit_all, close = _appender(sink), _extender(sink), _nothing_to_close
            self.steps.append(StepRun(self, step, self.queues[i], self.counts[i], Emit(emit, emit_all, close), outq))

    async def go(self) -> None:
        """Run the feeder and the steps until the end; however it ends, settle the counts."""
        try:
            await run_tasks(self.tasks())
        finally:
            self.settle()

    def settle(self) -> None:
        """Count what a run that stopped early left in its queues as cancelled, and let go of it."""
        for queue, counts in zip(self.queues, self.counts, strict=True):
            counts.left += queue.clear()

    def tasks(self) -> list[asyncio.Task[Any]]:
        tasks = [asyncio.ensure_future(self.feed())]
        for step in self.steps:
            tasks.append(asyncio.ensure_future(step.run()))
        return tasks

    async def feed(self) -> None:
        """Pull the source into the first queue; an error of the source fails the run, whatever ``on_error`` says."""
        control = current_control.get()
        if not hasattr(self.source, "__aiter__"):
            await self.pull(control)
        elif control is None:
            await self.pull_async(None)
        else:
            await self.pull_async_until_drained(control)
        self.queues[0].shutdown()  # the feeder is the first queue's one sender

    async def pull(self, control: Any) -> None:
        """Pull a sync source a span at a time, no more than there is room for: the feeder never holds an item."""
        queue = self.queues[0]
        index = 0
        values: list[Any] = []
        if control is not None and control.draining:
            return
        try:
            source = iter(self.source)
            while True:
                room = queue.maxsize - queue.count
                if room <= 0:
                    await queue.wait_room()
                    if control is not None and control.draining:
                        break  # nothing pulled is dropped: the source is pulled no more
                    continue
                size = min(room, max(queue.cap, queue.want))  # spans as large as the step takes: no joining
                values = []
                values.extend(itertools.islice(source, size))  # what it gave stays, should it fail
                if not values:
                    break
                queue.add(Span(index, values))
                index += len(values)
                if len(values) < size or (control is not None and control.draining):
                    break  # the source is used up (a sync pull cannot see a drain mid-chunk: it does not yield)
        except Exception as error:
            self.source_failed(error, index + len(values))
            raise

    async def pull_async(self, control: Any) -> None:
        queue = self.queues[0]
        index = 0
        if control is not None and control.draining:
            return
        self.awaiting_source = True
        try:
            async for value in self.source:
                self.awaiting_source = False
                await self.put_held(queue, (index, value))
                index += 1
                if control is not None and control.draining:
                    break
                self.awaiting_source = True
        except Exception as error:
            self.source_failed(error, index)
            raise
        finally:
            self.awaiting_source = False

    async def pull_async_until_drained(self, control: Any) -> None:
        """``pull_async``, also ended by a drain while the source has no next item yet (it may never have one)."""
        puller = asyncio.ensure_future(self.pull_async(control))
        try:
            while not puller.done():
                await asyncio.wait((puller,), timeout=_DRAIN_POLL)
                if control.draining and self.awaiting_source and not puller.done():
                    # Waiting for the source, not for room in the queue: every item pulled is queued.
                    puller.cancel()
                    await asyncio.wait((puller,))
        finally:
            if not puller.done():
                puller.cancel()
                await asyncio.wait((puller,))
        if not puller.cancelled():
            puller.result()

    async def put_held(self, queue: ChunkQueue, entry: Any) -> None:
        """Put an item pulled from the source, waiting for room; if the run stops meanwhile, it counts as cancelled."""
        try:
            await queue.put(entry)
        except BaseException:
            self.counts[0].left += 1
            raise

    def source_failed(self, error: Exception, pulled: int) -> None:
        error.add_note(f"in stream {self.stream.name!r}, its source, after {pulled} items")


class Emit(NamedTuple):
    """Where a step's outputs go: one ``(index, value)`` at a time, a chunk of them in order, and closing it."""

    one: Callable[[int, Any], Awaitable[None]]
    all: Callable[[Chunk], Awaitable[None]]
    close: Callable[[], None]  # called once all of the step's workers have ended


def _putter(queue: ChunkQueue, unwrap: bool = False) -> Any:
    async def emit(index: int, value: Any) -> None:
        entry = (value.error if type(value) is Failed else value) if unwrap else (index, value)
        if queue.full():
            await queue.put(entry)
        else:
            queue.put_nowait(entry)

    return emit


def _unwrapping(queue: ChunkQueue) -> Any:
    async def emit_all(outputs: Chunk) -> None:
        await queue.put_many(_values(outputs))

    return emit_all


def _appender(sink: list[Any]) -> Any:
    async def emit(index: int, value: Any) -> None:
        sink.append(value.error if type(value) is Failed else value)

    return emit


def _extender(sink: list[Any]) -> Any:
    async def emit_all(outputs: Chunk) -> None:
        sink.extend(_values(outputs))

    return emit_all


def _values(outputs: Chunk) -> list[Any]:
    """What the consumer gets for these outputs: each value, or the exception a ``Failed`` carries."""
    if type(outputs) is Span:
        return outputs.values  # none failed
    values = list(map(_second, outputs))
    if Failed in set(map(type, values)):  # two passes at C speed, then one in Python only when needed
        return [value.error if type(value) is Failed else value for value in values]
    return values


def _nothing_to_close() -> None:
    """The last step's outputs go to the run's sink, or to ``iterate()``'s queue, which its supervisor closes."""
