"""Contracts of the asyncio execution strategies."""

from __future__ import annotations

import asyncio

import pytest
from helpers import Echo, Fail, Tracked, Tracker, engine_tasks, run_on_test_loop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynapipeline import Stage, StageGroup
from dynapipeline.errors import ConfigurationError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

STRATEGIES = [
    pytest.param(SequentialExecutionStrategy, id="sequential"),
    pytest.param(ConcurrentExecutionStrategy, id="concurrent"),
    pytest.param(lambda: SemaphoreExecutionStrategy(3), id="semaphore"),
]


@pytest.mark.parametrize("make", STRATEGIES)
async def test_results_come_back_in_component_order(make):
    # Later stages finish first, so completion order differs from component order.
    stages = [Echo(name=f"s{i}", delay=0.002 * (6 - i)) for i in range(6)]
    assert await make().execute(stages) == [f"s{i}" for i in range(6)]


@pytest.mark.parametrize("make", STRATEGIES)
async def test_empty_list_gives_empty_results(make):
    assert await make().execute([]) == []


@pytest.mark.parametrize("make", STRATEGIES)
async def test_args_and_kwargs_reach_every_stage(make):
    from dynapipeline import Stage

    class Add(Stage):
        async def execute(self, a, b=0):
            return a + b

    assert await make().execute([Add(name="x"), Add(name="y")], 2, b=3) == [5, 5]


async def test_sequential_runs_one_after_another():
    log: list = []
    stages = [Echo(name=f"s{i}", delay=0.001, log=log) for i in range(3)]
    await SequentialExecutionStrategy().execute(stages)
    assert log == [(edge, f"s{i}") for i in range(3) for edge in ("start", "end")]


async def test_sequential_first_error_stops_the_rest():
    log: list = []
    stages = [Echo(name="a", log=log), Fail(name="bad"), Echo(name="c", log=log)]
    with pytest.raises(ValueError, match="bad"):
        await SequentialExecutionStrategy().execute(stages)
    assert ("start", "c") not in log


async def test_concurrent_runs_all_at_once():
    tracker = Tracker()
    stages = [Tracked(name=f"s{i}", tracker=tracker, delay=0.05) for i in range(5)]
    await ConcurrentExecutionStrategy().execute(stages)
    assert tracker.peak == 5


async def test_concurrent_error_cancels_and_awaits_siblings():
    tracker = Tracker()
    slow = [Tracked(name=f"slow{i}", tracker=tracker, delay=5) for i in range(3)]
    with pytest.raises(ValueError, match="boom"):
        await ConcurrentExecutionStrategy().execute([*slow, Fail(name="boom", delay=0.01)])
    # Siblings were cancelled and have finished unwinding before the error reached us.
    assert sorted(tracker.cancelled) == ["slow0", "slow1", "slow2"]
    assert tracker.now == 0
    assert engine_tasks() == set()


async def test_concurrent_outer_cancel_cancels_children():
    tracker = Tracker()
    stages = [Tracked(name=f"s{i}", tracker=tracker, delay=5) for i in range(3)]
    task = asyncio.ensure_future(ConcurrentExecutionStrategy().execute(stages))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(tracker.cancelled) == ["s0", "s1", "s2"]
    assert engine_tasks() == set()


async def test_semaphore_limits_in_flight():
    tracker = Tracker()
    stages = [Tracked(name=f"s{i}", tracker=tracker, delay=0.01) for i in range(12)]
    assert await SemaphoreExecutionStrategy(3).execute(stages) == [f"s{i}" for i in range(12)]
    assert tracker.peak == 3


async def test_semaphore_limit_is_shared_by_groups_using_one_instance():
    tracker = Tracker()
    shared = SemaphoreExecutionStrategy(2)
    groups = [
        StageGroup(
            name=f"g{g}",
            stages=[Tracked(name=f"g{g}s{i}", tracker=tracker, delay=0.01) for i in range(4)],
            cycle_strategy=OnceCycleStrategy(),
            execution_strategy=shared,
        )
        for g in range(3)
    ]
    await asyncio.gather(*(g.run() for g in groups))
    assert tracker.peak == 2
    assert shared.in_flight == 0


async def test_semaphore_creates_only_min_n_limit_workers(monkeypatch):
    loop = asyncio.get_running_loop()
    created = []
    original = loop.create_task

    def counting_create_task(coro, **kw):
        created.append(coro)
        return original(coro, **kw)

    monkeypatch.setattr(loop, "create_task", counting_create_task)
    stages = [Echo(name=f"s{i}") for i in range(100)]
    await SemaphoreExecutionStrategy(4).execute(stages)
    assert len(created) == 4
    created.clear()
    await SemaphoreExecutionStrategy(50).execute(stages[:3])
    assert len(created) == 3


async def test_semaphore_error_cancels_other_workers():
    tracker = Tracker()
    stages = [Fail(name="boom", delay=0.01)] + [Tracked(name=f"s{i}", tracker=tracker, delay=5) for i in range(3)]
    strategy = SemaphoreExecutionStrategy(2)
    with pytest.raises(ValueError, match="boom"):
        await strategy.execute(stages)
    assert tracker.now == 0
    assert strategy.in_flight == 0
    assert engine_tasks() == set()


async def test_semaphore_instance_is_reusable_across_event_loops():
    strategy = SemaphoreExecutionStrategy(2)
    stages = [Echo(name=f"s{i}", delay=0.001) for i in range(5)]
    assert await strategy.execute(stages) == [f"s{i}" for i in range(5)]

    def in_another_loop():
        return asyncio.run(strategy.execute(stages))

    assert await asyncio.to_thread(in_another_loop) == [f"s{i}" for i in range(5)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None])
def test_semaphore_rejects_bad_limit(bad):
    with pytest.raises(ConfigurationError, match="SemaphoreExecutionStrategy.*max_concurrent"):
        SemaphoreExecutionStrategy(bad)


async def test_execute_rejects_non_components():
    with pytest.raises(ConfigurationError, match="component #1"):
        await SequentialExecutionStrategy().execute([Echo(name="a"), object()])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    delays=st.lists(st.sampled_from([0, 0, 0.0005, 0.001]), max_size=20),
    limit=st.integers(min_value=1, max_value=6),
    fail_at=st.one_of(st.none(), st.integers(min_value=0, max_value=19)),
)
def test_property_every_strategy_keeps_order_limit_and_cleans_up(delays, limit, fail_at):
    async def scenario():
        for strategy in (SequentialExecutionStrategy(), ConcurrentExecutionStrategy(),
                         SemaphoreExecutionStrategy(limit)):
            tracker = Tracker()
            stages = [
                Fail(name=f"f{i}", delay=d) if i == fail_at else Tracked(name=f"s{i}", tracker=tracker, delay=d)
                for i, d in enumerate(delays)
            ]
            if fail_at is not None and fail_at < len(delays):
                with pytest.raises(ValueError, match=f"f{fail_at}"):
                    await strategy.execute(stages)
            else:
                assert await strategy.execute(stages) == [f"s{i}" for i in range(len(delays))]
            if isinstance(strategy, SemaphoreExecutionStrategy):
                assert tracker.peak <= limit and strategy.in_flight == 0
            assert tracker.now == 0
            assert engine_tasks() == set()

    run_on_test_loop(scenario())


class FailNow(Stage):
    """Raises at once, without ever suspending."""

    async def execute(self):
        raise KeyError(self.name)


@pytest.mark.parametrize("make", [ConcurrentExecutionStrategy, lambda: SemaphoreExecutionStrategy(4)])
async def test_failure_in_a_first_step_cancels_the_slow_siblings(make):
    tracker = Tracker()
    slow = [Tracked(name=f"slow{i}", tracker=tracker, delay=5) for i in range(3)]
    with pytest.raises(KeyError, match="now"):
        await make().execute([slow[0], FailNow(name="now"), *slow[1:]])
    assert tracker.now == 0
    assert engine_tasks() == set()


async def test_concurrent_first_failure_wins_when_several_fail_at_once():
    with pytest.raises(KeyError, match="first"):
        await ConcurrentExecutionStrategy().execute([Echo(name="ok"), FailNow(name="first"), FailNow(name="second")])
    assert engine_tasks() == set()


def test_semaphore_shared_by_event_loops_in_several_threads_keeps_its_limit():
    import threading

    shared = SemaphoreExecutionStrategy(1)
    peak = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Hold(Stage):
        async def execute(self):
            with lock:
                peak["now"] += 1
                peak["max"] = max(peak["max"], peak["now"])
            await asyncio.sleep(0.005)
            with lock:
                peak["now"] -= 1
            return self.name

    def in_thread(tag: str, out: list) -> None:
        stages = [Hold(name=f"{tag}{i}") for i in range(5)]
        out.append(asyncio.run(asyncio.wait_for(shared.execute(stages), 10)))

    results: list = []
    threads = [threading.Thread(target=in_thread, args=(tag, results)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(r[0] for r in results) == ["a0", "b0"]  # both finished: no lost wake-up
    assert peak["max"] == 1 and shared.in_flight == 0


async def test_shared_semaphore_serves_waiting_groups_in_turn():
    done: list = []

    class Note(Stage):
        async def execute(self):
            await asyncio.sleep(0.005)
            done.append(self.name)

    shared = SemaphoreExecutionStrategy(1)
    busy = StageGroup(name="busy", stages=[Note(name=f"a{i}") for i in range(5)],
                      cycle_strategy=OnceCycleStrategy(), execution_strategy=shared)
    late = StageGroup(name="late", stages=[Note(name="b")], cycle_strategy=OnceCycleStrategy(),
                      execution_strategy=shared)
    first = asyncio.ensure_future(busy.run())
    await asyncio.sleep(0)  # the busy group holds the only slot
    await asyncio.gather(first, late.run())
    # The waiting group gets the slot as soon as it is handed back, not after the busy group ends.
    assert done.index("b") == 1


async def test_slot_is_counted_once_when_a_waiter_is_cancelled_as_it_is_released():
    slots = SemaphoreExecutionStrategy(1)._slots
    await slots.acquire()

    async def wait_then_release():
        await slots.acquire()
        slots.release()

    waiter = asyncio.ensure_future(wait_then_release())
    await asyncio.sleep(0)  # queued behind the holder
    waiter.cancel()
    slots.release()  # the holder lets go before the cancelled waiter has unwound
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.used == 0
    await slots.acquire()
    assert not slots.try_acquire()  # the limit of 1 still holds
    slots.release()


def test_semaphore_rejects_a_limit_beyond_the_engines_counter():
    with pytest.raises(ConfigurationError, match="SemaphoreExecutionStrategy.*'max_concurrent'"):
        SemaphoreExecutionStrategy(2**63)


async def test_runners_of_names_a_stage_class_passed_instead_of_an_instance():
    with pytest.raises(ConfigurationError, match=r"the class Echo \(pass an instance"):
        await SequentialExecutionStrategy().execute([Echo])
