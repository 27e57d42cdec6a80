"""Decoding a worker's ``Reply`` in the parent: results, timings and the error the contract says.

::

    Reply (from a worker process or a Dask task)
        ├─ timings ─► apply_timings ─► each runner's stats (and its members', for a group), its place
        ├─ values  ─► take_values ─► results[indices] (unpickled one by one: a bad one names its stage)
        └─ error   ─► remote_error ─► the stage's own exception, its traceback as the cause, tagged

Invariants:

- A result that cannot be rebuilt here is a ``PicklingError`` naming its stage.
- An error that cannot be rebuilt here is a ``RemoteError`` with its text.
- Every error raised for a remote run names its stage and worker (``tag``).

See docs/errors.md.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

from dynapipeline._model.handlers import report_elsewhere, reports_elsewhere
from dynapipeline._transports._remote.buffers import Attach, unpack
from dynapipeline._transports._remote.messages import Failure, Reply, RunStats, Timing
from dynapipeline._transports.calling import note_place
from dynapipeline.errors import PicklingError, RemoteError

__all__ = ["apply_timings", "collect_reply", "remote_error", "report_reply", "tag", "take_values"]

logger = logging.getLogger("dynapipeline")


def collect_reply(runners: list[Any], indices: list[int], reply: Reply, pid: int | None, results: list[Any],
                  place: str = "") -> None:
    """Store a worker's reply for ``runners`` (at ``indices`` of ``results``) and its timing; raise its error.

    For transports without the pool's clock readings or trace (Dask): no wait/ship split.
    """
    for position, timings in enumerate(reply.timings):
        apply_timings(runners[position], timings, place or f"process {pid}")
    take_values(runners, indices, reply, pid, results)


def take_values(runners: list[Any], indices: list[int], reply: Reply, pid: int | None, results: list[Any],
                attach: Attach | None = None) -> None:
    """Unpickle the results into ``results`` (counted as the stages' shipping time); raise the reply's error.

    ``attach``: where results whose buffers are in the worker's shared memory are rebuilt (a process pool's).
    """
    for position, value in enumerate(reply.values):
        unpickling_from = time.perf_counter()
        try:
            results[indices[position]] = unpack(value, attach)
        except Exception as unpickling:
            name = runners[position].name
            failure = PicklingError(f"stage {name!r} returned a result that cannot be rebuilt in the parent "
                                    f"process ({type(unpickling).__name__}: {unpickling})")
            tag(failure, name, pid)
            raise failure from unpickling
        runners[position].ship_total += time.perf_counter() - unpickling_from
    if reply.failure is None:
        return
    name = runners[reply.failed_at].name
    error, cause = remote_error(reply.failure, name)
    if reply.unloadable:
        # Raised while the worker rebuilt the component: the innermost stage being rebuilt is named.
        name = getattr(error, "stage_name", None) or name
    tag(error, name, pid)
    raise error from cause


def report_reply(runners: list[Any], reply: Reply, attributes: dict[str, Any]) -> None:
    """Hand each run a reply carries (its start and end in the worker, its error) to ``ran_elsewhere``."""
    for position, timings in enumerate(reply.timings):
        runner = runners[position]
        if not timings or not reports_elsewhere(runner.owner):
            continue
        stats, _durations, _slowest = timings[0]  # the component's own Timing comes first, then its members'
        own = RunStats._make(stats)
        error = None
        if position == reply.failed_at and reply.failure is not None and not reply.unloadable:
            error, cause = remote_error(reply.failure, runner.name)
            error.__cause__ = cause
        report_elsewhere(runner.owner, own.start_time, own.end_time, error,
                         {**attributes, "dynapipeline.run": runner.count})


def apply_timings(runner: Any, timings: list[Timing], place: str) -> None:
    """Fold a worker's timings of one component (and of its members, for a group) into the parent's runners."""
    if len(timings) == 1:
        stats, durations, slowest = timings[0]
        runner.adopt(stats, durations, slowest)
        note_place(runner, place)
        return
    for component, timing in zip(runner.owner.iter_components(), timings, strict=False):
        member = component.__pydantic_private__["_runner"]
        stats, durations, slowest = timing
        member.adopt(stats, durations, slowest)
        note_place(member, place)


def remote_error(failure: Failure, stage: str) -> tuple[BaseException, BaseException | None]:
    """The exception a worker sent and the cause to raise it from (its traceback as a ``RemoteError``).

    An exception that cannot be rebuilt here becomes a ``RemoteError`` with its text.
    """
    error: BaseException | None = None
    if failure.error:
        try:
            error = pickle.loads(failure.error)
        except Exception as unloadable:
            logger.debug("the error of stage %r cannot be rebuilt here (%r): raising its text", stage, unloadable)
    if error is None:
        return RemoteError(failure.traceback or failure.text), None
    return error, (RemoteError(failure.traceback) if failure.traceback else None)


def tag(error: BaseException, stage: str, pid: int | None, where: str = "worker process") -> None:
    """Name the stage (and worker pid) on an error raised for it elsewhere: attributes and a note."""
    try:
        error.stage_name = stage  # type: ignore[attr-defined]
        error.worker_pid = pid  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__: the note below still names the stage
        logger.debug("cannot set stage_name on %s", type(error).__name__)
    error.add_note(f"raised in stage {stage!r}, in {where}" + ("" if pid is None else f" pid {pid}"))
