"""A stream step on Dask: ``DaskItems``, the ``ItemRunner`` of ``DaskExecutionStrategy``.

- The stream runs up to ``maxsize`` calls at once, one Dask task each, so at
  most ``maxsize`` tasks are outstanding (backpressure reaches the source).
- A call takes up to ``CHUNK`` items (one for a timed stage, so that its
  deadline is the item's): the stage travels once per task, then runs once per
  item on the worker through its runner (handlers, ``timeout``, ``retries``).
- Per item: a stage error comes back with its own type, ``stage_name`` set; a
  timed stage whose item is not back after ``timeout`` × attempts + retry
  delays + 0.1 s fails with ``StageTimeoutError`` (its task is cancelled; a
  running plain ``def`` keeps its worker thread until it returns). A task lost
  with its worker is submitted again after the stage's ``retry_delay`` ×
  ``retry_backoff``\\ :sup:`k`, up to ``retries`` times, then its items fail
  with ``WorkerCrashedError``. One item's failure never fails the others.
- The stage's timing and stats in the parent add up the items' runs, each with its own duration
  (p50/p95), wherever and in whatever order the tasks end.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dynapipeline._model.component import private_of
from dynapipeline._model.strategy import ItemRunner
from dynapipeline._transports.calling import add_runs
from dynapipeline._transports.dask_observe import report_items
from dynapipeline._transports.dask_worker import run_items_task
from dynapipeline._transports.pickling import dumps_batch
from dynapipeline._transports.process_jobs import collect_values, deadline
from dynapipeline.errors import PicklingError, StageTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from dynapipeline._transports.to_dask import DaskExecutionStrategy

__all__ = ["CHUNK", "DaskItems"]

CHUNK = 16  # items per task for an untimed stage: Dask's per-task cost (~1-3 ms) is shared by them


class DaskItems(ItemRunner):
    """Runs a stream step's stage on Dask, ``chunk`` items per task."""

    def __init__(self, strategy: DaskExecutionStrategy, stage: Any) -> None:
        self.strategy = strategy
        self.stage = stage
        self.runner = private_of(stage)["_runner"]
        self.limit = deadline(stage)
        self.chunk = 1 if self.limit is not None else CHUNK
        self.client: Any = None
        self.held = False

    async def open(self) -> None:
        self.strategy.hold()
        self.held = True
        self.client = await self.strategy.client_for_run()

    async def aclose(self) -> None:
        if self.held:
            self.held = False
            self.strategy.release()

    async def call(self, values: list[Any]) -> list[tuple[bool, Any]]:
        stage = self.stage
        sent = self.runner.timing()  # what the payload carries: the worker's stats start from it
        try:
            payload, cids = dumps_batch([stage], tuple(values), {})
        except PicklingError as error:
            if len(values) == 1:
                return [(False, error)]
            return [out for value in values for out in await self.call([value])]  # find the item at fault
        strategy = self.strategy
        client = self.client
        attempt = 0
        while True:
            try:
                pid, replies = await strategy.run_task(client, run_items_task, cids, (payload,), self.limit,
                                                       self.runner)
            except StageTimeoutError as error:
                return [(False, error)] * len(values)
            except WorkerCrashedError as error:
                if attempt < stage.retries:
                    await asyncio.sleep(stage.retry_delay * stage.retry_backoff ** attempt)
                    attempt += 1
                    continue
                return [(False, error)] * len(values)
            out = self._decode(replies, pid, len(values), sent)
            await report_items(client, stage, replies, out, pid, self.runner.count - len(out) + 1)
            return out

    def _decode(self, replies: list[Any], pid: int, n: int, sent: tuple[Any, ...]) -> list[tuple[bool, Any]]:
        runner = self.runner
        out: list[tuple[bool, Any]] = []
        for position in range(n):
            reply = replies[0] if len(replies) == 1 and replies[0].unloadable else replies[position]
            slot: list[Any] = [None]
            try:
                collect_values([runner], [0], reply, pid, slot)
            except Exception as error:
                out.append((False, error))
            else:
                out.append((True, slot[0]))
        _add_item_runs(runner, replies, pid)
        return out


def _add_item_runs(runner: Any, replies: list[Any], pid: int) -> None:
    """Add each item's run on the worker to the parent's stats: its own duration (p50/p95), its errors.

    Each reply carries the worker's timing after its item (``timings_of``): its start and
    end, epoch seconds, are that item's run. Tasks of the step end in any order; each
    adds only its own runs.
    """
    durations: list[float] = []
    errors = 0
    start = end = 0.0
    for reply in replies:
        if reply.unloadable or not reply.timings:
            continue  # nothing ran
        timing = reply.timings[0][0][0]  # the stage's own (timing, durations, slowest): its timing
        if not durations:
            start = timing[0]
        end = timing[1]
        durations.append(timing[1] - timing[0])
        errors += reply.failed_at >= 0
    add_runs(runner, durations, start, end, errors, f"process {pid}")
