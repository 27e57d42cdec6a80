"""MultiprocessExecutionStrategy: what only processes do.

The warm pool and its workers' lifetime, batching, big messages, signals, start-up races, closing
from anywhere, groups with their strategies in a worker. The off-loop contract it shares with
threads and Dask (results, errors, timeouts, crashes, stop, return_exceptions, drain) is tested once
in test_offloop.py.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest
from helpers import (
    GRACE,
    MIB,
    Blank,
    Pid,
    RunLog,
    Spin,
    Unloadable,
    assert_gone,
    assert_no_workers,
    closing_pool,
    eventually_async,
    gone,
    group,
    in_shared_memory,
    large_items,
    leaves_nothing,
    memfds,
    pipeline,
    run_log,
    same_value,
)

from dynapipeline import Stage
from dynapipeline._transports.process import pool as process_pool
from dynapipeline.errors import (
    PicklingError,
    StageTimeoutError,
    WorkerCrashedError,
)
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, LoopCycleStrategy, OnceCycleStrategy


async def test_ten_megabyte_arguments_and_results_travel_on_either_loop(procs):
    # Larger than a pipe's buffer: uvloop's non-blocking watched pipe once cut such a message midway.
    size = 10 * 2**20
    results = await asyncio.wait_for(procs.execute([Blank(name="a"), Blank(name="b")], b"x" * size), 30)
    assert [len(r) for r in results] == [size, size] and not any(results[0])

async def test_pool_is_warm_across_dispatches_and_runs(procs):
    await procs.execute([Pid(name="a")])
    pids = set(procs.worker_pids())
    assert len(pids) == 2
    g = group([Pid(name="x"), Pid(name="y")], procs, LoopCycleStrategy(5))
    p = pipeline([g])
    for _ in range(2):
        result = await p.run()
        assert len(result[0]) == 5
        assert {r[1] for cycle in result[0] for r in cycle} <= pids
    assert set(procs.worker_pids()) == pids


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's scheduling policy")
async def test_workers_run_as_batch_so_that_waking_one_never_preempts_the_parent(procs):
    await procs.start()  # every worker said it is ready: it set its policy before that
    pids = procs.worker_pids()
    assert len(pids) == 2
    assert [os.sched_getscheduler(pid) for pid in pids] == [os.SCHED_BATCH] * 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the parent's own policy is left alone


async def test_class_is_sent_once_per_worker_and_small_stages_are_batched(procs, monkeypatch):
    class Tiny(Stage):
        def execute(self) -> None:
            return None

    sent: list[int] = []
    blobs: list[int] = []
    original = process_pool.ProcessPool._send

    def spy(self: Any, w: Any, job: Any) -> None:
        sent.append(len(job.indices))
        before = set(w.known)
        original(self, w, job)
        blobs.extend((w.pid, cid) for cid in w.known - before)

    monkeypatch.setattr(process_pool.ProcessPool, "_send", spy)
    stages = [Tiny(name=f"t{i}") for i in range(200)]
    for _ in range(3):
        assert await procs.execute(stages) == [None] * 200
    assert sum(sent) == 600
    assert len(sent) <= 3 * 8  # batches, not one message per stage
    assert len(blobs) == len(set(blobs))  # each class went at most once to each worker
    assert {pid for pid, _ in blobs} <= set(procs.worker_pids())


async def test_timeout_kills_only_that_worker_and_pool_recovers(procs):
    await procs.start()
    before = set(procs.worker_pids())
    start = time.monotonic()
    with pytest.raises(StageTimeoutError) as info:
        await procs.execute([Spin(name="spin", timeout=0.2)])
    assert time.monotonic() - start < 30  # the stage spins forever: ended by its deadline (generous bound)
    assert info.value.stage == "spin"
    after = set(procs.worker_pids())
    assert len(after) == 2 and len(before & after) == 1
    (killed,) = before - after
    assert_gone(killed)
    assert [r[0] for r in await procs.execute([Pid(name="a"), Pid(name="b")])] == ["a", "b"]


async def test_a_worker_killed_by_a_signal_raises_worker_crashed_and_the_pool_heals(procs):
    # A worker that exits (os._exit) is the off-loop contract's crash case, in test_offloop.py.
    class Crash(Stage):
        def execute(self) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError) as info:
        await procs.execute([Crash(name="crash")])
    error = info.value
    assert not isinstance(error, StageTimeoutError)
    assert error.stage == "crash"
    assert error.exitcode == -signal.SIGKILL
    assert_gone(error.pid)
    assert len(await procs.execute([Pid(name="a"), Pid(name="b")])) == 2
    assert len(procs.worker_pids()) == 2


async def test_crash_names_the_stage_inside_a_batch(procs):
    class MaybeCrash(Stage):
        crash: bool = False

        def execute(self) -> None:
            if self.crash:
                os._exit(5)

    stages = [MaybeCrash(name=f"m{i}", crash=(i == 6)) for i in range(10)]
    with pytest.raises(WorkerCrashedError, match="'m6'"):
        await procs.execute(stages)


async def test_stop_leaves_no_idle_worker_behind_when_no_other_run_uses_the_pool():
    strategy = MultiprocessExecutionStrategy(2)
    g = group([Spin(name="s")], strategy, name="one")
    p = pipeline([g])
    task = asyncio.ensure_future(p.run())
    await strategy.start()
    pids = strategy.worker_pids()
    assert len(pids) == 2  # one busy with the spinning stage, one idle
    await asyncio.sleep(0.1)
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert_no_workers(pids)
    assert strategy.pool is None


def slow_starts(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every worker start take ``seconds`` longer (a cold fork server), to open start-up races."""
    original = process_pool.ProcessPool._start_worker

    def slow(self: Any) -> Any:
        time.sleep(seconds)
        return original(self)

    monkeypatch.setattr(process_pool.ProcessPool, "_start_worker", slow)


async def test_stop_during_a_cold_pool_start_leaves_no_workers(monkeypatch):
    slow_starts(monkeypatch, 0.1)
    strategy = MultiprocessExecutionStrategy(2)
    g = group([Pid(name="s")], strategy)
    p = pipeline([g])
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.05)  # the off-loop start is under way
    pool = strategy.pool
    assert pool is not None and pool.starting is not None
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    strategy.close()
    await asyncio.sleep(0.8)  # a start still under way must not add workers to the closed pool
    assert pool.closed and pool.started == [] and pool.workers == []
    assert_no_workers([])


class Nap(Stage):
    def execute(self) -> str:
        time.sleep(0.6)
        return self.name


class LongNap(Stage):
    def execute(self) -> str:
        time.sleep(2.0)  # long enough to be seen running beside the spinner on a busy machine
        return self.name


async def test_stop_spares_another_pipeline_sharing_the_pool(procs):
    spinning = group([Spin(name="s")], cycle=InfinitLoopStrategy(), name="spin")
    napping = group([LongNap(name="n")], name="nap")
    stopped = pipeline([spinning], procs, name="a")
    other = pipeline([napping], procs, name="b")
    await procs.start()
    task_a = asyncio.ensure_future(stopped.run())
    task_b = asyncio.ensure_future(other.run())

    def running() -> dict[int, str]:
        return {w.pid: w.job.runners[0].name for w in procs.pool.workers if w.job is not None}

    assert await eventually_async(lambda: sorted(running().values()) == ["nap", "spin"]), running()
    busy = running()
    stopped.stop()
    assert await asyncio.wait_for(task_a, GRACE) is None
    assert await asyncio.wait_for(task_b, GRACE) == [["n"]]
    spinner = next(pid for pid, name in busy.items() if name == "spin")
    assert_gone(spinner)
    assert spinner not in procs.worker_pids()


async def test_racing_first_dispatches_do_not_grow_the_pool_past_max_workers(procs, monkeypatch):
    slow_starts(monkeypatch, 0.15)
    first = asyncio.ensure_future(procs.execute([Pid(name="a")]))
    while not (procs.pool is not None and procs.pool.started):
        await asyncio.sleep(0.005)  # one worker is up, the off-loop start goes on with the next
    second = asyncio.ensure_future(procs.execute([Pid(name="b")]))
    await asyncio.wait_for(asyncio.gather(first, second), GRACE)
    await asyncio.sleep(0.5)  # let any start still under way end
    assert len(procs.worker_pids()) + len(procs.pool.started) <= 2
    assert len(multiprocessing.active_children()) <= 2


def test_close_after_the_loop_closed_still_stops_every_worker():
    strategy = MultiprocessExecutionStrategy(2)
    loop = asyncio.new_event_loop()
    try:
        loop.create_task(strategy.execute([Spin(name="a"), Spin(name="b")]))
        loop.run_until_complete(strategy.start())
        loop.run_until_complete(asyncio.sleep(0.2))
        pids = strategy.worker_pids()
        assert len(pids) == 2
    finally:
        loop.close()  # the dispatch is still waiting on this loop
    strategy.close()  # as from __del__ or atexit: must not raise, must stop the workers
    assert_no_workers(pids)


async def test_close_from_another_thread_fails_the_running_dispatch():
    strategy = MultiprocessExecutionStrategy(1)
    task = asyncio.ensure_future(strategy.execute([Spin(name="s")]))
    await strategy.start()
    await asyncio.sleep(0.1)
    pids = strategy.worker_pids()
    await asyncio.to_thread(strategy.close)
    with pytest.raises(WorkerCrashedError):
        await asyncio.wait_for(task, GRACE)
    assert_no_workers(pids)


async def test_cancelling_a_dispatch_kills_its_workers(procs):
    task = asyncio.ensure_future(procs.execute([Spin(name="s")]))
    await procs.start()
    await asyncio.sleep(0.2)
    before = set(procs.worker_pids())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(set(procs.worker_pids()) & before) == 1
    assert len(await procs.execute([Pid(name="a"), Pid(name="b")])) == 2


async def test_groups_travel_with_their_strategies(procs):
    g1 = group([Pid(name="a"), Pid(name="b")], ConcurrentExecutionStrategy(), name="g1")
    g2 = group([Pid(name="c")], MultithreadExecutionStrategy(1), LoopCycleStrategy(2), name="g2")
    p = pipeline([g1, g2], procs)
    r1, r2 = await p.run()
    assert [r[0] for r in r1] == ["a", "b"]
    assert [[r[0] for r in cycle] for cycle in r2] == [["c"], ["c"]]
    assert g2.stages[0].stats.count == 2 and g1.stats.count == 1
    assert g1.stages[0].execution_time is not None


async def test_nested_process_strategy_is_refused_clearly(procs):
    inner = group([Pid(name="a")], MultiprocessExecutionStrategy(1), name="inner")
    with pytest.raises(PicklingError, match="group 'inner' field 'execution_strategy'"):
        await procs.execute([inner])


def test_bad_settings_are_rejected():
    from dynapipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_workers"):
        MultiprocessExecutionStrategy(0)
    with pytest.raises(ConfigurationError, match="start_method"):
        MultiprocessExecutionStrategy(start_method="fork")
    for bad in (0, -1, "1MB", 1.5, True):
        with pytest.raises(ConfigurationError, match="MultiprocessExecutionStrategy: field 'shared_memory_threshold'"):
            MultiprocessExecutionStrategy(shared_memory_threshold=bad)


async def test_stop_before_the_workers_are_ready_leaves_no_worker(monkeypatch):
    # Hold every worker in "started, not ready": its hello stays unread, so the window this test needs is
    # certain (polling for it could miss it on a busy machine and stop a run that had already ended).
    held: list[Any] = []
    original = process_pool.ProcessPool._on_readable

    def hold_hello(self: Any, w: Any) -> None:
        if w.ready:
            original(self, w)
        else:
            self._remove_reader(w)
            held.append(w)

    monkeypatch.setattr(process_pool.ProcessPool, "_on_readable", hold_hello)
    strategy = MultiprocessExecutionStrategy(2)
    g = group([Nap(name=f"n{i}") for i in range(4)], strategy)
    p = pipeline([g])
    task = asyncio.ensure_future(p.run())
    assert await eventually_async(lambda: held and strategy.pool is not None and strategy.pool.queue)
    pool = strategy.pool
    assert not any(w.ready for w in pool.workers)  # jobs queued, workers started, none ready
    pids = [w.pid for w in pool.workers]
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    await asyncio.sleep(0.5)  # let a start still under way finish into the closed pool
    assert strategy.pool is None
    assert_no_workers(pids)


class ThreadCount(Stage):
    def execute(self) -> int:

        return threading.active_count()


async def test_thread_pools_of_groups_shipped_to_a_worker_end_with_each_batch():
    strategy = MultiprocessExecutionStrategy(1)
    try:
        g = group([ThreadCount(name="a"), ThreadCount(name="b")], MultithreadExecutionStrategy(2))
        p = pipeline([g], strategy, LoopCycleStrategy(5))
        counts = [cycle[0][0] for cycle in await p.run()]
        assert counts[-1] == counts[0], counts  # no thread pool piles up in the worker
    finally:
        pids = strategy.worker_pids()
        strategy.close()
    assert_no_workers(pids)


def test_asyncio_strategies_travel_with_their_settings():
    import cloudpickle

    from dynapipeline.execution import SemaphoreExecutionStrategy

    for strategy in (SequentialExecutionStrategy(), ConcurrentExecutionStrategy(), SemaphoreExecutionStrategy(3),
                     OnceCycleStrategy(), LoopCycleStrategy(4), InfinitLoopStrategy(interval=0.5)):
        copy = cloudpickle.loads(cloudpickle.dumps(strategy))
        assert type(copy) is type(strategy) and repr(copy) == repr(strategy)
    semaphore = SemaphoreExecutionStrategy(2)
    semaphore._slots.used = 2  # busy here; a worker's copy starts with free slots
    assert cloudpickle.loads(cloudpickle.dumps(semaphore)).in_flight == 0


# --- Faults found by fault injection: each test failed before its fix ---------------------------------


async def test_stop_of_one_pipeline_refills_the_pool_for_another_waiting_on_it(procs):
    busy = group([Spin(name="s1"), Spin(name="s2")], procs, name="busy")
    waiting = group([Pid(name="w")], procs, name="waiting")
    a = pipeline([busy], name="a")
    b = pipeline([waiting], name="b")
    await procs.start()
    task_a = asyncio.ensure_future(a.run())
    while sum(w.job is not None for w in procs.pool.workers) < 2:
        await asyncio.sleep(0.01)
    task_b = asyncio.ensure_future(b.run())
    while not procs.pool.queue:
        await asyncio.sleep(0.01)  # b's job waits for a worker
    spinners = procs.worker_pids()
    a.stop()
    assert await asyncio.wait_for(task_a, GRACE) is None
    result = await asyncio.wait_for(task_b, GRACE)
    assert [r[0] for r in result[0]] == ["w"]
    assert not set(spinners) & {r[1] for r in result[0]}  # ran on a fresh worker
    assert_gone(*spinners)


async def test_a_stage_class_from_a_module_the_worker_cannot_import_is_sent_by_value(procs, tmp_path):
    import importlib.util
    import sys

    source = tmp_path / "dp_loaded_by_path.py"
    source.write_text(
        "from dynapipeline import Stage\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "class FromPath(Stage):\n"
        "    def execute(self, x):\n"
        "        return double(x)\n"
    )
    spec = importlib.util.spec_from_file_location("dp_loaded_by_path", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dp_loaded_by_path"] = module  # as pytest's importlib mode does: importable here only
    try:
        spec.loader.exec_module(module)
        stages = [Pid(name="before"), module.FromPath(name="from-path"), Pid(name="after")]
        results = await procs.execute(stages, 21)
        assert results[1] == 42 and results[0][0] == "before" and results[2][0] == "after"
    finally:
        del sys.modules["dp_loaded_by_path"]


class ReturnsUnloadable(Stage):
    def execute(self) -> Any:
        return Unloadable()


async def test_a_result_that_cannot_be_rebuilt_in_the_parent_names_its_stage(procs):
    from dynapipeline.errors import PicklingError

    stages: list[Stage] = [Pid(name=f"ok{i}") for i in range(20)]
    stages[9] = ReturnsUnloadable(name="unloadable")
    with pytest.raises(PicklingError, match="'unloadable'") as info:
        await procs.execute(stages)
    assert info.value.stage_name == "unloadable"
    assert isinstance(info.value.__cause__, LookupError)
    assert len(await procs.execute([Pid(name="a"), Pid(name="b")])) == 2


async def test_a_job_sent_to_a_worker_that_died_idle_runs_on_another(procs):
    await procs.start()
    victim = procs.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + GRACE
    while not gone(victim) and time.monotonic() < deadline:
        time.sleep(0.01)  # blocking on purpose: the loop must not hear of the death before the dispatch
    stages = [Pid(name=f"s{i}") for i in range(8)]
    results = await procs.execute(stages)  # awaited directly: jobs are sent before the loop polls the pipes
    assert [r[0] for r in results] == [s.name for s in stages]
    assert victim not in {r[1] for r in results}
    assert victim not in procs.worker_pids()


# --- return_exceptions=True and chained groups in workers -------------------------------------------


class MaybeFails(Stage):
    how: str = ""  # "", "raise", "exit", "spin"

    def execute(self) -> Any:
        if self.how == "raise":
            raise KeyError(self.name)
        if self.how == "exit":
            os._exit(7)
        if self.how == "spin":
            while True:
                pass
        return self.name


@pytest.fixture
async def gathering():
    async with closing_pool(MultiprocessExecutionStrategy(2, return_exceptions=True)) as strategy:
        yield strategy


async def test_return_exceptions_keeps_a_worker_crash_in_place_and_the_other_results(gathering):
    # Tiny stages that the default strategy would batch together: a crash loses only its own result.
    stages = [MaybeFails(name=f"m{i}", how="exit" if i == 6 else "") for i in range(12)]
    results = await gathering.execute(stages)
    crash = results[6]
    assert isinstance(crash, WorkerCrashedError) and crash.stage == "m6" and crash.exitcode == 7
    assert_gone(crash.pid)
    assert [r for i, r in enumerate(results) if i != 6] == [f"m{i}" for i in range(12) if i != 6]
    assert await gathering.execute([MaybeFails(name="again")]) == ["again"]  # the pool healed
    assert len(gathering.worker_pids()) == 2


async def test_return_exceptions_keeps_a_timeout_in_place_and_the_other_results(gathering):
    begun = time.monotonic()
    results = await gathering.execute([MaybeFails(name="ok1"), MaybeFails(name="spin", how="spin", timeout=0.2),
                                       MaybeFails(name="ok2")])
    assert time.monotonic() - begun < 30  # the stage spins forever: ended by its deadline (generous bound)
    assert isinstance(results[1], StageTimeoutError) and results[1].stage == "spin"
    assert results[0] == "ok1" and results[2] == "ok2"
    assert len(gathering.worker_pids()) == 2


async def test_return_exceptions_cancel_kills_the_workers_of_the_dispatch(gathering):
    await gathering.start()
    before = set(gathering.worker_pids())
    task = asyncio.ensure_future(gathering.execute([MaybeFails(name="s", how="spin"), MaybeFails(name="x",
                                                                                                 how="raise")]))
    await asyncio.sleep(0.3)
    assert not task.done()  # the failed sibling did not end the dispatch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await eventually_async(lambda: any(gone(p) for p in before))  # the spinning worker was killed


async def test_chained_and_gathering_groups_keep_their_settings_in_a_worker(procs):
    class Add(Stage):
        n: int

        def execute(self, x: int) -> int:
            if self.n < 0:
                raise ValueError(self.name)
            return x + self.n

    chained = group([Add(name="a", n=1), Add(name="b", n=10)], SequentialExecutionStrategy(chain=True), name="chained")
    gathering = group([Add(name="c", n=1), Add(name="bad", n=-1)], ConcurrentExecutionStrategy(return_exceptions=True),
                      name="gathering")
    chained_result, (ok, bad) = await procs.execute([chained, gathering], 5)
    assert chained_result == [6, 16]
    assert ok == 6 and isinstance(bad, ValueError) and bad.args == ("bad",)




# -- shared memory ------------------------------------------------------------------------------
# Buffers of 1 MiB or more (the default threshold) travel in the sender's shared memory, both ways:
# a stage's fields, its run arguments, its results.
class Returns(Stage):
    """Returns its argument as it received it."""

    def execute(self, item: Any) -> Any:
        return item


class WithField(Stage):
    """Returns its (large) array field ``arr`` plus its argument, and whether the field arrived as a view."""

    arr: Any = None

    def execute(self, item: Any = 0) -> Any:
        return self.arr + item, in_shared_memory(self.arr)


class Zeroes(Stage):
    """Zeroes its array argument in place and returns it (``start``: from that index on, as a view)."""

    start: int = 0

    def execute(self, item: Any) -> Any:
        item[:] = 0
        return item[self.start:]


async def test_large_arguments_and_results_of_every_kind_round_trip_through_a_group_stage(procs):
    items = large_items()
    results = await asyncio.wait_for(procs.execute([Returns(name=f"r{i}") for i in range(2)], items), 60)
    for got in results:
        assert [type(sent) for sent, one in zip(items, got, strict=True) if not same_value(sent, one)] == []
        assert sum(in_shared_memory(one) for one in got if getattr(one, "nbytes", 0) >= MIB) == 9
    assert procs.pool.arena.used == 0  # the argument's blocks came back with the replies


@pytest.mark.parametrize("shipped", ["stages", "groups"])
async def test_a_stage_with_a_large_array_field_and_a_large_run_argument(procs, shipped):
    import numpy as np

    field = np.arange(MIB // 8, dtype=np.float64)
    argument = np.full(MIB // 8, 0.5)
    stages = [WithField(name="a", arr=field), WithField(name="b", arr=field * 2)]
    if shipped == "stages":  # the group runs here, its stages in workers
        p = pipeline([group(stages, procs, LoopCycleStrategy(3))])
    else:  # the whole group runs in a worker
        p = pipeline([group(stages, ConcurrentExecutionStrategy(), LoopCycleStrategy(3))], procs)
    [cycles] = await asyncio.wait_for(p.run(argument), 60)
    assert len(cycles) == 3
    for (a, a_shared), (b, b_shared) in cycles:
        assert bool((a == field + 0.5).all()) and bool((b == 2 * field + 0.5).all())
        assert a_shared and b_shared  # the fields arrived as views on the parent's shared memory
    assert bool((field == np.arange(MIB // 8)).all()) and bool((argument == 0.5).all())


async def test_a_large_field_and_argument_reach_spawned_workers_through_shared_memory_too():
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2, start_method="spawn")
    async with leaves_nothing(strategy):
        field = np.arange(MIB // 8, dtype=np.float64)
        argument = np.full(MIB // 8, 0.5)
        [(result, shared)] = await asyncio.wait_for(strategy.execute([WithField(name="w", arr=field)], argument), 90)
        assert bool((result == field + 0.5).all()) and shared and in_shared_memory(result)
        del result


async def test_stages_with_large_fields_shipped_once_do_not_pile_up_in_the_parents_shared_memory(procs):
    import numpy as np

    field = np.arange(MIB // 8, dtype=np.float64)
    for i in range(6):  # a new stage object each time, as a loop building its stages would
        [(result, _)] = await asyncio.wait_for(procs.execute([WithField(name=f"w{i}", arr=field)], i), 60)
        assert bool((result == field + i).all())
    assert procs.pool.arena.used <= 2 * MIB  # at most the last stage's field on each of the two workers


@pytest.mark.parametrize("start", [0, 1])
async def test_a_stage_that_changes_its_argument_in_place_leaves_the_callers_array_alone(procs, start):
    import numpy as np

    argument = np.arange(MIB // 4, dtype=np.int64) + 1
    [result] = await asyncio.wait_for(procs.execute([Zeroes(name="zero", start=start)], argument), 60)
    assert result.shape == (MIB // 4 - start,) and not result.any() and in_shared_memory(result)
    assert int(argument.min()) == 1  # the worker changed its own view, on a copy in shared memory
    result[:] = 7  # the result is the caller's own, writable
    assert int(argument.min()) == 1


async def test_without_a_threshold_a_group_stage_gives_the_same_results_as_copies():
    items = [item for item in large_items() if type(item) is not memoryview]  # see test_process_items
    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=None)
    async with closing_pool(strategy):
        [got] = await asyncio.wait_for(strategy.execute([Returns(name="r")], items), 60)
        assert [type(sent) for sent, one in zip(items, got, strict=True) if not same_value(sent, one)] == []
        assert not any(in_shared_memory(one) for one in got)
        assert strategy.pool.arena.segments == {}


async def test_group_results_kept_after_the_pool_closed_stay_readable_and_right():
    import numpy as np

    gc.collect()  # views of earlier tests in reference cycles hold mappings (and their fds) until collected
    fds = len(memfds())
    strategy = MultiprocessExecutionStrategy(2)
    async with closing_pool(strategy):  # checks that no worker is left
        argument = np.arange(MIB // 8, dtype=np.int64)
        results = await asyncio.wait_for(strategy.execute([Returns(name="a"), Returns(name="b")], argument), 60)
    assert strategy.pool is None
    assert all(bool((got == argument).all()) and in_shared_memory(got) for got in results)
    results[0][:] = 3
    assert int(results[0].sum()) == 3 * (MIB // 8) and bool((results[1] == argument).all())
    del results
    gc.collect()
    assert len(memfds()) == fds


# -- shared memory: faults ----------------------------------------------------------------------
class KillsWith(Stage):
    """SIGKILLs its own worker while it holds its large argument."""

    def execute(self, item: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)


class SpinsWith(Stage):
    """Spins forever holding its large argument (only killing its worker stops it)."""

    def execute(self, item: Any) -> Any:
        while True:
            pass


class HoldsWith(Stage):
    """Holds its large argument for a minute (a plain ``def``: only killing its worker stops it)."""

    def execute(self, item: Any) -> Any:
        time.sleep(60)


@pytest.mark.parametrize("fault", ["killed", "timed out"])
async def test_a_worker_lost_with_a_large_argument_fails_its_stage_gives_the_blocks_back_and_leaks_nothing(fault):
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2, return_exceptions=True)  # the other stages' results too
    async with leaves_nothing(strategy) as pids:
        await strategy.start()
        pids += strategy.worker_pids()
        argument = np.arange(MIB // 8 + 1, dtype=np.int64)
        failing = KillsWith(name="bad") if fault == "killed" else SpinsWith(name="bad", timeout=5)
        results = await asyncio.wait_for(strategy.execute([Returns(name="a"), failing, Returns(name="b")],
                                                          argument), 60)
        assert type(results[1]) is (WorkerCrashedError if fault == "killed" else StageTimeoutError)
        assert all(bool((got == argument).all()) for got in (results[0], results[2]))
        assert strategy.pool.arena.used == 0  # the lost worker's blocks too
        pids += strategy.worker_pids()
        del results


async def test_cancelling_a_dispatch_with_a_large_argument_gives_the_blocks_back_and_leaks_nothing():
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2, return_exceptions=True)  # one stage per job: both workers busy
    async with leaves_nothing(strategy) as pids:
        task = asyncio.ensure_future(strategy.execute([HoldsWith(name="a"), HoldsWith(name="b")],
                                                      np.zeros(MIB // 8 + 1)))

        def busy() -> bool:
            pool = strategy.pool
            return pool is not None and len(pool.workers) == 2 and all(w.job is not None for w in pool.workers)

        assert await eventually_async(busy)
        pool = strategy.pool
        assert pool.arena.used > 0
        pids += strategy.worker_pids()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually_async(lambda: pool.arena.used == 0), pool.arena.used


# -- recycling: a group's stages count one run each ----------------------------------------------------------------


async def test_recycling_a_group_every_five_stage_runs(tmp_path):
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=5)
    async with closing_pool(strategy):
        path = str(tmp_path / "runs")
        g = group([RunLog(name=f"s{i}", path=path) for i in range(12)], strategy, LoopCycleStrategy(3))
        result = await pipeline([g]).run()
        assert [[name for name, _ in cycle] for cycle in result[0]] == [[f"s{i}" for i in range(12)]] * 3
        runs = run_log(path)
        assert sorted(name for name, _ in runs) == sorted(f"s{i}" for i in range(12) for _ in range(3))  # once each
        per_pid = Counter(pid for _, pid in runs)
        assert max(per_pid.values()) <= 5 and len(per_pid) >= 36 // 5
    assert_gone(*per_pid)


_NAPPING: list[str] = []


class Naps(Stage):
    """Sleeps on the loop until cancelled (notes that it started)."""

    async def execute(self) -> None:
        _NAPPING.append(self.name)
        await asyncio.sleep(60)


async def _napping(strategy: Any, names: tuple[str, ...] = ("a", "b"), name: str = "p") -> tuple[Any, Any]:
    """A pipeline whose process group has run and which now naps on the loop (no dispatch in flight); its task."""
    _NAPPING.clear()
    p = pipeline([group([Pid(name=n) for n in names], strategy), group([Naps(name="nap")], name="naps")], name=name)
    task = asyncio.ensure_future(p.run())
    assert await eventually_async(lambda: _NAPPING == ["nap"])
    return p, task


@pytest.mark.parametrize("drained_first", [False, True], ids=["stop", "drain-then-stop"])
async def test_a_stop_between_two_dispatches_closes_the_pool_all_the_same(drained_first: bool):
    # The stop cancels the napping group: no dispatch of the process group is in flight to see it. Giving up on a
    # slow drain (the nap would hold it for a minute) with a stop ends the run as a stop too, workers included.
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        p, task = await _napping(strategy)
        pids += strategy.worker_pids()
        if drained_first:
            p.stop(drain=True)
            await asyncio.sleep(0.1)
        p.stop()
        await asyncio.wait_for(task, GRACE)
        assert strategy.pool is None
    assert_no_workers(pids)


async def test_a_stop_spares_a_pool_another_run_packed_jobs_for():
    # Two pipelines share the strategy. B's dispatch packed its jobs and waits for a fresh pool to start when A
    # (between two dispatches) is stopped: A's end must not close B's pool, and B must not wait forever.
    strategy = MultiprocessExecutionStrategy(1)
    b = pipeline([group([Pid(name="b")], strategy)], name="B")
    async with leaves_nothing(strategy):
        a, task_a = await _napping(strategy, ("a",), "A")
        strategy.close()  # the next dispatch starts a new pool
        task_b = asyncio.ensure_future(b.run())
        while strategy.pool is None or strategy.pool.starting is None:  # B's jobs are packed: it awaits the start
            await asyncio.sleep(0)
        pool_b = strategy.pool
        a.stop()
        await asyncio.wait_for(task_a, GRACE)
        assert not pool_b.closed
        [[(name, pid, _, _)]] = await asyncio.wait_for(task_b, GRACE)
        assert name == "b" and pid in [w.pid for w in pool_b.workers]


async def test_a_retiring_worker_during_a_stopped_pipeline_leaves_nothing_behind():
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=1)
    p = pipeline([group([Pid(name="a"), Pid(name="b")], strategy, InfinitLoopStrategy())])
    async with leaves_nothing(strategy) as pids:
        task = asyncio.ensure_future(p.run())
        assert await eventually_async(lambda: len(strategy.worker_pids()) == 2)
        await asyncio.sleep(0.3)  # every run retires its worker meanwhile
        pids += strategy.worker_pids()
        p.stop()
        await asyncio.wait_for(task, GRACE)
        pids += strategy.worker_pids()
        assert strategy.pool is None
    assert_no_workers(pids)
