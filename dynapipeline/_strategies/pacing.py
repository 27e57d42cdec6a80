"""The dispatcher of a ``SemaphoreExecutionStrategy`` with a rate: a slot, then a token, then the member.

The engine's ``Bounded`` workers keep their slot from one member to the next,
so pacing cannot hook its slots: a rated strategy picks this dispatcher instead
when it is built (the default path keeps the engine's, untouched). It keeps the
strategy's contract: results in member order; at most ``slots.limit`` members
in flight across every group sharing the slots; the first error cancels and
awaits the other workers, then propagates (``return_exceptions``: an
``Exception`` is kept in its member's place and the others run on). A worker
takes a slot first and then a token, so that every start is paced: a token
taken while waiting for a slot would let starts bunch up once slots free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynapipeline._engine import Slots, run_tasks
from dynapipeline._model.pacing import TokenBucket

__all__ = ["Paced"]


class Paced:
    """Members run by min(n, limit) workers, each start holding one of ``slots`` and a token of ``bucket``."""

    __slots__ = ("bucket", "gather", "slots")

    def __init__(self, slots: Slots, bucket: TokenBucket, gather: bool) -> None:
        self.slots = slots
        self.bucket = bucket
        self.gather = gather  # return_exceptions

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        results: list[Any] = [None] * n
        workers = min(n, self.slots.limit)
        if workers == 0:
            return results
        cursor = _Cursor(self, runners, results, args, kwargs)
        if workers == 1:
            await cursor.work()
        else:
            create_task = asyncio.get_running_loop().create_task
            await run_tasks([create_task(cursor.work()) for _ in range(workers)])
        return results


class _Cursor:
    """One dispatch's shared work queue: the next member to start."""

    __slots__ = ("args", "kwargs", "next", "paced", "results", "runners")

    def __init__(self, paced: Paced, runners: tuple[Any, ...], results: list[Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.paced = paced
        self.runners = runners
        self.results = results
        self.args = args
        self.kwargs = kwargs
        self.next = 0

    async def work(self) -> None:
        slots = self.paced.slots
        take = self.paced.bucket.take
        gather = self.paced.gather
        n = len(self.runners)
        while self.next < n:
            index = self.next
            self.next = index + 1
            if not slots.try_acquire():
                await slots.acquire()
            try:
                await take()
                if gather:
                    try:
                        self.results[index] = await self.runners[index].run(self.args, self.kwargs)
                    except Exception as error:
                        self.results[index] = error
                else:
                    self.results[index] = await self.runners[index].run(self.args, self.kwargs)
            finally:
                slots.release()
