"""A stream step on Dask: ``DaskItems``, the ``ItemRunner`` of ``DaskExecutionStrategy``.

- **Tasks follow the items**: the step makes at most two calls per worker thread
  of the cluster at once (never more than the stream's ``maxsize``), one Dask
  task each, and only for items it has taken from its queue.
- **Chunks**: a call's first task takes one item; then each takes as many as
  fill about ``CHUNK_SECONDS`` of work (from the stage's measured time per
  item), never more than ``maxsize`` split among the calls, so the items in
  flight stay within ``maxsize`` and backpressure reaches the source. A timed
  stage's items travel one per task, so that a deadline is the item's. The
  stage travels once per task, then runs once per item on the worker through
  its runner (handlers, ``timeout``, ``retries``).
- Per item: a stage error comes back with its own type, ``stage_name`` set; a
  timed stage whose item is not back after ``timeout`` × attempts + retry
  delays + 0.1 s fails with ``StageTimeoutError`` (its task is cancelled; a
  running plain ``def`` keeps its worker thread until it returns).
- **A lost task** (its worker died) of several items charges nobody: its items
  are sent again one per task. A one-item task is a *probe*: it tells the
  scheduler when it starts (one more message per task), so a lost probe that
  had started killed its worker: its item is charged the workers that died
  (Dask may have run it ``allowed-failures`` more times) and is sent again after
  the stage's ``retry_delay`` × ``retry_backoff``\\ :sup:`k` while its ``retries``
  last and it crashed fewer than 3 workers, then fails with
  ``WorkerCrashedError``. A lost probe that had not started (it was queued on
  the dying worker, or it finished and its result was lost) is sent again for
  free. On a worker with several threads an
  item running beside the culprit dies with it and is charged as well.
- A closed client fails each item with ``ClusterError`` naming the stage and
  the client (so ``on_error="skip"``/``"return"`` apply per item).
- The stage's timing and stats in the parent add up the items' runs, each with its own duration
  (p50/p95), wherever and in whatever order the tasks end.

See docs/dask.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any, Protocol

from dynapipeline._engine import run_tasks
from dynapipeline._model.component import runner_of
from dynapipeline._model.strategy import ItemRunner
from dynapipeline._transports._remote.messages import RunStats
from dynapipeline._transports._remote.pickling import dumps_batch
from dynapipeline._transports._remote.planning import deadline
from dynapipeline._transports._remote.replies import tag, take_values
from dynapipeline._transports.calling import add_runs
from dynapipeline._transports.dask.futures import Probe, deaths
from dynapipeline._transports.dask.observe import report_items
from dynapipeline._transports.dask.tasks import STARTED, run_items_task
from dynapipeline._transports.offloop import crash_retry, note_crashes
from dynapipeline.errors import ClusterError, PicklingError, StageTimeoutError, WorkerCrashedError

__all__ = ["CHUNK_SECONDS", "ClientOwner", "DaskItems"]

logger = logging.getLogger("dynapipeline")

CHUNK_SECONDS = 0.05  # the work one task aims at: Dask's per-task cost (~1-3 ms) stays a few percent of it
_FREE_RESENDS = 5  # times a probe lost before it started is sent again without charging its item
_Result = tuple[bool, Any]


class ClientOwner(Protocol):
    """What ``DaskItems`` needs of its strategy (``DaskExecutionStrategy``): the client, held while in use."""

    def hold(self) -> None:
        """The step uses the client: the end of a run must not close it meanwhile."""

    async def release(self) -> None:
        """The step is over with the client."""

    async def client_for_run(self) -> Any:
        """The client to submit to from the running loop."""

    async def nthreads(self, client: Any) -> int:
        """Worker threads in the cluster."""

    async def run_task(self, client: Any, function: Any, cids: set[int], args: tuple[Any, ...],
                       limit: float | None, runner: Any, probe: Probe | None = None,
                       resubmit: bool = True) -> tuple[int, list[Any]]:
        """Submit one task and wait for its (pid, replies)."""


class DaskItems(ItemRunner):
    """Runs a stream step's stage on Dask, ``chunk`` items per task."""

    def __init__(self, strategy: ClientOwner, stage: Any, maxsize: int) -> None:
        self.strategy = strategy
        self.stage = stage
        self.name: str = stage.name
        self.runner = runner_of(stage)
        self.limit = deadline(stage)
        self.maxsize = maxsize
        self.cap = 1  # the most items per task, set by open() from the calls at once
        self.chunk = 1
        self.probed = False
        self.client: Any = None
        self.held = False
        self.broken: ClusterError | None = None  # the cluster cannot be used: every item fails with this
        self.token = f"{stage.name}-{uuid.uuid4().hex}"  # the probes' marks live under it on the scheduler

    async def open(self) -> None:
        self.strategy.hold()
        self.held = True
        try:
            self.client = await self.strategy.client_for_run()
            threads = await self.strategy.nthreads(self.client)
        except ClusterError as error:
            tag(error, self.name, None, "a Dask task")
            self.broken = error
            self.width = 1
            return
        except BaseException:
            await self.aclose()  # the step calls aclose() only once open() returned
            raise
        self.width = max(1, min(self.maxsize, 2 * threads))  # one task running and one queued per thread
        self.cap = 1 if self.limit is not None else max(1, self.maxsize // self.width)

    async def aclose(self) -> None:
        if self.held:
            self.held = False
            if self.probed and self.client is not None and self.client.status == "running":
                try:
                    await self.client.set_metadata([STARTED, self.token], None)  # the scheduler drops the marks
                except Exception as error:  # noqa: BLE001 - the client closed meanwhile: its marks are small
                    logger.debug("dropping the probe marks of stream step %r: %r", self.name, error)
            await self.strategy.release()

    async def call(self, values: list[Any]) -> list[tuple[bool, Any]]:
        if self.broken is not None:
            return [(False, _copy(self.broken)) for _ in values]
        results: list[_Result | None] = [None] * len(values)
        crashes = [0] * len(values)
        resends = [0] * len(values)
        pending = list(range(len(values)))
        alone = False  # after a lost task: one item per task, each a probe
        while pending:
            groups = [[i] for i in pending] if alone else [pending]
            lost: list[tuple[int, WorkerCrashedError, bool]] = []
            await run_tasks([asyncio.ensure_future(self._attempt(values, group, results, lost)) for group in groups])
            delay = 0.0
            for i, crashed, started in lost:
                logger.debug("stream step %r: a task of item %d was lost (%r); it killed its worker: %s", self.name,
                             i, crashed.__cause__, started)
                if not started:
                    resends[i] += 1  # sent again without charging the item (it may only have been queued)
                    if resends[i] <= _FREE_RESENDS:
                        continue
                crashes[i] += deaths(crashed)
                retry = crash_retry(self.stage, crashes[i])
                if retry is None:
                    note_crashes(crashed, crashes[i])
                    results[i] = (False, crashed)
                else:
                    delay = max(delay, retry)
            if lost:
                alone = True
            if delay:
                await asyncio.sleep(delay)
            pending = [i for i in pending if results[i] is None]
        return results  # type: ignore[return-value]  # every slot is filled when nothing is pending

    async def _attempt(self, values: list[Any], group: list[int], results: list[_Result | None],
                       lost: list[tuple[int, WorkerCrashedError, bool]]) -> None:
        """Run ``group``'s items in one task: fill their results, or report the task lost.

        A one-item task is a probe: lost, it says whether its item had started
        (and so killed its worker). A lost task of several items reports each
        item as not started: which one killed the worker is not known.
        """
        try:
            payload, cids = dumps_batch([self.stage], tuple(values[i] for i in group), {})
        except PicklingError as error:
            if len(group) == 1:
                results[group[0]] = (False, error)
                return
            for i in group:  # find the item at fault
                await self._attempt(values, [i], results, lost)
            return
        seen = None
        if len(group) == 1:
            seen = Probe(self.token)
            self.probed = True
        try:
            pid, replies = await self.strategy.run_task(self.client, run_items_task, cids,
                                                        (payload, self.token if seen else None), self.limit,
                                                        self.runner, seen, resubmit=False)
        except (StageTimeoutError, ClusterError) as error:
            for i in group:
                results[i] = (False, error if len(group) == 1 else _copy(error))
            return
        except WorkerCrashedError as crashed:
            # The probe was running its item when its worker died (KilledWorker, or cancelled as the class pickle
            # it needed was lost with that worker): not queued behind the culprit, nor finished with its result
            # lost (its mark is cleared before the task returns).
            killed = seen is not None and seen.started
            for i in group:
                lost.append((i, crashed, killed))
            return
        out = self._decode(replies, pid, len(group))
        await report_items(self.client, self.stage, replies, out, pid, self.runner.count - len(out) + 1)
        for i, result in zip(group, out, strict=True):
            results[i] = result

    def _decode(self, replies: list[Any], pid: int, n: int) -> list[_Result]:
        runner = self.runner
        out: list[tuple[bool, Any]] = []
        for position in range(n):
            reply = replies[0] if len(replies) == 1 and replies[0].unloadable else replies[position]
            slot: list[Any] = [None]
            try:
                take_values([runner], [0], reply, pid, slot)
            except Exception as error:
                out.append((False, error))
            else:
                out.append((True, slot[0]))
        runs, seconds = _add_item_runs(runner, replies, pid)
        if runs and self.limit is None:
            per_item = seconds / runs
            self.chunk = max(1, min(self.cap, math.ceil(CHUNK_SECONDS / max(per_item, 1e-7))))
        return out


def _copy(error: BaseException) -> BaseException:
    """A fresh exception like ``error`` for another item (notes and cause kept), so items never share one."""
    try:
        twin = type(error)(*error.args)
    except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt from its args is shared
        return error
    twin.__cause__ = error.__cause__
    for note in getattr(error, "__notes__", ()):
        twin.add_note(note)
    for name in ("stage_name", "worker_pid"):
        if hasattr(error, name):
            setattr(twin, name, getattr(error, name))
    return twin


def _add_item_runs(runner: Any, replies: list[Any], pid: int) -> tuple[int, float]:
    """Add each item's run on the worker to the parent's stats: its own duration (p50/p95), its errors.

    Each reply carries the worker's timing after its item (``timings_of``): its start and
    end, epoch seconds, are that item's run. Tasks of the step end in any order; each
    adds only its own runs. Returns the task's (runs, seconds), which size the next chunks.
    """
    durations: list[float] = []
    errors = 0
    start = end = 0.0
    for reply in replies:
        if reply.unloadable or not reply.timings:
            continue  # nothing ran
        stats, _durations, _slowest = reply.timings[0][0]  # the stage's (the task's only component's) own timing
        own = RunStats._make(stats)
        if not durations:
            start = own.start_time
        end = own.end_time
        durations.append(own.end_time - own.start_time)
        errors += reply.failed_at >= 0
    add_runs(runner, durations, start, end, errors, f"process {pid}")
    return len(durations), sum(durations)
