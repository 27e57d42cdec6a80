"""Stage and handler classes shared by the tests, and the trace-file check."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
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


class Nap(Stage):
    """Blocks its thread or worker for ``seconds`` (a plain ``def``: runs off the loop as it is); returns its pid."""

    seconds: float = 0.0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        import os
        import time

        time.sleep(self.seconds)
        return os.getpid()


class Fail(Stage):
    """Raises ValueError(name) after ``delay`` seconds."""

    delay: float = 0.0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        raise ValueError(self.name)


class RefusesWorkers(Stage):
    """Builds in the parent; its model_post_init raises when rebuilt in a child process (a worker)."""

    def model_post_init(self, __context: Any) -> None:
        if multiprocessing.parent_process() is not None:
            raise LookupError(f"{self.name} cannot live in a worker")
        super().model_post_init(__context)

    def execute(self) -> str:
        return self.name


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


GRACE = 30.0
"""Seconds a "nothing left running" check waits: on a busy machine an exiting process or thread may take a while."""


def eventually(check: Callable[[], Any], timeout: float | None = None) -> Any:
    """``check()`` once truthy, polling until ``timeout`` (default ``GRACE``) seconds passed; else its last value."""
    import time

    deadline = time.monotonic() + (GRACE if timeout is None else timeout)
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


async def eventually_async(check: Callable[[], Any], timeout: float | None = None) -> Any:
    """``eventually`` for async tests: polls with ``asyncio.sleep``, so the loop under test keeps running."""
    import time

    deadline = time.monotonic() + (GRACE if timeout is None else timeout)
    while not (value := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return value


def gone(pid: int) -> bool:
    """The process has exited (or is a zombie waiting to be reaped), now."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def assert_gone(*pids: int) -> None:
    """Every pid given has exited, within ``GRACE`` seconds."""
    assert eventually(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]


def assert_no_workers(pids: list[int]) -> None:
    """No child process of ours is alive and every pid given has exited (within ``GRACE`` seconds)."""
    import multiprocessing

    # active_children() also reaps the children that have exited.
    assert eventually(lambda: not multiprocessing.active_children()), multiprocessing.active_children()
    assert_gone(*pids)


async def assert_no_workers_async(pids: list[int]) -> None:
    """``assert_no_workers`` for async tests: the loop keeps running while it waits."""
    import multiprocessing

    assert await eventually_async(lambda: not multiprocessing.active_children()), multiprocessing.active_children()
    assert await eventually_async(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]


def check_trace_format(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Assert the trace-event format's required fields per phase, and X slices nesting per track."""
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    flows: dict[Any, list[str]] = defaultdict(list)
    for event in events:
        ph = event["ph"]
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        assert isinstance(event["name"], str) and event["name"], event
        if ph == "X":
            assert isinstance(event["ts"], (int, float)) and isinstance(event["dur"], (int, float)), event
            assert event["dur"] >= 0 and isinstance(event["cat"], str), event
            assert isinstance(event.get("args", {}), dict), event
        elif ph == "M":
            assert event["name"] in ("process_name", "thread_name", "process_sort_index"), event
            assert isinstance(event["args"], dict) and event["args"], event
        elif ph in ("s", "f"):
            assert isinstance(event["ts"], (int, float)) and "id" in event and event["cat"], event
            if ph == "f":
                assert event["bp"] == "e", event
            flows[event["id"]].append(ph)
        else:
            raise AssertionError(f"unexpected phase {ph!r}")
    assert all(sorted(phases) == ["f", "s"] for phases in flows.values()), flows
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            tracks[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    for track, spans in tracks.items():
        spans.sort(key=lambda span: (span[0], -span[1]))
        open_ends: list[float] = []
        for start, end in spans:
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], f"slices overlap without nesting on {track}"
            open_ends.append(end)
    return list(events)


@contextlib.asynccontextmanager
async def closing_pool(strategy: Any) -> AsyncIterator[Any]:
    """Yield a process strategy; close it afterwards and check that none of its workers is left."""
    try:
        yield strategy
    finally:
        pids = strategy.worker_pids()
        await strategy.aclose()
    await assert_no_workers_async(pids)


def stream_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of a stream still alive (its feeder, step workers and supervisor run the run modules' coroutines)."""
    from dynapipeline._model import stream_run, stream_step

    me = asyncio.current_task()
    here = {stream_run.__file__, stream_step.__file__}
    return [t for t in asyncio.all_tasks()
            if t is not me and getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "") in here]


def _refuse_to_rebuild() -> None:
    raise LookupError("this result cannot be rebuilt in the parent")


class Unloadable:
    """Pickles fine in a worker; rebuilding it in the parent raises."""

    def __reduce__(self) -> Any:
        return (_refuse_to_rebuild, ())
