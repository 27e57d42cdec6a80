"""Waiting for one Dask task: its replies, or the error the contract says (a deadline passed, the task was lost)."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

from dynapipeline._transports.process_jobs import tag
from dynapipeline.errors import StageTimeoutError, WorkerCrashedError

__all__ = ["wait_for_task"]


async def wait_for_task(future: Any, limit: float | None, runner: Any) -> tuple[int, list[Any]]:
    """A task's (pid, decoded replies); StageTimeoutError past ``limit``, WorkerCrashedError if Dask lost it."""
    deadline_ = asyncio.timeout(limit)
    try:
        async with deadline_:
            pid, replies = await future
    except asyncio.CancelledError:
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
    return pid, [pickle.loads(reply) for reply in replies]


def _lost(runner: Any, error: BaseException) -> WorkerCrashedError:
    crashed = WorkerCrashedError(runner.name, None, None)
    crashed.add_note(f"Dask lost the task running stage {runner.name!r}: {type(error).__name__}: {error}")
    tag(crashed, runner.name, None, "a Dask task")
    return crashed
