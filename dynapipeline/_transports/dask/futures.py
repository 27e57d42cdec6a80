"""Waiting for one Dask task: its replies, or the error the contract says (a deadline passed, the task was lost)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from dynapipeline._transports._remote.replies import tag
from dynapipeline._transports.dask.tasks import STARTED
from dynapipeline.errors import StageTimeoutError, WorkerCrashedError

__all__ = ["Probe", "deaths", "wait_for_task"]

logger = logging.getLogger("dynapipeline")
_GATHERS = 3  # gathers again after another caller's cancellation (each attempt starts a gather of its own)


class Probe:
    """Whether a lost one-item task was running its item (``run_items_task(..., probe=True)`` says so)."""

    __slots__ = ("started", "token")

    def __init__(self, token: str) -> None:
        self.token = token  # the stream step's: its marks live under it on the scheduler until the step ends
        self.started = False

    async def read(self, client: Any, future: Any) -> None:
        """Read the task's mark from the scheduler."""
        try:
            self.started = bool(await client.get_metadata([STARTED, self.token, future.key], default=False))
        except Exception as error:  # noqa: BLE001 - unknown is taken as started: the item is charged
            logger.debug("reading whether a lost Dask task had started: %r", error)
            self.started = True


def deaths(crashed: WorkerCrashedError) -> int:
    """How many workers died running a lost task: Dask ran it ``allowed_failures`` + 1 times (KilledWorker)."""
    cause = crashed.__cause__
    allowed = getattr(cause, "allowed_failures", None) if type(cause).__name__ == "KilledWorker" else None
    return allowed + 1 if isinstance(allowed, int) and allowed >= 0 else 1


async def wait_for_task(future: Any, limit: float | None, runner: Any) -> tuple[int, list[Any]]:
    """A task's (pid, replies); StageTimeoutError past ``limit``, WorkerCrashedError if Dask lost it.

    A ``CancelledError`` that is not this task's own, while the Dask future has finished, comes from
    ``distributed``'s client: a gather joins the one already in progress (``Client._gather``), and that
    one is cancelled with the caller that started it (another item or stage, cancelled after a failure).
    The result is there: it is gathered again.
    """
    when = None if limit is None else asyncio.get_running_loop().time() + limit
    for attempt in itertools.count():
        deadline_ = asyncio.timeout_at(when)
        try:
            async with deadline_:
                pid, replies = await future
        except asyncio.CancelledError:
            if attempt < _GATHERS and _cancelled_elsewhere(future):
                logger.debug("stage %r: a Dask gather was cancelled by another caller; gathering again", runner.name)
                continue
            raise
        except TimeoutError as error:
            if not deadline_.expired():
                raise _lost(runner, error) from error
            timed_out = StageTimeoutError(runner.name, runner.owner.timeout)
            tag(timed_out, runner.name, None, "a Dask task")
            raise timed_out from None
        except Exception as error:
            # The task function returns every stage error as data: an exception here is Dask's own.
            raise _lost(runner, error) from error
        return pid, replies
    raise AssertionError("unreachable")  # the loop returns or raises


def _cancelled_elsewhere(future: Any) -> bool:
    """Whether a ``CancelledError`` awaiting ``future`` is not the current task's own cancellation."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling() and getattr(future, "status", None) == "finished"


def _lost(runner: Any, error: BaseException) -> WorkerCrashedError:
    crashed = WorkerCrashedError(runner.name, None, None)
    crashed.add_note(f"Dask lost the task running stage {runner.name!r}: {type(error).__name__}: {error}")
    tag(crashed, runner.name, None, "a Dask task")
    return crashed
