"""The base of the strategies that run components off the event loop: threads, processes, Dask.

::

    group.run ─► backend.dispatch(runners, args, kwargs)              on the caller's loop
                   │ Results(n, keeps_errors)                          one per dispatch
                   │   ◄── put(index, value) / fail(index, error)      as the backend's work comes back
                   │       merge_wait_ship(runner, ...)                its waiting and shipping, into the stage's stats
                   ▼
                 results in member order, or the first error

The base owns, once for every backend:

- **Flags**: ``return_exceptions`` is checked to be a bool (``check_flag``) and
  names the rule ``Results.fail`` applies: off, the first error ends the
  dispatch; on, a member's ``Exception`` is its result and the others run to
  completion; any other ``BaseException`` (cancellation) ends it either way.
- **Lifetime**: ``async with strategy:`` nests; while any block is open
  (``held``) the backend keeps its workers for the block, and the outermost
  exit releases them (``release_held``). Outside ``async with``, inside a
  pipeline run, ``end_with_run`` ties a resource to the run (released at its
  end, however it ends); with neither, a resource lives for one call.
- **Stop**: ``run_stopped()`` says that ``pipeline.stop()`` ended the current
  run: a backend then leaves no worker behind (``close_if_stopped``), unless
  another run still uses them.
- **Crashes**: ``crash_retry`` is the rule for an item whose worker died: run it
  again after the stage's ``retry_delay`` × ``retry_backoff``\\ :sup:`k-1`
  while its ``retries`` last, never after it crashed ``MAX_CRASHES`` workers
  (``note_crashes`` says so on its error).

A backend provides ``dispatch`` (run the runners, fill a ``Results``),
``stream_runner`` (its ``ItemRunner`` for a stream step), ``release_held``
(what the outermost ``async with`` releases) and ``close`` (its workers, now).

Invariants: results are in member order; a dispatch ends with all its results or
with one error; a stopped run leaves no worker of its own behind.

A new backend, in short::

    class MyStrategy(OffLoopStrategy):
        def __init__(self, *, return_exceptions: bool = False) -> None:
            super().__init__(return_exceptions=return_exceptions)

        async def dispatch(self, runners, args, kwargs):
            results = Results(asyncio.get_running_loop().create_future(), len(runners), self.return_exceptions)
            for index, runner in enumerate(runners):
                send(runner, args, kwargs, on_value=partial(results.put, index),
                     on_error=partial(results.fail, index))
            await results.future
            return results.values

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

from dynapipeline._engine import current_control
from dynapipeline._model.checks import check_flag
from dynapipeline._model.strategy import ExecutionStrategy

__all__ = ["MAX_CRASHES", "OffLoopStrategy", "Results", "crash_retry", "merge_wait_ship", "note_crashes"]

MAX_CRASHES = 3  # an item that crashed this many workers is not retried again (as Dask does)


class Results:
    """The results of one dispatch in member order; ``future`` (if any) completes when all are in or one failed.

    ``pending`` counts what is still out (members, or the backend's batches of them);
    ``part_done()`` counts one in.
    """

    __slots__ = ("future", "values", "pending", "keeps_errors")

    def __init__(self, future: asyncio.Future[None] | None, n: int, keeps_errors: bool) -> None:
        self.future = future
        self.values: list[Any] = [None] * n
        self.pending = n
        self.keeps_errors = keeps_errors  # ``return_exceptions``

    def keeps(self, error: BaseException) -> bool:
        """Whether ``error`` takes its member's place (an ``Exception`` under ``return_exceptions``)."""
        return self.keeps_errors and isinstance(error, Exception)

    def put(self, index: int, value: Any) -> None:
        """A member's result is in."""
        self.values[index] = value
        self.part_done()

    def fail(self, index: int, error: BaseException) -> bool:
        """A member failed: kept as its result, or the end of the dispatch (True)."""
        if self.keeps(error):
            self.values[index] = error
            return False
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)
        return True

    def part_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.future is not None and not self.future.done():
            self.future.set_result(None)


class OffLoopStrategy(ExecutionStrategy):
    """An execution strategy that runs members off the event loop's thread; see the module docstring."""

    offloads = True

    def __init__(self, *, return_exceptions: bool = False) -> None:
        self.return_exceptions = check_flag(type(self).__name__, "return_exceptions", return_exceptions)
        self._depth = 0  # nesting of `async with strategy:`

    @property
    def held(self) -> bool:
        """Inside ``async with strategy:``: workers live until the outermost block exits."""
        return self._depth > 0

    async def __aenter__(self) -> Self:
        self._depth += 1
        return self

    async def aclose(self) -> None:
        """Leave one ``async with`` block; the outermost releases what the strategy holds."""
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            await self.release_held()

    async def release_held(self) -> None:
        """What the outermost ``async with`` exit releases (the backend's pool, client or cluster)."""

    def close(self) -> None:
        """Stop this strategy's workers now (nothing to do where they end with each call or run, as threads do)."""

    def end_with_run(self, cleanup: Any) -> bool:
        """Outside ``async with``, in a pipeline run: ``cleanup`` runs at the run's end (once); whether it will."""
        if self._depth:
            return False
        control = current_control.get()
        if control is None:
            return False
        control.add_cleanup((f"dynapipeline.{type(self).__name__}", id(self)), cleanup)
        return True

    @staticmethod
    def run_stopped() -> bool:
        """Whether ``pipeline.stop()`` ended the current run."""
        run = current_control.get()
        return run is not None and run.stopped

    def close_if_stopped(self, in_use: bool) -> None:
        """A stopped run leaves no worker behind: ``close()`` unless another run still uses the workers."""
        if not in_use and self.run_stopped():
            self.close()


def crash_retry(stage: Any, crashes: int) -> float | None:
    """After an item's ``crashes``-th worker crash: seconds to wait before it runs again, or None (it fails)."""
    if crashes >= MAX_CRASHES or crashes > stage.retries:
        return None
    delay: float = stage.retry_delay * stage.retry_backoff ** (crashes - 1)
    return delay


def note_crashes(error: BaseException, crashes: int) -> None:
    """Say on an item's ``WorkerCrashedError`` that it is not retried because it crashed too many workers."""
    if crashes >= MAX_CRASHES:
        error.add_note(f"this item crashed {crashes} workers: it is not retried again")


def merge_wait_ship(runner: Any, wait: float, ship: float, sink: Any, sent: float, pid: int | None,
                    started: float) -> None:
    """Add a run's waiting (for a worker) and shipping (there and back) to its stage's stats, and its trace arrow.

    ``sink``: the dispatching context's TraceSink (None when nothing traces); the arrow
    goes from ``sent`` (when the run was handed over) to ``started`` (when it began on
    ``pid``'s track, None: a thread of this process), both perf_counter readings.
    """
    runner.wait_total += wait
    runner.ship_total += ship
    if sink is not None:
        sink.flows.append((runner, sent, sink.thread(), pid, started,
                           {"wait ms": round(wait * 1e3, 3), "ship ms": round(ship * 1e3, 3)}))
