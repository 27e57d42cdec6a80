"""The parent's bookkeeping for work sent to processes: jobs, the dispatch they belong to, their outcomes.

A dispatch (one ``execute``/``dispatch`` call) becomes a ``Dispatch`` of one or
more ``Job``s, each a contiguous batch of components for one worker
(``plan_batches``). The pool ends each job with one ``Outcome``; ``collect``
turns it into results and timing on the parent's objects, or into the error the
contract says.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynapipeline._engine import EPOCH_OFFSET
from dynapipeline._model.component import Stage
from dynapipeline._model.handlers import report_elsewhere, reports_elsewhere
from dynapipeline._transports._remote.messages import Call, MapReply, Reply
from dynapipeline._transports._remote.pickling import REGISTRY
from dynapipeline._transports.calling import note_place, time_limit
from dynapipeline._transports.offloop import Results, merge_wait_ship
from dynapipeline.errors import PicklingError, RemoteError, StageTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from dynapipeline._transports.process.pool import Worker

__all__ = [
    "Closed",
    "Crashed",
    "Dispatch",
    "Job",
    "Outcome",
    "Replied",
    "Split",
    "TimedOut",
    "collect_reply",
    "collect_values",
    "deadline",
    "plan_batches",
    "plan_singles",
    "remote_error",
    "report_jobs",
    "report_reply",
    "tag",
]

logger = logging.getLogger("dynapipeline")

_GRACE = 0.1              # seconds added to a timed stage's deadline in the parent
_PER_STAGE_COST = 20e-6   # estimated IPC + rebuild cost of one component (seconds)
_SMALL_BATCH = 1e-3       # estimated work below this goes to one worker in one message
_CHUNKS_PER_WORKER = 4


@dataclass(frozen=True, slots=True)
class Replied:
    """The worker answered (a ``Reply`` to a ``Job``, a ``MapReply`` to a stream's ``MapJob``).

    ``received`` and ``loaded``: perf_counter when its reply was read and unpickled.
    """

    reply: Reply | MapReply
    pid: int
    received: float = 0.0
    loaded: float = 0.0


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The parent's deadline for a timed stage passed; its worker was killed."""


@dataclass(frozen=True, slots=True)
class Crashed:
    """The worker died holding the job; ``position`` is the component it was running (or a state < 0).

    ``at_start``: no worker got as far as taking a job (workers die on start-up, e.g. a script
    without the ``__main__`` guard): retrying cannot help.
    """

    position: int
    pid: int | None
    exitcode: int | None
    at_start: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """The pool was closed while the job was queued or running."""

    pid: int | None


Outcome = Replied | TimedOut | Crashed | Closed


class Job:
    """One batch of components for one worker, and where its outcome goes."""

    __slots__ = ("dispatch", "indices", "runners", "payload", "cids", "deadline", "worker", "done", "control",
                 "packed", "sent_at", "sink", "replied", "lost")

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
        self.sink: Any = None  # the TraceSink of the dispatching context, when it traces
        self.replied: tuple[Reply, int] | None = None  # the worker's reply and pid, once in
        self.lost: tuple[Any, float, float] | None = None  # (runner, start, end): a run killed or crashed

    def message(self, w: Worker) -> bytes:
        """The ``Call`` for worker ``w``, with the classes it has not received yet."""
        blobs = REGISTRY.blobs_for(self.cids, w.known) if self.cids else []
        w.known.update(cid for cid, _ in blobs)
        return pickle.dumps(Call(blobs, self.payload, self.sink is not None), protocol=pickle.HIGHEST_PROTOCOL)

    def finish(self, outcome: Outcome) -> None:
        if not self.done:
            self.done = True
            self.dispatch.on_job(self, outcome)


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


def collect_reply(runners: list[Any], indices: list[int], reply: Reply, pid: int | None, results: list[Any],
                  place: str = "") -> None:
    """Store a worker's reply for ``runners`` (at ``indices`` of ``results``) and its timing; raise its error.

    For transports without the pool's clock readings or trace (Dask): no wait/ship split.
    """
    for position, timings in enumerate(reply.timings):
        _apply_timings(runners[position], timings, place or f"process {pid}")
    _take_values(runners, indices, reply, pid, results)


def collect_values(runners: list[Any], indices: list[int], reply: Reply, pid: int | None,
                   results: list[Any]) -> None:
    """``collect_reply`` without the timing: for runs whose timing the caller adds itself (``add_runs``)."""
    _take_values(runners, indices, reply, pid, results)


def _collect_reply(job: Job, replied: Replied, results: list[Any]) -> None:
    reply, pid = replied.reply, replied.pid
    assert type(reply) is Reply
    job.replied = (reply, pid)
    place = f"process {pid}"
    for position, timings in enumerate(reply.timings):
        _apply_timings(job.runners[position], timings, place)
    if reply.clock and job.packed[0] and job.sent_at:
        _split(job, replied)
    if job.sink is not None and reply.trace:
        _keep_trace(job, reply.trace)
    _take_values(job.runners, job.indices, reply, pid, results)


def _take_values(runners: list[Any], indices: list[int], reply: Reply, pid: int | None, results: list[Any]) -> None:
    """Unpickle the results into ``results`` (counted as the stages' shipping time); raise the reply's error."""
    for position, value in enumerate(reply.values):
        unpickling_from = time.perf_counter()
        try:
            results[indices[position]] = pickle.loads(value)
        except Exception as unpickling:
            name = runners[position].name
            failure = PicklingError(f"stage {name!r} returned a result that cannot be rebuilt in the parent "
                                    f"process ({type(unpickling).__name__}: {unpickling})")
            tag(failure, name, pid)
            raise failure from unpickling
        runners[position].ship_total += time.perf_counter() - unpickling_from
    if reply.failed_at < 0:
        return
    name = runners[reply.failed_at].name
    error, cause = remote_error(reply.error, reply.traceback, reply.text, name)
    if reply.unloadable:
        # Raised while the worker rebuilt the component: the innermost stage being rebuilt is named.
        name = getattr(error, "stage_name", None) or name
    tag(error, name, pid)
    raise error from cause


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


def report_reply(runners: list[Any], reply: Reply, attributes: dict[str, Any]) -> None:
    """Hand each run a reply carries (its start and end in the worker, its error) to ``ran_elsewhere``."""
    for position, timings in enumerate(reply.timings):
        runner = runners[position]
        if not timings or not reports_elsewhere(runner.owner):
            continue
        timing = timings[0][0]  # the component's own (timing, durations, slowest), then its members'
        error = None
        if position == reply.failed_at and not reply.unloadable:
            error, cause = remote_error(reply.error, reply.traceback, reply.text, runner.name)
            error.__cause__ = cause
        report_elsewhere(runner.owner, timing[0], timing[1], error, {**attributes, "dynapipeline.run": runner.count})


def _apply_timings(runner: Any, timings: list[tuple[Any, ...]], place: str) -> None:
    if len(timings) == 1:
        runner.adopt(*timings[0])
        note_place(runner, place)
        return
    for component, timing in zip(runner.owner.iter_components(), timings, strict=False):
        member = component.__pydantic_private__["_runner"]
        member.adopt(*timing)
        note_place(member, place)


def _split(job: Job, replied: Replied) -> None:
    """Add each component's waiting and shipping time to its runner (its work is its own timing).

    A batch travels as one message, so each of its components waited for the batch's
    pickling, transfer and rebuilding, and for the reply: those count as its shipping,
    in full. Waiting is the time in the pool's queue, plus the time behind the batch's
    other components in the worker (before its run, and after it until the reply left).
    The clock readings come from both processes (``Reply.clock``).
    """
    assert type(replied.reply) is Reply
    clock = replied.reply.clock
    split = Split(job.packed, job.sent_at, clock[1], clock[2], replied.loaded)
    for position, (started, ended, pickled) in enumerate(clock[3:]):
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

    def add_all(self, runner: Any, starts: list[float], ends: list[float], pickled: list[float]) -> None:
        """Add many runs' waiting and shipping to one runner at once (a stream step's chunk), summed."""
        n = len(starts)
        done = sum(pickled)
        wait = n * (self.queued + self.replying - self.rebuilt) + sum(starts) - done
        ship = n * self.shared_ship + done - sum(ends)
        runner.wait_total += wait if wait > 0.0 else 0.0
        runner.ship_total += ship if ship > 0.0 else 0.0


def _keep_trace(job: Job, trace: tuple[Any, ...]) -> None:
    """Hand the runs a worker traced to the dispatching tracer, naming the parent's runners."""
    pid, threads, runs = trace
    members: dict[int, list[Any]] = {}
    named = []
    for position, index, *rest in runs:
        runner = job.runners[position]
        if index:
            below = members.get(position)
            if below is None:
                below = members[position] = [c.__pydantic_private__["_runner"]
                                             for c in runner.owner.iter_components()]
            runner = below[index]
        named.append((runner, *rest))
    job.sink.remote.append((pid, threads, named))


def remote_error(data: bytes, traceback: str, text: str, stage: str) -> tuple[BaseException, BaseException | None]:
    """The exception a worker sent and the cause to raise it from (its traceback as a ``RemoteError``).

    An exception that cannot be rebuilt here becomes a ``RemoteError`` with its text.
    """
    error: BaseException | None = None
    if data:
        try:
            error = pickle.loads(data)
        except Exception as unloadable:
            logger.debug("the error of stage %r cannot be rebuilt here (%r): raising its text", stage, unloadable)
    if error is None:
        return RemoteError(traceback or text), None
    return error, (RemoteError(traceback) if traceback else None)


def tag(error: BaseException, stage: str, pid: int | None, where: str = "worker process") -> None:
    """Name the stage (and worker pid) on an error raised for it elsewhere: attributes and a note."""
    try:
        error.stage_name = stage  # type: ignore[attr-defined]
        error.worker_pid = pid  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__: the note below still names the stage
        logger.debug("cannot set stage_name on %s", type(error).__name__)
    error.add_note(f"raised in stage {stage!r}, in {where}" + ("" if pid is None else f" pid {pid}"))


def deadline(owner: Any) -> float | None:
    """Seconds the parent allows a timed stage shipped alone (all attempts, plus a grace), or None."""
    if not isinstance(owner, Stage):
        return None
    limit = time_limit(owner)
    return None if limit is None else limit + _GRACE


def _cost(runner: Any) -> float | None:
    count = runner.count
    return runner.total / count if count else None


def plan_singles(runners: tuple[Any, ...], workers: int) -> list[list[int]]:
    """One component per batch: a crash or timeout then costs only that component's result."""
    return [[index] for index in range(len(runners))]


def plan_batches(runners: tuple[Any, ...], workers: int) -> list[list[int]]:
    """Split components into contiguous batches: one per timed stage, the rest by estimated cost."""
    batches: list[list[int]] = []
    rest: list[int] = []
    for index, runner in enumerate(runners):
        if deadline(runner.owner) is not None:
            batches.append([index])
        else:
            rest.append(index)
    if not rest:
        return batches
    costs = [_cost(runners[i]) for i in rest]
    if all(c is not None for c in costs):
        weights = [c + _PER_STAGE_COST for c in costs if c is not None]
        total = sum(weights)
        if total < _SMALL_BATCH:
            return batches + [rest]
        count = min(len(rest), workers * _CHUNKS_PER_WORKER, max(1, math.ceil(total / (_SMALL_BATCH / 2))))
    else:
        weights = [1.0] * len(rest)
        total = float(len(rest))
        count = min(len(rest), workers * _CHUNKS_PER_WORKER)
    target = total / count
    current: list[int] = []
    acc = 0.0
    made = 0
    for index, weight in zip(rest, weights, strict=True):
        # Cut before this component when its midpoint falls past the next boundary.
        if current and made < count - 1 and acc + weight / 2 > target * (made + 1):
            batches.append(current)
            current = []
            made += 1
        current.append(index)
        acc += weight
    if current:
        batches.append(current)
    return batches
