"""Streams: items flowing through steps, one stage per step, with bounded queues between the steps.

::

    source ──► [queue ≤ maxsize] ──► step 0 workers ──► [queue ≤ maxsize] ──► step 1 workers ──► ... ──► output

- The source (any iterable or async iterable) is pulled lazily by one task; a
  full queue stops it, so a slow step slows the source down and memory stays
  bounded by ``maxsize`` per step plus the items in flight. A stage whose
  ``execute`` is a generator (a flat-map) has its outputs for one item collected
  in a list before they flow on: that one item's whole output is in memory
  at once (the bound is per item, not ``maxsize``).
- Each step runs its stage on one item at a time per worker; how many workers
  at most, and where they run, is the step's execution strategy's answer to
  ``stream_runner`` (sequential: one; semaphore(k): k; concurrent: ``maxsize``;
  threads and processes: their pools, processes taking items in batches). A
  step starts with one worker and adds one whenever all of its workers are busy,
  up to that width: workers follow the items in flight, so 10 items cost the
  same whether the width is 10 or 1,000,000.
- ``ordered=True`` emits each step's outputs in its input order (a worker that
  finishes early waits for its turn: head-of-line waiting is bounded by the
  step's workers); ``ordered=False`` emits in completion order.
- Errors per item follow ``on_error``: ``"raise"`` cancels the whole stream and
  propagates the first error; ``"skip"`` drops the item and keeps an
  ``ItemError`` in ``stream.errors``; ``"return"`` lets the exception flow on
  in the item's place, untouched by later steps. Whatever the policy, the error
  carries a note naming the stream, the step and the item's index in the source
  (``in stream 'etl', step 'parse', item 17``; a batch is named by its first item).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dynapipeline._engine import (
    current_control,
    current_item,
    current_trace,
    run_tasks,
    tracing,
    wait_through_cancel,
)
from dynapipeline._model.checks import check_int, check_seconds
from dynapipeline._model.component import Component, Flat, Stage, private_of
from dynapipeline._model.strategy import ExecutionStrategy, ItemRunner, chunk_items
from dynapipeline.errors import ConfigurationError

__all__ = ["ItemError", "Step", "StepProgress", "Stream"]

OnError = Literal["raise", "skip", "return"]
_END: Any = object()  # end of the items, passed from step to step
_NO_KWARGS: dict[str, Any] = {}
_DRAIN_POLL = 0.02  # seconds between looks at a drain while an async source has no next item


class Step:
    """One step of a stream: a stage, the execution strategy its items run with, and optional batching.

    ``strategy=None`` runs one item at a time on the event loop. ``batch=n`` hands
    the stage a list of up to ``n`` consecutive items (fewer at the end, or when
    ``batch_timeout`` seconds passed since the batch's first item arrived); what the
    stage returns flows on as one item (a generator ``execute`` flattens it). Batches
    are cut one at a time whatever the strategy's width, so each worker gets whole
    runs of consecutive items.
    """

    __slots__ = ("batch", "batch_timeout", "stage", "strategy")

    def __init__(self, stage: Stage, strategy: ExecutionStrategy | None = None, *, batch: int | None = None,
                 batch_timeout: float | None = None) -> None:
        if isinstance(stage, type):
            raise ConfigurationError(f"Step: field 'stage' must be a Stage instance, got the class {stage.__name__} "
                                     f"(pass an instance: {stage.__name__}(name=...))")
        if not isinstance(stage, Stage):
            raise ConfigurationError(f"Step: field 'stage' must be a Stage, got {type(stage).__name__}")
        label = f"Step {stage.name!r}"
        if strategy is not None and not isinstance(strategy, ExecutionStrategy):
            raise ConfigurationError(f"{label}: field 'strategy' must be an execution strategy or None, "
                                     f"got {type(strategy).__name__}")
        check_int(label, "batch", batch, least=1, optional=True)
        if batch_timeout is not None:
            check_seconds(label, "batch_timeout", batch_timeout, optional=True)
            if batch is None:
                raise ConfigurationError(f"{label}: field 'batch_timeout' needs 'batch'")
        self.stage = stage
        self.strategy = strategy
        self.batch = batch
        self.batch_timeout = None if batch_timeout is None else float(batch_timeout)

    def __repr__(self) -> str:
        return f"Step({self.stage.name!r}, {self.strategy!r}, batch={self.batch}, batch_timeout={self.batch_timeout})"


@dataclass
class StepProgress:
    """Counts of one step, for ``stream.progress`` (a snapshot; counts are of items taken from the queue).

    Once a run has ended, however it ended, they add up: ``in_flight`` and
    ``queued`` are 0, and every item that reached the step is ``done``,
    ``failed`` or ``cancelled``. ``cancelled`` counts what a run that stopped
    early (cancelled, failed, stopped without drain, or left by the consumer of
    ``iterate()``) cut short or left in the step's queue; for the first step, also
    the item the source had just given when the queue had no room for it.
    """

    received: int = 0  # items (or batches) the step took from its queue
    done: int = 0  # ... that succeeded
    failed: int = 0  # ... that raised (after their retries)
    in_flight: int = 0  # ... being run now
    queued: int = 0  # items waiting in the step's queue
    cancelled: int = 0  # items cut short or left in the queue by a run that stopped early


@dataclass(frozen=True)
class ItemError:
    """An item that failed with ``on_error="skip"``: its 0-based index in the source, the step, the error."""

    index: int
    step: str
    error: BaseException


class Stream(Component):
    """Items from a source through ``steps``; ``await stream.run(source)`` returns the last step's outputs.

    A bare ``Stage`` in ``steps`` stands for ``Step(stage)``. ``source`` may be given
    here or to ``run()``/``iterate()`` (as a pipeline member, the run's first
    argument is the source when ``source`` is not set). A generator source is
    consumed by the first run: a stream that runs again (a cycle strategy) needs
    a re-iterable source (a list, a range, an object whose ``__iter__`` starts over);
    running again over an iterator that an earlier run used, given as ``source``
    or to ``run()``/``iterate()`` (a pipeline's cycles pass the same argument each
    time), raises ``ConfigurationError`` rather than yield nothing. Runs of one
    stream may overlap (``run()`` and ``iterate()`` each have their own queues and
    errors); ``progress`` and ``errors`` show the run that started last.
    An error raised by the source is not an item's error: it fails the run
    whatever ``on_error`` says, with a note naming the stream and how many items
    the source gave before it. ``pipeline.stop(drain=True)`` stops pulling the
    source (at once, even while an async source waits for its next item) and
    lets every item already pulled run through all the steps.
    ``async for item in stream.iterate(source)`` yields the outputs as they come
    (handlers and timing apply to ``run()`` only).
    """

    if TYPE_CHECKING:
        steps: Sequence[Step | Stage]
        maxsize: int = 1000
        ordered: bool = True
        on_error: OnError = "raise"
        source: Iterable[Any] | AsyncIterable[Any] | None = None
    else:
        # Any at run time: model_post_init checks them, with messages naming the stream and the field.
        steps: Any
        maxsize: Any = 1000
        ordered: Any = True
        on_error: Any = "raise"
        source: Any = None

    _steps: tuple[Step, ...] = ()
    _counts: tuple[_Counts, ...] = ()
    _queues: tuple[asyncio.Queue[Any], ...] = ()
    _errors: list[ItemError] = []
    _used: _Used | None = None  # the one-shot iterators (sources) that runs have used

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        label = f"Stream {self.name!r}"
        check_int(label, "maxsize", self.maxsize, least=1)
        if not isinstance(self.ordered, bool):
            raise ConfigurationError(f"{label}: field 'ordered' must be a bool, got {self.ordered!r}")
        if self.on_error not in ("raise", "skip", "return"):
            raise ConfigurationError(f"{label}: field 'on_error' must be 'raise', 'skip' or 'return', "
                                     f"got {self.on_error!r}")
        if self.source is not None:
            _check_source(label, self.source)
        steps = self.steps
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
            raise ConfigurationError(f"{label}: field 'steps' must be a list of Steps or Stages, "
                                     f"got {type(steps).__name__}")
        if not steps:
            raise ConfigurationError(f"{label}: field 'steps' must not be empty")
        built: list[Step] = []
        names: set[str] = set()
        for index, step in enumerate(steps):
            if isinstance(step, Stage):
                step = Step(step)
            elif not isinstance(step, Step):
                what = f"the class {step.__name__}" if isinstance(step, type) else type(step).__name__
                raise ConfigurationError(f"{label}: field 'steps[{index}]' must be a Step or a Stage, got {what}")
            name = step.stage.name
            if name in names:
                raise ConfigurationError(f"{label}: field 'steps[{index}]' repeats the stage name {name!r}; "
                                         "progress is looked up by stage name, so names must differ")
            names.add(name)
            built.append(step)
        self._steps = tuple(built)
        self._errors = []
        self._used = _Used()

    # -- running ---------------------------------------------------------------------------------
    async def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Run the stream over ``source`` (or the first argument) and return the last step's outputs."""
        out: list[Any] = []
        run = _Run(self, self._source_from(args), out.append)
        await run.go()
        return out

    async def iterate(self, source: Any = None) -> AsyncIterator[Any]:
        """The last step's outputs as they come; leaving the loop early stops the stream.

        After a ``break`` the stream stops when the loop closes the abandoned
        generator (on its next turns); ``contextlib.aclosing`` stops it as its block ends.
        """
        out: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        run = _Run(self, self._source_from((source,) if source is not None else ()), None, out)
        supervisor = asyncio.ensure_future(_supervise(run, out))
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                if type(item) is _Abort:
                    raise item.error
                yield item
            await supervisor
        finally:
            if not supervisor.done():
                supervisor.cancel()
                try:
                    await supervisor
                except asyncio.CancelledError:
                    if (task := asyncio.current_task()) is not None and task.cancelling():
                        raise

    def _source_from(self, args: tuple[Any, ...]) -> Any:
        source = self.source if self.source is not None else (args[0] if args else None)
        if source is None:
            raise ConfigurationError(f"Stream {self.name!r}: field 'source' is not set and no source was given")
        _check_source(f"Stream {self.name!r}", source)
        if hasattr(source, "__next__") or hasattr(source, "__anext__"):
            used = self._used
            if used is None:
                used = self._used = _Used()
            if not used.mark(source):
                raise ConfigurationError(
                    f"Stream {self.name!r}: field 'source' is an iterator that an earlier run consumed; a stream "
                    "that runs again needs a re-iterable source (a list, a range, an object whose __iter__ starts "
                    "over)")
        return source

    # -- what a user reads -------------------------------------------------------------------------
    @property
    def progress(self) -> dict[str, StepProgress]:
        """Counts per step, by the step's stage name (of the current or last run)."""
        counts = self._counts or tuple(_Counts() for _ in self._steps)
        queues = self._queues
        result = {}
        for i, (step, c) in enumerate(zip(self._steps, counts, strict=True)):
            queued = queues[i].qsize() if i < len(queues) else 0
            in_flight = c.received - c.done - c.failed - c.cut
            result[step.stage.name] = StepProgress(c.received, c.done, c.failed, in_flight, queued, c.cut + c.left)
        return result

    @property
    def errors(self) -> list[ItemError]:
        """Items dropped by ``on_error="skip"`` in the current or last run."""
        return list(self._errors)

    def iter_components(self) -> Any:
        """This stream, then each step's stage."""
        yield self
        for step in self._steps:
            yield step.stage

    def _walk(self, depth: int) -> Any:
        yield depth, self
        for step in self._steps:
            yield depth + 1, step.stage


class _Used:
    """The iterators that runs of one stream took as their source: an iterator serves one run only.

    Held weakly where the iterator allows it; one that does not (``iter(a_list)``)
    is held until the next such run, so that running again over the same one,
    as each cycle of a pipeline does with its argument, is caught. A copy of the
    stream starts with none used.
    """

    __slots__ = ("last", "weak")

    def __init__(self) -> None:
        self.weak: weakref.WeakSet[Any] = weakref.WeakSet()
        self.last: Any = None

    def mark(self, source: Any) -> bool:
        """Note ``source`` as used; False if a run used it before."""
        if source is self.last:
            return False
        try:
            if source in self.weak:
                return False
            self.weak.add(source)
        except TypeError:  # not weakly referenceable
            self.last = source
        return True

    def __copy__(self) -> _Used:
        return _Used()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Used:
        return _Used()


def _check_source(label: str, source: Any) -> None:
    if isinstance(source, (str, bytes)) or (not hasattr(source, "__aiter__") and not hasattr(source, "__iter__")):
        raise ConfigurationError(f"{label}: field 'source' must be an iterable or an async iterable "
                                 f"(not a str or bytes), got {type(source).__name__}")


class _Counts:
    """A step's live counts (in flight = received - done - failed - cut)."""

    __slots__ = ("cut", "done", "failed", "left", "received")

    def __init__(self) -> None:
        self.received = 0
        self.done = 0
        self.failed = 0
        self.cut = 0  # received, then cancelled before they finished
        self.left = 0  # never received: in the queue (or in the feeder's hand) when the run stopped


class _Failed:
    """An exception flowing in an item's place (``on_error="return"``); later steps pass it on untouched."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Abort:
    """Put in ``iterate()``'s queue when the stream failed."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _supervise(run: _Run, out: asyncio.Queue[Any]) -> None:
    try:
        await run.go()
    except Exception as error:
        while not out.empty():
            out.get_nowait()  # the consumer only needs to learn of the failure now
        out.put_nowait(_Abort(error))
        return
    await out.put(_END)


class _Run:
    """One run of a stream: its queues, counts and tasks."""

    def __init__(self, stream: Stream, source: Any, sink: Any, out: asyncio.Queue[Any] | None = None) -> None:
        self.stream = stream
        self.source = source
        self.awaiting_source = False  # the feeder waits for the source's next item (not for room in the queue)
        steps = stream._steps
        self.queues = tuple(asyncio.Queue[Any](stream.maxsize) for _ in steps)
        self.counts = tuple(_Counts() for _ in steps)
        stream._queues = self.queues
        stream._counts = self.counts
        self.errors: list[ItemError] = []
        stream._errors = self.errors
        self.steps: list[_StepRun] = []
        for i, step in enumerate(steps):
            emit: Callable[[int, Any], Awaitable[None]]
            emit_end: Callable[[Any], Awaitable[None]]
            if i + 1 < len(steps):
                nxt = self.queues[i + 1]
                emit = _putter(nxt)
                emit_end = nxt.put
            elif out is not None:
                emit, emit_end = _putter(out, unwrap=True), _noop_end
            else:
                emit, emit_end = _appender(sink), _noop_end
            outq = self.queues[i + 1] if i + 1 < len(steps) else None
            self.steps.append(_StepRun(self, step, self.queues[i], self.counts[i], emit, emit_end, outq))

    async def go(self) -> None:
        """Run the feeder and the steps until the end; however it ends, settle the counts."""
        try:
            await run_tasks(self.tasks())
        finally:
            self.settle()

    def settle(self) -> None:
        """Count what a run that stopped early left in its queues as cancelled, and let go of it."""
        for queue, counts in zip(self.queues, self.counts, strict=True):
            while not queue.empty():
                if queue.get_nowait() is not _END:
                    counts.left += 1

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
        await self.queues[0].put(_END)

    async def pull(self, control: Any) -> None:
        queue = self.queues[0]
        index = 0
        if control is not None and control.draining:
            return
        try:
            for value in self.source:
                try:
                    queue.put_nowait((index, value))
                except asyncio.QueueFull:
                    await self.put_held(queue, (index, value))
                index += 1
                if control is not None and control.draining:
                    break  # before pulling the next item: an item pulled is an item run
        except Exception as error:
            self.source_failed(error, index)
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

    async def put_held(self, queue: asyncio.Queue[Any], entry: Any) -> None:
        """Put an item pulled from the source, waiting for room; if the run stops meanwhile, it counts as cancelled."""
        try:
            await queue.put(entry)
        except BaseException:
            self.counts[0].left += 1
            raise

    def source_failed(self, error: Exception, pulled: int) -> None:
        error.add_note(f"in stream {self.stream.name!r}, its source, after {pulled} items")


def _putter(queue: asyncio.Queue[Any], unwrap: bool = False) -> Any:
    async def emit(index: int, value: Any) -> None:
        entry = (value.error if type(value) is _Failed else value) if unwrap else (index, value)
        if queue.full():
            await queue.put(entry)
        else:
            queue.put_nowait(entry)

    return emit


def _appender(sink: Any) -> Any:
    async def emit(index: int, value: Any) -> None:
        sink(value.error if type(value) is _Failed else value)

    return emit


async def _noop_end(_: Any) -> None:
    return None


class _StepRun:
    """The workers of one step in one run."""

    def __init__(self, run: _Run, step: Step, inq: asyncio.Queue[Any], counts: _Counts, emit: Any,
                 emit_end: Any, outq: asyncio.Queue[Any] | None) -> None:
        self.run_ = run
        self.outq = outq  # the next step's queue (None for the last step): the hot path puts into it itself
        self.step = step
        self.inq = inq
        self.counts = counts
        self.emit = emit
        self.emit_end = emit_end
        stream = run.stream
        strategy = step.strategy
        width, runner = (1, None) if strategy is None else strategy.stream_runner(step.stage, stream.maxsize)
        self.width = max(1, min(width, stream.maxsize))
        self.item_runner: ItemRunner | None = runner
        self.chunk = 1 if runner is None else max(1, runner.chunk)
        self.ordered = stream.ordered and (self.width > 1 or self.chunk > 1)
        self.on_error = stream.on_error
        self.taken = 0  # sequence numbers given to what the workers take, in input order
        self.next_out = 0  # the sequence number whose outputs go next (ordered)
        self.turns: dict[int, asyncio.Future[None]] = {}
        self.crew: _Crew | None = None  # the workers, when there may be more than one
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
            if runner.width is not None:
                self.width = max(1, min(self.width, runner.width))
        work = self.work_here if runner is None and self.step.batch is None else self.work
        try:
            if self.width == 1:
                await work()
            else:
                self.crew = _Crew(work, self.width)
                await self.crew.run()
        finally:
            if runner is not None:
                await runner.aclose()
        while not self.inq.empty():
            self.inq.get_nowait()  # the end marker the last worker put back
        await self.emit_end(_END)

    async def work_here(self) -> None:
        """One worker of a step that runs one item at a time on the loop: the hot path, kept flat."""
        inq = self.inq
        counts = self.counts
        emit = self.emit
        run = private_of(self.step.stage)["_runner"].run
        ordered = self.ordered
        outq = self.outq
        crew = self.crew
        while True:
            try:
                entry = inq.get_nowait()
            except asyncio.QueueEmpty:
                entry = await inq.get()
            if entry is _END:
                inq.put_nowait(_END)  # for the step's other workers (there is room: it was the last item put)
                return
            if crew is not None:  # crew.took(), inlined on this hot path
                crew.busy += 1
                if crew.busy == crew.size < crew.width:
                    crew.add()
            seq = self.taken
            self.taken = seq + 1
            index, value = entry
            if type(value) is _Failed:
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
                    else:
                        for out in outputs:
                            await emit(*out)
                    if crew is not None:
                        crew.busy -= 1
                    continue
                counts.done += 1
            if ordered:
                await self.emit_in_turn(seq, 1, _outputs(index, result))
            elif type(result) is Flat:
                for out in result:
                    await emit(index, out)
            elif outq is not None:
                try:
                    outq.put_nowait((index, result))
                except asyncio.QueueFull:
                    await outq.put((index, result))
            else:
                await emit(index, result)
            if crew is not None:
                crew.busy -= 1

    async def work(self) -> None:
        """One worker of a step with batching or a runner off the loop."""
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
            else:
                for index, value in outputs:
                    await self.emit(index, value)
            if crew is not None:
                crew.busy -= 1

    # -- taking items ----------------------------------------------------------------------------
    async def take_chunk(self) -> list[Any]:
        inq = self.inq
        entry = inq.get_nowait() if not inq.empty() else await inq.get()
        if entry is _END:
            inq.put_nowait(_END)
            return []
        entries = [entry]
        chunk = self.item_runner.chunk if self.item_runner is not None else 1  # a runner may adapt it as it goes
        while len(entries) < chunk and not inq.empty():
            entry = inq.get_nowait()
            if entry is _END:
                inq.put_nowait(_END)
                break
            entries.append(entry)
        return entries

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
        first = inq.get_nowait() if not inq.empty() else await inq.get()
        if first is _END:
            inq.put_nowait(_END)
            return []
        entries = [first]
        size = self.step.batch or 1
        timeout = self.step.batch_timeout
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while len(entries) < size:
            if not inq.empty():
                entry = inq.get_nowait()
            elif end is None:
                entry = await inq.get()
            else:
                left = end - loop.time()
                if left <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(inq.get(), left)
                except TimeoutError:
                    break
            if entry is _END:
                inq.put_nowait(_END)
                break
            entries.append(entry)
        values = [e[1] for e in entries if type(e[1]) is not _Failed]
        if len(values) == len(entries):
            return [(entries[0][0], values)]  # one batch is one unit of work: its index is its first item's
        if not values:
            return entries
        # Failed items keep their place: those that came before the batch's first item go before it.
        first = next(i for i, e in enumerate(entries) if type(e[1]) is not _Failed)
        return entries[:first] + [(entries[first][0], values)] + [e for e in entries[first:] if type(e[1]) is _Failed]

    # -- running items ---------------------------------------------------------------------------
    async def process(self, entries: list[Any]) -> list[tuple[int, Any]]:
        """Run the stage on each entry (failed ones pass through); the (index, value) pairs to emit, in order."""
        counts = self.counts
        todo = [value for _, value in entries if type(value) is not _Failed]
        counts.received += len(todo)
        if tracing():
            current_item.set(entries[0][0])
            chunk_items.set([index for index, value in entries if type(value) is not _Failed])
        try:
            if not todo:
                results: list[tuple[bool, Any]] = []
            elif self.item_runner is not None:
                results = await self.item_runner.call(todo)
            else:
                results = [await self.call_here(todo[0])]
        except BaseException:
            counts.cut += len(todo)  # cancelled before they finished
            raise
        for ok, _ in results:  # all counted before an error may be raised below
            if ok:
                counts.done += 1
            else:
                counts.failed += 1
        outputs: list[tuple[int, Any]] = []
        done = iter(results)
        for index, value in entries:
            if type(value) is _Failed:
                outputs.append((index, value))
                continue
            ok, result = next(done)
            if ok:
                outputs.extend(_outputs(index, result))
            else:
                self.on_failure(outputs, index, result)
        return outputs

    async def call_here(self, value: Any) -> tuple[bool, Any]:
        try:
            return True, await private_of(self.step.stage)["_runner"].run((value,), _NO_KWARGS)
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
        outputs.append((index, _Failed(error)))

    # -- emitting in order -----------------------------------------------------------------------
    async def emit_in_turn(self, seq: int, taken: int, outputs: list[tuple[int, Any]]) -> None:
        if seq != self.next_out:
            turn = self.turns[seq] = asyncio.get_running_loop().create_future()
            try:
                await turn
            finally:
                self.turns.pop(seq, None)
        try:
            for index, value in outputs:
                await self.emit(index, value)
        finally:
            self.next_out = seq + taken
            waiting = self.turns.get(self.next_out)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)


class _Crew:
    """The workers of a step: one to start with, and one more whenever all are busy, up to ``width``.

    ``busy`` counts the workers holding something to run or emit; one just added
    counts as free, so that workers that never suspend add no more. ``run()`` waits for
    all of them, those added meanwhile included; the first to fail cancels the
    others (and is re-raised once they are gone), as does our own cancellation.
    """

    __slots__ = ("busy", "failed", "finished", "future", "size", "tasks", "width", "work")

    def __init__(self, work: Callable[[], Awaitable[None]], width: int) -> None:
        self.work = work
        self.width = width
        self.tasks: list[asyncio.Task[None]] = []
        self.busy = 0
        self.size = 0  # len(tasks)
        self.finished = 0
        self.failed: asyncio.Task[None] | None = None
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def took(self) -> None:
        """A worker took something to run: add one when none is left to take the next."""
        self.busy += 1
        if self.busy == self.size < self.width:
            self.add()

    def add(self) -> None:
        task = asyncio.ensure_future(self.work())
        self.tasks.append(task)
        self.size += 1
        task.add_done_callback(self.on_done)

    def on_done(self, task: asyncio.Task[None]) -> None:
        self.finished += 1
        if self.future.done():
            return
        if task.cancelled() or task.exception() is not None:
            self.failed = task
            self.future.set_result(None)
        elif self.finished == self.size:
            self.future.set_result(None)

    async def run(self) -> None:
        self.add()
        try:
            await self.future
        finally:
            pending = [t for t in self.tasks if not t.done()]
            for task in pending:
                task.cancel()
            await wait_through_cancel(pending)
            for task in self.tasks:
                if not task.cancelled():
                    task.exception()  # only the first error propagates: the others are retrieved here
        if self.failed is not None:
            self.failed.result()


def _outputs(index: int, result: Any) -> list[tuple[int, Any]]:
    """What one item's result puts downstream: each element of a ``Flat``, else the result itself."""
    if type(result) is Flat:
        return [(index, value) for value in result]
    return [(index, result)]
