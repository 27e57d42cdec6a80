"""Running one component off the event loop's thread: with no loop for plain ``def`` stages, else on a given loop.

Shared by the thread pool and the worker processes; plain Python (no compiled code).
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import Any, NamedTuple

from dynapipeline._engine import RING
from dynapipeline._model.component import Stage
from dynapipeline._model.lifecycle import is_async_hook

__all__ = ["ItemRuns", "add_item_runs", "add_runs", "drive", "needs_loop", "note_place", "plain_call", "run_component",
           "sum_durations", "sum_runs", "time_limit"]

_ASYNC_EXECUTE: dict[type, bool] = {}
_SLOWEST = 5
_MAX_PLACES = 8  # places kept per component (a long run replacing crashed workers meets many pids)
MORE = "..."


def needs_loop(component: Any) -> bool:
    """True unless the component is a plain-``def`` Stage (and setup) whose run never awaits real I/O.

    Such a stage (no retries, no async handler hook) is run by driving its runner's
    coroutine by hand, so its ``execute`` is called directly with no event loop.
    """
    if not isinstance(component, Stage):
        return True
    cls = type(component)
    is_async = _ASYNC_EXECUTE.get(cls)
    if is_async is None:
        # An async generator's run is a coroutine too (``collecting`` gathers its values).
        is_async = _ASYNC_EXECUTE[cls] = (inspect.iscoroutinefunction(cls.execute)
                                          or inspect.isasyncgenfunction(cls.execute))
    if is_async or component.retries:
        return True
    for handler in component.handlers:
        for hook in handler.hooks():
            if hook is not None and inspect.iscoroutinefunction(hook):
                return True
    # An ``async def`` setup makes the stage's call target a coroutine function (``lifecycle``).
    hooks = component._lifecycle()
    return hooks is not None and is_async_hook(hooks[0])


def plain_call(stage: Any) -> Any:
    """The function to call directly for a plain-``def`` Stage with no handlers, timeout or retries, else None.

    Such a stage's run is its ``execute`` call and a clock reading on each side,
    so a worker running many items of it (a stream step) skips the runner's
    coroutine per item and records the timing itself (``Runner.record``).
    """
    if needs_loop(stage) or stage.handlers or (stage.timeout is not None and stage.timeout > 0):
        return None
    return stage.call_target()


def drive(coro: Any) -> Any:
    """Run a coroutine that never waits on a future to completion, with no event loop."""
    try:
        while True:
            if coro.send(None) is not None:
                break
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a plain-def stage awaited something that needs an event loop")


def note_place(runner: Any, place: str) -> None:
    """Note that the runner's component ran at ``place`` ("thread", "process <pid>") for its report."""
    places = runner.places
    if places is None:
        runner.places = {place: None}
    elif place not in places:
        places[MORE if len(places) >= _MAX_PLACES else place] = None


def run_component(component: Any, args: tuple[Any, ...], kwargs: dict[str, Any], loop: Any) -> Any:
    """Run ``component`` once through its runner (handlers, timing); ``loop`` is used only if it needs one."""
    coro = component.__pydantic_private__["_runner"].run(args, kwargs)
    if loop is None:
        return drive(coro)
    return loop.run_until_complete(coro)


def time_limit(stage: Stage) -> float | None:
    """Seconds a timed stage may take in all, every attempt and retry delay included; None if untimed.

    The caller's side of a deadline that threads and processes enforce from outside
    the stage (a plain ``def`` cannot be interrupted where it runs).
    """
    timeout = stage.timeout
    if timeout is None or not 0 < timeout < math.inf:
        return None
    delays = sum(stage.retry_delay * stage.retry_backoff ** k for k in range(stage.retries))
    return timeout * (stage.retries + 1) + delays



class ItemRuns(NamedTuple):
    """Runs made in a row elsewhere (a chunk's items in a worker), summed up as a stage's stats take them.

    A worker sums up its chunk's runs itself (``sum_runs``) so that the parent adds
    them without reading each run's clock readings. ``start``, ``end`` and the sums
    are readings of the clock the runs were timed with (perf_counter in a worker).
    """

    ran: int  # how many runs
    start: float  # the first run's start
    end: float  # the last run's end
    total: float  # the runs' durations, summed
    lo: float  # the shortest run
    hi: float  # the longest run
    recent: list[float]  # the last RING durations, in the order they ran
    slowest: list[tuple[float, int]]  # the 2 * 5 longest as (duration, position in the row), longest last
    # For the wait/ship split of a worker's chunk (``jobs.Split``), summed as differences (small numbers, so
    # that no precision is lost to the clock's large readings): each run's result pickled, less its start and end.
    started_to_pickled: float = 0.0
    ended_to_pickled: float = 0.0


def sum_runs(starts: list[float], ends: list[float], pickled: list[float]) -> ItemRuns:
    """The ``ItemRuns`` of runs in a row, from each run's start, end and pickled readings (one list each, in order)."""
    return sum_durations(list(map(operator.sub, ends, starts)), starts[0], ends[-1],
                         sum(map(operator.sub, pickled, starts)), sum(map(operator.sub, pickled, ends)))


def sum_durations(durations: list[float], start: float, end: float, started_to_pickled: float = 0.0,
                  ended_to_pickled: float = 0.0) -> ItemRuns:
    """The ``ItemRuns`` of runs in a row known by their durations (at least one), from ``start`` to ``end``.

    One stable sort of the positions by duration serves min, max and the slowest:
    the last ones are the longest runs, and among equal ones the latest (as the
    runner names the latest of equal runs made here).
    """
    order = sorted(range(len(durations)), key=durations.__getitem__)
    return ItemRuns(len(durations), start, end, sum(durations), durations[order[0]], durations[order[-1]],
                    durations[-RING:], [(durations[i], i) for i in order[-_SLOWEST * 2:]], started_to_pickled,
                    ended_to_pickled)


def add_item_runs(runner: Any, runs: ItemRuns, errors: int, place: str, offset: float = 0.0) -> None:
    """Add runs made elsewhere to ``runner``'s stats, as if recorded here; ``offset`` turns their clock into epoch.

    Counts, total, min/max, errors, the p50/p95 durations and the slowest runs all add
    up, however many calls add runs concurrently (a stream step's chunks).
    """
    if not runs.ran:
        return
    count = runner.count
    lo, hi = runs.lo, runs.hi
    if count:
        lo, hi = min(lo, runner.min), max(hi, runner.max)
    slowest = [(elapsed, count + position + 1) for elapsed, position in runs.slowest]
    runner.adopt((runs.start + offset, runs.end + offset, count + runs.ran, runner.total + runs.total, lo, hi,
                  runner.errors + errors), runs.recent, slowest)
    note_place(runner, place)


def add_runs(runner: Any, durations: list[float], start: float, end: float, errors: int, place: str) -> None:
    """``add_item_runs`` for runs known by their durations, from ``start`` to ``end`` (epoch seconds)."""
    if durations:
        add_item_runs(runner, sum_durations(durations, start, end), errors, place)
