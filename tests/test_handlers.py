"""Handlers: hook order, nesting, sync/async, attachment to stages, groups and pipelines."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import Echo, Fail, Recorder

from dynapipeline import Handler, PipelineFactory, PipeLineType, StageGroup
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


async def test_two_handlers_order_before_around_after():
    calls: list = []
    s = Echo(name="s", handlers=[Recorder(tag="a", calls=calls), Recorder(tag="b", calls=calls)])
    assert await s.run() == "s"
    assert calls == [
        ("before", "a", "s"),
        ("before", "b", "s"),
        ("around-in", "a"),
        ("around-in", "b"),
        ("around-out", "b"),
        ("around-out", "a"),
        ("after", "a", "s"),
        ("after", "b", "s"),
    ]


async def test_on_error_runs_in_attach_order_then_error_propagates():
    calls: list = []
    f = Fail(name="f", handlers=[Recorder(tag="a", calls=calls)])
    f.add_handler(Recorder(tag="b", calls=calls))
    with pytest.raises(ValueError, match="f"):
        await f.run()
    errors = [c for c in calls if c[0] == "on_error"]
    assert errors == [("on_error", "a", "ValueError"), ("on_error", "b", "ValueError")]
    assert not [c for c in calls if c[0] == "after"]


async def test_handlers_are_optional_and_may_be_sync_or_async():
    seen: list = []

    class OnlyAfter(Handler):
        async def after(self, component, result, *args, **kwargs):
            seen.append(result)

    class SyncAround(Handler):
        def around(self, component, execute, *args, **kwargs):
            return execute(*args, **kwargs)  # returns the awaitable; the engine awaits it

    s = Echo(name="s", handlers=[SyncAround(), OnlyAfter()])
    assert await s.run() == "s"
    assert seen == ["s"]


async def test_around_can_replace_the_result():
    class Upper(Handler):
        async def around(self, component, execute, *args, **kwargs):
            return (await execute(*args, **kwargs)).upper()

    assert await Echo(name="s", handlers=[Upper()]).run() == "S"


async def test_add_handler_after_construction_takes_effect():
    calls: list = []
    s = Echo(name="s")
    await s.run()
    s.add_handler(Recorder(tag="late", calls=calls))
    await s.run()
    assert ("before", "late", "s") in calls


def test_handler_settings_are_pydantic_fields():
    class LogHandler(Handler):
        level: str = "INFO"

    assert LogHandler(level="DEBUG").level == "DEBUG"


async def test_handlers_on_groups_and_pipelines_wrap_their_run():
    calls: list = []
    group = StageGroup(name="g", stages=[Echo(name="s")], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=SequentialExecutionStrategy(),
                       handlers=[Recorder(tag="group", calls=calls)])
    pipeline = PipelineFactory().create_pipeline(
        PipeLineType.SIMPLE, "p", [group], OnceCycleStrategy(), SequentialExecutionStrategy())
    pipeline.add_handler(Recorder(tag="pipe", calls=calls))
    assert await pipeline.run() == [["s"]]
    assert calls[0] == ("before", "pipe", "p")
    assert ("before", "group", "g") in calls
    assert calls[-1] == ("after", "pipe", [["s"]])


async def test_hooks_are_resolved_when_attached_not_per_run():
    calls: list = []
    handler = Recorder(tag="a", calls=calls)
    s = Echo(name="s", handlers=[handler])
    # Replacing the class's hook after attaching does not change what the engine calls.
    original = Recorder.before
    try:
        Recorder.before = lambda self, component, *a, **k: calls.append("replaced")  # type: ignore[method-assign]
        await s.run()
    finally:
        Recorder.before = original  # type: ignore[method-assign]
    assert "replaced" not in calls and ("before", "a", "s") in calls


class SeesItsRun(Handler):
    """Notes, in ``after`` and ``on_error``, the timing its component shows; ``fail`` makes ``after`` raise."""

    seen: Any  # Any: pydantic would copy a list
    fail: bool = False

    def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        self.seen.append(("after", component.execution_time, component.stats.count, component.end_time))
        if self.fail:
            raise LookupError("after failed")

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        self.seen.append(("on_error", component.execution_time, component.stats.count,
                          component.report()[component.name].errors))


async def test_after_sees_the_timing_of_the_run_that_just_finished():
    seen: list[Any] = []
    s = Echo(name="s", delay=0.001, handlers=[SeesItsRun(seen=seen)])
    await s.run()
    first = (s.execution_time, s.stats.count, s.end_time)
    await s.run()
    second = (s.execution_time, s.stats.count, s.end_time)
    assert seen == [("after", *first), ("after", *second)]
    assert first[0] is not None and first[0] > 0 and first[1] == 1


async def test_an_after_that_raises_counts_the_run_as_failed_and_on_error_sees_it():
    seen: list[Any] = []
    s = Echo(name="s", handlers=[SeesItsRun(seen=seen, fail=True)])
    with pytest.raises(LookupError, match="after failed"):
        await s.run()
    assert s.stats.count == 1 and s.report()["s"].errors == 1
    assert seen == [("after", s.execution_time, 1, s.end_time), ("on_error", s.execution_time, 1, 1)]
