"""Contracts of the asyncio execution strategies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import GRACE, Echo, Fail, Recorder, Tracked, Tracker, engine_tasks, run_on_test_loop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynapipeline import Handler, PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.errors import ConfigurationError, StageTimeoutError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, LoopCycleStrategy, OnceCycleStrategy

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
        out.append(asyncio.run(asyncio.wait_for(shared.execute(stages), GRACE)))

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


# --- chain=True: each member gets the previous member's result -------------------------------------


class Step(Stage):
    """Records what it was called with and returns ``(name, first positional argument)``."""

    calls: Any = None  # Any: pydantic would copy a list field

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((self.name, args, kwargs))
        return (self.name, args[0] if args else None)


class SyncStep(Stage):
    """A plain-def Step (not on the engine's inline path)."""

    calls: Any = None

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((self.name, args, kwargs))
        return (self.name, args[0] if args else None)


async def test_chain_passes_each_result_as_the_next_first_argument():
    calls: list = []
    stages = [Step(name="a", calls=calls), Step(name="b", calls=calls), Step(name="c", calls=calls)]
    results = await SequentialExecutionStrategy(chain=True).execute(stages, 1, 2, key="k")
    a = ("a", 1)
    b = ("b", a)
    assert results == [a, b, ("c", b)]  # every member's result, in order: nothing is lost
    assert calls == [
        ("a", (1, 2), {"key": "k"}),       # the run's arguments
        ("b", (a, 2), {"key": "k"}),       # the previous result replaces the first positional argument
        ("c", (b, 2), {"key": "k"}),
    ]


async def test_chain_without_positional_arguments_makes_the_result_the_only_one():
    calls: list = []
    stages = [Step(name="a", calls=calls), Step(name="b", calls=calls)]
    await SequentialExecutionStrategy(chain=True).execute(stages)
    assert [c[1] for c in calls] == [(), (("a", None),)]


async def test_chain_runs_handlers_timeouts_and_plain_def_stages_in_the_chain():
    calls: list = []
    hooks: list = []
    stages = [
        SyncStep(name="a", calls=calls),
        Step(name="b", calls=calls, handlers=[Recorder(tag="h", calls=hooks)]),
        Step(name="c", calls=calls, timeout=5),
        Step(name="d", calls=calls),
    ]
    results = await SequentialExecutionStrategy(chain=True).execute(stages, 0)
    assert [c[1][0] for c in calls] == [0, ("a", 0), ("b", ("a", 0)), ("c", ("b", ("a", 0)))]
    assert results[-1] == ("d", results[-2])
    assert ("after", "h", ("b", ("a", 0))) in hooks
    assert all(s.stats.count == 1 for s in stages)


async def test_chain_first_error_stops_the_rest():
    calls: list = []
    stages = [Step(name="a", calls=calls), Fail(name="bad"), Step(name="c", calls=calls)]
    with pytest.raises(ValueError, match="bad"):
        await SequentialExecutionStrategy(chain=True).execute(stages, 0)
    assert [c[0] for c in calls] == ["a"]


async def test_chain_hanging_stage_times_out_and_the_rest_does_not_run():
    calls: list = []
    stages = [Echo(name="hangs", delay=30, timeout=0.05), Step(name="after", calls=calls)]
    with pytest.raises(StageTimeoutError, match="hangs"):
        await SequentialExecutionStrategy(chain=True).execute(stages)
    assert calls == []
    assert engine_tasks() == set()


async def test_chain_cancelled_from_outside_leaves_nothing_running():
    tracker = Tracker()
    calls: list = []
    stages = [Tracked(name="slow", tracker=tracker, delay=30), Step(name="after", calls=calls)]
    task = asyncio.ensure_future(SequentialExecutionStrategy(chain=True).execute(stages))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.cancelled == ["slow"] and tracker.now == 0
    assert calls == []
    assert engine_tasks() == set()


async def test_chain_starts_again_from_the_run_arguments_every_cycle():
    calls: list = []
    group = StageGroup(name="g", stages=[Step(name="a", calls=calls), Step(name="b", calls=calls)],
                       cycle_strategy=LoopCycleStrategy(3), execution_strategy=SequentialExecutionStrategy(chain=True))
    assert await group.run("x") == [[("a", "x"), ("b", ("a", "x"))]] * 3
    assert [c[1][0] for c in calls] == ["x", ("a", "x")] * 3


async def test_chain_on_an_infinite_loop_starts_again_every_cycle():
    calls: list = []
    stop = asyncio.Event()

    class StopAfter(Stage):
        async def execute(self, previous: Any) -> Any:
            if len(calls) >= 6:
                stop.set()
            return previous

    group = StageGroup(name="g", stages=[Step(name="a", calls=calls), StopAfter(name="stop")],
                       cycle_strategy=InfiniteLoopStrategy(event=stop),
                       execution_strategy=SequentialExecutionStrategy(chain=True))
    assert await asyncio.wait_for(group.run("x"), GRACE) is None
    assert [c[1] for c in calls] == [("x",)] * len(calls) and len(calls) >= 6


async def test_chained_groups_pass_on_their_results_as_they_are():
    calls: list = []

    class Count(Stage):
        async def execute(self, previous: Any = None) -> Any:
            calls.append((self.name, previous))
            return self.name

    once = StageGroup(name="once", stages=[Count(name="a"), Count(name="b")], cycle_strategy=OnceCycleStrategy(),
                      execution_strategy=ConcurrentExecutionStrategy())
    loop = StageGroup(name="loop", stages=[Count(name="c")], cycle_strategy=LoopCycleStrategy(2),
                      execution_strategy=SequentialExecutionStrategy())
    last = StageGroup(name="last", stages=[Count(name="d")], cycle_strategy=OnceCycleStrategy(),
                      execution_strategy=SequentialExecutionStrategy())
    pipeline = PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "p", [once, loop, last], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy(chain=True))
    # Once: the list of its members' results; Loop: the list of per-cycle lists.
    assert await pipeline.run() == [["a", "b"], [["c"], ["c"]], ["d"]]
    assert calls == [("a", None), ("b", None), ("c", ["a", "b"]), ("c", ["a", "b"]), ("d", [["c"], ["c"]])]


@pytest.mark.parametrize("make", [
    lambda: SequentialExecutionStrategy(chain=True),
    lambda: ConcurrentExecutionStrategy(return_exceptions=True),
    lambda: SemaphoreExecutionStrategy(2, return_exceptions=True),
    lambda: MultithreadExecutionStrategy(return_exceptions=True),
    lambda: MultiprocessExecutionStrategy(return_exceptions=True),
])
async def test_chain_and_return_exceptions_on_no_members_give_empty_results(make):
    assert await make().execute([], 1) == []


@pytest.mark.parametrize("bad", ["yes", 1, 0, None])
def test_chain_must_be_a_bool(bad):
    with pytest.raises(ConfigurationError, match=r"SequentialExecutionStrategy: field 'chain' must be a bool"):
        SequentialExecutionStrategy(chain=bad)


@pytest.mark.parametrize("make", [
    ConcurrentExecutionStrategy,
    lambda **kw: SemaphoreExecutionStrategy(2, **kw),
    MultithreadExecutionStrategy,
    MultiprocessExecutionStrategy,
])
def test_chain_is_only_for_the_sequential_strategy(make):
    with pytest.raises(TypeError, match="chain"):
        make(chain=True)


def test_chain_and_return_exceptions_survive_pickling():
    import cloudpickle

    for strategy in (SequentialExecutionStrategy(chain=True), ConcurrentExecutionStrategy(return_exceptions=True),
                     SemaphoreExecutionStrategy(3, return_exceptions=True),
                     MultithreadExecutionStrategy(2, return_exceptions=True)):
        copy = cloudpickle.loads(cloudpickle.dumps(strategy))
        assert type(copy) is type(strategy) and repr(copy) == repr(strategy)
        assert type(copy.dispatch.__self__) is type(strategy.dispatch.__self__)
    assert cloudpickle.loads(cloudpickle.dumps(SequentialExecutionStrategy())).chain is False


# --- return_exceptions=True: a failed member's exception in its place ----------------------------------

GATHERING = [
    pytest.param(lambda: ConcurrentExecutionStrategy(return_exceptions=True), id="concurrent"),
    pytest.param(lambda: SemaphoreExecutionStrategy(2, return_exceptions=True), id="semaphore"),
    pytest.param(lambda: SemaphoreExecutionStrategy(1, return_exceptions=True), id="semaphore-1"),
]


class Fatal(BaseException):
    """Not an Exception: return_exceptions does not keep it."""


class RaisesFatal(Stage):
    delay: float = 0.01

    async def execute(self) -> None:
        await asyncio.sleep(self.delay)
        raise Fatal(self.name)


class Marks(Handler):
    """on_error marks the error, so a test sees the handler ran for that member."""

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        error.handled_by = component.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", GATHERING)
async def test_return_exceptions_keeps_the_siblings_and_their_results(make):
    tracker = Tracker()
    stages = [Tracked(name="s0", tracker=tracker, delay=0.05), FailNow(name="now"),
              Tracked(name="s1", tracker=tracker, delay=0.05), Fail(name="later", delay=0.01),
              Echo(name="inline")]
    results = await make().execute(stages)
    assert results[0] == "s0" and results[2] == "s1" and results[4] == "inline"
    assert isinstance(results[1], KeyError) and results[1].args == ("now",)
    assert isinstance(results[3], ValueError) and results[3].args == ("later",)
    assert sorted(tracker.finished) == ["s0", "s1"] and tracker.cancelled == []
    assert engine_tasks() == set()


@pytest.mark.parametrize("make", GATHERING)
async def test_return_exceptions_runs_the_failed_members_handlers(make):
    hooks: list = []
    stages = [Fail(name="a", handlers=[Marks()]), Echo(name="b"),
              Fail(name="c", handlers=[Recorder(tag="r", calls=hooks)])]
    a, b, c = await make().execute(stages)
    assert isinstance(a, ValueError) and a.handled_by == "a"
    assert b == "b"
    assert isinstance(c, ValueError) and ("on_error", "r", "ValueError") in hooks


@pytest.mark.parametrize("make", GATHERING)
async def test_return_exceptions_keeps_a_hanging_members_timeout_in_its_place(make):
    results = await make().execute([Echo(name="hangs", delay=30, timeout=0.05), Echo(name="ok", delay=0.01)])
    assert isinstance(results[0], StageTimeoutError) and results[0].stage == "hangs"
    assert results[1] == "ok"
    assert engine_tasks() == set()


@pytest.mark.parametrize("make", GATHERING)
async def test_return_exceptions_does_not_keep_a_base_exception(make):
    tracker = Tracker()
    slow = [Tracked(name=f"slow{i}", tracker=tracker, delay=5) for i in range(2)]
    strategy = make()
    with pytest.raises(Fatal):
        await strategy.execute([RaisesFatal(name="fatal"), *slow])
    assert tracker.now == 0
    assert tracker.finished == []
    if isinstance(strategy, SemaphoreExecutionStrategy):
        assert strategy.in_flight == 0
    assert engine_tasks() == set()


@pytest.mark.parametrize("make", GATHERING)
async def test_return_exceptions_outer_cancel_still_cancels_every_member(make):
    tracker = Tracker()
    stages = [Tracked(name=f"s{i}", tracker=tracker, delay=30) for i in range(3)]
    task = asyncio.ensure_future(make().execute(stages))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.now == 0 and tracker.finished == []
    assert engine_tasks() == set()


async def test_return_exceptions_semaphore_keeps_its_limit():
    tracker = Tracker()
    stages = [Fail(name=f"f{i}", delay=0.005) if i % 3 == 0 else Tracked(name=f"s{i}", tracker=tracker, delay=0.01)
              for i in range(12)]
    strategy = SemaphoreExecutionStrategy(3, return_exceptions=True)
    results = await strategy.execute(stages)
    assert [type(r).__name__ if i % 3 == 0 else r for i, r in enumerate(results)] == [
        "ValueError" if i % 3 == 0 else f"s{i}" for i in range(12)]
    assert tracker.peak <= 3 and strategy.in_flight == 0


async def test_return_exceptions_group_in_a_pipeline_does_not_fail_the_run():
    group = StageGroup(name="g", stages=[Echo(name="a"), Fail(name="b")], cycle_strategy=LoopCycleStrategy(2),
                       execution_strategy=ConcurrentExecutionStrategy(return_exceptions=True))
    pipeline = PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "p", [group], OnceCycleStrategy(),
                                                 SequentialExecutionStrategy())
    ((first, second),) = await pipeline.run()
    for cycle in (first, second):
        assert cycle[0] == "a" and isinstance(cycle[1], ValueError)


async def test_return_exceptions_default_still_cancels_and_propagates():
    for strategy in (ConcurrentExecutionStrategy(), SemaphoreExecutionStrategy(2)):
        assert strategy.return_exceptions is False
        tracker = Tracker()
        with pytest.raises(ValueError, match="boom"):
            await strategy.execute([Fail(name="boom", delay=0.01), Tracked(name="s", tracker=tracker, delay=5)])
        assert tracker.cancelled == ["s"]


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
@pytest.mark.parametrize("name, make", [
    ("ConcurrentExecutionStrategy", lambda v: ConcurrentExecutionStrategy(return_exceptions=v)),
    ("SemaphoreExecutionStrategy", lambda v: SemaphoreExecutionStrategy(2, return_exceptions=v)),
    ("MultithreadExecutionStrategy", lambda v: MultithreadExecutionStrategy(return_exceptions=v)),
    ("MultiprocessExecutionStrategy", lambda v: MultiprocessExecutionStrategy(return_exceptions=v)),
])
def test_return_exceptions_must_be_a_bool(name, make, bad):
    with pytest.raises(ConfigurationError, match=rf"{name}: field 'return_exceptions' must be a bool"):
        make(bad)


def test_sequential_does_not_take_return_exceptions():
    with pytest.raises(TypeError, match="return_exceptions"):
        SequentialExecutionStrategy(return_exceptions=True)  # type: ignore[call-arg]
