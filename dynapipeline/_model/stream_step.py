"""One step of a stream's run: its workers take items from the step's queue, run the stage, emit downstream.

::

    inq (ChunkQueue) ──► Crew: 1 worker, +1 whenever all are busy (≤ width) ──► emit ──► next step's queue
                           │  work_here: on the loop; a lone worker takes a chunk, a crew's one item each;
                           │             items run one at a time, each output goes on as it is made (hot path)
                           │  work: chunks for an ItemRunner (threads, processes, Dask) or batches
                           └─ ordered: each worker's outputs wait for their turn (emit_in_turn)

Invariants:

- A worker ends when its queue is closed and drained (``QueueShutDown``); when all
  of a step's workers have ended, the step closes the next queue (the last
  sender closes, as with anyio's memory streams). A step that fails closes nothing:
  the run is being cancelled.
- Every item a step starts is counted once as ``done``, ``failed`` or ``cut``
  (cancelled while it ran); the items of a worker's chunk that never started, and
  what the run left in the queues, count as ``left``.
- An item's error is noted with the stream, the step and the item's index, then
  follows ``on_error``: raised, kept in the run's errors, or passed on as ``Failed``.
- With ``ordered``, outputs leave in the order the items were taken (sequence numbers).

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dynapipeline._engine import current_item, current_trace, tracing
from dynapipeline._model.component import Flat, runner_of
from dynapipeline._model.crew import Crew
from dynapipeline._model.pacing import PacedItems, paced, pacer
from dynapipeline._model.queues import Chunk, ChunkQueue, QueueShutDown, Span
from dynapipeline._model.step import Step
from dynapipeline._model.strategy import ItemRunner, Succeeded, chunk_items
from dynapipeline._model.stream import ItemError

if TYPE_CHECKING:
    from dynapipeline._model.stream_run import Emit, Run

__all__ = ["Counts", "Failed", "StepRun"]

_NO_KWARGS: dict[str, Any] = {}
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


class Counts:
    """A step's live counts (in flight = received - done - failed - cut)."""

    __slots__ = ("cut", "done", "failed", "left", "received")

    def __init__(self) -> None:
        self.received = 0
        self.done = 0
        self.failed = 0
        self.cut = 0  # received, then cancelled before they finished
        self.left = 0  # never received: in the queue (or in the feeder's hand) when the run stopped


class Failed:
    """An exception flowing in an item's place (``on_error="return"``); later steps pass it on untouched."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StepRun:
    """The workers of one step in one run."""

    def __init__(self, run: Run, step: Step, inq: ChunkQueue, counts: Counts, emit: Emit,
                 outq: ChunkQueue | None) -> None:
        self.run_ = run
        self.outq = outq  # the next step's queue (None for the last step): the hot path puts into it itself
        self.step = step
        self.inq = inq
        self.counts = counts
        self.emit = emit.one
        self.emit_all = emit.all
        self.close = emit.close  # closes what the step emits into (the next step's queue): once all workers ended
        stream = run.stream
        strategy = step.strategy
        width, runner = (1, None) if strategy is None else strategy.stream_runner(step.stage, stream.maxsize)
        pace = pacer(step.bucket, None if strategy is None else strategy.bucket)  # rates: chosen once per step
        if pace is not None and runner is not None:
            runner = PacedItems(runner, pace)  # one item per call, each call paced
        self.run_item: Callable[..., Awaitable[Any]] = runner_of(step.stage).run  # on the loop (paced if rated)
        if pace is not None and runner is None:
            self.run_item = paced(pace, self.run_item)
        self.width = max(1, min(width, stream.maxsize))
        self.item_runner: ItemRunner | None = runner
        # Only a generator stage's results can be ``Flat``: the others' chunks are not looked through for one.
        flattens = getattr(step.stage, "_flattens", None)
        self.flattens = True if flattens is None else bool(flattens())
        self.chunk = 1 if runner is None else max(1, runner.chunk)
        ordered = stream.ordered if step.ordered is None else step.ordered
        self.ordered = ordered and (self.width > 1 or self.chunk > 1)
        self.take = inq.cap  # the most items a worker of work_here takes at once (1 once the step has a crew)
        self.on_error = stream.on_error if step.on_error is None else step.on_error
        self.taken = 0  # sequence numbers given to what the workers take, in input order
        self.next_out = 0  # the sequence number whose outputs go next (ordered)
        self.turns: dict[int, asyncio.Future[None]] = {}
        self.crew: Crew | None = None  # the workers, when there may be more than one
        self.batcher = asyncio.Lock()  # one worker at a time cuts a batch: batches are runs of consecutive items

    async def run(self) -> None:
        if tracing():
            await self.traced(self.run_step)
        else:
            await self.run_step()

    async def traced(self, run: Callable[[], Awaitable[None]]) -> None:
        """``run()``, recorded as a slice of the step by the tracer active here (if any)."""
        sink = current_trace.get()
        started = time.perf_counter()
        try:
            await run()
        finally:
            if sink is not None:
                index = self.run_.steps.index(self) if self in self.run_.steps else -1
                sink.spans.append((f"step {self.step.stage.name}", "step", started, time.perf_counter(),
                                   sink.thread(), {"stream": self.run_.stream.name, "step": index}))

    async def run_step(self) -> None:
        runner = self.item_runner
        if runner is not None:
            await runner.open()
            if runner.width is not None and not runner.grows:
                self.width = max(1, min(self.width, runner.width))
        work = self.work_here if runner is None and self.step.batch is None else self.work
        try:
            if self.width == 1:
                await work()
            else:
                self.take = 1
                self.crew = Crew(work, self.width, runner)
                await self.crew.run()
        finally:
            if runner is not None:
                await runner.aclose()
        self.close()

    async def work_here(self) -> None:
        """One worker of a step that runs its items on the loop, a chunk taken at a time: the hot path, kept flat."""
        inq = self.inq
        counts = self.counts
        emit = self.emit
        run = self.run_item
        ordered = self.ordered
        outq = self.outq
        crew = self.crew
        limit = self.take  # a crew's workers take one item each, so that the items spread over them
        put = outq.put_nowait if outq is not None else None
        while True:
            if inq.count:
                chunk = inq.get_nowait(limit)
            else:
                try:
                    chunk = await inq.get(limit)
                except QueueShutDown:
                    return  # closed and drained: no item will come
            if crew is not None:  # crew.took(), inlined on this hot path
                crew.busy += 1
                if crew.busy == crew.size < crew.width:
                    crew.add()
            held = len(chunk)  # taken, not started yet
            try:
                for index, value in chunk:
                    held -= 1
                    seq = self.taken
                    self.taken = seq + 1
                    if type(value) is Failed:
                        result: Any = value
                    else:
                        counts.received += 1
                        if tracing():
                            current_item.set(index)  # the tracer names the item each stage run was for
                        try:
                            result = await run((value,), _NO_KWARGS)
                        except BaseException as error:
                            if not isinstance(error, Exception):
                                counts.cut += 1  # cancelled (or interrupted) before it finished
                                raise
                            counts.failed += 1
                            outputs: list[tuple[int, Any]] = []
                            self.on_failure(outputs, index, error)
                            if ordered:
                                await self.emit_in_turn(seq, 1, outputs)
                            elif outputs:
                                await self.emit_all(outputs)
                            continue
                        counts.done += 1
                    if ordered:
                        await self.emit_in_turn(seq, 1, outputs_of(index, result))
                    elif type(result) is Flat:
                        for out in result:
                            await emit(index, out)
                    elif put is not None:
                        try:
                            put((index, result))
                        except asyncio.QueueFull:
                            await outq.put((index, result))  # type: ignore[union-attr]  # put is outq's
                    else:
                        await emit(index, result)
            except BaseException:
                counts.left += held  # the rest of the chunk never started: as if left in the queue
                raise
            if crew is not None:
                crew.busy -= 1

    async def work(self) -> None:
        """One worker of a step with batching or a runner off the loop: a chunk (a batch) taken at a time."""
        take = self.take_batch if self.step.batch is not None else self.take_chunk
        crew = self.crew
        while True:
            entries = await take()
            if not entries:
                return
            if crew is not None:
                crew.took()
            seq = self.taken
            self.taken += len(entries)
            outputs = await self.process(entries)
            if self.ordered:
                await self.emit_in_turn(seq, len(entries), outputs)
            elif outputs:
                await self.emit_all(outputs)
            if crew is not None:
                crew.busy -= 1

    # -- taking items ----------------------------------------------------------------------------
    async def take_chunk(self) -> Chunk:
        """What the queue holds now, up to the runner's chunk (which it may adapt as it goes); waits only for one."""
        inq = self.inq
        limit = self.item_runner.chunk if self.item_runner is not None else 1
        try:
            return inq.get_nowait(limit) if inq.count else await inq.get(limit)
        except QueueShutDown:
            return []

    async def take_batch(self) -> list[Any]:
        """Up to ``batch`` consecutive items as one entry (fewer at the end or after ``batch_timeout``).

        One worker cuts a batch at a time, the others waiting for their turn, so
        each batch is a run of consecutive items, taken in source order (its caller
        numbers it before any other worker can cut the next one).
        """
        async with self.batcher:
            return await self.cut_batch()

    async def cut_batch(self) -> list[Any]:
        """``take_batch`` for the worker whose turn it is; failed items apart."""
        inq = self.inq
        size = self.step.batch or 1
        try:
            entries = list(inq.get_nowait(size) if inq.count else await inq.get(size))  # pairs, a span's too
        except QueueShutDown:
            return []
        timeout = self.step.batch_timeout
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while len(entries) < size:
            if inq.count:
                entries += inq.get_nowait(size - len(entries))
                continue
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                break
            more = inq.get(size - len(entries))
            try:
                entries += await (more if left is None else asyncio.wait_for(more, left))
            except (TimeoutError, QueueShutDown):
                break  # the batch is cut: its time is up, or no item will come
        values = [e[1] for e in entries if type(e[1]) is not Failed]
        if len(values) == len(entries):
            return [(entries[0][0], values)]  # one batch is one unit of work: its index is its first item's
        if not values:
            return entries
        # Failed items keep their place: those that came before the batch's first item go before it.
        first = next(i for i, e in enumerate(entries) if type(e[1]) is not Failed)
        return entries[:first] + [(entries[first][0], values)] + [e for e in entries[first:] if type(e[1]) is Failed]

    # -- running items ---------------------------------------------------------------------------
    async def process(self, entries: Chunk) -> Chunk:
        """Run the stage on each entry (failed ones pass through); the outputs to emit, in order.

        A span's outputs are a span when each item gave one output (no ``Flat``), else pairs.
        """
        runner = self.item_runner
        if type(entries) is Span and runner is not None and (len(entries) > 1 or not runner.releases):
            return await self.process_span(entries, runner)
        if isinstance(entries, Span):  # one item the runner drops once shipped: the step drops it too (below)
            span, entries = entries, entries.pairs()
            span.values[:] = [None]  # the caller holds the span
        counts = self.counts
        todo = list(map(_second, entries))
        passing = Failed in set(map(type, todo))  # items that failed upstream pass through untouched
        if passing:
            todo = [value for value in todo if type(value) is not Failed]
        counts.received += len(todo)
        if len(todo) == 1 and runner is not None and runner.releases:
            # A large item travels alone: the runner drops its reference once it is shipped, so must we.
            entries[:] = [entry if type(entry[1]) is Failed else (entry[0], None) for entry in entries]
        if tracing():
            current_item.set(entries[0][0])
            chunk_items.set([index for index, value in entries if type(value) is not Failed])
        try:
            if not todo:
                results: list[Any] = []
            elif runner is not None:
                results = await runner.call(todo)
            else:
                results = [await self.call_here(todo[0])]
        except BaseException:
            counts.cut += len(todo)  # cancelled before they finished
            raise
        return self.outputs_for(entries, results, passing)

    async def process_span(self, span: Span, runner: ItemRunner) -> Chunk:
        """``process`` for a span of more than one item (or one the runner does not drop): no pair per item."""
        count = len(span.values)
        self.counts.received += count
        if tracing():
            current_item.set(span.start)
            chunk_items.set(list(range(span.start, span.start + count)))
        try:
            results = await runner.call(span.values)  # the runner drops no value of a call of several
        except BaseException:
            self.counts.cut += count  # cancelled before they finished
            raise
        return self.outputs_for(span, results, False)

    def outputs_for(self, entries: Chunk, results: list[Any], passing: bool) -> Chunk:
        """What the items' results put downstream, counted as done or failed; ``on_error`` applied to the failures.

        ``results``: a ``Succeeded`` list of results, or an ``(ok, result or error)`` pair per item run.
        """
        counts = self.counts
        if type(results) is Succeeded:  # every item succeeded: their results, no pairs (the common case)
            if not passing and (not self.flattens or Flat not in set(map(type, results))):
                counts.done += len(results)
                if type(entries) is Span:
                    return Span(entries.start, results)
                return list(zip(map(_first, entries), results, strict=True))
            results = list(zip(itertools.repeat(True), results))  # the general way below
        done = sum(map(_first, results))  # all counted before an error may be raised below
        counts.done += done
        counts.failed += len(results) - done
        if not passing and done == len(results):
            outs = list(map(_second, results))
            if not self.flattens or Flat not in set(map(type, outs)):  # the common case: one output per item
                if type(entries) is Span:
                    return Span(entries.start, outs)
                return list(zip(map(_first, entries), outs, strict=True))
        outputs: list[tuple[int, Any]] = []
        it = iter(results)
        for index, value in entries:
            if type(value) is Failed:
                outputs.append((index, value))
                continue
            ok, result = next(it)
            if ok:
                outputs.extend(outputs_of(index, result))
            else:
                self.on_failure(outputs, index, result)
        return outputs

    async def call_here(self, value: Any) -> tuple[bool, Any]:
        try:
            return True, await self.run_item((value,), _NO_KWARGS)
        except Exception as error:
            return False, error

    def on_failure(self, outputs: list[tuple[int, Any]], index: int, error: BaseException) -> None:
        """Apply ``on_error`` to an item's error, noted (PEP 678) with where it failed whatever the policy."""
        name = self.step.stage.name
        error.add_note(f"in stream {self.run_.stream.name!r}, step {name!r}, item {index}")
        if self.on_error == "raise":
            raise error
        if self.on_error == "skip":
            self.run_.errors.append(ItemError(index, name, error))
            return
        outputs.append((index, Failed(error)))

    # -- emitting in order -----------------------------------------------------------------------
    async def emit_in_turn(self, seq: int, taken: int, outputs: Chunk) -> None:
        if seq != self.next_out:
            turn = self.turns[seq] = asyncio.get_running_loop().create_future()
            try:
                await turn
            finally:
                self.turns.pop(seq, None)
        try:
            if outputs:
                await self.emit_all(outputs)
        finally:
            self.next_out = seq + taken
            waiting = self.turns.get(self.next_out)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)



def outputs_of(index: int, result: Any) -> list[tuple[int, Any]]:
    """What one item's result puts downstream: each element of a ``Flat``, else the result itself."""
    if type(result) is Flat:
        return [(index, value) for value in result]
    return [(index, result)]
