"""Pipelines: shared context, ADVANCED locking, stop and drain, overlap, leaks, bad input."""

from __future__ import annotations

import asyncio

import pytest
from helpers import GRACE, Echo, Fail, Tracked, Tracker, engine_tasks, group, pipeline

from dynapipeline import AdvancedPipeline, Pipeline, PipelineFactory, PipeLineType, SimplePipeline, Stage, StageGroup
from dynapipeline.contexts import AsyncLockableContext, ProtectedContext
from dynapipeline.errors import ConfigurationError, ContextLockedError, PipelineRunningError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    ExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, LoopCycleStrategy, OnceCycleStrategy


class Bump(Stage):
    """Adds one to context['n'] under the context's lock."""

    async def execute(self):
        async with self.context as ctx:
            ctx["n"] += 1
        return self.context["n"]


class Spin(Stage):
    """Counts its runs, yielding once per run."""

    runs: int = 0

    async def execute(self):
        self.runs += 1
        await asyncio.sleep(0.001)
        return self.runs


async def test_one_context_is_shared_by_pipeline_groups_and_stages():
    stages = [Bump(name=f"b{i}") for i in range(4)]
    groups = [group(stages[:2]), group(stages[2:], ConcurrentExecutionStrategy())]
    p = pipeline(groups, kind=PipeLineType.SIMPLE, context={"n": 0})
    await p.run()
    assert p.context["n"] == 4
    assert all(s.context is p.context for s in stages)
    assert isinstance(p, SimplePipeline) and isinstance(p.context, AsyncLockableContext)


async def test_advanced_locks_context_during_run_and_unlocks_after():
    seen = []

    class Peek(Stage):
        async def execute(self):
            seen.append(self.context.locked)
            return self.context["k"]

    p = pipeline([group([Peek(name="peek")])], context={"k": "v"})
    assert isinstance(p, AdvancedPipeline) and isinstance(p.context, ProtectedContext)
    assert await p.run() == [["v"]]
    assert seen == [True]
    assert not p.context.locked
    p.context["k"] = "w"  # writable again after the run


async def test_advanced_context_write_during_run_raises():
    p = pipeline([group([Bump(name="writer")])], context={"n": 0})
    with pytest.raises(ContextLockedError, match="'n'.*pipeline 'p'"):
        await p.run()
    assert not p.context.locked  # unlocked after a failed run too
    assert p.context["n"] == 0


async def test_advanced_context_unlocked_after_stop():
    p = pipeline([group([Spin(name="s")], cycle=InfinitLoopStrategy())])
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.02)
    assert p.context.locked
    p.stop()
    assert await task is None
    assert not p.context.locked


async def test_custom_pipeline_takes_the_callers_context():
    ctx = AsyncLockableContext({"n": 10})
    p = PipelineFactory().create_pipeline(PipeLineType.CUSTOM, "p", [group([Bump(name="b")])],
                                          OnceCycleStrategy(), SequentialExecutionStrategy(), context=ctx)
    await p.run()
    assert p.context is ctx and ctx["n"] == 11
    assert type(p) is Pipeline


async def test_stop_cancels_in_flight_stages_and_run_returns_none():
    tracker = Tracker()
    stages = [Tracked(name=f"s{i}", tracker=tracker, delay=10) for i in range(3)]
    p = pipeline([group(stages, ConcurrentExecutionStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.05)
    assert p.running
    p.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert sorted(tracker.cancelled) == ["s0", "s1", "s2"]
    assert not p.running
    assert engine_tasks() == set()


async def test_stop_from_another_thread():
    p = pipeline([group([Spin(name="s")], cycle=InfinitLoopStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.02)
    await asyncio.to_thread(p.stop)
    assert await asyncio.wait_for(task, GRACE) is None


async def test_stop_when_idle_is_a_no_op_and_pipeline_runs_again_after_stop():
    s = Spin(name="s")
    p = pipeline([group([s])], kind=PipeLineType.SIMPLE)
    p.stop()
    assert await p.run() == [[1]]
    forever = pipeline([group([Spin(name="x")], cycle=InfinitLoopStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(forever.run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_drain_finishes_the_current_cycle_then_returns_none():
    log: list = []
    stages = [Echo(name=f"s{i}", delay=0.02, log=log) for i in range(3)]
    p = pipeline([group(stages, cycle=InfinitLoopStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.03)  # inside the first cycle, at stage s1
    p.stop(drain=True)
    assert await asyncio.wait_for(task, GRACE) is None
    # The cycle in flight ran to its end: every start has its end, and it ended on the last stage.
    assert log.count(("start", "s0")) == log.count(("end", "s2"))
    assert log[-1] == ("end", "s2")


async def test_drain_ends_a_loop_cycle_strategy_early():
    s = Spin(name="s")
    p = pipeline([group([s], cycle=LoopCycleStrategy(10_000))], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.02)
    p.stop(drain=True)
    assert await asyncio.wait_for(task, GRACE) is None
    assert 0 < s.runs < 10_000


async def test_second_concurrent_run_raises():
    p = pipeline([group([Spin(name="s")], cycle=InfinitLoopStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.01)
    with pytest.raises(PipelineRunningError, match="'p'.*already running"):
        await p.run()
    p.stop()
    await task


@pytest.mark.parametrize("execution", [SequentialExecutionStrategy, ConcurrentExecutionStrategy,
                                       lambda: SemaphoreExecutionStrategy(2)])
async def test_no_engine_task_left_after_success_or_failure(execution):
    stages = [Echo(name=f"s{i}", delay=0.001) for i in range(5)]
    ok = pipeline([group(stages, execution())], kind=PipeLineType.SIMPLE)
    await ok.run()
    assert engine_tasks() == set()
    bad = pipeline([group(
        [Echo(name="a", delay=1), Fail(name="f", delay=0.01), Echo(name="b", delay=1)], execution())],
        kind=PipeLineType.SIMPLE)
    with pytest.raises(ValueError):
        await bad.run()
    assert engine_tasks() == set()


async def test_pipeline_timing_is_recorded():
    g = group([Echo(name="a", delay=0.01)])
    p = pipeline([g], kind=PipeLineType.SIMPLE)
    await p.run()
    assert p.execution_time >= g.execution_time > 0
    assert p.stats.count == 1


# --- bad input -----------------------------------------------------------------------------

def test_group_rejects_non_stage():
    with pytest.raises(ConfigurationError, match=r"StageGroup 'g'.*stages\[1\].*Stage.*str"):
        group([Echo(name="a"), "not a stage"])


def test_group_given_one_stage_instead_of_a_list_says_to_wrap_it():
    with pytest.raises(ConfigurationError, match=r"^StageGroup 'g': field 'stages' must be a list of stages, "
                                                 r"got Echo 'x' \(wrap it in a list\)$"):
        group(Echo(name="x"))


@pytest.mark.parametrize(("stages", "kind"), [("ab", "str"), (3, "int"), ({"a": 1}, "dict")])
def test_group_given_no_list_of_stages_names_the_field(stages, kind):
    with pytest.raises(ConfigurationError, match=rf"^StageGroup 'g': field 'stages' must be a list of stages, "
                                                 rf"got {kind}$"):
        group(stages)


def test_pipeline_given_one_group_instead_of_a_list_says_to_wrap_it():
    with pytest.raises(ConfigurationError, match=r"^SimplePipeline 'p': field 'groups' must be a list of groups, "
                                                 r"got StageGroup 'g' \(wrap it in a list\)$"):
        pipeline(group([Echo(name="a")]), kind=PipeLineType.SIMPLE)


def test_group_takes_a_tuple_or_any_iterable_of_stages():
    assert [s.name for s in group((Echo(name="a"), Echo(name="b"))).stages] == ["a", "b"]
    assert [s.name for s in group(Echo(name=n) for n in "cd").stages] == ["c", "d"]


def test_group_rejects_same_stage_twice():
    s = Echo(name="a")
    with pytest.raises(ConfigurationError, match=r"StageGroup 'g'.*stages\[1\].*'a'"):
        group([s, s])


def test_group_rejects_bad_strategies():
    with pytest.raises(ConfigurationError, match="StageGroup 'g'.*execution_strategy"):
        StageGroup(name="g", stages=[], cycle_strategy=OnceCycleStrategy(), execution_strategy="concurrent")
    with pytest.raises(ConfigurationError, match="StageGroup 'g'.*cycle_strategy"):
        StageGroup(name="g", stages=[], cycle_strategy=SequentialExecutionStrategy(),
                   execution_strategy=SequentialExecutionStrategy())


def test_pipeline_rejects_non_group_and_duplicates():
    with pytest.raises(ConfigurationError, match=r"SimplePipeline 'p'.*groups\[0\].*StageGroup.*Echo"):
        pipeline([Echo(name="a")], kind=PipeLineType.SIMPLE)
    g = group([Echo(name="a")])
    with pytest.raises(ConfigurationError, match=r"groups\[1\]"):
        pipeline([g, g], kind=PipeLineType.SIMPLE)


def test_pipeline_rejects_bad_strategy():
    with pytest.raises(ConfigurationError, match="AdvancedPipeline 'p'.*cycle_strategy"):
        PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [], "once", SequentialExecutionStrategy())


def test_factory_rejects_unknown_type():
    with pytest.raises(ConfigurationError, match="pipeline_type"):
        PipelineFactory().create_pipeline("simple", "p", [], OnceCycleStrategy(), SequentialExecutionStrategy())


def test_simple_pipeline_rejects_strategies_that_leave_the_loop():
    class OffLoop(ExecutionStrategy):
        offloads = True

    g = group([Echo(name="a")], OffLoop(), name="heavy")
    with pytest.raises(ConfigurationError, match="StageGroup 'heavy'.*OffLoop"):
        pipeline([g], kind=PipeLineType.SIMPLE)
    assert isinstance(pipeline([g]), AdvancedPipeline)


async def test_report_lists_every_component_with_its_runs():
    g = group([Echo(name="alpha", delay=0.001), Echo(name="beta")], cycle=LoopCycleStrategy(3), name="grp")
    p = pipeline([g], kind=PipeLineType.SIMPLE)
    await p.run()
    lines = str(p.report()).splitlines()
    assert lines[0].split()[:3] == ["component", "kind", "runs"]
    table = {line.split()[0]: line.split() for line in lines[1:5]}
    assert table["p"][1:3] == ["SimplePipeline", "1"]
    assert table["grp"][1:3] == ["StageGroup", "1"]
    assert table["alpha"][1:3] == ["Echo", "3"] and table["beta"][2] == "3"
    assert float(table["alpha"][3]) == pytest.approx(g.stages[0].stats.total, abs=1e-6)


async def test_back_to_back_runs_each_see_a_locked_context():
    class Locked(Stage):
        async def execute(self):
            await asyncio.sleep(0.02)  # the next run is trying to start meanwhile
            return self.context.locked

    p = pipeline([group([Locked(name="s")])])

    async def retry_until_free():
        while True:
            try:
                return await p.run()
            except PipelineRunningError:
                await asyncio.sleep(0)

    first = asyncio.ensure_future(p.run())
    await asyncio.sleep(0)
    second = asyncio.ensure_future(retry_until_free())
    assert await first == [[True]]
    assert await second == [[True]]
    assert not p.context.locked


async def test_repeated_stop_still_awaits_every_sibling():
    unwound: list = []

    class SlowToUnwind(Stage):
        async def execute(self):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # clean-up that takes a while
                unwound.append(self.name)
                raise

    stages = [SlowToUnwind(name=f"s{i}") for i in range(3)]
    p = pipeline([group(stages, ConcurrentExecutionStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.02)
    p.stop()
    await asyncio.sleep(0.01)
    p.stop()  # a second cancel while the siblings unwind
    assert await task is None
    assert sorted(unwound) == ["s0", "s1", "s2"]
    assert engine_tasks() == set()


def test_stop_after_the_loop_closed_is_a_no_op():
    p = pipeline([group([Echo(name="a")])], kind=PipeLineType.SIMPLE)
    loop = asyncio.new_event_loop()
    loop.close()
    # A stop() racing the end of a run from another thread finds a closed loop.
    p._active = (asyncio.Future(loop=loop), __import__("dynapipeline._engine")._engine.RunControl(), loop, -1)
    try:
        p.stop()
    finally:
        p._active = None


async def test_copies_of_groups_and_pipelines_run_their_own_members():
    import copy

    a, b = Echo(name="a"), Echo(name="b")
    g = group([a])
    assert await g.model_copy(update={"stages": [b]}).run() == ["b"]
    deep = copy.deepcopy(g)
    assert await deep.run() == ["a"]
    assert deep.stages[0] is not a and deep.stages[0].stats.count == 1 and a.stats.count == 0
    assert deep.execution_strategy is g.execution_strategy  # strategies are shared, not copied
    p = pipeline([group([Spin(name="s")], cycle=InfinitLoopStrategy())], kind=PipeLineType.SIMPLE)
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.01)
    clone = p.model_copy()
    assert not clone.running
    p.stop()
    await task


@pytest.mark.parametrize("kind", [PipeLineType.SIMPLE, PipeLineType.ADVANCED, PipeLineType.CUSTOM])
@pytest.mark.parametrize("data", ["abc", 5, [1, 2], "", 0])
def test_factory_rejects_context_data_that_is_not_a_mapping(kind, data):
    with pytest.raises(ConfigurationError, match="pipeline 'p'.*'context_data'.*mapping"):
        pipeline([], kind=kind, context=data)


def test_pipeline_rejects_a_context_that_is_not_a_context_or_mapping():
    with pytest.raises(ConfigurationError, match="Pipeline 'p'.*'context'"):
        Pipeline(name="p", groups=[], cycle_strategy=OnceCycleStrategy(),
                 execution_strategy=SequentialExecutionStrategy(), context="abc")


def test_simple_pipeline_names_itself_once_when_its_own_strategy_leaves_the_loop():
    class OffLoop(ExecutionStrategy):
        offloads = True

    with pytest.raises(ConfigurationError) as info:
        PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "p", [], OnceCycleStrategy(), OffLoop())
    assert str(info.value).count("'p'") == 1
    assert "field 'execution_strategy' is OffLoop" in str(info.value)


def test_pipeline_names_a_group_class_passed_instead_of_an_instance():
    with pytest.raises(ConfigurationError, match=r"groups\[0\].*the class StageGroup \(pass an instance"):
        pipeline([StageGroup], kind=PipeLineType.SIMPLE)
