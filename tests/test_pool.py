"""``ProcessPool``: a stream step's next chunk waits in the pipe of a busy worker, and is never lost or run twice."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
from helpers import Nap, eventually_async, gone, leaves_nothing

from dynapipeline import Stage, Step, Stream
from dynapipeline._transports.process import pool as process_pool
from dynapipeline._transports.process.handle import QUEUED_BYTES, PoolJob, Worker
from dynapipeline.errors import WorkerCrashedError
from dynapipeline.execution import MultiprocessExecutionStrategy


class Sends:
    """Spies on ``ProcessPool._send``: how many jobs went to a worker that was running another one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.behind = self.alone = 0
        self.sizes_behind: list[int] = []  # their messages' sizes but the classes and the stage
        real = process_pool.ProcessPool._send

        def send(pool: process_pool.ProcessPool, w: Worker, job: PoolJob) -> None:
            if w.job is not None:
                self.behind += 1
                self.sizes_behind.append(job.queued_bytes)
            else:
                self.alone += 1
            real(pool, w, job)

        monkeypatch.setattr(process_pool.ProcessPool, "_send", send)


def stream(step: Step, **fields: Any) -> Stream:
    return Stream(name="s", steps=[step], **fields)


class Square(Stage):
    def execute(self, item: int) -> int:
        return item * item


class LogThenExitOn(Stage):
    """Sleeps ``seconds``, appends the item to ``path``; on item ``bad`` it waits longer, then kills its worker."""

    bad: int = -1
    path: str = ""
    seconds: float = 0.002

    def execute(self, item: int) -> int:
        time.sleep(self.seconds)
        with open(self.path, "a") as file:
            file.write(f"{item}\n")
        if item == self.bad:
            time.sleep(0.3)  # the parent has queued this worker's next chunk by now
            os._exit(3)
        return item


async def test_a_busy_workers_next_chunk_waits_in_its_pipe(procs: MultiprocessExecutionStrategy,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sends = Sends(monkeypatch)
    out = await asyncio.wait_for(stream(Step(Square(name="square"), procs)).run(range(20_000)), 60)
    assert out == [i * i for i in range(20_000)]
    assert sends.behind > 0 and sends.alone > 0


async def test_a_timed_stages_chunks_never_wait_behind_another(procs: MultiprocessExecutionStrategy,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline runs from the send: a chunk waiting in a pipe would spend its time there."""
    sends = Sends(monkeypatch)
    out = await asyncio.wait_for(stream(Step(Square(name="square", timeout=5.0), procs)).run(range(200)), 60)
    assert out == [i * i for i in range(200)]
    assert sends.behind == 0 and sends.alone == 200


async def test_recycled_workers_get_one_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's budget is counted as its replies come: a chunk behind a retiring worker's last would be lost."""
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=300)
    sends = Sends(monkeypatch)
    async with leaves_nothing(strategy):
        out = await asyncio.wait_for(stream(Step(Square(name="square"), strategy)).run(range(3000)), 60)
        assert out == [i * i for i in range(3000)]
    assert sends.behind == 0


async def test_a_chunk_queued_behind_a_crash_runs_on_another_worker_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    strategy = MultiprocessExecutionStrategy(2)
    resent: list[int] = []
    real = process_pool.ProcessPool._send_again

    def send_again(pool: process_pool.ProcessPool, jobs: list[PoolJob]) -> None:
        resent.extend(job.serial for job in jobs)
        real(pool, jobs)

    monkeypatch.setattr(process_pool.ProcessPool, "_send_again", send_again)
    log = tmp_path / "runs.txt"
    async with leaves_nothing(strategy):
        s = stream(Step(LogThenExitOn(name="crash", bad=60, path=str(log)), strategy), on_error="skip")
        out = await asyncio.wait_for(s.run(range(120)), 60)
    assert out == [i for i in range(120) if i != 60]
    [failed] = s.errors
    assert failed.index == 60 and type(failed.error) is WorkerCrashedError
    assert resent  # the chunk behind item 60's was never read: it went to the new worker
    runs = [int(line) for line in log.read_text().split()]
    assert sorted(runs) == list(range(120))  # none ran twice, none was lost


async def test_cancelling_a_run_with_chunks_queued_kills_the_workers_and_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    strategy = MultiprocessExecutionStrategy(2)
    sends = Sends(monkeypatch)
    async with leaves_nothing(strategy) as pids:
        s = stream(Step(LogThenExitOn(name="slow", seconds=0.05, path=str(tmp_path / "runs.txt")), strategy))
        task = asyncio.ensure_future(s.run(range(1000)))
        while sends.behind < 2:
            await asyncio.sleep(0.01)
        pids += strategy.worker_pids()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        # Killed by the cancellation, each with its running chunk (a 50 ms item), not by the close below.
        assert await eventually_async(lambda: all(gone(pid) for pid in pids), 5.0)


class EchoBytes(Stage):
    def execute(self, item: bytes) -> bytes:
        return item


async def test_a_chunk_too_large_for_the_pipes_buffer_waits_in_the_parent(
        procs: MultiprocessExecutionStrategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 500 items of 1 KB (under the shared-memory threshold): written behind a busy worker, the
    parent's write would block on a full pipe while the worker blocks writing its reply of as much."""
    sends = Sends(monkeypatch)
    items = [bytes([i % 256]) * 1000 for i in range(20_000)]
    out = await asyncio.wait_for(stream(Step(EchoBytes(name="echo"), procs)).run(items), 60)
    assert out == items
    assert max(sends.sizes_behind, default=0) <= QUEUED_BYTES  # 500 items make ~500 KB: those wait


async def test_a_chunk_waiting_in_the_pipe_counts_that_time_as_waiting_not_shipping(
        procs: MultiprocessExecutionStrategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Items of 10 ms, one per chunk: each chunk sent behind another waits ~10 ms in the pipe."""
    await stream(Step(Nap(name="warm"), procs)).run(range(40))  # both workers have the class: no cold start below
    sends = Sends(monkeypatch)
    s = stream(Step(Nap(name="nap", seconds=0.01), procs))
    await asyncio.wait_for(s.run(range(80)), 60)
    assert sends.behind > 20
    line = s.report()["nap"]
    assert line.ship / line.runs < 0.003  # ~5 ms an item when the pipe's wait counted as shipping
    assert line.wait > 0


class FakeProcess:
    """A worker process that is already gone (``stop_process`` reaps it at once)."""

    pid = 999_999_999
    exitcode = -9

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


class FakeJob:
    """What ``withdraw`` and ``Worker.take_back`` read of a job."""

    def __init__(self, serial: int, kept: tuple[Any, ...] = ()) -> None:
        self.serial = serial
        self.done = False
        self.blocks = list(kept)
        self.kept = kept
        self.worker: Worker | None = None


class Shared:
    def __init__(self, value: int) -> None:
        self.value = value


def worker_holding(pool: process_pool.ProcessPool, running: FakeJob, queued: FakeJob, taken: int) -> Worker:
    left, right = socket.socketpair()
    pool.arena.free = lambda blocks: freed.extend(blocks)  # type: ignore[method-assign]
    w = Worker(FakeProcess(), left, Shared(0), Shared(0), (), Shared(taken))
    w.ready = True
    w.job, w.queued = running, queued  # type: ignore[assignment]
    running.worker = queued.worker = w
    w.holding.update(running.blocks + queued.blocks)
    pool.workers.append(w)
    right.close()
    return w


freed: list[Any] = []


@pytest.mark.parametrize("taken", [1, 2], ids=["queued-unread", "running-replied-queued-read"])
def test_a_withdrawn_chunk_queued_behind_a_live_one_leaves_the_worker_running(taken: int) -> None:
    """Killing the worker would end the live chunk too: with its reply still unread (``taken`` 2), it was lost."""
    pool = process_pool.ProcessPool(2, "forkserver")
    try:
        running, queued = FakeJob(1), FakeJob(2)
        w = worker_holding(pool, running, queued, taken=taken)
        pool.withdraw([queued], kill_running=True)  # type: ignore[list-item]
        # It runs on; its reply is dropped.
        assert w in pool.workers and w.job is running and not running.done  # type: ignore[comparison-overlap]
        pool.withdraw([running], kill_running=True)  # type: ignore[list-item]
        assert w not in pool.workers  # the last withdrawal kills it
    finally:
        pool.close()


def test_a_worker_killed_after_reading_both_its_jobs_frees_neither_callers_blocks() -> None:
    """It finished the first (its reply unread) and read the second: both count as read."""
    freed.clear()
    pool = process_pool.ProcessPool(2, "forkserver")
    try:
        running, queued = FakeJob(1, kept=("first's",)), FakeJob(2, kept=("second's",))
        w = worker_holding(pool, running, queued, taken=2)
        w.holding.add("shared")  # type: ignore[arg-type]
        pool.withdraw([running, queued], kill_running=True)  # type: ignore[list-item]
        assert w not in pool.workers
        assert freed == ["shared"]  # the kept blocks are their callers' to free
    finally:
        pool.close()
