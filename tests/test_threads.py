"""MultithreadExecutionStrategy: worker threads, per-thread loops, pool lifetime, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from helpers import GRACE

from dynapipeline import Handler, PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.errors import ConfigurationError, StageTimeoutError
from dynapipeline.execution import MultithreadExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, LoopCycleStrategy, OnceCycleStrategy


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dynapipeline-thread-") and t.is_alive()]


def wait_no_threads(timeout: float = GRACE) -> None:
    deadline = time.monotonic() + timeout
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker_threads() == []


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


async def test_each_component_runs_in_a_worker_thread_in_order():
    stages = [WhereAsync(name=f"a{i}") if i % 2 else WhereSync(name=f"s{i}") for i in range(8)]
    results = await MultithreadExecutionStrategy(4).execute(stages, 3)
    assert [r[0] for r in results] == [s.name for s in stages]
    assert all(r[1] != threading.get_ident() for r in results)
    assert all(r[3] == (3,) for r in results)
    wait_no_threads()  # no run, no `async with`: the pool lived for that dispatch


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
    group = StageGroup(name="g", stages=[WhereAsync(name="a"), WhereSync(name="b")],
                       cycle_strategy=LoopCycleStrategy(4), execution_strategy=strategy)
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [group], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    (cycles,) = await pipeline.run()
    assert len(cycles) == 4
    assert len({r[1] for cycle in cycles for r in cycle}) <= 2  # the same threads every cycle
    loops_by_thread: dict[int, set[int]] = {}
    for cycle in cycles:
        for r in cycle:
            if r[0] == "a":
                loops_by_thread.setdefault(r[1], set()).add(r[2])
    assert all(len(loops) == 1 for loops in loops_by_thread.values())  # one loop per thread, reused
    wait_no_threads()
    (again,) = await pipeline.run()  # a second run gets a fresh pool
    assert len(again) == 4
    wait_no_threads()


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

    group = StageGroup(name="g", stages=[Waits(name="w1"), Waits(name="w2")], cycle_strategy=InfinitLoopStrategy(),
                       execution_strategy=MultithreadExecutionStrategy(2))
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [group], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    task = asyncio.ensure_future(pipeline.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    begun = time.monotonic()
    pipeline.stop()
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


def test_simple_pipeline_rejects_threads_and_advanced_allows_them():
    def build(kind: PipeLineType, at_pipeline: bool) -> Any:
        threads = MultithreadExecutionStrategy()
        group = StageGroup(name="workers", stages=[WhereSync(name="s")], cycle_strategy=OnceCycleStrategy(),
                           execution_strategy=SequentialExecutionStrategy() if at_pipeline else threads)
        return PipelineFactory().create_pipeline(kind, "p", [group], OnceCycleStrategy(),
                                                 threads if at_pipeline else SequentialExecutionStrategy())

    with pytest.raises(ConfigurationError, match=r"StageGroup 'workers'.*MultithreadExecutionStrategy"):
        build(PipeLineType.SIMPLE, at_pipeline=False)
    with pytest.raises(ConfigurationError, match=r"MultithreadExecutionStrategy"):
        build(PipeLineType.SIMPLE, at_pipeline=True)
    assert build(PipeLineType.ADVANCED, at_pipeline=False) is not None
    assert build(PipeLineType.ADVANCED, at_pipeline=True) is not None


async def test_end_of_run_shutdown_does_not_block_the_callers_loop():
    started = threading.Event()

    class Blocks(Stage):
        async def execute(self) -> None:
            started.set()
            time.sleep(2.0)  # ignores cancellation: the thread is abandoned, the loop must stay free

    group = StageGroup(name="g", stages=[Blocks(name="b")], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=MultithreadExecutionStrategy(1))
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [group], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    task = asyncio.ensure_future(pipeline.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    pipeline.stop()
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
    groups = [StageGroup(name=f"g{i}", stages=[WhereSync(name=f"s{i}")], cycle_strategy=OnceCycleStrategy(),
                         execution_strategy=inner) for i in range(2)]
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", groups, OnceCycleStrategy(),
                                                 MultithreadExecutionStrategy(2))
    results = await pipeline.run()
    assert [r[0][0] for r in results] == ["s0", "s1"]
    assert len(created) == 2  # the outer pool and one inner pool for the run, not two inner ones
    wait_no_threads()


async def test_one_instance_for_a_pipeline_and_its_groups_does_not_deadlock():
    class Name(Stage):
        def execute(self):
            return self.name

    shared = MultithreadExecutionStrategy(max_workers=2)
    groups = [StageGroup(name=f"g{i}", stages=[Name(name=f"s{i}{j}") for j in range(2)],
                         cycle_strategy=OnceCycleStrategy(), execution_strategy=shared) for i in range(2)]
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", groups, OnceCycleStrategy(), shared)
    # Both pool threads hold a group waiting for its stages: the stages need threads of their own.
    assert await asyncio.wait_for(pipeline.run(), GRACE) == [["s00", "s01"], ["s10", "s11"]]


# --- return_exceptions=True ------------------------------------------------------------------------


class MarksError(Handler):
    """on_error marks the error with the thread it ran on, so a test sees the handler ran for that member."""

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        error.handled_on = threading.get_ident()  # type: ignore[attr-defined]


class FailsSync(Stage):
    def execute(self) -> None:
        time.sleep(0.02)
        raise KeyError(self.name)


class FailsAsync(Stage):
    async def execute(self) -> None:
        await asyncio.sleep(0.02)
        raise ValueError(self.name)


async def test_return_exceptions_keeps_each_failure_in_its_place_and_the_other_results():
    finished = threading.Event()

    class SlowOk(Stage):
        async def execute(self) -> str:
            await asyncio.sleep(0.2)
            finished.set()
            return self.name

    stages = [WhereSync(name="s"), FailsSync(name="fs", handlers=[MarksError()]), SlowOk(name="slow"),
              FailsAsync(name="fa", handlers=[MarksError()]), WhereAsync(name="a")]
    results = await MultithreadExecutionStrategy(3, return_exceptions=True).execute(stages)
    assert results[0][0] == "s" and results[2] == "slow" and results[4][0] == "a"
    assert finished.is_set()  # the failures did not cancel the slow sibling
    assert isinstance(results[1], KeyError) and results[1].args == ("fs",)
    assert isinstance(results[3], ValueError) and results[3].args == ("fa",)
    # on_error ran for each failed member, in a worker thread.
    assert results[1].handled_on != threading.get_ident() and results[3].handled_on != threading.get_ident()
    wait_no_threads()


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

    group = StageGroup(name="g", stages=[Waits(name="w"), FailsSync(name="f")], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=MultithreadExecutionStrategy(2, return_exceptions=True))
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [group], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    task = asyncio.ensure_future(pipeline.run())
    while not started.is_set():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the failing sibling has failed by now: it did not end the dispatch
    assert not task.done()
    pipeline.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert cancelled.is_set()
    wait_no_threads()


def test_return_exceptions_must_be_a_bool_and_survives_pickling():
    import cloudpickle

    with pytest.raises(ConfigurationError, match="MultithreadExecutionStrategy: field 'return_exceptions'"):
        MultithreadExecutionStrategy(return_exceptions="yes")  # type: ignore[arg-type]
    copy = cloudpickle.loads(cloudpickle.dumps(MultithreadExecutionStrategy(3, return_exceptions=True)))
    assert copy.return_exceptions is True and copy.max_workers == 3
