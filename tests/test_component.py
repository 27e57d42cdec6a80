"""Stage behaviour: run(), timing and stats, timeout, retries, plain def, bad input."""

from __future__ import annotations

import asyncio
import time

import pydantic
import pytest
from helpers import Echo, Fail, Recorder

from dynapipeline import Stage, StageGroup
from dynapipeline.errors import ConfigurationError, DynaPipelineError, StageTimeoutError
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class Flaky(Stage):
    """Fails ``failures`` times, then returns the attempt number."""

    failures: int
    attempts: int = 0
    stamps: list = pydantic.Field(default_factory=list)

    async def execute(self):
        self.attempts += 1
        self.stamps.append(time.monotonic())
        if self.attempts <= self.failures:
            raise ConnectionError(f"attempt {self.attempts}")
        return self.attempts


class Sleeper(Stage):
    seconds: float

    async def execute(self):
        await asyncio.sleep(self.seconds)
        return "woke"


class Blocking(Stage):
    seconds: float = 0.0

    def execute(self, x=1):
        time.sleep(self.seconds)
        return x * 2


async def test_run_returns_execute_result_with_args():
    class Add(Stage):
        async def execute(self, a, b=0):
            return a + b

    assert await Add(name="add").run(1, b=2) == 3


async def test_timing_of_last_run_and_running_stats():
    s = Sleeper(name="s", seconds=0.02)
    assert s.execution_time is None and s.start_time is None
    before = time.time()
    await s.run()
    await s.run()
    after = time.time()
    assert 0.015 < s.execution_time < 5
    assert before - 0.01 <= s.start_time <= s.end_time <= after + 0.01
    assert s.end_time - s.start_time == pytest.approx(s.execution_time, abs=1e-3)
    stats = s.stats
    assert stats.count == 2
    assert stats.min <= stats.max
    assert stats.total == pytest.approx(stats.mean * 2)
    assert stats.min > 0.015


async def test_failed_runs_are_timed_too():
    f = Fail(name="f")
    with pytest.raises(ValueError):
        await f.run()
    assert f.stats.count == 1 and f.execution_time is not None


async def test_timeout_raises_stage_timeout_error_naming_the_stage():
    s = Sleeper(name="slowpoke", seconds=5, timeout=0.05)
    with pytest.raises(StageTimeoutError, match="slowpoke") as info:
        await s.run()
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, asyncio.TimeoutError)
    assert isinstance(info.value, DynaPipelineError)
    assert info.value.stage == "slowpoke"


@pytest.mark.parametrize("timeout", [None, 0, -1])
async def test_no_timeout_for_none_or_non_positive(timeout):
    assert await Sleeper(name="s", seconds=0.01, timeout=timeout).run() == "woke"


async def test_timeout_within_limit_returns_result():
    assert await Sleeper(name="s", seconds=0.001, timeout=5).run() == "woke"


async def test_timeout_set_after_construction_applies():
    s = Sleeper(name="s", seconds=5)
    s.timeout = 0.02
    with pytest.raises(StageTimeoutError):
        await s.run()


async def test_retries_until_success_with_backoff_delays():
    s = Flaky(name="flaky", failures=2, retries=3, retry_delay=0.02, retry_backoff=2.0)
    assert await s.run() == 3
    gaps = [b - a for a, b in zip(s.stamps, s.stamps[1:], strict=False)]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035  # 0.02 then 0.02 * 2


async def test_retries_exhausted_raise_last_error_and_on_error_sees_it_once():
    calls: list = []
    s = Flaky(name="flaky", failures=5, retries=2, handlers=[Recorder(tag="h", calls=calls)])
    with pytest.raises(ConnectionError, match="attempt 3"):
        await s.run()
    assert s.attempts == 3
    assert [c for c in calls if c[0] == "on_error"] == [("on_error", "h", "ConnectionError")]


async def test_timed_out_attempt_is_retried():
    class SlowThenFast(Stage):
        attempts: int = 0

        async def execute(self):
            self.attempts += 1
            if self.attempts == 1:
                await asyncio.sleep(5)
            return self.attempts

    s = SlowThenFast(name="s", timeout=0.05, retries=1)
    assert await s.run() == 2


async def test_plain_def_execute_is_called_directly():
    b = Blocking(name="b")
    assert await b.run(21) == 42
    g = StageGroup(name="g", stages=[b, Echo(name="e")], cycle_strategy=OnceCycleStrategy(),
                   execution_strategy=SequentialExecutionStrategy())
    assert await g.run() == [2, "e"]


async def test_plain_def_overrun_reports_timeout_when_it_returns():
    with pytest.raises(StageTimeoutError, match="'b'"):
        await Blocking(name="b", seconds=0.05, timeout=0.01).run()


def test_user_fields_and_pydantic_field_and_arbitrary_types():
    class Configured(Stage):
        url: str = pydantic.Field(default="http://x", description="where")
        ready: asyncio.Event = pydantic.Field(default_factory=asyncio.Event)

        async def execute(self):
            return self.url

    s = Configured(name="c", url="http://y")
    assert s.url == "http://y" and isinstance(s.ready, asyncio.Event)
    with pytest.raises(pydantic.ValidationError, match="url"):
        Configured(name="c", url=3)


@pytest.mark.parametrize("bad", ["", "   ", 3, None])
def test_name_must_be_non_empty_string(bad):
    with pytest.raises((ConfigurationError, pydantic.ValidationError), match="Echo.*name"):
        Echo(name=bad)


def test_name_is_required():
    with pytest.raises(pydantic.ValidationError, match="name"):
        Echo()


def test_stage_without_execute_is_rejected():
    class Empty(Stage):
        pass

    with pytest.raises(ConfigurationError, match="Empty 'e'.*execute"):
        Empty(name="e")


@pytest.mark.parametrize("field,value", [("retries", -1), ("retry_delay", -0.5), ("retry_backoff", 0)])
def test_bad_retry_policy_is_rejected(field, value):
    with pytest.raises(ConfigurationError, match=f"Stage 's'.*{field}"):
        Echo(name="s", **{field: value})


def test_non_handler_is_rejected():
    with pytest.raises(ConfigurationError, match=r"Echo 's'.*handlers\[0\]"):
        Echo(name="s", handlers=["log"])
    with pytest.raises(ConfigurationError, match="Echo 's'.*handler"):
        Echo(name="s").add_handler(object())


async def test_copies_run_their_own_execute_with_fresh_stats():
    import copy

    original = Sleeper(name="a", seconds=0.0, timeout=1)
    await original.run()
    for clone in (original.model_copy(update={"name": "b", "seconds": 0.001}), copy.copy(original),
                  copy.deepcopy(original)):
        assert clone._runner is not original._runner
        assert clone.stats.count == 0
        await clone.run()
        assert clone.stats.count == 1
    assert original.stats.count == 1
    renamed = original.model_copy(update={"name": "b", "timeout": 0.01, "seconds": 5})
    with pytest.raises(StageTimeoutError, match="'b'"):
        await renamed.run()


async def test_a_stages_own_timeout_error_is_not_mistaken_for_its_deadline():
    class Own(Stage):
        async def execute(self):
            raise TimeoutError("database did not answer")

    with pytest.raises(TimeoutError, match="database did not answer") as info:
        await Own(name="own", timeout=30).run()
    assert not isinstance(info.value, StageTimeoutError)


async def test_def_returning_an_awaitable_is_awaited_under_the_timeout():
    class Wrapped(Stage):
        def execute(self):
            return asyncio.sleep(0, result=42)  # e.g. a sync decorator around an async function

    class WrappedSlow(Stage):
        def execute(self):
            return asyncio.sleep(5)

    assert await Wrapped(name="w").run() == 42
    assert await Wrapped(name="w", timeout=5).run() == 42
    with pytest.raises(StageTimeoutError, match="'ws'"):
        await WrappedSlow(name="ws", timeout=0.02).run()


# --- bad values (issue 7 item 6) -------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("value", [NAN, True, False, "1.5"])
def test_bad_timeout_is_rejected_naming_the_stage_and_field(value):
    with pytest.raises(ConfigurationError, match="Stage 's'.*'timeout'"):
        Echo(name="s", timeout=value)


@pytest.mark.parametrize("timeout", [INF, -INF])
async def test_infinite_timeout_means_no_limit(timeout):
    stage = Sleeper(name="s", seconds=0.001, timeout=timeout)
    assert await stage.run() == "woke"
    assert stage.timeout == timeout  # the field keeps what the user wrote


@pytest.mark.parametrize("value", [True, False, 1.0, "2", None])
def test_retries_must_be_a_real_int(value):
    with pytest.raises(ConfigurationError, match="Stage 's'.*'retries'"):
        Echo(name="s", retries=value)


@pytest.mark.parametrize("field", ["retry_delay", "retry_backoff"])
@pytest.mark.parametrize("value", [NAN, INF, -INF, True, "1", None])
def test_retry_delay_and_backoff_must_be_finite_numbers(field, value):
    with pytest.raises(ConfigurationError, match=f"Stage 's'.*'{field}'"):
        Echo(name="s", **{field: value})


def test_bad_run_policy_set_after_construction_is_rejected():
    stage = Echo(name="s")
    with pytest.raises(ConfigurationError, match="Stage 's'.*'timeout'"):
        stage.timeout = NAN
    assert stage.timeout is None


def test_a_stage_class_instead_of_an_instance_is_named():
    with pytest.raises(ConfigurationError, match=r"stages\[0\].*the class Echo \(pass an instance: Echo\(name=...\)\)"):
        StageGroup(name="g", stages=[Echo], cycle_strategy=OnceCycleStrategy(),
                   execution_strategy=SequentialExecutionStrategy())


def test_a_strategy_class_instead_of_an_instance_is_named():
    with pytest.raises(ConfigurationError, match=r"'execution_strategy'.*the class SequentialExecutionStrategy"):
        StageGroup(name="g", stages=[], cycle_strategy=OnceCycleStrategy(),
                   execution_strategy=SequentialExecutionStrategy)


# -- unknown keywords -------------------------------------------------------------------------------

def test_a_misspelled_keyword_names_the_field_and_the_closest_known_one():
    with pytest.raises(ConfigurationError, match=r"^Stage 'a': unknown field 'retires' \(did you mean 'retries'\?\)"):
        Stage(name="a", retires=2)


def test_an_unknown_keyword_without_a_close_field_lists_the_known_ones():
    with pytest.raises(ConfigurationError,
                       match=r"Echo 'a': unknown field 'colour'; known fields: context, delay, handlers, log, name, "):
        Echo(name="a", colour="red")


def test_every_unknown_keyword_is_named():
    with pytest.raises(ConfigurationError, match=r"unknown field 'retires'.*unknown field 'timout'"):
        Echo(name="a", retires=2, timout=1)


def test_a_group_and_a_pipeline_reject_unknown_keywords_too():
    from dynapipeline import Pipeline

    stage = Echo(name="a")
    with pytest.raises(ConfigurationError, match=r"StageGroup 'g': unknown field 'stage' \(did you mean 'stages'\?\)"):
        StageGroup(name="g", stage=[stage], cycle_strategy=OnceCycleStrategy(),
                   execution_strategy=SequentialExecutionStrategy())
    group = StageGroup(name="g", stages=[stage], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=SequentialExecutionStrategy())
    with pytest.raises(ConfigurationError, match=r"Pipeline 'p': unknown field 'group' \(did you mean 'groups'\?\)"):
        Pipeline(name="p", group=[group], cycle_strategy=OnceCycleStrategy(),
                 execution_strategy=SequentialExecutionStrategy())


def test_a_handler_rejects_unknown_keywords():
    with pytest.raises(ConfigurationError, match=r"Recorder: unknown field 'tags' \(did you mean 'tag'\?\)"):
        Recorder(tags="x", calls=[])


def test_declared_fields_of_subclasses_and_aliases_are_accepted():
    class Aliased(Stage):
        url: str = pydantic.Field(default="", alias="address")
        retries_left: int = 0

        async def execute(self):
            return self.url

    s = Aliased(name="a", address="http://x", retries_left=2, retries=1)
    assert (s.url, s.retries_left, s.retries) == ("http://x", 2, 1)


def test_a_subclass_that_allows_extra_fields_keeps_them():
    class Loose(Echo):
        model_config = pydantic.ConfigDict(extra="allow")

    assert Loose(name="a", colour="red").colour == "red"  # type: ignore[attr-defined]


async def test_runner_of_is_the_runner_that_counts_the_components_runs():
    from dynapipeline._model.component import private_of, runner_of

    stage = Echo(name="a")
    runner = runner_of(stage)
    assert runner is private_of(stage)["_runner"]
    await stage.run()
    await stage.run()
    assert runner.count == 2 == stage.stats.count
