"""A typed, fluent builder over ``Stream``: ``flow(source).map(f).filter(p).batch(n).run()``.

A ``Flow[T]`` is a source of ``T`` items, the stream's options and the steps so
far. It is immutable: each method returns a new flow and leaves its receiver as
it was, so one flow can branch into several (each run builds its own ``Stream``
and its own function stages, so branches never share a step's state). Nothing
runs until ``run()``, ``iterate()`` or ``async for``; every option is checked when
the method is called, with the ``ConfigurationError`` a ``Step`` or ``Stream``
would raise.

Each method adds one ``Step``, the one a hand-built stream would have:

===========================  ==================================================================
``map(fn)``                  ``Step(fn)``: a ``def`` or ``async def`` (not a generator), a ``Stage``
``flat_map(fn)``             ``Step(fn)`` for a generator or async generator function; else
                             ``Step`` of a generator wrapper (``yield from fn(item)``), or an
                             async generator one for an ``async def`` or an async iterable
``filter(pred)``             ``Step`` of a generator wrapper yielding the item or nothing
                             (an async generator one for an ``async def`` predicate)
``batch(n, timeout=)``       ``batch=n, batch_timeout=timeout`` on the next step (its
                             function gets lists); at the end, a pass-through step ``batch``
===========================  ==================================================================

Decisions: whether a function's result is awaited is decided by what it is (an
``async def``, a partial of one, an object whose ``__call__`` is one), as for
``Step``, never by what it returns. A wrapper carries the function's name, so a
step is named after the user's function (``name=`` overrides; automatic names are
numbered apart). ``map`` is one item in, one item out: it refuses a generator
function (``flat_map``'s job), so that its type is honest. The static types do
not show ``on_error="return"``'s exceptions in the outputs. An iterator source
serves the first stream built (by ``run``, ``iterate``, ``to_stream``) from any
flow of the same ``flow()`` call.
"""

from __future__ import annotations

import reprlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any, Generic, TypeGuard, TypeVar, cast, overload

from dynapipeline._model.checks import check_int
from dynapipeline._model.component import Stage
from dynapipeline._model.functions import FunctionStage, _kind_of, auto_name
from dynapipeline._model.step import OnError, Step
from dynapipeline._model.strategy import ExecutionStrategy
from dynapipeline._model.stream import Stream, StreamItems
from dynapipeline.errors import ConfigurationError

__all__ = ["Flow", "FlowItems", "flow"]

T = TypeVar("T")
U = TypeVar("U")


class Flow(Generic[T]):
    """Items of type ``T`` from a source through steps, built one method at a time; see ``flow()``.

    ``map``, ``flat_map``, ``filter`` and ``batch`` return a new flow; ``await
    f.run()`` returns the outputs as a list; ``async with f.iterate() as items``
    (or ``async for x in f``) yields them as they come; ``f.to_stream(name)`` is
    the ``Stream`` it runs, with the source and options kept. Each step's keyword
    options are ``Step``'s: ``on=`` (the execution strategy), ``name``, ``on_error``,
    ``ordered``, ``timeout``, ``retries``, ``retry_delay``, ``retry_backoff``, ``setup``, ``teardown``,
    ``rate``, ``burst``.
    """

    __slots__ = ("_batch", "_maxsize", "_on_error", "_ordered", "_source", "_steps")

    def __init__(self, source: Iterable[T] | AsyncIterable[T], *, maxsize: int = 1000, ordered: bool = True,
                 on_error: OnError = "raise") -> None:
        label = "flow"
        if isinstance(source, (str, bytes)) or not (hasattr(source, "__iter__") or hasattr(source, "__aiter__")):
            raise ConfigurationError(f"{label}: field 'source' must be an iterable or an async iterable "
                                     f"(not a str or bytes), got {type(source).__name__}")
        check_int(label, "maxsize", maxsize, least=1)
        if not isinstance(ordered, bool):
            raise ConfigurationError(f"{label}: field 'ordered' must be a bool, got {ordered!r}")
        if on_error not in ("raise", "skip", "return"):
            raise ConfigurationError(f"{label}: field 'on_error' must be 'raise', 'skip' or 'return', "
                                     f"got {on_error!r}")
        self._source = _Source(source)
        self._maxsize = maxsize
        self._ordered = ordered
        self._on_error: OnError = on_error
        self._steps: tuple[Step, ...] = ()
        self._batch: tuple[int, float | None] | None = None  # a batch() waiting for the next step

    # -- building ----------------------------------------------------------------------------------
    @overload
    def map(self, fn: Stage, /, *, on: ExecutionStrategy | None = None, on_error: OnError | None = None,
            ordered: bool | None = None, rate: float | None = None, burst: int | None = None) -> Flow[Any]: ...

    @overload
    def map(self, fn: Callable[[T], Awaitable[U]], /, *, on: ExecutionStrategy | None = None,
            name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
            timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
            retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
            teardown: Callable[[], Any] | None = None, rate: float | None = None,
            burst: int | None = None) -> Flow[U]: ...

    @overload
    def map(self, fn: Callable[[T], U], /, *, on: ExecutionStrategy | None = None, name: str | None = None,
            on_error: OnError | None = None, ordered: bool | None = None, timeout: float | None = None,
            retries: int | None = None, retry_delay: float | None = None,
            retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
            teardown: Callable[[], Any] | None = None, rate: float | None = None,
            burst: int | None = None) -> Flow[U]: ...

    def map(self, fn: Any, /, *, on: ExecutionStrategy | None = None, **options: Any) -> Flow[Any]:
        """Each item through ``fn``: its result (awaited for an ``async def``) flows on. A ``Stage`` runs as itself.

        One item in, one item out: a generator function is refused (it would yield several items per item,
        which its static type would not say): pass it to ``flat_map``. A ``Stage`` whose ``execute`` is a
        generator flat-maps, as in a ``Step`` (its outputs are typed ``Any``).
        """
        if not isinstance(fn, Stage):
            _check_callable("map", fn)
            kind = _kind_of(fn)
            if kind in ("generator", "async generator"):
                raise ConfigurationError(f"flow.map: field 'fn' is {'an' if kind[0] == 'a' else 'a'} {kind} function "
                                         f"({auto_name(fn)!r}), which yields any number of items per item: "
                                         "use flat_map")
        return self._then(fn, on, options)

    @overload
    def flat_map(self, fn: Callable[[T], AsyncIterable[U]], /, *, on: ExecutionStrategy | None = None,
                 name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
                 timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
                 retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None, rate: float | None = None,
                 burst: int | None = None) -> Flow[U]: ...

    @overload
    def flat_map(self, fn: Callable[[T], Awaitable[Iterable[U]]], /, *, on: ExecutionStrategy | None = None,
                 name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
                 timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
                 retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None, rate: float | None = None,
                 burst: int | None = None) -> Flow[U]: ...

    @overload
    def flat_map(self, fn: Callable[[T], Iterable[U]], /, *, on: ExecutionStrategy | None = None,
                 name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
                 timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
                 retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None, rate: float | None = None,
                 burst: int | None = None) -> Flow[U]: ...

    def flat_map(self, fn: Any, /, *, on: ExecutionStrategy | None = None, **options: Any) -> Flow[Any]:
        """Each element of what ``fn`` returns flows on: a list or other iterable, a generator, an async iterable.

        An ``async def`` returning a list (or an async iterable) is awaited first. An empty result
        filters the item out. One item's elements are collected before they flow on (as for a
        generator step).
        """
        _check_callable("flat_map", fn)
        kind = _kind_of(fn)
        if kind in ("generator", "async generator"):
            return self._then(fn, on, options)  # Step flattens these itself
        return self._then(_flattening(fn, kind == "async"), on, options)

    @overload
    def filter(self, pred: Callable[[T], TypeGuard[U]], /, *, on: ExecutionStrategy | None = None,
               name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
               timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
               retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
               teardown: Callable[[], Any] | None = None, rate: float | None = None,
               burst: int | None = None) -> Flow[U]: ...

    @overload
    def filter(self, pred: Callable[[T], object], /, *, on: ExecutionStrategy | None = None,
               name: str | None = None, on_error: OnError | None = None, ordered: bool | None = None,
               timeout: float | None = None, retries: int | None = None, retry_delay: float | None = None,
               retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
               teardown: Callable[[], Any] | None = None, rate: float | None = None,
               burst: int | None = None) -> Flow[T]: ...

    def filter(self, pred: Any, /, *, on: ExecutionStrategy | None = None, **options: Any) -> Flow[Any]:
        """Keep the items for which ``pred`` (a ``def`` or an ``async def``, then awaited) is truthy.

        A predicate typed ``TypeGuard[U]`` narrows the flow to ``Flow[U]``
        (``def is_record(r: Record | None) -> TypeGuard[Record]``); a lambda cannot be one.
        """
        _check_callable("filter", pred)
        return self._then(_keeping(pred, _kind_of(pred) == "async"), on, options)

    def batch(self, n: int, timeout: float | None = None) -> Flow[list[T]]:
        """Lists of up to ``n`` consecutive items (fewer at the end, or ``timeout`` s after a list's first item).

        The next step gets the lists: ``flow(xs).batch(100).map(save)`` is one step,
        ``Step(save, batch=100)``. A ``batch`` that ends the flow (or is followed by another) is a
        step of its own, named ``batch``, that passes the lists on.
        """
        Step(_pass_batch, batch=n, batch_timeout=timeout)  # the checks, with Step's messages
        return cast("Flow[list[T]]", self._with(self._settled(), (n, timeout)))

    # -- running -----------------------------------------------------------------------------------
    async def run(self) -> list[T]:
        """Run the flow over its source; the last step's outputs in a list (in source order when ``ordered``).

        ``run()`` returns only the outputs; to read ``errors``, ``progress`` or ``report()``
        as well, run ``to_stream()``.
        """
        stream = self._stream("flow")
        out: list[T] = await stream.run()
        return out

    def iterate(self) -> FlowItems[T]:
        """The outputs as they come: ``async with f.iterate() as items: async for x in items: ...``.

        Leaving the block stops the run at once, as ``Stream.iterate()`` does.
        """
        return FlowItems(self._stream("flow").iterate())

    def __aiter__(self) -> AsyncIterator[T]:
        """``async for x in f``: enough when the loop runs to the end (see ``iterate()`` for leaving early)."""
        return self.iterate().__aiter__()

    def to_stream(self, name: str = "flow") -> Stream:
        """The ``Stream`` this flow runs, named ``name``, with the flow's source and options: ``await s.run()``.

        Its function steps are its own (a new stage each, as ``run()`` builds), so its
        ``progress``, ``errors`` and ``report()`` are this stream's alone; a ``Stage``
        given to ``map`` is the one the stream runs.
        """
        return self._stream(name)

    def __repr__(self) -> str:
        names = [step.stage.name for step in self._settled()]
        return f"Flow(source={reprlib.repr(self._source.value)}, steps={names}, maxsize={self._maxsize}, " \
               f"ordered={self._ordered}, on_error={self._on_error!r})"

    # -- machinery ---------------------------------------------------------------------------------
    def _then(self, fn: Any, strategy: ExecutionStrategy | None, options: dict[str, Any]) -> Flow[Any]:
        """This flow and one more step, ``Step(fn, strategy, **options)``, taking a waiting ``batch()``."""
        options = {key: value for key, value in options.items() if value is not None}
        if self._batch is not None:
            options["batch"], options["batch_timeout"] = self._batch
        step = Step(fn, strategy, **options)
        name = options.get("name") or (step.stage.name if isinstance(fn, Stage) else None)
        if name is not None and any(name == other.stage.name and not _auto_named(other) for other in self._steps):
            raise ConfigurationError(f"flow: field 'name' repeats the step name {name!r}; progress is looked up "
                                     "by step name, so names given by hand must differ")
        return self._with((*self._steps, step), None)

    def _with(self, steps: tuple[Step, ...], batch: tuple[int, float | None] | None) -> Flow[Any]:
        new: Flow[Any] = object.__new__(Flow)
        new._source, new._maxsize, new._ordered, new._on_error = (self._source, self._maxsize, self._ordered,
                                                                  self._on_error)
        new._steps, new._batch = steps, batch
        return new

    def _settled(self) -> tuple[Step, ...]:
        """The steps, with a waiting ``batch()`` as a pass-through step of its own."""
        if self._batch is None:
            return self._steps
        n, timeout = self._batch
        return (*self._steps, Step(_pass_batch, batch=n, batch_timeout=timeout))

    def _stream(self, name: str) -> Stream:
        steps = self._settled()
        if not steps:
            raise ConfigurationError("flow: field 'steps' must not be empty: add a map, flat_map, filter or batch")
        source = self._source.value
        self._source.check()
        stream = Stream(name=name, steps=[_fresh(step) for step in steps], maxsize=self._maxsize,
                        ordered=self._ordered, on_error=self._on_error, source=source)
        self._source.taken = True  # only once the stream exists: a bad name= uses nothing up
        return stream


def flow(source: Iterable[T] | AsyncIterable[T], *, maxsize: int = 1000, ordered: bool = True,
         on_error: OnError = "raise") -> Flow[T]:
    """A ``Flow`` over ``source`` (any iterable or async iterable, pulled lazily), with no step yet.

    ``maxsize``, ``ordered`` and ``on_error`` are the ``Stream``'s: at most ``maxsize``
    items wait in front of each step; outputs in source order; what an item's error
    does (a step's own ``on_error=`` overrides it). An iterator source (a generator)
    serves one run: of this flow or of any flow built from it.
    """
    return Flow(source, maxsize=maxsize, ordered=ordered, on_error=on_error)


class FlowItems(AsyncIterator[T]):
    """What ``Flow.iterate()`` returns: the outputs, typed, and an async context manager that stops the run."""

    __slots__ = ("_items",)

    def __init__(self, items: StreamItems) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[T]:
        return cast("AsyncIterator[T]", self._items.__aiter__())  # the run's generator itself: no cost per item

    async def __anext__(self) -> T:
        item: T = await self._items.__anext__()
        return item

    async def aclose(self) -> None:
        """Stop the run (if it started) and wait until none of its tasks, threads or processes is left."""
        await self._items.aclose()

    async def __aenter__(self) -> FlowItems[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._items.aclose()


class _Source:
    """A flow's source, shared by every flow built from it: an iterator (a generator) serves one run."""

    __slots__ = ("taken", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.taken = False

    def check(self) -> None:
        """Refuse an iterator that a stream built before took (a list, a range serve any number of runs)."""
        value = self.value
        if self.taken and (hasattr(value, "__next__") or hasattr(value, "__anext__")):
            raise ConfigurationError(
                "flow: field 'source' is an iterator that an earlier run consumed (of this flow or of one "
                "built from the same flow()); a flow that runs again needs a re-iterable source (a list, a range)")


def _check_callable(method: str, fn: object) -> None:
    if not callable(fn) or isinstance(fn, Step) or isinstance(fn, type) and issubclass(fn, Stage):
        allowed = "a callable or a Stage" if method == "map" else "a callable"
        what = f"the class {fn.__name__}" if isinstance(fn, type) else type(fn).__name__
        raise ConfigurationError(f"flow.{method}: field 'fn' must be {allowed}, got {what}")


def _auto_named(step: Step) -> bool:
    return isinstance(step.stage, FunctionStage) and bool(step.stage._auto)


def _fresh(step: Step) -> Step:
    """``step`` with a stage of its own when it is a function's (a new stream's stats start at zero).

    Rebuilt from the fields ``function_stage`` sets (name, fn, the run policy): a field added there
    must be added here.
    """
    stage = step.stage
    if not isinstance(stage, FunctionStage):
        return step
    fresh = Step.__new__(Step)
    for slot in Step.__slots__:
        setattr(fresh, slot, getattr(step, slot))
    own = type(stage)(name=stage.name, fn=stage.fn, timeout=stage.timeout, retries=stage.retries,
                      retry_delay=stage.retry_delay, retry_backoff=stage.retry_backoff, setup_fn=stage.setup_fn,
                      teardown_fn=stage.teardown_fn)
    own._auto = stage._auto
    fresh.stage = own
    return fresh


def _flattening(fn: Callable[..., Any], awaited: bool) -> Callable[..., Any]:
    """A generator (or async generator) function yielding each element of what ``fn`` returns."""
    if awaited:
        async def flat_awaited(item: Any) -> Any:
            result = await fn(item)
            if hasattr(result, "__aiter__"):
                async for value in result:
                    yield value
            else:
                for value in result:
                    yield value

        wrapper: Callable[..., Any] = flat_awaited
    else:
        def flat(item: Any) -> Generator[Any, None, None]:
            result = fn(item)
            if hasattr(result, "__aiter__") and not hasattr(result, "__iter__"):
                raise TypeError(f"flow.flat_map: {auto_name(fn)!r} returned an async iterable; write it as an "
                                "async generator function (async def with yield) or an async def")
            yield from result

        wrapper = flat
    wrapper.__name__ = auto_name(fn)
    return wrapper


def _keeping(pred: Callable[..., Any], awaited: bool) -> Callable[..., Any]:
    """A generator (or async generator) function yielding its item when ``pred`` holds for it, else nothing."""
    if awaited:
        async def keep_awaited(item: Any) -> Any:
            if await pred(item):
                yield item

        wrapper: Callable[..., Any] = keep_awaited
    else:
        def keep(item: Any) -> Generator[Any, None, None]:
            if pred(item):
                yield item

        wrapper = keep
    wrapper.__name__ = auto_name(pred)
    return wrapper


def _pass_batch(items: list[Any]) -> list[Any]:
    return items


_pass_batch.__name__ = "batch"
