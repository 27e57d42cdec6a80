"""What a process pool sends: a group dispatch's ``Job`` per batch and a stream step's ``MapJob`` per chunk,
and what a dispatch's job outcomes become.

::

    dispatch ─► plan_batches ─► Job per batch ─► ProcessPool ─► Outcome ─► Dispatch.on_job
                                                                   │
                                  collect ◄────────────────────────┘
                                     ├─ Replied: timings, wait/ship split, trace, values (``_remote.replies``)
                                     └─ TimedOut / Crashed / Closed: the error the contract says, the lost run

Invariants:

- A dispatch's future completes once: when all its jobs are in, or at the first
  error (``GatherDispatch``: a component's ``Exception`` is its result instead).
- A run that a crash or a deadline cut short is counted as a failed run.
- A job's shared-memory blocks (``blocks``) are its worker's once sent (it releases
  them); a ``MapJob``'s ``kept`` ones are its caller's to free (it may resend them).

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from dynapipeline._engine import EPOCH_OFFSET
from dynapipeline._model.handlers import report_elsewhere, reports_elsewhere
from dynapipeline._transports._remote.buffers import Block, Packed
from dynapipeline._transports._remote.messages import (
    LOG_DATA,
    LOG_HEAD,
    LOG_TABLE,
    Call,
    Clock,
    MapCall,
    MapReply,
    Reply,
    Trace,
)
from dynapipeline._transports._remote.pickling import pack_batch
from dynapipeline._transports._remote.planning import deadline
from dynapipeline._transports._remote.replies import apply_timings, report_reply, take_values
from dynapipeline._transports.offloop import Results, merge_wait_ship
from dynapipeline._transports.process.handle import Crashed, Outcome, Replied, TimedOut, Worker
from dynapipeline._transports.process.shm import MAPPED
from dynapipeline.errors import StageTimeoutError, WorkerCrashedError

__all__ = ["Dispatch", "Job", "MapJob", "Split", "collect", "report_jobs", "singles_of", "watch_drain"]

_DRAIN_POLL = 0.02  # seconds between checks for a drain while groups run in workers


class Job:
    """One batch of components for one worker, and where its outcome goes."""

    __slots__ = ("dispatch", "indices", "runners", "payload", "cids", "deadline", "worker", "done", "control",
                 "packed", "sent_at", "sink", "replied", "lost", "blocks", "serial", "slot")

    def __init__(self, dispatch: Dispatch, indices: list[int], runners: list[Any], payload: bytes,
                 cids: set[int], deadline: float | None, control: Any = None) -> None:
        self.dispatch = dispatch
        self.indices = indices
        self.runners = runners
        self.payload = payload
        self.cids = cids
        self.deadline = deadline
        self.worker: Worker | None = None
        self.done = False
        self.control = control  # the run's RunControl, when the job ships groups (drain reaches them)
        self.packed = (0.0, 0.0)  # perf_counter before and after its components were pickled
        self.sent_at = 0.0  # perf_counter when it was handed to a worker
        self.serial = 0  # set by the pool when it sends it
        self.slot = 0  # a batch writes no item log
        self.sink: Any = None  # the TraceSink of the dispatching context, when it traces
        self.replied: tuple[Reply, int] | None = None  # the worker's reply and pid, once in
        self.lost: tuple[Any, float, float] | None = None  # (runner, start, end): a run killed or crashed
        self.blocks: list[Block] = []  # the shared-memory blocks its payload's large buffers are in

    stage_id = 0  # a batch keeps nothing on its worker (``PoolJob``)
    kept: tuple[Block, ...] = ()  # the pool frees all its blocks

    @property
    def queued_bytes(self) -> int:
        return len(self.payload)

    def message(self, blobs: list[tuple[int, bytes]], stage: bool) -> Call:
        """The ``Call``, with ``blobs``: the classes its worker has not received yet."""
        return Call(class_blobs=blobs, payload=self.payload, trace=self.sink is not None)

    def finish(self, outcome: Outcome) -> None:
        if not self.done:
            self.done = True
            self.dispatch.on_job(self, outcome)


def singles_of(job: Job, threshold: int | None, arena: Any) -> list[Job]:
    """One job per component of ``job`` (a batch a worker could not rebuild: find which component cannot be)."""
    dispatch = job.dispatch
    singles = []
    for index, runner in zip(job.indices, job.runners, strict=True):
        packed_from = time.perf_counter()
        packed, cids = pack_batch([runner.owner], dispatch.args, dispatch.kwargs, threshold, arena)
        single = Job(dispatch, [index], [runner], packed.data, cids, deadline(runner.owner), job.control)
        single.blocks = list(packed.blocks)
        single.packed = (packed_from, time.perf_counter())
        single.sink = job.sink
        singles.append(single)
    return singles


class MapJob:
    """One chunk of items for one worker; its outcome completes ``future``."""

    __slots__ = ("future", "stage_id", "stage", "cids", "items", "deadline", "worker", "done", "control", "sent_at",
                 "sink", "packed", "logged", "blocks", "kept", "each_run", "serial", "slot")

    def __init__(self, future: asyncio.Future[Outcome], stage_id: int, stage: Callable[[], Packed], cids: set[int],
                 items: Packed, deadline: float | None) -> None:
        self.future = future
        self.stage_id = stage_id
        self.stage = stage  # packs the stage for a worker that lacks it
        self.cids = cids
        self.items = items.data
        self.blocks: list[Block] = list(items.blocks)  # the shared-memory blocks of its items (and of its stage)
        self.kept: tuple[Block, ...] = ()  # those its caller frees, the pool never (``_call_large``)
        self.deadline = deadline
        self.worker: Worker | None = None
        self.done = False
        self.control = None  # a stream's drain is the stream's own: the feeder stops pulling
        self.sent_at = 0.0  # set by the pool when it hands the chunk to a worker
        self.serial = 0  # set by the pool when it sends it
        self.slot = 0  # the worker's item log it writes, set by the pool when it sends it
        self.sink = None  # the worker traces nothing: the parent traces the items from the item log
        self.packed = (0.0, 0.0)  # perf_counter before and after the items were pickled
        # The item log when the chunk ended (read before the pool hands the log to another chunk): its rows
        # (flat), its pickles, and how many of its items failed.
        self.logged: tuple[list[float], bytes, int] = ([], b"", 0)
        self.each_run = False  # its caller needs each item's run (a tracer, OpenTelemetry), not only their sum

    @property
    def queued_bytes(self) -> int:
        return len(self.items)  # the stage and classes are the worker's already (``Worker.may_queue``)

    def message(self, blobs: list[tuple[int, bytes]], stage: bool) -> MapCall:
        """The ``MapCall``, with ``blobs`` (the classes its worker lacks), and the stage if it lacks it too."""
        payload = b""
        if stage:
            packed = self.stage()
            payload = packed.data
            self.blocks += packed.blocks
        return MapCall(class_blobs=blobs, stage_id=self.stage_id, stage=payload, items=self.items, slot=self.slot)

    def finish(self, outcome: Outcome) -> None:
        if not self.done:
            self.done = True
            w = self.worker
            if isinstance(outcome, (Replied, Crashed)) and w is not None and w.log_views:
                # Now: the pool may hand this log to the worker's next chunk as soon as this returns.
                view = w.log_views[self.slot]
                count, failures = LOG_HEAD.unpack_from(view, 0)
                reply = outcome.reply if isinstance(outcome, Replied) else None
                # All went well: the reply's values and summed-up runs serve, unless each run is wanted.
                summed = type(reply) is MapReply and reply.runs is not None and reply.values and not failures
                if count and not (summed and not self.each_run):
                    rows: list[float] = view[LOG_TABLE:LOG_TABLE + 32 * count].cast("d").tolist()  # type: ignore[assignment]
                    data = b""
                    if failures or type(reply) is not MapReply or not reply.values or \
                            (reply.last is not None and reply.last.failed):
                        # The pickles are read only when the reply's values cannot serve (a crash, failed items).
                        data = bytes(view[LOG_DATA:LOG_DATA + int(math.fsum(map(abs, rows[3::4])))])
                    self.logged = (rows, data, failures)
            if not self.future.done():
                self.future.set_result(outcome)


class Dispatch(Results):
    """The jobs of one dispatch: fills the results, completes its future when all jobs are in or one failed.

    ``pending`` counts jobs. With ``keeps_errors`` (``return_exceptions``) each job
    holds one component, so a component's ``Exception`` - its own, its timeout
    (``StageTimeoutError``), its worker's crash (``WorkerCrashedError``), an error
    rebuilding its result (``PicklingError``) - takes only its own place. Any other
    ``BaseException`` fails the dispatch.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, future: asyncio.Future[None], n: int, args: tuple[Any, ...],
                 kwargs: dict[str, Any], keeps_errors: bool = False) -> None:
        super().__init__(future, n, keeps_errors)
        self.pending = 0  # the jobs out, set once they are planned
        self.args = args  # kept to re-send a job's components one by one (ProcessPool.split)
        self.kwargs = kwargs

    def on_job(self, job: Job, outcome: Outcome) -> None:
        if self.future is None or self.future.done():
            self.pending -= 1
            return
        try:
            collect(job, outcome, self.values)
        except BaseException as error:  # noqa: B902 - handed to the waiting dispatch
            if self.fail(job.indices[0], error):
                self.pending -= 1
                return
        self.part_done()


def collect(job: Job, outcome: Outcome, results: list[Any]) -> None:
    """Store a job's results and timing; raise its error, if any, the way the contract says."""
    if isinstance(outcome, Replied):
        _collect_reply(job, outcome, results)
    elif isinstance(outcome, TimedOut):
        runner = job.runners[0]
        _record_lost_run(job, runner)
        raise StageTimeoutError(runner.name, runner.owner.timeout)
    elif isinstance(outcome, Crashed):
        position = outcome.position
        runner = job.runners[position if 0 <= position < len(job.runners) else 0]
        if 0 <= position < len(job.runners):
            _record_lost_run(job, runner)
        raise WorkerCrashedError(runner.name, outcome.pid, outcome.exitcode)
    else:
        raise WorkerCrashedError(job.runners[0].name, outcome.pid, None)


def _collect_reply(job: Job, replied: Replied, results: list[Any]) -> None:
    reply, pid = replied.reply, replied.pid
    assert type(reply) is Reply
    job.replied = (reply, pid)
    place = f"process {pid}"
    for position, timings in enumerate(reply.timings):
        apply_timings(job.runners[position], timings, place)
    if reply.clock is not None and job.packed[0] and job.sent_at:
        _split(job, replied, reply.clock)
    if job.sink is not None and reply.trace is not None:
        _keep_trace(job, reply.trace)
    take_values(job.runners, job.indices, reply, pid, results, MAPPED.attach)


def _record_lost_run(job: Job, runner: Any) -> None:
    """Count a run whose worker was killed (deadline) or died as a failed run, timed as the parent saw it."""
    if job.sent_at:
        now = time.perf_counter()
        runner.record_failed(job.sent_at, now)
        job.lost = (runner, job.sent_at + EPOCH_OFFSET, now + EPOCH_OFFSET)


def report_jobs(jobs: list[Job], raised: BaseException | None) -> None:
    """Hand the runs of a dispatch's jobs to the handlers that record runs made elsewhere (``ran_elsewhere``).

    ``raised``: the dispatch's error, for a run its worker lost (a crash, a deadline).
    """
    for job in jobs:
        if job.replied is not None:
            reply, pid = job.replied
            report_reply(job.runners, reply, {"dynapipeline.worker_pid": pid})
        elif job.lost is not None:
            runner, start, end = job.lost
            if reports_elsewhere(runner.owner):
                where = {"dynapipeline.worker_pid": job.worker.pid} if job.worker is not None else {}
                report_elsewhere(runner.owner, start, end, raised, {**where, "dynapipeline.run": runner.count})


def _split(job: Job, replied: Replied, clock: Clock) -> None:
    """Add each component's waiting and shipping time to its runner (its work is its own timing).

    A batch travels as one message, so each of its components waited for the batch's
    pickling, transfer and rebuilding, and for the reply: those count as its shipping,
    in full. Waiting is the time in the pool's queue, plus the time behind the batch's
    other components in the worker (before its run, and after it until the reply left).
    The clock readings come from both processes (``Reply.clock``).
    """
    split = Split(job.packed, job.sent_at, clock.rebuilt, clock.replying, replied.loaded)
    for position, (started, ended, pickled) in enumerate(clock.runs):
        wait, ship = split.times(started, ended, pickled)
        merge_wait_ship(job.runners[position], wait, ship, job.sink, job.sent_at, replied.pid, started)


class Split:
    """Splits the wall time of the runs of one message to a worker into waiting, shipping and work.

    From perf_counter readings of both processes: ``packed`` (before and after the
    parent pickled the message), ``sent_at`` (handed to the worker), ``rebuilt``
    and ``replying`` (in the worker), ``loaded`` (the reply unpickled here). A run
    waited in the queue and behind the message's other runs; its shipping is the
    message's pickling, transfer and rebuilding and the reply's, plus its result's pickling.
    """

    __slots__ = ("queued", "shared_ship", "rebuilt", "replying")

    def __init__(self, packed: tuple[float, float], sent_at: float, rebuilt: float, replying: float,
                 loaded: float) -> None:
        packed_from, packed_at = packed
        self.shared_ship = (packed_at - packed_from) + (rebuilt - sent_at) + (loaded - replying)
        self.queued = sent_at - packed_at
        self.rebuilt = rebuilt
        self.replying = replying

    def times(self, started: float, ended: float, pickled: float) -> tuple[float, float]:
        """One run's (wait, ship) in seconds, for ``merge_wait_ship``."""
        wait = self.queued + (started - self.rebuilt) + (self.replying - pickled)
        ship = self.shared_ship + (pickled - ended)
        return (wait if wait > 0.0 else 0.0), (ship if ship > 0.0 else 0.0)

    def add_sums(self, runner: Any, n: int, started_to_pickled: float, ended_to_pickled: float) -> None:
        """Add ``n`` runs' waiting and shipping to one runner at once (a stream step's chunk), from ``ItemRuns``."""
        wait = n * (self.queued + self.replying - self.rebuilt) - started_to_pickled
        ship = n * self.shared_ship + ended_to_pickled
        runner.wait_total += wait if wait > 0.0 else 0.0
        runner.ship_total += ship if ship > 0.0 else 0.0


def _keep_trace(job: Job, trace: Trace) -> None:
    """Hand the runs a worker traced to the dispatching tracer, naming the parent's runners."""
    members: dict[int, list[Any]] = {}
    named = []
    for position, index, *rest in trace.runs:
        runner = job.runners[position]
        if index:
            below = members.get(position)
            if below is None:
                below = members[position] = [c.__pydantic_private__["_runner"]
                                             for c in runner.owner.iter_components()]
            runner = below[index]
        named.append((runner, *rest))
    job.sink.remote.append((trace.pid, trace.threads, named))


def watch_drain(loop: asyncio.AbstractEventLoop, control: Any, jobs: list[Job],
                future: asyncio.Future[None]) -> None:
    """While ``future`` is pending, pass a drain of the run on to the workers running its groups."""

    def poll() -> None:
        if future.done():
            return
        if control.draining:
            for job in jobs:
                w = job.worker
                if w is not None and w.job is job:
                    w.drain.value = 1
            return  # jobs sent from now on carry the drain (_send)
        loop.call_later(_DRAIN_POLL, poll)

    loop.call_later(_DRAIN_POLL, poll)
