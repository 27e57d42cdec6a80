"""The workers of a stream step: one to start with, and one more whenever all are busy.

::

    Crew.run() ──add()──► task: work() ──took()──► all busy and fewer than width? ──add()──► task: work() ...
                            └─ ends when its queue is closed and drained; the first to fail cancels the others

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dynapipeline._engine import wait_through_cancel
from dynapipeline._model.strategy import ItemRunner

__all__ = ["Crew"]


class Crew:
    """The workers of a step: one to start with, and one more whenever all are busy, up to ``width``.

    ``busy`` counts the workers holding something to run or emit; one just added
    counts as free, so that workers that never suspend add no more. ``run()`` waits for
    all of them, those added meanwhile included; the first to fail cancels the
    others (and is re-raised once they are gone), as does our own cancellation.
    """

    __slots__ = ("busy", "failed", "finished", "future", "runner", "size", "tasks", "width", "work")

    def __init__(self, work: Callable[[], Awaitable[None]], width: int, runner: ItemRunner | None = None) -> None:
        self.work = work
        self.width = width
        self.runner = runner  # its ``width`` may shrink as it goes (large items): no worker is added beyond it
        self.tasks: list[asyncio.Task[None]] = []
        self.busy = 0
        self.size = 0  # len(tasks)
        self.finished = 0
        self.failed: asyncio.Task[None] | None = None
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def took(self) -> None:
        """A worker took something to run: add one when none is left to take the next."""
        self.busy += 1
        if self.busy == self.size < self.width:
            runner = self.runner
            if runner is None or runner.width is None or self.size < runner.width:
                self.add()

    def add(self) -> None:
        task = asyncio.ensure_future(self.work())
        self.tasks.append(task)
        self.size += 1
        task.add_done_callback(self.on_done)

    def on_done(self, task: asyncio.Task[None]) -> None:
        self.finished += 1
        if self.future.done():
            return
        if task.cancelled() or task.exception() is not None:
            self.failed = task
            self.future.set_result(None)
        elif self.finished == self.size:
            self.future.set_result(None)

    async def run(self) -> None:
        self.add()
        try:
            await self.future
        finally:
            pending = [t for t in self.tasks if not t.done()]
            for task in pending:
                task.cancel()
            await wait_through_cancel(pending)
            for task in self.tasks:
                if not task.cancelled():
                    task.exception()  # only the first error propagates: the others are retrieved here
        if self.failed is not None:
            self.failed.result()
