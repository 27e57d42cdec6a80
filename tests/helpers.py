"""Stage and handler classes shared by the tests."""

from __future__ import annotations

import asyncio
from typing import Any

from dynapipeline import Handler, Stage


class Echo(Stage):
    """Returns its name (after an optional sleep), recording how many run at once."""

    delay: float = 0.0
    log: Any = None  # Any: pydantic would copy a list field

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.log is not None:
            self.log.append(("start", self.name))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.log is not None:
            self.log.append(("end", self.name))
        return self.name


class Fail(Stage):
    """Raises ValueError(name) after ``delay`` seconds."""

    delay: float = 0.0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        raise ValueError(self.name)


class Tracker:
    """Counts stages in flight and the highest count seen."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.cancelled: list[str] = []
        self.finished: list[str] = []


class Tracked(Stage):
    """Sleeps ``delay`` while counted in ``tracker``; notes cancellation and completion."""

    tracker: Any
    delay: float = 0.05

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        t = self.tracker
        t.now += 1
        t.peak = max(t.peak, t.now)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            t.cancelled.append(self.name)
            raise
        finally:
            t.now -= 1
        t.finished.append(self.name)
        return self.name


class Recorder(Handler):
    """Appends every hook call, tagged, to a shared list."""

    tag: str
    calls: Any

    def before(self, component: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("before", self.tag, component.name))

    async def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("around-in", self.tag))
        result = await execute(*args, **kwargs)
        self.calls.append(("around-out", self.tag))
        return result

    async def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("after", self.tag, result))

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("on_error", self.tag, type(error).__name__))


def engine_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the current one that are still pending."""
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


def run_on_test_loop(coro: Any) -> Any:
    """Run a coroutine on a new loop of the kind this leg tests (for hypothesis tests, which are sync)."""
    from dynapipeline import loop_name, run

    return run(coro, loop=loop_name())


def gone(pid: int) -> bool:
    """The process has exited (or is a zombie waiting to be reaped)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def assert_no_workers(pids: list[int]) -> None:
    """No child process of ours is alive and every pid given has exited (within 5 s)."""
    import multiprocessing
    import time

    assert multiprocessing.active_children() == []
    deadline = time.monotonic() + 5
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(gone(p) for p in pids), [p for p in pids if not gone(p)]
