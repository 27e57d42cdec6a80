"""MultithreadExecutionStrategy: what only threads do.

Per-thread loops, pool lifetime, cancelling coroutines on worker loops, abandoned plain-def calls,
nested pools. The off-loop contract it shares with processes and Dask (results, errors, timeouts,
stop, return_exceptions, drain) is tested once in test_offloop.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest
from helpers import GRACE, group, pipeline, wait_no_threads

from dynapipeline import Stage
from dynapipeline.errors import ConfigurationError, StageTimeoutError
from dynapipeline.execution import MultithreadExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, LoopCycleStrategy


class WhereAsync(Stage):
    async def execute(self, *args: Any) -> Any:
        await asyncio.sleep(0.01)
        return (self.name, threading.get_ident(), id(asyncio.get_running_loop()), args)


class WhereSync(Stage):
    def execute(self, *args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            has_loop = True
        except RuntimeError:
            has_loop = False
        return (self.name, threading.get_ident(), has_loop, args)


async def test_plain_def_is_called_directly_without_a_loop():
    (result,) = await MultithreadExecutionStrategy(1).execute([WhereSync(name="s")])
    assert result[2] is False


async def test_async_stages_reuse_the_thread_loop_across_calls():
    strategy = MultithreadExecutionStrategy(1)
    async with strategy:
        first = await strategy.execute([WhereAsync(name="a"), WhereAsync(name="b")])
        second = await strategy.execute([WhereAsync(name="c")])
        loops = {r[2] for r in first + second}
        threads = {r[1] for r in first + second}
        assert len(loops) == 1 and len(threads) == 1
        assert id(asyncio.get_running_loop()) not in loops
    wait_no_threads()


async def test_pool_lives_for_the_run_and_is_shut_down_after():
    strategy = MultithreadExecutionStrategy(2)
    g = group([WhereAsync(name="a"), WhereSync(name="b")], strategy, LoopCycleStrategy(4))
    p = pipeline([g])
    (cycles,) = await p.run()
    assert len(cycles) == 4
    assert len({r[1] for cycle in cycles for r in cycle}) <= 2  # the same threads every cycle
    loops_by_thread: dict[int, set[int]] = {}
    for cycle in cycles:
        for r in cycle:
            if r[0] == "a":
                loops_by_thread.setdefault(r[1], set()).add(r[2])
    assert all(len(loops) == 1 for loops in loops_by_thread.values())  # one loop per thread, reused
    wait_no_threads()
    (again,) = await p.run()  # a second run gets a fresh pool
    assert len(again) == 4
    wait_no_threads()


class NameOfThread(Stage):
    def execute(self) -> str:
        return threading.current_thread().name  # names are never reused (thread idents are)


async def test_a_cycle_run_outside_a_pipeline_keeps_one_pool_for_its_cycles():
    strategy = MultithreadExecutionStrategy(2)
    cycles = await LoopCycleStrategy(3).run(strategy, [NameOfThread(name="a"), NameOfThread(name="b")])
    assert len(cycles) == 3
    assert len({name for cycle in cycles for name in cycle}) <= 2  # not fresh threads per cycle
    wait_no_threads()  # and shut down when that run ended


async def test_first_error_propagates_and_cancels_siblings():
    cancelled = threading.Event()

    class Waits(Stage):
        async def execute(self) -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    class Fails(Stage):
        def execute(self) -> None:
            time.sleep(0.05)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await MultithreadExecutionStrategy(2).execute([Waits(name="w"), Fails(name="f")])
    assert cancelled.wait(2)
    wait_no_threads()


async def test_stop_cancels_coroutines_on_worker_loops():
    cancelled = threading.Event()
    started = threading.Event()

    class Waits(Stage):
        async def execute(self) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    g = group([Waits(name="w1"), Waits(name="w2")], MultithreadExecutionStrategy(2), InfinitLoopStrategy())
    p = pipeline([g])
    task = asyncio.ensure_future(p.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    begun = time.monotonic()
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert time.monotonic() - begun < 20  # well under the stages' 30 s sleep (generous for a busy machine)
    assert cancelled.is_set()
    wait_no_threads()


async def test_async_stage_timeout_is_cancelled_on_its_loop():
    cancelled = threading.Event()

    class Slow(Stage):
        async def execute(self) -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    begun = time.monotonic()
    with pytest.raises(StageTimeoutError, match="slow"):
        await MultithreadExecutionStrategy(1).execute([Slow(name="slow", timeout=0.2)])
    assert time.monotonic() - begun < 20  # well under the 30 s sleep (generous for a busy machine)
    assert cancelled.is_set()


async def test_sync_stage_timeout_raises_at_the_deadline_and_discards_the_result():
    finished = threading.Event()
    release = threading.Event()

    class Blocks(Stage):
        def execute(self) -> str:
            release.wait(GRACE)
            finished.set()
            return "late"

    with pytest.raises(StageTimeoutError, match="blocks"):
        await MultithreadExecutionStrategy(1).execute([Blocks(name="blocks", timeout=0.2)])
    assert not finished.is_set()  # raised while the call still blocked: did not wait for it to return
    release.set()
    assert finished.wait(GRACE)  # the thread ran on; its result was dropped
    wait_no_threads()


async def test_blocking_stages_overlap_in_threads():
    together = threading.Barrier(4, timeout=GRACE)  # broken (an error) unless all 4 block at once

    class Blocking(Stage):
        def execute(self) -> None:
            together.wait()

    await MultithreadExecutionStrategy(4).execute([Blocking(name=f"b{i}") for i in range(4)])


async def test_max_workers_bounds_the_threads():
    results = await MultithreadExecutionStrategy(2).execute([WhereSync(name=f"s{i}") for i in range(10)])
    assert len({r[1] for r in results}) <= 2


def test_bad_max_workers():
    with pytest.raises(ConfigurationError, match="max_workers"):
        MultithreadExecutionStrategy(0)


async def test_end_of_run_shutdown_does_not_block_the_callers_loop():
    started = threading.Event()

    class Blocks(Stage):
        async def execute(self) -> None:
            started.set()
            time.sleep(2.0)  # ignores cancellation: the thread is abandoned, the loop must stay free

    g = group([Blocks(name="b")], MultithreadExecutionStrategy(1))
    p = pipeline([g])
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    task = asyncio.ensure_future(p.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    beat.cancel()
    assert max(gaps) < 0.5, max(gaps)
    wait_no_threads()


async def test_nested_thread_strategies_share_one_pool_per_run(monkeypatch):
    from dynapipeline._transports import threads

    created: list[Any] = []

    class SlowPool(threads.ThreadPool):
        def __init__(self, *args: Any) -> None:
            time.sleep(0.05)  # widens the window in which two threads could both create a pool
            super().__init__(*args)
            created.append(self)

    monkeypatch.setattr(threads, "ThreadPool", SlowPool)
    inner = MultithreadExecutionStrategy(2)
    groups = [group([WhereSync(name=f"s{i}")], inner, name=f"g{i}") for i in range(2)]
    p = pipeline(groups, MultithreadExecutionStrategy(2))
    results = await p.run()
    assert [r[0][0] for r in results] == ["s0", "s1"]
    assert len(created) == 2  # the outer pool and one inner pool for the run, not two inner ones
    wait_no_threads()


async def test_one_instance_for_a_pipeline_and_its_groups_does_not_deadlock():
    class Name(Stage):
        def execute(self):
            return self.name

    shared = MultithreadExecutionStrategy(max_workers=2)
    groups = [group([Name(name=f"s{i}{j}") for j in range(2)], shared, name=f"g{i}") for i in range(2)]
    p = pipeline(groups, shared)
    # Both pool threads hold a group waiting for its stages: the stages need threads of their own.
    assert await asyncio.wait_for(p.run(), GRACE) == [["s00", "s01"], ["s10", "s11"]]


# --- return_exceptions=True ------------------------------------------------------------------------


class FailsSync(Stage):
    def execute(self) -> None:
        time.sleep(0.02)
        raise KeyError(self.name)


async def test_return_exceptions_keeps_timeouts_in_place():
    release = threading.Event()

    class Blocks(Stage):
        def execute(self) -> str:
            release.wait(GRACE)
            return "late"

    class Hangs(Stage):
        async def execute(self) -> None:
            await asyncio.sleep(30)

    results = await MultithreadExecutionStrategy(3, return_exceptions=True).execute(
        [Blocks(name="blocks", timeout=0.1), Hangs(name="hangs", timeout=0.1), WhereSync(name="ok")])
    assert not release.is_set()  # returned while the call still blocked: did not wait for it
    release.set()
    assert isinstance(results[0], StageTimeoutError) and results[0].stage == "blocks"
    assert isinstance(results[1], StageTimeoutError) and results[1].stage == "hangs"
    assert results[2][0] == "ok"
    wait_no_threads()


async def test_return_exceptions_stop_still_cancels_and_leaves_no_thread():
    started = threading.Event()
    cancelled = threading.Event()

    class Waits(Stage):
        async def execute(self) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    g = group([Waits(name="w"), FailsSync(name="f")], MultithreadExecutionStrategy(2, return_exceptions=True))
    p = pipeline([g])
    task = asyncio.ensure_future(p.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the failing sibling has failed by now: it did not end the dispatch
    assert not task.done()
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert cancelled.is_set()
    wait_no_threads()


def test_return_exceptions_survives_pickling():
    import cloudpickle

    copy = cloudpickle.loads(cloudpickle.dumps(MultithreadExecutionStrategy(3, return_exceptions=True)))
    assert copy.return_exceptions is True and copy.max_workers == 3


# -- recycling: max_tasks_per_worker ---------------------------------------------------------------------------


class ThreadName(Stage):
    async def execute(self, item: int = 0) -> tuple[int, str, int]:
        loop = asyncio.get_running_loop()
        return item, threading.current_thread().name, id(loop)


async def test_recycling_threads_every_five_jobs():
    from dynapipeline import Step, Stream

    strategy = MultithreadExecutionStrategy(2, max_tasks_per_worker=5)
    out = await Stream(name="s", steps=[Step(ThreadName(name="t"), strategy)]).run(range(40))
    assert [item for item, _, _ in out] == list(range(40))
    per_thread = Counter(name for _, name, _ in out)
    assert max(per_thread.values()) <= 5 and len(per_thread) >= 8
    async with strategy:  # a group's stages count one job each, on a held pool too
        result = await strategy.execute([ThreadName(name=f"s{i}") for i in range(20)])
        assert max(Counter(name for _, name, _ in result).values()) <= 5
        threads_after = [t for t in threading.enumerate() if t.name.startswith("dynapipeline-thread-")]
        assert len([t for t in threads_after if t.is_alive()]) >= 1
    wait_no_threads()


def test_recycled_thread_strategy_keeps_its_setting():
    import pickle

    strategy = MultithreadExecutionStrategy(3, max_tasks_per_worker=7)
    assert pickle.loads(pickle.dumps(strategy)).max_tasks_per_worker == 7
    assert "max_tasks_per_worker=7" in repr(strategy)
