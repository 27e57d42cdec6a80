"""Contracts of the cycle strategies."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc

import pytest
from helpers import Echo, group

from dynapipeline import Stage
from dynapipeline.errors import ConfigurationError
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import (
    InfiniteLoopStrategy,
    InfinitLoopStrategy,
    LoopCycleStrategy,
    OnceCycleStrategy,
)


class Counter(Stage):
    """Counts its runs; sets ``event`` when it reaches ``stop_at``."""

    runs: int = 0
    stop_at: int = 0
    event: asyncio.Event | threading.Event | None = None

    async def execute(self, *args, **kwargs):
        self.runs += 1
        if self.event is not None and self.runs >= self.stop_at:
            self.event.set()
        return self.runs


async def test_once_returns_one_cycle_result():
    assert await group([Echo(name="a"), Echo(name="b")], cycle=OnceCycleStrategy()).run() == ["a", "b"]


async def test_loop_returns_per_cycle_results():
    c = Counter(name="c")
    assert await group([c], cycle=LoopCycleStrategy(3)).run() == [[1], [2], [3]]


async def test_loop_zero_cycles_runs_nothing():
    c = Counter(name="c")
    assert await group([c], cycle=LoopCycleStrategy(0)).run() == []
    assert c.runs == 0


async def test_cycle_strategy_is_reusable_without_leaking_state():
    cycle = LoopCycleStrategy(2)
    a, b = Counter(name="a"), Counter(name="b")
    assert await group([a], cycle=cycle).run() == [[1], [2]]
    assert await group([b], cycle=cycle).run() == [[1], [2]]
    assert await cycle.run(SequentialExecutionStrategy(), [a]) == [[3], [4]]


@pytest.mark.parametrize("bad", [-1, 2.0, "3", None, True])
def test_loop_rejects_bad_cycles(bad):
    with pytest.raises(ConfigurationError, match="LoopCycleStrategy.*cycles"):
        LoopCycleStrategy(bad)


async def test_infinite_loop_stops_when_asyncio_event_is_set():
    event = asyncio.Event()
    c = Counter(name="c", stop_at=25, event=event)
    assert await group([c], cycle=InfinitLoopStrategy(event=event)).run() is None
    assert c.runs == 25


async def test_infinite_loop_accepts_threading_event_and_alias():
    event = threading.Event()
    c = Counter(name="c", stop_at=3, event=event)
    await group([c], cycle=InfiniteLoopStrategy(event=event, interval=0.001)).run()
    assert c.runs == 3
    assert InfiniteLoopStrategy is InfinitLoopStrategy


async def test_infinite_loop_yields_to_other_tasks_each_cycle():
    # A stage that never awaits must still let another task set the event.
    event = asyncio.Event()
    c = Counter(name="c")

    async def setter():
        await asyncio.sleep(0)
        event.set()

    setter_task = asyncio.ensure_future(setter())
    await asyncio.wait_for(group([c], cycle=InfinitLoopStrategy(event=event)).run(), timeout=10)
    await setter_task
    assert c.runs >= 1


async def test_infinite_loop_keeps_memory_flat():
    class Payload(Stage):
        async def execute(self):
            return bytearray(1024)  # each cycle's result is garbage once the next starts

    event = asyncio.Event()
    c = Counter(name="c", stop_at=20_000, event=event)
    g = group([Payload(name="p"), c], cycle=InfinitLoopStrategy(event=event))
    gc.collect()
    tracemalloc.start()
    try:
        await g.run()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 20,000 cycles × ~1 KiB would be ~20 MiB if results were kept.
    assert current < 2 * 1024 * 1024
    assert c.runs == 20_000


@pytest.mark.parametrize("kwargs", [{"event": "not an event"}, {"interval": -1}, {"interval": "1"}])
def test_infinite_loop_rejects_bad_input(kwargs):
    with pytest.raises(ConfigurationError, match="InfiniteLoopStrategy"):
        InfinitLoopStrategy(**kwargs)


async def test_cycle_run_rejects_non_strategy():
    with pytest.raises(ConfigurationError, match="execution_strategy"):
        await OnceCycleStrategy().run("sequential", [Echo(name="a")])


@pytest.mark.parametrize("interval", [float("nan"), float("inf"), True])
def test_infinite_loop_rejects_non_finite_or_bool_interval(interval):
    with pytest.raises(ConfigurationError, match="InfiniteLoopStrategy.*'interval'"):
        InfinitLoopStrategy(interval=interval)


def test_loop_rejects_cycles_beyond_the_engines_counter():
    with pytest.raises(ConfigurationError, match="LoopCycleStrategy.*'cycles'"):
        LoopCycleStrategy(2**63)
