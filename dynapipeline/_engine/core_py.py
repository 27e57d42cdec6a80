"""The engine: running one component, the dispatchers and the cycle loops.

Long: one file is one compiled module, so every hot path the compiler types lives here.

This file is plain Python and correct on its own. The build compiles the very
same source a second time under the module name ``core_c`` (setup.py), with the C
types declared in ``core_c.pxd``; ``dynapipeline._engine`` picks one at import.
It is one module on purpose: compiled, the hot paths call each other
(runner, dispatchers, cycle loops) as C functions only within one extension module.

Hot-path rules: whatever can be resolved once (the bound ``execute``, the
handler lists, whether the fast path applies) is resolved when a component is
built or a handler attached, never per run. Timing uses one monotonic clock
read at each edge; epoch times are derived from it. In sequential loops the
reading that ends one component starts the next (one reading per component).

Fast path: a component with no handlers, timeout or retries and an ``async def
execute`` is "inline": the dispatch and cycle loops await its own coroutine
between two clock readings instead of going through ``Runner.run`` (no wrapper
coroutine per component). The few helpers they use for it (``_inline``,
``_call_execute``, ``_record``, ``_now``) are C functions on a typed ``Runner``
when compiled (see ``core_c.pxd``) and plain functions otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
from collections import deque
from typing import Any

from dynapipeline.errors import StageTimeoutError

__all__ = [
    "EPOCH_OFFSET",
    "RING",
    "Bounded",
    "BoundedGather",
    "Chained",
    "Concurrent",
    "ConcurrentGather",
    "Forever",
    "ItemTracks",
    "Loop",
    "Once",
    "RunControl",
    "Runner",
    "Sequential",
    "Slots",
    "TraceSink",
    "current_control",
    "current_item",
    "current_trace",
    "run_tasks",
    "set_tracing",
    "tracing",
    "wait_through_cancel",
]

_clock = time.perf_counter
_native_id = threading.get_native_id
# Epoch time of a clock reading, without a second system call per edge.
_EPOCH_OFFSET = time.time() - time.perf_counter()
EPOCH_OFFSET = _EPOCH_OFFSET
"""Epoch seconds minus ``time.perf_counter()``: turns the engine's clock readings into ``start_time``/``end_time``."""
RING = 64
"""How many durations (the last runs') each component keeps for its percentiles; core_c.pxd sizes its array so."""
_RING_MASK = RING - 1
_SLOWEST = 5  # a report names the 5 slowest stage runs; each component offers its own 5 slowest known
_CancelledError = asyncio.CancelledError
_sleep = asyncio.sleep
_isawaitable = inspect.isawaitable

current_control: contextvars.ContextVar[RunControl | None] = contextvars.ContextVar(
    "dynapipeline_control", default=None
)
current_trace: contextvars.ContextVar[TraceSink | None] = contextvars.ContextVar("dynapipeline_trace", default=None)
"""The sink of the tracer active in this context (read only while some tracer is active: see ``set_tracing``)."""
current_item: contextvars.ContextVar[int | None] = contextvars.ContextVar("dynapipeline_item", default=None)
"""The index of the stream item being processed here (set by streams only while tracing)."""

# True while at least one tracer is active anywhere in the process. ``record`` checks this one flag
# (a C int when compiled) and only then looks the context's tracer up: tracing off costs one test per run.
_tracing = False


def set_tracing(on: bool) -> None:
    """Turn the per-run trace hook on (some tracer is active) or off (none is)."""
    global _tracing
    _tracing = on


def tracing() -> bool:
    """Whether some tracer is active in this process."""
    return _tracing


class TraceSink:
    """What one tracer collects: plain tuples appended as runs end, handed to ``on_full`` in batches.

    ``items`` >= 0 keeps only the first ``items`` runs per runner of those made for a
    stream item (the others are counted in ``left_out``). Every ``full_at`` runs,
    ``on_full(sink)`` (when set) takes what it can: the tracer formats them as it goes.
    """

    def __init__(self, items: int = -1, on_full: Any = None, full_at: int = 10_000) -> None:
        # (runner, t0, t1, native thread id, cycle, failed, item index); t0/t1 are perf_counter readings.
        self.runs: list[tuple[Any, ...]] = []
        self.items = items
        self.item_runs: dict[Any, int] = {}  # runner -> item runs kept (only when sampling)
        self.left_out = 0  # item runs not kept by the sampling
        self.on_full = on_full
        self.full_at = full_at
        self.spans: list[tuple[Any, ...]] = []  # (name, category, t0, t1, native thread id, args)
        # Dispatches to threads and processes: (runner, sent at, dispatching thread id, worker pid or None
        # for a thread, the run's start, {"wait ms", "ship ms"}).
        self.flows: list[tuple[Any, ...]] = []
        self.remote: list[tuple[Any, ...]] = []  # runs in worker processes: (pid, thread names, runs)
        self.threads: dict[int, str] = {}  # native thread id -> thread name

    def add(self, runner: Runner, t0: float, t1: float, failed: bool) -> None:
        """Note a finished run (the hot path of tracing: C fields and calls when compiled)."""
        item = current_item.get()
        if item is not None and self.items >= 0:
            kept = self.item_runs.get(runner, 0)
            if kept >= self.items:
                self.left_out += 1
                return
            self.item_runs[runner] = kept + 1
        tid = _native_id()
        if tid not in self.threads:
            self.threads[tid] = threading.current_thread().name
        runs = self.runs
        runs.append((runner, t0, t1, tid, runner.count, failed, item))
        if len(runs) >= self.full_at and self.on_full is not None:
            self.on_full(self)

    def mark_failed(self, runner: Any, cycle: int) -> None:
        """Mark run number ``cycle`` of ``runner`` as failed, if it is still held here.

        Not held: left out by ``items=`` sampling, or already written to the file.
        """
        runs = self.runs
        for index in range(len(runs) - 1, -1, -1):
            entry = runs[index]
            if entry[0] is runner and entry[4] == cycle:
                runs[index] = entry[:5] + (True,) + entry[6:]
                return

    def thread(self) -> int:
        """The native id of the current thread, its name noted once."""
        tid = _native_id()
        if tid not in self.threads:
            self.threads[tid] = threading.current_thread().name
        return tid


class ItemTracks:
    """Stream items' runs as trace-event JSON text, formatted as they come; each stage's on tracks of its own.

    The bulk of a long stream's trace, so it is formatted here (in C when compiled).
    A stage's runs for items nest in nothing else on their tracks, so a run goes on the
    first track of its (thread, stage) whose last run ended by the time it started:
    memory is one number per track, however many items pass. ``head_of(runner)``
    gives the JSON of an event up to ``"tid":`` and of its args up to ``"cycle":``.
    Times: whole µs since ``started``, rounded down from whole ns as every slice's.
    """

    def __init__(self, started: float, head_of: Any, first_track: int) -> None:
        self.started = started
        self.head_of = head_of
        self.first_track = first_track
        # runner -> (head_of(runner)..., {thread id: [[last end µs, track id] per lane]})
        self.heads: dict[Any, tuple[Any, ...]] = {}
        self.tracks: list[tuple[int, int, Any, int]] = []  # (track id, thread id, runner, lane)

    def format(self, runs: list[tuple[Any, ...]]) -> list[str]:
        """The ``X`` events of ``runs`` (``TraceSink.runs`` tuples), as JSON text each."""
        started = self.started
        heads = self.heads
        out = []
        for run in runs:
            runner = run[0]
            head = heads.get(runner)
            if head is None:
                head = heads[runner] = (*self.head_of(runner), {})
            t0 = run[1]
            t1 = run[2]
            ts = round((t0 - started) * 1e9) // 1000
            end = round((t1 - started) * 1e9) // 1000
            lanes = head[2]
            mine = lanes.get(run[3])
            if mine is None:
                mine = lanes[run[3]] = []
            track = -1
            for lane in mine:
                if lane[0] <= ts:
                    lane[0] = end
                    track = lane[1]
                    break
            if track < 0:
                track = self.first_track + len(self.tracks)
                self.tracks.append((track, run[3], runner, len(mine)))
                mine.append([end, track])
            item = run[6]
            tail = ',"error":true}}' if run[5] else "}}"
            out.append(f'{head[0]}{track},"ts":{ts},"dur":{end - ts},{head[1]}{run[4]},"item":{item}{tail}')
        return out


class RunControl:
    """State shared by everything in one pipeline run: stop/drain flags and end-of-run cleanups.

    Transports register cleanups (``add_cleanup``) for resources that live for the
    run (a thread pool); the pipeline awaits ``finish()`` however the run ended.
    """

    def __init__(self) -> None:
        self.draining = False
        self.stopped = False
        self.cleanups: dict[Any, Any] = {}

    def add_cleanup(self, key: Any, cleanup: Any) -> None:
        """Call ``cleanup()`` (sync or async) once at the end of the run; one per key."""
        if key not in self.cleanups:
            self.cleanups[key] = cleanup

    async def finish(self) -> None:
        """Run every cleanup, in registration order; the first error is raised after all ran."""
        first_error = None
        cleanups = list(self.cleanups.values())
        self.cleanups.clear()
        for cleanup in cleanups:
            try:
                res = cleanup()
                if _isawaitable(res):
                    await res
            except Exception as error:
                if first_error is None:
                    first_error = error
        if first_error is not None:
            raise first_error


class Runner:
    """Runs one component: clock, handlers, timeout, retries, and its timing stats."""

    def __init__(self, owner: Any, name: str, execute: Any) -> None:
        self.owner = owner
        self.name = name
        self._execute = execute
        self._is_async = inspect.iscoroutinefunction(execute)
        self._timeout = 0.0
        self._retries = 0
        self._retry_delay = 0.0
        self._retry_backoff = 1.0
        self._befores: tuple[Any, ...] = ()
        self._arounds: tuple[Any, ...] = ()
        self._afters: tuple[Any, ...] = ()
        self._on_errors: tuple[Any, ...] = ()
        self._fast = True
        self._inline = self._is_async
        self.start_time = 0.0
        self.execution_time = 0.0
        self.count = 0
        self.total = 0.0
        self.min = 0.0
        self.max = 0.0
        self.errors = 0
        # Time spent off the loop around the runs (threads, processes): waiting for a worker, and
        # shipping the component and its result. Set by the transports, never on the hot path.
        self.wait_total = 0.0
        self.ship_total = 0.0
        self.places: Any = None  # where it ran off the loop ({label: None}, insertion-ordered), or None
        self.base = 0  # `count` when this copy adopted its timing (a worker sends back the runs since)
        self._failed = False
        # Percentiles come from the durations of the last RING runs, a ring buffer written in place:
        # constant memory however long an infinite loop runs, and one store per run (a reservoir sample
        # over all runs would need a random draw per run, which costs more than the rest of `record`).
        # Literal sizes: compiled, these lists fill fixed C arrays (RING and _SLOWEST, as in core_c.pxd).
        self._ring = [0.0] * 64
        # The slowest runs are found when a report asks (``slowest``), among the ring's runs, the run of
        # the all-time ``max`` (its number kept here: one store when a run sets a new max) and the slow
        # runs adopted from worker processes (``adopt``, off the hot path).
        self._max_cycle = 0
        self._adopted_slow: Any = None
        # Pure mode: a Runner keeps fewer than 30 instance attributes, so CPython shares its dict's keys
        # (and specialises attribute access); past that each instance gets a full dict, ~2x slower here.

    def configure(self, timeout: float | None, retries: int, retry_delay: float, retry_backoff: float) -> None:
        """Set timeout (None or <= 0: none) and retry policy."""
        self._timeout = timeout if timeout is not None and timeout > 0 else 0.0
        self._retries = retries
        self._retry_delay = retry_delay
        self._retry_backoff = retry_backoff
        self._refresh()

    def set_handlers(self, handlers: Any) -> None:
        """Resolve the handler hooks once: only hooks a handler overrides are kept."""
        befores, arounds, afters, on_errors = [], [], [], []
        for handler in handlers:
            hooks = handler.hooks()
            if hooks[0] is not None:
                befores.append(hooks[0])
            if hooks[1] is not None:
                arounds.append(hooks[1])
            if hooks[2] is not None:
                afters.append(hooks[2])
            if hooks[3] is not None:
                on_errors.append(hooks[3])
        self._befores = tuple(befores)
        self._arounds = tuple(arounds)
        self._afters = tuple(afters)
        self._on_errors = tuple(on_errors)
        self._refresh()

    def record(self, t0: float, t1: float) -> None:
        """Store the last run's times and fold it into the running stats."""
        elapsed = t1 - t0
        count = self.count
        self.start_time = t0 + _EPOCH_OFFSET
        self.execution_time = elapsed
        if count == 0:
            self.min = elapsed
            self.max = elapsed
            self._max_cycle = 1
        elif elapsed < self.min:
            self.min = elapsed
        elif elapsed > self.max:
            self.max = elapsed
            self._max_cycle = count + 1
        self._ring[count & _RING_MASK] = elapsed
        self.count = count + 1
        self.total += elapsed
        if _tracing:
            _trace(self, t0, t1)

    def record_failed(self, t0: float, t1: float) -> None:
        """``record`` for a run that raised an exception (a cancellation is not an error)."""
        self.errors += 1
        self._failed = True
        self.record(t0, t1)
        self._failed = False

    @property
    def end_time(self) -> float:
        """Epoch seconds at which the last run ended."""
        return self.start_time + self.execution_time

    def copy_timing(self, start_time: float, end_time: float, count: int, total: float, lo: float, hi: float,
                    errors: int = 0) -> None:
        """Adopt timing sent by the parent (in a worker process); the runs from now on are this copy's own."""
        self.start_time = start_time
        self.execution_time = end_time - start_time
        self.count = count
        self.total = total
        self.min = lo
        self.max = hi
        self.errors = errors
        self.base = count
        self._max_cycle = 0  # the parent's max: which run it was is not known here
        self._adopted_slow = None

    def timing(self) -> tuple[float, float, int, float, float, float, int]:
        """The timing state as a tuple (for shipping across a process boundary)."""
        return (self.start_time, self.end_time, self.count, self.total, self.min, self.max, self.errors)

    def runs_since_base(self) -> tuple[list[float], list[tuple[float, int]]]:
        """Durations (up to RING, oldest first) and slowest runs of the runs since ``copy_timing``."""
        return self._durations(self.count - self.base), self._slowest(self.base + 1)

    def adopt(self, timing: tuple[Any, ...], durations: list[float], slowest: list[tuple[float, int]]) -> None:
        """Adopt a worker's timing of this component and fold in its runs there (durations, slowest)."""
        start_time, end_time, count, total, lo, hi, errors = timing
        first = count - len(durations)
        for i in range(len(durations)):
            self._ring[(first + i) & _RING_MASK] = durations[i]
        if slowest:
            kept = list(self._adopted_slow or ()) + [(elapsed, cycle) for elapsed, cycle in slowest]
            kept.sort(reverse=True)
            self._adopted_slow = kept[:_SLOWEST]
            for elapsed, cycle in slowest:
                if elapsed >= hi:
                    self._max_cycle = cycle
        self.start_time = start_time
        self.execution_time = end_time - start_time
        self.count = count
        self.total = total
        self.min = lo
        self.max = hi
        self.errors = errors

    def durations(self) -> list[float]:
        """Durations of the last runs (at most RING), oldest first."""
        return self._durations(self.count)

    def _durations(self, n: int) -> list[float]:
        if n > RING:
            n = RING
        first = self.count - n
        out = []
        for i in range(n):
            out.append(self._ring[(first + i) & _RING_MASK])
        return out

    def slowest(self) -> list[tuple[float, int]]:
        """The slowest runs known (at most 5), as (seconds, cycle), slowest first; cycle 1 is the first run.

        Known: the last RING runs, the run of the all-time ``max``, and the slow runs
        adopted from worker processes. A run older than those that was slower than
        all of them but the max is not named (its time is in ``total``).
        """
        return self._slowest(1)

    def _slowest(self, first: int) -> list[tuple[float, int]]:
        """``slowest`` among the runs numbered ``first`` and later."""
        found: dict[int, float] = {}
        count = self.count
        start = count - RING + 1
        if start < first:
            start = first
        for cycle in range(start, count + 1):
            found[cycle] = self._ring[(cycle - 1) & _RING_MASK]
        if self._max_cycle >= first and count:
            found[self._max_cycle] = self.max
        for elapsed, cycle in self._adopted_slow or ():
            if cycle >= first:
                found[cycle] = elapsed
        out = sorted(((elapsed, cycle) for cycle, elapsed in found.items()), reverse=True)
        return out[:_SLOWEST]

    async def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the component once and return its result."""
        if self._fast:
            t0 = _now()
            try:
                if self._is_async:
                    result = await _call_execute(self, args, kwargs)
                else:
                    result = _call_execute(self, args, kwargs)
                    if _isawaitable(result):  # e.g. a Cython-compiled `async def`
                        result = await result
            except BaseException as error:
                _record_error(self, t0, _now(), error)
                raise
            self.record(t0, _now())
            return result
        return await self._run_full(args, kwargs)

    async def _run_full(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The run is timed from the first `before` to the end of `execute` (and the `around`s) and
        # recorded before the `after`s, so that they, like `on_error`, see the run that just finished.
        owner = self.owner
        t0 = _clock()
        try:
            for hook in self._befores:
                res = hook(owner, *args, **kwargs)
                if _isawaitable(res):
                    await res
            if self._arounds:
                result = await self._around(0, args, kwargs)
            else:
                result = await self._attempts(args, kwargs)
        except _CancelledError:
            self.record(t0, _clock())
            raise
        except Exception as error:
            self.record_failed(t0, _clock())
            await self._on_error(error, args, kwargs)
            raise
        self.record(t0, _clock())
        if self._afters:
            cycle = self.count
            try:
                for hook in self._afters:
                    res = hook(owner, result, *args, **kwargs)
                    if _isawaitable(res):
                        await res
            except Exception as error:
                # The run is recorded already: an `after` that raises turns it into a failed run.
                self.errors += 1
                if _tracing:
                    _trace_failed(self, cycle)
                await self._on_error(error, args, kwargs)
                raise
        return result

    async def _on_error(self, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        owner = self.owner
        for hook in self._on_errors:
            res = hook(owner, error, *args, **kwargs)
            if _isawaitable(res):
                await res

    async def _around(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The first attached handler is outermost; each gets a callable for the next layer.
        hook = self._arounds[index]
        if index + 1 < len(self._arounds):
            def inner(*a: Any, **k: Any) -> Any:
                return self._around(index + 1, a, k)
        else:
            def inner(*a: Any, **k: Any) -> Any:
                return self._attempts(a, k)
        res = hook(self.owner, inner, *args, **kwargs)
        if _isawaitable(res):
            res = await res
        return res

    async def _attempts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            try:
                return await self._call(args, kwargs)
            except Exception:
                if attempt >= self._retries:
                    raise
                delay = self._retry_delay * self._retry_backoff ** attempt
                attempt += 1
                await _sleep(delay)

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        timeout = self._timeout
        if timeout <= 0.0:
            if self._is_async:
                return await _call_execute(self, args, kwargs)
            res = _call_execute(self, args, kwargs)
            if _isawaitable(res):
                res = await res
            return res
        if self._is_async:
            res = _call_execute(self, args, kwargs)
        else:
            # A plain `def` cannot be interrupted on the loop's thread; an overrun is
            # reported when it returns and its result is discarded.
            t0 = _clock()
            res = _call_execute(self, args, kwargs)
            if not _isawaitable(res):
                if _clock() - t0 > timeout:
                    raise StageTimeoutError(self.name, timeout)
                return res
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await res
        except TimeoutError:
            # Only our own deadline becomes StageTimeoutError; a TimeoutError the stage
            # raised itself propagates unchanged.
            if deadline.expired():
                raise StageTimeoutError(self.name, timeout) from None
            raise

    def _refresh(self) -> None:
        self._fast = not (
            self._befores or self._arounds or self._afters or self._on_errors
            or self._timeout > 0.0 or self._retries > 0
        )
        # The dispatch loops run an inline runner's coroutine themselves (no wrapper coroutine).
        self._inline = self._fast and self._is_async


# The fast path of the dispatch loops. Compiled, these are C calls on a typed Runner
# (core_c.pxd), so a loop reaches the runner's fields without a Python attribute lookup.

def _inline(runner: Runner) -> bool:
    """True when the runner has no handlers, timeout or retries and an ``async def execute``.

    A dispatch loop then awaits ``_call_execute(...)`` itself between two clock readings and
    passes them to ``_record``: no wrapper coroutine per component.
    """
    return runner._inline


def _call_execute(runner: Runner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs:
        return runner._execute(*args, **kwargs)
    return runner._execute(*args)


def _record(runner: Runner, t0: float, t1: float) -> None:
    runner.record(t0, t1)


def _record_error(runner: Runner, t0: float, t1: float, error: BaseException) -> None:
    """Record a run that raised: an exception counts as an error, a cancellation does not."""
    if isinstance(error, Exception):
        runner.record_failed(t0, t1)
    else:
        runner.record(t0, t1)


def _trace(runner: Runner, t0: float, t1: float) -> None:
    """Hand a finished run to the tracer active in this context, if any."""
    sink = current_trace.get()
    if sink is not None:
        sink.add(runner, t0, t1, runner._failed)


def _trace_failed(runner: Runner, cycle: int) -> None:
    """Mark run number ``cycle`` of ``runner`` in this context's tracer as failed (its ``after`` raised)."""
    sink = current_trace.get()
    if sink is not None:
        sink.mark_failed(runner, cycle)


def _now() -> float:
    """The monotonic clock (a C double when compiled)."""
    return _clock()


def _draining(control: RunControl | None) -> bool:
    return control is not None and control.draining


def _is_sequential(dispatch: Any) -> bool:
    """True for a bound ``Sequential.dispatch``: the cycle loops then run the members inline."""
    return type(getattr(dispatch, "__self__", None)) is Sequential


async def run_tasks(tasks: list[Any]) -> None:
    """Wait for all tasks; on the first error (or our own cancellation) cancel and await the rest, then raise.

    The tasks were just created, so one turn of the loop runs each one's first step,
    in order. Only those still pending after it get a done callback: stages that
    finish without suspending (the common cheap case) cost no callback at all.
    """
    if not tasks:
        return
    try:
        await _sleep(0)
    except BaseException:
        await _cancel_and_wait(tasks)
        raise
    failed = None
    pending = 0
    for task in tasks:
        if not task.done():
            pending += 1
        elif failed is None and (task.cancelled() or task.exception() is not None):
            failed = task  # tasks finished in creation order: the lowest index failed first
    if failed is None and pending:
        gate = _Gate(asyncio.get_running_loop().create_future(), pending)
        on_done = gate.on_done
        for task in tasks:
            if not task.done():
                task.add_done_callback(on_done)
        try:
            await gate.future
        except BaseException:
            await _cancel_and_wait(tasks)
            raise
        failed = gate.failed
    if failed is not None:
        await _cancel_and_wait(tasks)
        failed.result()  # re-raises the first error with its own type and traceback


class _Gate:
    """Completes its future when every task is done, or at the first failing task."""

    def __init__(self, future: Any, pending: int) -> None:
        self.future = future
        self.pending = pending
        self.failed: Any = None

    def on_done(self, task: Any) -> None:
        self.pending -= 1
        if self.future.done():
            return
        if task.cancelled() or task.exception() is not None:
            self.failed = task
            self.future.set_result(None)
        elif self.pending == 0:
            self.future.set_result(None)


async def _cancel_and_wait(tasks: list[Any]) -> None:
    """Cancel the unfinished tasks and wait until every one has finished unwinding."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    try:
        await wait_through_cancel(pending)
    finally:
        for task in tasks:
            # Mark secondary errors as retrieved: only the first one propagates.
            if task.done() and not task.cancelled():
                task.exception()


async def wait_through_cancel(futures: list[Any]) -> None:
    """Wait until every future is done, even if we are cancelled meanwhile.

    Our own cancellation is held back and raised once they are all done (as
    ``asyncio.TaskGroup`` does), so nothing we wait for outlives us.
    """
    cancelled = False
    pending = [f for f in futures if not f.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except _CancelledError:
            cancelled = True
        pending = [f for f in pending if not f.done()]
    if cancelled:
        raise _CancelledError


class Sequential:
    """One component after another; the first error stops the rest.

    A fast runner's coroutine is awaited by the loop itself (see ``_inline``), and the clock
    reading that ends one component starts the next: one reading per component.
    """

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        # One cycle of the shared loop, so the hot body exists once.
        cycles = await _sequential_cycles(runners, args, kwargs, 1, None, None, 0.0)
        return cycles[0]  # type: ignore[no-any-return]


class Chained:
    """One component after another, each given the previous one's result; the first error stops the rest.

    The first component gets the dispatch's ``args``; each later one gets
    ``(previous_result, *args[1:])``: the previous result replaces the first
    positional argument. ``kwargs`` reach every component unchanged. The result is
    the list of every component's result (the last one is the chain's output).
    Timing as in ``Sequential``: one clock reading per inline component.
    """

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        results = []
        rest = args[1:]
        t0 = _now()
        for runner in runners:
            if _inline(runner):
                try:
                    result = await _call_execute(runner, args, kwargs)
                except BaseException as error:
                    _record_error(runner, t0, _now(), error)
                    raise
                t1 = _now()
                _record(runner, t0, t1)
                t0 = t1
            else:
                result = await runner.run(args, kwargs)
                t0 = _now()
            results.append(result)
            args = (result,) + rest
        return results


class Concurrent:
    """All components at once as tasks; the first error cancels and awaits the siblings."""

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        if n == 1:
            return [await runners[0].run(args, kwargs)]
        create_task = asyncio.get_running_loop().create_task
        tasks = [create_task(runner.run(args, kwargs)) for runner in runners]
        await run_tasks(tasks)
        return [task.result() for task in tasks]


class ConcurrentGather:
    """All components at once; a component's ``Exception`` is its result and the siblings run on.

    The ``asyncio.gather(..., return_exceptions=True)`` convention. A ``BaseException``
    that is not an ``Exception`` (cancellation, ``KeyboardInterrupt``) still cancels and
    awaits the siblings and propagates, as in ``Concurrent``.
    """

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        if n == 1:
            return [await _settle(runners[0], args, kwargs)]
        create_task = asyncio.get_running_loop().create_task
        tasks = [create_task(_settle(runner, args, kwargs)) for runner in runners]
        await run_tasks(tasks)
        return [task.result() for task in tasks]


async def _settle(runner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The runner's result, or the ``Exception`` it raised (its handlers' ``on_error`` have run)."""
    try:
        return await runner.run(args, kwargs)
    except Exception as error:
        return error


class Slots:
    """A counting limit owned by a strategy instance, usable from any event loop in any thread.

    Groups in worker threads may share one instance, so the count and the waiters
    are guarded by a lock, and a waiter on another thread's loop is woken through
    that loop's ``call_soon_threadsafe``. Waiters are served first come, first
    served: a released slot is handed straight to the oldest waiter.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[Any] = deque()
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (a group shipped to a worker process) starts with its own free slots.
        return (Slots, (self.limit,))

    def has_waiters(self) -> bool:
        """Someone waits for a slot (a deque's truth value is read atomically)."""
        return bool(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody queues for it, without waiting."""
        with self._lock:
            if self.used < self.limit and not self._waiters:
                self.used += 1
                return True
            return False

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.used < self.limit and not self._waiters:
                self.used += 1
                return
            waiter = loop.create_future()
            self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: `used` already counts us
        except BaseException:
            with self._lock:
                handed = waiter not in self._waiters
                if not handed:
                    self._waiters.remove(waiter)
            if handed:
                self.release()  # a slot was handed to us as we left: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self.used -= 1
                return
            waiter = self._waiters.popleft()
        if waiter.done():
            return  # cancelled: its acquire() finds itself handed the slot and passes it on
        loop = waiter.get_loop()
        if loop is asyncio._get_running_loop():
            _wake(waiter)
        else:
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # that loop is closed: its waiter is gone, hand on to the next
                self.release()


def _wake(waiter: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Bounded:
    """At most `slots.limit` components in flight, run by min(n, limit) workers."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        results: list[Any] = [None] * len(runners)
        await _Cursor(runners, results, self.slots, args, kwargs).run()
        return results


class _Cursor:
    """The shared work queue of one bounded dispatch: the next index to run."""

    def __init__(self, runners: tuple[Any, ...], results: list[Any], slots: Slots,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.runners = runners
        self.results = results
        self.slots = slots
        self.args = args
        self.kwargs = kwargs
        self.next = 0

    async def run(self) -> None:
        """Run the dispatch with min(n, limit) workers (inline when that is one)."""
        workers = min(len(self.runners), self.slots.limit)
        if workers == 0:
            return
        if workers == 1:
            await self.work()
            return
        create_task = asyncio.get_running_loop().create_task
        await run_tasks([create_task(self.work()) for _ in range(workers)])

    async def work(self) -> None:
        # A worker takes the next index and runs a fast runner's coroutine itself (as
        # Sequential does). It keeps its slot from one component to the next and hands
        # it back in between only when someone waits for one (another group sharing
        # the limit), which spares the lock on the uncontended path.
        n = len(self.runners)
        slots = self.slots
        holding = False
        try:
            while self.next < n:
                index = self.next
                self.next = index + 1
                if not holding:
                    if not slots.try_acquire():
                        await slots.acquire()
                    holding = True
                runner = self.runners[index]
                if _inline(runner):
                    t0 = _now()
                    try:
                        self.results[index] = await _call_execute(runner, self.args, self.kwargs)
                    except BaseException as error:
                        _record_error(runner, t0, _now(), error)
                        raise
                    _record(runner, t0, _now())
                else:
                    self.results[index] = await runner.run(self.args, self.kwargs)
                if slots.has_waiters():
                    holding = False
                    slots.release()
        finally:
            if holding:
                slots.release()


class BoundedGather:
    """``Bounded`` where a component's ``Exception`` is its result and the others run on (see ``ConcurrentGather``)."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        results: list[Any] = [None] * len(runners)
        await _GatherCursor(runners, results, self.slots, args, kwargs).run()
        return results


class _GatherCursor(_Cursor):
    """A ``_Cursor`` that stores a component's ``Exception`` as its result and goes on."""

    async def work(self) -> None:
        # _Cursor.work with the exception kept: a separate loop, so the default path has no extra branch.
        n = len(self.runners)
        slots = self.slots
        holding = False
        try:
            while self.next < n:
                index = self.next
                self.next = index + 1
                if not holding:
                    if not slots.try_acquire():
                        await slots.acquire()
                    holding = True
                runner = self.runners[index]
                if _inline(runner):
                    t0 = _now()
                    try:
                        self.results[index] = await _call_execute(runner, self.args, self.kwargs)
                    except BaseException as error:
                        _record_error(runner, t0, _now(), error)
                        if not isinstance(error, Exception):
                            raise
                        self.results[index] = error
                    else:
                        _record(runner, t0, _now())
                else:
                    try:
                        self.results[index] = await runner.run(self.args, self.kwargs)
                    except Exception as error:
                        self.results[index] = error
                if slots.has_waiters():
                    holding = False
                    slots.release()
        finally:
            if holding:
                slots.release()


class Once:
    """One cycle: the result of one dispatch."""

    async def run(self, dispatch: Any, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await dispatch(runners, args, kwargs)


class Loop:
    """`cycles` cycles; the list of per-cycle results. A drain ends it after the current cycle."""

    def __init__(self, cycles: int) -> None:
        self.cycles = cycles

    async def run(self, dispatch: Any, runners: tuple[Any, ...], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> list[Any]:
        control = current_control.get()
        if _is_sequential(dispatch):
            cycles: list[Any] = await _sequential_cycles(runners, args, kwargs, self.cycles, control, None, 0.0)
            return cycles
        results = []
        for _ in range(self.cycles):
            if _draining(control):
                break
            results.append(await dispatch(runners, args, kwargs))
        return results


class Forever:
    """Cycles until `event` is set or the run drains; keeps no results (flat memory).

    Each cycle ends with a yield to the event loop (``sleep(interval)``, or
    ``sleep(0)``), so other tasks - including the one calling ``stop()`` - run.
    """

    def __init__(self, event: Any, interval: float) -> None:
        self.event = event
        self.interval = interval

    async def run(self, dispatch: Any, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        control = current_control.get()
        event = self.event
        interval = self.interval
        if _is_sequential(dispatch):
            await _sequential_cycles(runners, args, kwargs, -1, control, event, interval)
            return None
        while True:
            if event is not None and event.is_set():
                return None
            if _draining(control):
                return None
            await dispatch(runners, args, kwargs)
            await _sleep(interval)


async def _sequential_cycles(runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any],
                             cycles: int, control: RunControl | None, event: Any, interval: float) -> Any:
    """Loop (``cycles >= 0``: a list of per-cycle result lists) or Forever (``cycles < 0``:
    until ``event`` is set or a drain, yielding to the loop each cycle; returns None) over
    ``Sequential.dispatch`` inlined: no dispatch coroutine per cycle.
    """
    forever = cycles < 0
    results: list[Any] = []
    cycle = 0
    while forever or cycle < cycles:
        if forever and event is not None and event.is_set():
            return None
        if _draining(control):
            break
        cycle += 1
        # One cycle of Sequential.dispatch.
        cycle_results = []
        t0 = _now()
        for runner in runners:
            if not _inline(runner):
                cycle_results.append(await runner.run(args, kwargs))
                t0 = _now()
                continue
            try:
                result = await _call_execute(runner, args, kwargs)
            except BaseException as error:
                _record_error(runner, t0, _now(), error)
                raise
            t1 = _now()
            _record(runner, t0, t1)
            t0 = t1
            cycle_results.append(result)
        if forever:
            await _sleep(interval)
        else:
            results.append(cycle_results)
    return None if forever else results
