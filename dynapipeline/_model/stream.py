"""Streams: items flowing through steps, one stage per step, with bounded queues between the steps.

This module is the model (``Stream``, ``Step``, what they accept, what a user
reads back); a run's machinery is in ``stream_run`` (the feeder, the queues,
``iterate()``) and ``stream_step`` (one step's workers). ::

    source ──► [queue ≤ maxsize items] ──► step 0 workers ──► [queue ≤ maxsize items] ──► step 1 ──► ... ──► output
                  └ chunks of up to 64 items: a put joins the last chunk, a worker takes what is there

- The source (any iterable or async iterable) is pulled lazily by one task; a
  full queue stops it, so a slow step slows the source down and memory stays
  bounded by ``maxsize`` per step plus the items in flight. A stage whose
  ``execute`` is a generator (a flat-map) has its outputs for one item collected
  in a list before they flow on: that one item's whole output is in memory
  at once (the bound is per item, not ``maxsize``).
- Items travel between steps in chunks (``queues.ChunkQueue``): ``maxsize``
  counts items; a chunk is what is there now, never waited for; a worker of a
  step on the loop takes a chunk when it is the step's only worker, one item
  otherwise. What a stage sees, and ``ordered``, errors, retries, progress and
  timing, stay per item.
- Each step runs its stage on one item at a time per worker; how many workers
  at most, and where they run, is the step's execution strategy's answer to
  ``stream_runner`` (sequential: one; semaphore(k): k; concurrent: ``maxsize``;
  threads and processes: their pools, processes taking items in batches). A
  step starts with one worker and adds one whenever all of its workers are busy,
  up to that width: workers follow the items in flight, so 10 items cost the
  same whether the width is 10 or 1,000,000.
- The end of the items is each queue closing: its one sender (the feeder, or
  the step before once all its workers have ended) closes it; the workers behind
  it take what is left, then end.
- ``ordered=True`` emits each step's outputs in its input order (a worker that
  finishes early waits for its turn: head-of-line waiting is bounded by the
  step's workers); ``ordered=False`` emits in completion order.
- Errors per item follow ``on_error``: ``"raise"`` cancels the whole stream and
  propagates the first error; ``"skip"`` drops the item and keeps an
  ``ItemError`` in ``stream.errors``; ``"return"`` lets the exception flow on
  in the item's place, untouched by later steps. Whatever the policy, the error
  carries a note naming the stream, the step and the item's index in the source
  (``in stream 'etl', step 'parse', item 17``; a batch is named by its first item).
- Whatever way a run ends, its counts add up (``StepProgress``) and no task of it
  is left running; leaving ``async with stream.iterate(src)`` waits for that.

See docs/streams.md.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynapipeline._model.checks import check_int
from dynapipeline._model.component import Component, Stage
from dynapipeline._model.functions import FunctionStage
from dynapipeline._model.step import OnError, Step
from dynapipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from dynapipeline._model.queues import ChunkQueue
    from dynapipeline._model.stream_step import Counts

__all__ = ["ItemError", "StepProgress", "Stream", "StreamItems"]

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

    A bare ``Stage`` or callable in ``steps`` stands for ``Step(it)``. ``source`` may be given
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
    ``async with stream.iterate(source) as items: async for item in items: ...``
    yields the outputs as they come (handlers and timing apply to ``run()`` only).
    """

    if TYPE_CHECKING:
        steps: Sequence[Step | Stage | Callable[..., Any]]
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
    _counts: tuple[Counts, ...] = ()
    _queues: tuple[ChunkQueue, ...] = ()
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
        for index, step in enumerate(steps):
            if isinstance(step, Stage):
                step = Step(step)
            elif isinstance(step, type) and issubclass(step, Stage) or not (isinstance(step, Step) or callable(step)):
                what = f"the class {step.__name__}" if isinstance(step, type) else type(step).__name__
                raise ConfigurationError(f"{label}: field 'steps[{index}]' must be a Step, a Stage or a callable, "
                                         f"got {what}")
            elif not isinstance(step, Step):
                step = Step(step)
            built.append(step)
        _unique_names(label, built)
        self._steps = tuple(built)
        self._errors = []
        self._used = _Used()

    # -- running ---------------------------------------------------------------------------------
    # The run modules import this one (they run Steps and record ItemErrors), so it imports them when a run starts.
    async def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Run the stream over ``source`` (or the first argument) and return the last step's outputs."""
        from dynapipeline._model.stream_run import Run

        out: list[Any] = []
        await Run(self, self._source_from(args), out).go()
        return out

    def iterate(self, source: Any = None) -> StreamItems:
        """The last step's outputs as they come: ``async with stream.iterate(src) as items: async for x in items``.

        Leaving the ``async with`` block stops the stream at once: its workers,
        threads and processes are stopped and the source is pulled no more before
        the block is left. A plain ``async for x in stream.iterate(src)`` works too
        and is enough when the loop runs to the end; after a ``break`` there, the
        stream stops only when the event loop finalizes the abandoned generator
        (a few turns of the loop later, or at garbage collection).
        """
        from dynapipeline._model.stream_run import outputs

        return StreamItems(outputs(self, (source,) if source is not None else ()))

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
        counts = self._counts
        if not counts:
            return {step.stage.name: StepProgress() for step in self._steps}
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


def _unique_names(label: str, steps: list[Step]) -> None:
    """Refuse two steps of one name given by hand; number automatic names apart (``parse``, ``parse_2``)."""
    names: set[str] = set()
    for index, step in enumerate(steps):
        name = step.stage.name
        if _auto_named(step):
            continue
        if name in names:
            raise ConfigurationError(f"{label}: field 'steps[{index}]' repeats the stage name {name!r}; "
                                     "progress is looked up by stage name, so names must differ")
        names.add(name)
    for index, step in enumerate(steps):
        if not _auto_named(step):
            continue
        base = name = step.stage.name
        number = 2
        while name in names:
            name = f"{base}_{number}"
            number += 1
        names.add(name)
        if name != base:
            steps[index] = step._renamed(name)


def _auto_named(step: Step) -> bool:
    stage = step.stage
    return isinstance(stage, FunctionStage) and bool(stage._auto)


def _check_source(label: str, source: Any) -> None:
    if isinstance(source, (str, bytes)) or (not hasattr(source, "__aiter__") and not hasattr(source, "__iter__")):
        raise ConfigurationError(f"{label}: field 'source' must be an iterable or an async iterable "
                                 f"(not a str or bytes), got {type(source).__name__}")


class StreamItems(AsyncIterator[Any]):
    """What ``Stream.iterate()`` returns: the outputs, and an async context manager that stops the run as it exits.

    ``async for`` over it iterates the underlying async generator directly (no
    cost per item); ``aclose()`` (what ``__aexit__`` and ``contextlib.aclosing``
    call) stops the run and returns once its teardown is done.
    """

    __slots__ = ("_outputs",)

    def __init__(self, outputs: AsyncGenerator[Any, None]) -> None:
        self._outputs = outputs

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._outputs

    async def __anext__(self) -> Any:
        return await self._outputs.__anext__()

    async def aclose(self) -> None:
        """Stop the run (if it started) and wait until none of its tasks, threads or processes is left."""
        await self._outputs.aclose()

    async def __aenter__(self) -> StreamItems:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._outputs.aclose()
