"""Every numeric field and constructor argument, fed ints, bools, floats (NaN, ±inf, negatives),
strings and None: each value is accepted with its documented meaning, or rejected with one of
our errors or pydantic's ValidationError; never a raw TypeError/ValueError, never a hang.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from helpers import run_on_test_loop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynapipeline import Stage, StageGroup, Step
from dynapipeline.errors import ConfigurationError, DynaPipelineError, StageTimeoutError
from dynapipeline.execution import (
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, LoopCycleStrategy, OnceCycleStrategy

VALUES = st.one_of(
    st.integers(),
    st.sampled_from([0, 1, -1, sys.maxsize, sys.maxsize + 1, 2**64, -(2**63), 10**400, -(10**400)]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-300, 1e300]),
    st.text(max_size=4),
    st.sampled_from(["1", "0.5", "nan", "inf"]),
    st.none(),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUN_LIMIT = 10.0  # seconds: a run that takes longer counts as a hang


class Noop(Stage):
    async def execute(self) -> str:
        return "done"


class FailOnce(Stage):
    """Fails its first attempt, then returns the attempt number."""

    attempts: int = 0

    async def execute(self) -> int:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("first attempt")
        return self.attempts


def _float(value: Any) -> float | None:
    """The value as a float if it is a number (not a bool) that fits one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        return None
    return float(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build(make: Callable[[], Any]) -> Any:
    """What ``make()`` built, or None when it rejected the value with one of the allowed errors."""
    try:
        return make()
    except (DynaPipelineError, pydantic.ValidationError):
        return None


def _run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, RUN_LIMIT)

    return run_on_test_loop(bounded())


def _run_stage(stage: Stage) -> Any:
    return _run(StageGroup(name="g", stages=[stage], cycle_strategy=OnceCycleStrategy(),
                           execution_strategy=SequentialExecutionStrategy()).run())


@FAST
@given(VALUES)
def test_stage_timeout(value: Any) -> None:
    stage = _build(lambda: Noop(name="s", timeout=value))
    if stage is None:
        assert not (value is None or (_float(value) is not None and not math.isnan(value)))
        return
    # Documented: seconds; None, <= 0 or inf mean no limit.
    assert value is None or (_float(value) is not None and not math.isnan(value))
    if value is None or value <= 0 or math.isinf(value):
        assert _run_stage(stage) == ["done"]
    else:
        try:
            assert _run_stage(stage) == ["done"]
        except StageTimeoutError:
            assert value < 1.0  # only a tiny deadline may expire before a no-op returns


@FAST
@given(VALUES)
def test_stage_retries(value: Any) -> None:
    stage = _build(lambda: FailOnce(name="s", retries=value))
    if stage is None:
        assert not (_int(value) and 0 <= value <= sys.maxsize)
        return
    assert _int(value) and value >= 0  # documented: an int >= 0 of extra attempts
    if value == 0:
        with pytest.raises(ConnectionError):
            _run_stage(stage)
    else:
        assert _run_stage(stage) == [2]


@FAST
@pytest.mark.parametrize("field", ["retry_delay", "retry_backoff"])
@given(value=VALUES)
def test_stage_retry_delay_and_backoff(field: str, value: Any) -> None:
    stage = _build(lambda: FailOnce(name="s", retries=1, **{field: value}))
    lowest_ok = (lambda v: v >= 0) if field == "retry_delay" else (lambda v: v > 0)
    documented = _float(value) is not None and math.isfinite(value) and lowest_ok(value)
    if stage is None:
        assert not documented
        return
    assert documented
    # The first retry waits retry_delay * retry_backoff**0 = retry_delay seconds.
    if field == "retry_backoff" or value <= 0.01:
        assert _run_stage(stage) == [2]


@FAST
@given(VALUES)
def test_loop_cycles(value: Any) -> None:
    strategy = _build(lambda: LoopCycleStrategy(value))
    if strategy is None:
        assert not (_int(value) and 0 <= value <= sys.maxsize)
        return
    assert _int(value) and value >= 0  # documented: that many cycles, 0 runs nothing
    if value <= 20:
        group = StageGroup(name="g", stages=[Noop(name="s")], cycle_strategy=strategy,
                           execution_strategy=SequentialExecutionStrategy())
        assert _run(group.run()) == [["done"]] * value


@FAST
@given(VALUES)
def test_infinite_loop_interval(value: Any) -> None:
    strategy = _build(lambda: InfiniteLoopStrategy(interval=value))
    if strategy is None:
        assert not (_float(value) is not None and math.isfinite(value) and value >= 0)
        return
    assert _float(value) is not None and math.isfinite(value) and value >= 0  # documented: seconds between cycles
    if value <= 0.01:
        event = asyncio.Event()

        class SetEvent(Stage):
            async def execute(self) -> None:
                event.set()

        group = StageGroup(name="g", stages=[SetEvent(name="s")], cycle_strategy=InfiniteLoopStrategy(event, value),
                           execution_strategy=SequentialExecutionStrategy())
        assert _run(group.run()) is None


@FAST
@given(VALUES)
def test_semaphore_max_concurrent(value: Any) -> None:
    strategy = _build(lambda: SemaphoreExecutionStrategy(value))
    if strategy is None:
        assert not (_int(value) and 1 <= value <= sys.maxsize)
        return
    assert _int(value) and value >= 1  # documented: at most that many members in flight
    stages = [Noop(name=f"s{i}") for i in range(3)]
    assert _run(strategy.execute(stages)) == ["done"] * 3


@FAST
@given(rate=VALUES, burst=VALUES)
def test_semaphore_and_step_rate_and_burst(rate: Any, burst: Any) -> None:
    # Construction only: a valid tiny rate would make a run wait for ages.
    strategy = _build(lambda: SemaphoreExecutionStrategy(2, rate=rate, burst=burst))
    number = _float(rate)
    rate_ok = number is not None and 0 < number < math.inf and math.isfinite(1 / number)
    burst_ok = _int(burst) and 1 <= burst <= sys.maxsize
    # Documented: rate None (no rate) or a finite number > 0 per second; burst None (1) or an int >= 1, with a rate.
    valid = (rate is None and burst is None) or (rate_ok and (burst is None or burst_ok))
    assert (strategy is not None) == valid
    if strategy is not None and rate is not None:
        assert strategy.rate == number and strategy.burst == (1 if burst is None else burst)
    step = _build(lambda: Step(Noop(name="s"), rate=rate, burst=burst))
    assert (step is not None) == valid


@FAST
@given(value=VALUES)
def test_process_shared_memory_threshold(value: Any) -> None:
    # Construction only: it starts no process.
    strategy = _build(lambda: MultiprocessExecutionStrategy(2, shared_memory_threshold=value))
    if strategy is None:
        assert not (value is None or (_int(value) and value >= 1))
        return
    # Documented: bytes (an int >= 1) from which a buffer goes through shared memory, or None for never.
    assert value is None or (_int(value) and value >= 1)
    assert strategy.shared_memory_threshold == value


@FAST
@pytest.mark.parametrize("cls", [MultithreadExecutionStrategy, MultiprocessExecutionStrategy])
@given(value=VALUES)
def test_pool_max_workers(cls: type, value: Any) -> None:
    # Construction only: it starts no thread or process.
    strategy = _build(lambda: cls(value))
    if strategy is None:
        assert not (value is None or (_int(value) and 1 <= value <= sys.maxsize))
        return
    # Documented: None for the default pool size, else an int >= 1.
    assert value is None or (_int(value) and value >= 1)
    assert strategy.max_workers == value


@FAST
@pytest.mark.parametrize("cls", [MultithreadExecutionStrategy, MultiprocessExecutionStrategy])
@given(value=VALUES)
def test_pool_max_tasks_per_worker(cls: type, value: Any) -> None:
    # Construction only: it starts no thread or process.
    strategy = _build(lambda: cls(2, max_tasks_per_worker=value))
    if strategy is None:
        assert not (value is None or (_int(value) and value >= 1))
        return
    # Documented: None for never, else an int >= 1 (stage runs before a worker is replaced).
    assert value is None or (_int(value) and value >= 1)
    assert strategy.max_tasks_per_worker == value


@FAST
@given(value=st.one_of(VALUES, st.sampled_from(["2GB", "300MB", "512MiB", "1.5GB", "1kb", "lots", "0MB", "-1GB",
                                                "GB", "1.5.GB", "1 XB"])))
def test_process_max_memory_per_worker(value: Any) -> None:
    # Construction only: it starts no process.
    strategy = _build(lambda: MultiprocessExecutionStrategy(2, max_memory_per_worker=value))
    if strategy is None:
        return
    # Documented: None for never, else a number of bytes > 0 (an int, or a size string), kept as an int.
    limit = strategy.max_memory_per_worker
    assert value is None and limit is None or _int(limit) and limit >= 1
    assert not _int(value) or limit == value


@pytest.mark.parametrize(("field", "value"), [("max_tasks_per_worker", 0), ("max_tasks_per_worker", -1),
                                              ("max_tasks_per_worker", True), ("max_tasks_per_worker", 2.0),
                                              ("max_memory_per_worker", "lots"), ("max_memory_per_worker", 0),
                                              ("max_memory_per_worker", -5), ("max_memory_per_worker", True),
                                              ("max_memory_per_worker", "0MB"), ("max_memory_per_worker", 1.5)])
def test_recycling_bad_values_name_their_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"MultiprocessExecutionStrategy: field '{field}'"):
        MultiprocessExecutionStrategy(2, **{field: value})


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 10**9), ("300MB", 300 * 10**6), ("512MiB", 512 << 20),
                                            ("1.5GB", 1_500_000_000), (" 300 mb ", 300 * 10**6), ("4096", 4096),
                                            (10**9, 10**9)])
def test_memory_sizes_parse(text: Any, size: int) -> None:
    assert MultiprocessExecutionStrategy(2, max_memory_per_worker=text).max_memory_per_worker == size


def test_threads_refuse_a_memory_limit() -> None:
    with pytest.raises(ConfigurationError, match="MultithreadExecutionStrategy: field 'max_memory_per_worker'.*per "
                                                 "process"):
        MultithreadExecutionStrategy(2, max_memory_per_worker="1GB")
    with pytest.raises(ConfigurationError, match="field 'max_tasks_per_worker'"):
        MultithreadExecutionStrategy(2, max_tasks_per_worker=0)
