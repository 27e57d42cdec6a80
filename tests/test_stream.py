"""Streams on the event loop: items through steps, flat-map, batches, order, backpressure, errors, progress.

Stream steps on threads and processes are in ``test_process_items.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from helpers import GRACE, Echo, eventually_async, stream_tasks

from dynapipeline import ItemError, PipelineFactory, PipeLineType, Stage, StageGroup, Step, Stream
from dynapipeline._model.component import Flat
from dynapipeline._model.strategy import ItemRunner, Succeeded
from dynapipeline.errors import ConfigurationError, StageTimeoutError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy, OnceCycleStrategy


class Double(Stage):
    async def execute(self, item: int) -> int:
        return item * 2


class PlusOne(Stage):
    def execute(self, item: int) -> int:  # a plain def stage
        return item + 1


class Explode(Stage):
    """Yields each item ``times`` times (0: a filter that drops everything)."""

    times: int = 2

    def execute(self, item: Any) -> Iterator[Any]:
        for _ in range(self.times):
            yield item


class EvensOnly(Stage):
    async def execute(self, item: int) -> AsyncIterator[int]:
        if item % 2 == 0:
            yield item


class Collect(Stage):
    """Receives a batch (a list) and returns it as it is."""

    async def execute(self, batch: list[Any]) -> list[Any]:
        return list(batch)


class FailOn(Stage):
    bad: int = 3

    async def execute(self, item: int) -> int:
        if item == self.bad:
            raise ValueError(f"bad item {item}")
        return item


class Sleepy(Stage):
    """Sleeps ``delay`` seconds (a slower sleep for item 0, when ``first`` is set) and records concurrency."""

    delay: float = 0.001
    first: float = 0.0
    tracker: Any = None

    async def execute(self, item: int) -> int:
        if self.tracker is not None:
            self.tracker.enter()
        try:
            await asyncio.sleep(self.first if item == 0 and self.first else self.delay)
        finally:
            if self.tracker is not None:
                self.tracker.leave()
        return item


class Flaky(Stage):
    """Fails the first ``fails`` attempts of each item."""

    fails: int = 1
    seen: Any = None

    async def execute(self, item: int) -> int:
        self.seen[item] = self.seen.get(item, 0) + 1
        if self.seen[item] <= self.fails:
            raise RuntimeError(f"attempt {self.seen[item]} of {item}")
        return item


class Counter:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        self.now -= 1


def stream(*steps: Any, **fields: Any) -> Stream:
    return Stream(name="s", steps=list(steps), **fields)


# -- items through steps ----------------------------------------------------------------------
async def test_each_step_gets_one_item_and_passes_its_result_on() -> None:
    out = await stream(Double(name="double"), PlusOne(name="plus")).run(range(5))
    assert out == [1, 3, 5, 7, 9]


async def test_a_bare_stage_is_a_step_with_the_default_strategy() -> None:
    s = stream(Double(name="double"), Step(PlusOne(name="plus")))
    assert all(isinstance(step, Step) for step in s._steps)
    assert s._steps[0].strategy is None
    assert await s.run([1]) == [3]


async def test_generator_execute_flat_maps_and_an_empty_generator_filters() -> None:
    out = await stream(Explode(name="twice"), EvensOnly(name="evens")).run(range(4))
    assert out == [0, 0, 2, 2]
    assert await stream(Explode(name="none", times=0)).run(range(10)) == []


async def test_batch_hands_the_stage_lists_of_up_to_n_items() -> None:
    out = await stream(Step(Collect(name="batch"), batch=4)).run(range(10))
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_batch_timeout_sends_a_partial_batch() -> None:
    async def slow_source() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await asyncio.sleep(0.5)
        yield 3

    out = await stream(Step(Collect(name="batch"), batch=100, batch_timeout=0.05)).run(slow_source())
    assert out == [[0, 1, 2], [3]]


async def _slow_source(n: int, delay: float = 0.01) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


@pytest.mark.parametrize("strategy", [
    None, SequentialExecutionStrategy(), SemaphoreExecutionStrategy(2), ConcurrentExecutionStrategy(),
    MultithreadExecutionStrategy(2)], ids=repr)
@pytest.mark.parametrize("ordered", [True, False])
async def test_batches_are_cut_from_consecutive_items_whatever_the_width(strategy: Any, ordered: bool) -> None:
    step = Step(Collect(name="batch"), strategy, batch=3, batch_timeout=60)
    out = await asyncio.wait_for(stream(step, ordered=ordered).run(_slow_source(7)), 30)
    expected = [[0, 1, 2], [3, 4, 5], [6]]
    assert (out if ordered else sorted(out)) == expected


@pytest.mark.parametrize("strategy", [SemaphoreExecutionStrategy(2), ConcurrentExecutionStrategy(),
                                      MultithreadExecutionStrategy(2)], ids=repr)
async def test_slow_items_fill_a_batch_while_they_arrive_within_batch_timeout(strategy: Any) -> None:
    step = Step(Collect(name="batch"), strategy, batch=10, batch_timeout=60)
    out = await asyncio.wait_for(stream(step).run(_slow_source(12)), 30)
    assert out == [list(range(10)), [10, 11]]


async def test_ordered_batches_come_out_in_source_order_when_the_first_is_slowest() -> None:
    class SlowFirst(Stage):
        async def execute(self, batch: list[int]) -> list[int]:
            await asyncio.sleep(0.2 if 0 in batch else 0)
            return batch

    s = stream(Step(SlowFirst(name="batch"), SemaphoreExecutionStrategy(4), batch=3), ordered=True)
    out = await asyncio.wait_for(s.run(_slow_source(12)), 30)
    assert out == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


async def test_a_generator_batch_stage_flattens_its_batch() -> None:
    class Flatten(Stage):
        def execute(self, batch: list[int]) -> Iterator[int]:
            yield from batch

    out = await stream(Step(Flatten(name="flat"), batch=3)).run(range(7))
    assert out == list(range(7))


async def test_source_given_to_the_stream_and_async_iterables() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    assert await Stream(name="s", steps=[Double(name="d")], source=[1, 2]).run() == [2, 4]
    assert await stream(Double(name="d")).run(numbers()) == [0, 2, 4]


async def test_iterate_yields_outputs_as_they_come_and_leaving_early_stops_the_stream() -> None:
    pulled = []

    def source() -> Iterator[int]:
        for i in range(1_000_000):
            pulled.append(i)
            yield i

    s = stream(Double(name="d"), maxsize=10)
    got = []
    async with s.iterate(source()) as outputs:
        async for value in outputs:
            got.append(value)
            if len(got) == 5:
                break
    assert got == [0, 2, 4, 6, 8]
    assert stream_tasks() == []  # stopped as the block ended
    assert len(pulled) < 100  # the rest of the source was never pulled


async def test_iterate_without_async_with_runs_to_the_end() -> None:
    got = [value async for value in stream(Double(name="d"), maxsize=2).iterate(range(10))]
    assert got == [2 * i for i in range(10)]
    assert stream_tasks() == []


@pytest.mark.parametrize("strategy", [SemaphoreExecutionStrategy(4), MultithreadExecutionStrategy(4)], ids=repr)
async def test_leaving_async_with_iterate_early_stops_the_workers_and_the_source_at_once(strategy: Any) -> None:
    hanging: list[int] = []  # items whose run started to hang
    stopped: list[int] = []  # ... and was cut short

    class HangAfterFirst(Stage):
        async def execute(self, item: int) -> int:
            if item:
                hanging.append(item)
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    stopped.append(item)
                    raise
            return item

    source = _Counted(1000)
    s = stream(Step(HangAfterFirst(name="hang"), strategy), ordered=False, maxsize=10)
    async with s.iterate(source) as outputs:
        async for value in outputs:
            assert value == 0
            break
        assert s.progress["hang"].in_flight > 0
    # Nothing awaited since the block ended: its exit waited for the whole stream to stop.
    pulled = source.pulled
    assert stream_tasks() == []
    assert hanging and sorted(stopped) == sorted(hanging)
    assert s.progress["hang"].in_flight == 0
    for _ in range(10):
        await asyncio.sleep(0)  # turns of the loop in which a feeder left behind would pull again
    assert source.pulled == pulled < 1000


async def test_iterate_raises_the_first_error() -> None:
    s = stream(FailOn(name="f", bad=2))
    with pytest.raises(ValueError, match="bad item 2"):
        async for _ in s.iterate(range(5)):
            pass


async def test_leaving_iterate_after_the_run_failed_raises_nothing_and_logs_nothing() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with stream(FailOn(name="f", bad=1), maxsize=1).iterate(range(5)) as outputs:
            async for value in outputs:
                assert value == 0
                for _ in range(10):
                    await asyncio.sleep(0)  # meanwhile item 1 fails the run
                assert stream_tasks() == []
                break
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(handler)
    assert reported == []  # e.g. no "Task exception was never retrieved"


# -- strategies of a step -----------------------------------------------------------------------
async def test_sequential_step_runs_one_item_at_a_time() -> None:
    counter = Counter()
    await stream(Step(Sleepy(name="s", tracker=counter), SequentialExecutionStrategy())).run(range(20))
    assert counter.peak == 1


async def test_semaphore_step_runs_up_to_k_items_at_once() -> None:
    counter = Counter()
    out = await stream(Step(Sleepy(name="s", tracker=counter), SemaphoreExecutionStrategy(3))).run(range(30))
    assert counter.peak == 3
    assert out == list(range(30))


async def test_concurrent_step_runs_as_many_items_as_maxsize_allows() -> None:
    counter = Counter()
    s = stream(Step(Sleepy(name="s", delay=0.02, tracker=counter), ConcurrentExecutionStrategy()), maxsize=8)
    await s.run(range(40))
    assert counter.peak == 8


async def test_thread_step_runs_items_on_the_pool_threads() -> None:
    import threading

    class WhereAmI(Stage):
        def execute(self, item: int) -> str:
            return threading.current_thread().name

    main = threading.current_thread().name
    names = await stream(Step(WhereAmI(name="where"), MultithreadExecutionStrategy(2))).run(range(20))
    assert len(names) == 20 and main not in names
    assert all(n.startswith("dynapipeline-thread") for n in names)
    assert _dynapipeline_threads_alive() == 0


async def test_a_concurrent_step_starts_workers_for_the_items_in_flight_not_for_maxsize() -> None:
    all_in = asyncio.Event()
    entered = []
    tasks_seen = []

    class Meet(Stage):
        async def execute(self, item: int) -> int:
            entered.append(item)
            tasks_seen.append(len(asyncio.all_tasks()))
            if len(entered) == 10:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 10)  # every item runs at once, or none finishes
            return item

    s = stream(Step(Meet(name="meet"), ConcurrentExecutionStrategy()), maxsize=100_000)
    assert await asyncio.wait_for(s.run(range(10)), 30) == list(range(10))
    assert max(tasks_seen) < 40  # a worker per item in flight (and one waiting), not 100,000


# -- order --------------------------------------------------------------------------------------
async def test_ordered_keeps_source_order_whatever_finishes_first() -> None:
    slow_first = Sleepy(name="s", delay=0.001, first=0.1)
    out = await stream(Step(slow_first, SemaphoreExecutionStrategy(4)), ordered=True).run(range(10))
    assert out == list(range(10))


async def test_unordered_yields_in_completion_order() -> None:
    slow_first = Sleepy(name="s", delay=0.001, first=0.1)
    out = await stream(Step(slow_first, SemaphoreExecutionStrategy(4)), ordered=False).run(range(10))
    assert sorted(out) == list(range(10))
    assert out[-1] == 0  # the slow first item came out last


# -- backpressure and memory ---------------------------------------------------------------------
async def test_a_slow_step_holds_the_source_back_within_maxsize() -> None:
    maxsize, workers = 64, 16  # 16 sleepers at once keep 100,000 items of 0.5 ms to a few seconds
    ahead = []
    s = stream(Step(Sleepy(name="slow", delay=0.0005), SemaphoreExecutionStrategy(workers)), maxsize=maxsize)

    def source() -> Iterator[int]:
        for i in range(100_000):
            if i % 100 == 0:
                progress = s.progress["slow"]
                # Items pulled but not yet through the slow step: those queued before it and in it.
                ahead.append(i - progress.done - progress.failed)
            yield i

    out = await s.run(source())
    assert len(out) == 100_000
    # The feeder holds one item while it waits for room, hence + 1.
    assert max(ahead) <= maxsize + workers + 1


@pytest.mark.slow
async def test_five_million_items_through_three_steps_keep_memory_flat() -> None:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(os.getpid())
    gc.collect()
    before = proc.memory_info().rss
    peak = before
    count = 0

    def source() -> Iterator[int]:
        nonlocal peak
        for i in range(5_000_000):
            if i % 100_000 == 0:
                peak = max(peak, proc.memory_info().rss)
            yield i

    s = stream(Double(name="a"), PlusOne(name="b"), Double(name="c"), maxsize=1000)
    async for _ in s.iterate(source()):
        count += 1
    growth_mb = (peak - before) / 2**20
    print(f"peak RSS growth over 5,000,000 items: {growth_mb:.1f} MB")
    assert count == 5_000_000
    assert growth_mb < 30


# -- per-item errors ----------------------------------------------------------------------------
async def test_on_error_raise_cancels_the_stream_and_propagates() -> None:
    s = stream(FailOn(name="f", bad=3), Step(Sleepy(name="slow", delay=0.01), ConcurrentExecutionStrategy()))
    with pytest.raises(ValueError, match="bad item 3") as info:
        await s.run(range(1000))
    assert any("step 'f', item 3" in note for note in info.value.__notes__)
    assert stream_tasks() == []


async def test_on_error_skip_drops_the_item_and_keeps_it_in_errors() -> None:
    s = stream(Double(name="d"), FailOn(name="f", bad=6), on_error="skip")
    out = await s.run(range(5))
    assert out == [0, 2, 4, 8]
    [error] = s.errors
    assert isinstance(error, ItemError)
    assert (error.index, error.step, type(error.error)) == (3, "f", ValueError)
    assert s.progress["f"].failed == 1


async def test_on_error_return_passes_the_exception_on_untouched() -> None:
    s = stream(FailOn(name="f", bad=2), Double(name="d"), on_error="return")
    out = await s.run(range(4))
    assert out[:2] == [0, 2] and out[3] == 6
    assert isinstance(out[2], ValueError)
    assert s.progress["d"].received == 3  # the failed item went past "d" without running it


@pytest.mark.parametrize("on_error", ["skip", "return"])
async def test_a_returned_or_skipped_error_notes_the_stream_step_and_item(on_error: str) -> None:
    s = Stream(name="etl", steps=[FailOn(name="parse", bad=17)], on_error=on_error)
    out = await s.run(range(20))
    error = out[17] if on_error == "return" else s.errors[0].error
    assert isinstance(error, ValueError)
    assert error.__notes__ == ["in stream 'etl', step 'parse', item 17"]


async def test_a_returned_error_from_a_thread_step_notes_its_item() -> None:
    s = Stream(name="etl", steps=[Step(FailOn(name="parse", bad=3), MultithreadExecutionStrategy(2))],
               on_error="return")
    out = await asyncio.wait_for(s.run(range(5)), 30)
    assert out[3].__notes__ == ["in stream 'etl', step 'parse', item 3"]


async def test_retries_apply_per_item() -> None:
    seen: dict[int, int] = {}
    out = await stream(Flaky(name="flaky", fails=2, retries=2, seen=seen)).run(range(5))
    assert out == list(range(5))
    assert seen == {i: 3 for i in range(5)}


async def test_timeout_applies_per_item() -> None:
    s = stream(Sleepy(name="s", delay=0.001, first=1.0, timeout=0.05), on_error="skip")
    out = await s.run(range(4))
    assert out == [1, 2, 3]
    assert type(s.errors[0].error) is StageTimeoutError and s.errors[0].index == 0


# -- live counts and stats ----------------------------------------------------------------------
async def test_progress_counts_per_step_by_stage_name() -> None:
    s = stream(Double(name="d"), FailOn(name="f", bad=4), on_error="skip")
    await s.run(range(10))
    d, f = s.progress["d"], s.progress["f"]
    assert (d.received, d.done, d.failed, d.in_flight, d.queued) == (10, 10, 0, 0, 0)
    assert (f.received, f.done, f.failed) == (10, 9, 1)


async def test_progress_during_a_run_shows_items_in_flight_and_queued() -> None:
    s = stream(Step(Sleepy(name="slow", delay=0.05), SemaphoreExecutionStrategy(2)), maxsize=5)
    task = asyncio.ensure_future(s.run(range(50)))
    await asyncio.sleep(0.02)
    progress = s.progress["slow"]
    assert progress.in_flight == 2 and progress.queued == 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _Counted:
    """range(n), counting the items pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


class _CountedAsync(_Counted):
    """The same, as an async iterable."""

    async def __aiter__(self) -> AsyncIterator[int]:
        for i in self:
            yield i


@pytest.mark.parametrize("closing", ["async with", "aclosing"])
@pytest.mark.parametrize("strategy", [SemaphoreExecutionStrategy(4), MultithreadExecutionStrategy(4)], ids=repr)
async def test_progress_settles_after_leaving_iterate(strategy: Any, closing: str) -> None:
    class StuckAfterFirst(Stage):
        async def execute(self, item: int) -> int:
            if item:
                await asyncio.sleep(3600)
            return item

    source = _Counted(100)
    s = stream(Step(StuckAfterFirst(name="slow"), strategy), Double(name="d"), ordered=False, maxsize=10)
    items = s.iterate(source)
    async with items if closing == "async with" else contextlib.aclosing(items) as outputs:
        async for _ in outputs:
            break
    # The stream stopped as the block ended.
    slow = s.progress["slow"]
    assert (slow.done, slow.failed, slow.in_flight, slow.queued) == (1, 0, 0, 0)
    assert slow.cancelled > 0 and slow.done + slow.cancelled == source.pulled  # every item pulled is accounted for
    d = s.progress["d"]
    assert (d.received, d.done, d.in_flight, d.queued, d.cancelled) == (1, 1, 0, 0, 0)
    assert stream_tasks() == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_progress_settles_after_a_cancelled_run(kind: str) -> None:
    source = _Counted(50) if kind == "sync" else _CountedAsync(50)
    # 2 running, 5 queued; an async source's next item is held by the feeder waiting for room, while a sync
    # source is pulled only for the room there is.
    pulled = 7 if kind == "sync" else 8
    s = stream(Step(Sleepy(name="slow", delay=3600), SemaphoreExecutionStrategy(2)), maxsize=5)
    task = asyncio.ensure_future(s.run(source))
    assert await eventually_async(lambda: source.pulled == pulled and s.progress["slow"].received == 2)
    await asyncio.sleep(0.05)  # a chance to pull more than there is room for, which it must not take
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    progress = s.progress["slow"]
    assert (progress.received, progress.in_flight, progress.queued, progress.cancelled) == (2, 0, 0, pulled)
    assert source.pulled == pulled


async def test_progress_settles_after_a_failed_run() -> None:
    s = stream(FailOn(name="f", bad=3), Step(Sleepy(name="slow", delay=3600), SemaphoreExecutionStrategy(3)))
    with pytest.raises(ValueError, match="bad item 3"):
        await asyncio.wait_for(s.run(range(10)), 30)
    f, slow = s.progress["f"], s.progress["slow"]
    assert (f.received, f.done, f.failed, f.in_flight, f.queued, f.cancelled) == (4, 3, 1, 0, 0, 6)
    assert (slow.in_flight, slow.queued, slow.cancelled) == (0, 0, 3)  # items 0-2, running or queued


async def test_each_step_stage_keeps_timing_stats() -> None:
    d = Double(name="d")
    await stream(d).run(range(7))
    assert d.stats.count == 7


# -- a stream in a pipeline ----------------------------------------------------------------------
def pipeline(*groups: Any, kind: PipeLineType = PipeLineType.ADVANCED, cycles: Any = None,
             strategy: Any = None) -> Any:
    return PipelineFactory().create_pipeline(
        kind, name="p", groups=list(groups), cycle_strategy=cycles or OnceCycleStrategy(),
        execution_strategy=strategy or SequentialExecutionStrategy())


async def test_in_a_pipeline_the_source_is_the_runs_first_argument_and_the_result_its_outputs() -> None:
    s = stream(Double(name="d"))
    g = StageGroup(name="g", stages=[Echo(name="e")], execution_strategy=SequentialExecutionStrategy(),
                   cycle_strategy=OnceCycleStrategy())
    p = pipeline(g, s)
    assert await p.run([1, 2, 3]) == [["e"], [2, 4, 6]]
    rows = {(row.name, row.kind, row.runs) for row in p.report().components}
    assert {("s", "Stream", 1), ("d", "Double", 3)} <= rows


async def test_in_a_pipeline_a_stream_runs_again_each_cycle_and_its_stages_share_the_context() -> None:
    d = Double(name="d")
    s = Stream(name="s", steps=[d], source=range(3))
    p = pipeline(s, cycles=LoopCycleStrategy(3))
    assert await p.run() == [[[0, 2, 4]]] * 3
    assert d.stats.count == 9
    assert d.context is p.context


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cycled_stream_given_a_generator_as_the_runs_argument_is_an_error_on_the_second_cycle(
        kind: str) -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    s = stream(Double(name="d"))
    p = pipeline(s, cycles=LoopCycleStrategy(3))
    source = (i for i in range(3)) if kind == "sync" else numbers()
    with pytest.raises(ConfigurationError, match="Stream 's': field 'source' is an iterator that an earlier run"):
        await p.run(source)
    assert s.progress["d"].done == 3  # the first cycle ran it


async def test_a_generator_given_to_run_twice_is_an_error_and_a_fresh_one_is_not() -> None:
    s = stream(Double(name="d"))
    numbers = (i for i in range(3))
    assert await s.run(numbers) == [0, 2, 4]
    with pytest.raises(ConfigurationError, match="field 'source' is an iterator that an earlier run consumed"):
        await s.run(numbers)
    with pytest.raises(ConfigurationError, match="field 'source' is an iterator that an earlier run consumed"):
        async for _ in s.iterate(numbers):
            pass
    assert await s.run(i for i in range(2)) == [0, 2]
    assert await s.run([1]) == await s.run([1]) == [2]  # a re-iterable source runs again
    items = iter([1, 2])  # an iterator that cannot be referenced weakly
    assert await s.run(items) == [2, 4]
    with pytest.raises(ConfigurationError, match="field 'source' is an iterator that an earlier run consumed"):
        await s.run(items)


async def test_pipeline_stop_cancels_a_stream_and_drain_finishes_items_in_flight() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    s = stream(Step(Sleepy(name="slow", delay=0.01), SemaphoreExecutionStrategy(4)), maxsize=8)
    p = pipeline(s)
    asyncio.get_running_loop().call_later(0.1, p.stop)
    assert await asyncio.wait_for(p.run(endless()), GRACE) is None
    assert stream_tasks() == []

    p.stop(drain=True)  # idle: no-op
    asyncio.get_running_loop().call_later(0.1, p.stop, True)
    assert await asyncio.wait_for(p.run(endless()), GRACE) is None
    progress = s.progress["slow"]
    assert progress.received == progress.done > 0 and progress.in_flight == 0  # nothing cut short


async def test_handlers_see_the_stream_run() -> None:
    from dynapipeline import Handler

    calls = []

    class Log(Handler):
        def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
            calls.append((component.name, result))

    s = Stream(name="s", steps=[Double(name="d")], handlers=[Log()])
    await s.run([1])
    assert calls == [("s", [2])]


async def test_simple_pipeline_rejects_a_thread_step_and_process_shipping_rejects_streams() -> None:
    from dynapipeline.execution import MultiprocessExecutionStrategy

    with pytest.raises(ConfigurationError, match="Stream 's' step 'd' runs on MultithreadExecutionStrategy"):
        pipeline(stream(Step(Double(name="d"), MultithreadExecutionStrategy(2))), kind=PipeLineType.SIMPLE)
    with pytest.raises(ConfigurationError, match=r"field 'groups\[0\]' is Stream 's'"):
        pipeline(stream(Double(name="d")), strategy=MultiprocessExecutionStrategy(1))
    pipeline(stream(Double(name="d")), kind=PipeLineType.SIMPLE)  # on the loop: fine


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"steps": []}, "field 'steps' must not be empty"),
    ({"steps": [42]}, r"field 'steps\[0\]' must be a Step, a Stage or a callable, got int"),
    ({"steps": [Double]}, r"field 'steps\[0\]' must be a Step, a Stage or a callable, got the class Double"),
    ({"steps": "abc"}, "field 'steps' must be a list"),
    ({"maxsize": 0}, "field 'maxsize' must be an int >= 1, got 0"),
    ({"maxsize": 2.5}, "field 'maxsize' must be an int >= 1"),
    ({"on_error": "ignore"}, "field 'on_error' must be 'raise', 'skip' or 'return'"),
    ({"ordered": "yes"}, "field 'ordered' must be a bool"),
    ({"source": 5}, "field 'source' must be an iterable"),
])
def test_bad_stream_fields_name_the_stream_and_the_field(fields: dict[str, Any], message: str) -> None:
    fields = {"steps": [Double(name="d")], **fields}
    with pytest.raises(ConfigurationError, match=f"Stream 's': {message}"):
        Stream(name="s", **fields)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch": 0}, "field 'batch' must be an int >= 1"),
    ({"batch": True}, "field 'batch' must be an int >= 1"),
    ({"batch": 2, "batch_timeout": 0}, "field 'batch_timeout' must be a finite number"),
    ({"batch_timeout": 1.0}, "field 'batch_timeout' needs 'batch'"),
    ({"strategy": "fast"}, "field 'strategy' must be an execution strategy"),
])
def test_bad_step_fields_name_the_step_and_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"Step 'd': {message}"):
        Step(Double(name="d"), **kwargs)


def test_step_rejects_a_non_stage() -> None:
    with pytest.raises(ConfigurationError, match="Step: field 'stage' must be a Stage or a callable, got int"):
        Step(5)  # type: ignore[arg-type]


async def test_a_non_iterable_source_given_to_run_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="field 'source' must be an iterable"):
        await stream(Double(name="d")).run(42)
    with pytest.raises(ConfigurationError, match="field 'source' is not set and no source was given"):
        await stream(Double(name="d")).run()


def test_repeated_stage_names_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="repeats the stage name 'd'"):
        stream(Double(name="d"), PlusOne(name="d"))


# -- faults: the source, stop and drain, reuse -----------------------------------------------------
def _broken_source() -> Iterator[int]:
    yield 0
    yield 1
    raise RuntimeError("source broke")


async def _broken_async_source() -> AsyncIterator[int]:
    yield 0
    await asyncio.sleep(0)
    yield 1
    raise RuntimeError("source broke")


@pytest.mark.parametrize("on_error", ["raise", "skip", "return"])
@pytest.mark.parametrize("make_source", [_broken_source, _broken_async_source])
async def test_a_source_error_fails_the_run_whatever_on_error_says(on_error: str, make_source: Any) -> None:
    s = stream(Step(Sleepy(name="slow"), SemaphoreExecutionStrategy(2)), on_error=on_error)
    with pytest.raises(RuntimeError, match="source broke") as info:
        await asyncio.wait_for(s.run(make_source()), GRACE)
    assert "in stream 's', its source, after 2 items" in info.value.__notes__
    assert s.errors == []  # not an item's error
    assert stream_tasks() == []
    with pytest.raises(RuntimeError, match="source broke"):
        async for _ in s.iterate(make_source()):
            pass
    assert stream_tasks() == []


async def test_drain_ends_a_run_whose_async_source_waits_for_its_next_item() -> None:
    async def quiet() -> AsyncIterator[int]:
        yield 0
        yield 1
        await asyncio.sleep(3600)  # a feed with nothing to say for an hour
        yield 2

    s = stream(Step(Collect(name="batch"), batch=10, batch_timeout=60))
    p = pipeline(s)
    asyncio.get_running_loop().call_later(0.1, p.stop, True)
    assert await asyncio.wait_for(p.run(quiet()), GRACE) is None
    assert s.progress["batch"].done == 1  # the partial batch [0, 1] ran: nothing pulled was dropped
    assert stream_tasks() == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_drain_runs_every_item_the_source_yielded(kind: str) -> None:
    yielded: list[int] = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            yielded.append(i)
            yield i
            i += 1

    async def endless_async() -> AsyncIterator[int]:
        for i in endless():
            yield i

    s = stream(Step(Sleepy(name="slow", delay=0.01), SemaphoreExecutionStrategy(2)), maxsize=2)
    p = pipeline(s)
    asyncio.get_running_loop().call_later(0.1, p.stop, True)
    assert await asyncio.wait_for(p.run(endless() if kind == "sync" else endless_async()), GRACE) is None
    progress = s.progress["slow"]
    assert progress.done == len(yielded) > 0  # none pulled and then dropped


async def test_a_failed_item_keeps_its_place_around_a_batch() -> None:
    s = stream(FailOn(name="f", bad=2), Step(Collect(name="batch"), batch=3), on_error="return")
    out = await s.run(range(7))
    assert [o if isinstance(o, list) else repr(o) for o in out] == [
        [0, 1], "ValueError('bad item 2')", [3, 4, 5], [6]]
    s = stream(FailOn(name="f", bad=0), Step(Collect(name="batch"), batch=3), on_error="return")
    out = await s.run(range(4))
    assert [o if isinstance(o, list) else repr(o) for o in out] == ["ValueError('bad item 0')", [1, 2], [3]]


async def test_runs_of_one_stream_may_overlap_and_each_keeps_its_own_errors() -> None:
    s = stream(Sleepy(name="slow", delay=0.01), FailOn(name="f", bad=3), on_error="skip")
    first, second = await asyncio.gather(s.run(range(6)), s.run([3, 4, 3]))
    assert first == [0, 1, 2, 4, 5] and second == [4]
    assert [(e.index, e.step) for e in s.errors] == [(0, "f"), (2, "f")]  # the run that started last
    assert s.progress["f"].received == 3


async def test_a_one_shot_source_given_to_the_stream_is_an_error_on_the_second_run() -> None:
    s = Stream(name="s", steps=[Double(name="d")], source=(i for i in range(3)))
    assert await s.run() == [0, 2, 4]
    with pytest.raises(ConfigurationError, match="Stream 's': field 'source' is an iterator that an earlier run"):
        await s.run()
    again = Stream(name="s", steps=[Double(name="d")], source=range(3))
    assert await again.run() == await again.run() == [0, 2, 4]


async def test_handlers_of_a_step_stage_run_per_item() -> None:
    from helpers import Recorder

    calls: list[Any] = []
    f = FailOn(name="f", bad=1, handlers=[Recorder(tag="h", calls=calls)])
    s = stream(f, on_error="skip")
    assert await s.run(range(3)) == [0, 2]
    assert [c for c in calls if c[0] in ("before", "after", "on_error")] == [
        ("before", "h", "f"), ("after", "h", 0), ("before", "h", "f"), ("on_error", "h", "ValueError"),
        ("before", "h", "f"), ("after", "h", 2)]
    assert [c for c in calls if c[0] == "around-in"] == [("around-in", "h")] * 3

# -- helpers ------------------------------------------------------------------------------------
def _dynapipeline_threads_alive() -> int:
    import threading
    import time

    end = time.monotonic() + GRACE
    while time.monotonic() < end:
        alive = [t for t in threading.enumerate() if t.name.startswith("dynapipeline-thread")]
        if not alive:
            return 0
        time.sleep(0.01)
    return len(alive)


# -- chunks: items travel between steps in chunks ------------------------------------------------
class FailEvery(Stage):
    """Fails on each multiple of ``every`` (item 0 aside)."""

    every: int = 50

    async def execute(self, item: int) -> int:
        if item and item % self.every == 0:
            raise ValueError(f"bad item {item}")
        return item


class Jumbled(Stage):
    """Returns its item after a number of turns of the loop that varies by item, so that items finish out of order."""

    async def execute(self, item: int) -> int:
        for _ in range(item * 7 % 5):
            await asyncio.sleep(0)
        return item


async def test_maxsize_bounds_the_items_between_source_and_consumer_not_the_chunks() -> None:
    maxsize = 20
    source = _Counted(3000)
    s = stream(Double(name="a"), PlusOne(name="b"), Double(name="c"), maxsize=maxsize)
    # Each of the 3 queues and the consumer's holds at most maxsize items; each of the 3 workers, the consumer
    # and the feeder's last pull hold at most one chunk (up to half of maxsize) besides.
    bound = 4 * maxsize + 5 * (maxsize // 2)
    consumed = 0
    widest = 0
    async with s.iterate(source) as items:
        async for _ in items:
            consumed += 1
            widest = max(widest, source.pulled - consumed)
            assert all(p.queued <= maxsize for p in s.progress.values())
            await asyncio.sleep(0)  # a slow consumer: the steps and the feeder run ahead until the queues are full
    assert consumed == 3000
    assert maxsize < widest <= bound  # ran ahead, but no further than the bound (counting chunks would allow 20x)


@pytest.mark.parametrize("strategy", [None, SemaphoreExecutionStrategy(8), MultithreadExecutionStrategy(3)], ids=repr)
async def test_ordered_output_keeps_source_order_through_chunks(strategy: Any) -> None:
    s = stream(Step(Jumbled(name="jumbled"), strategy), Double(name="d"), maxsize=100)
    assert await s.run(range(1000)) == [2 * i for i in range(1000)]
    unordered = stream(Step(Jumbled(name="jumbled"), strategy), Double(name="d"), maxsize=100, ordered=False)
    assert sorted(await unordered.run(range(1000))) == [2 * i for i in range(1000)]


async def test_errors_inside_a_chunk_are_each_items_own() -> None:
    s = stream(Double(name="d"), FailEvery(name="f"), PlusOne(name="p"), on_error="skip", maxsize=1000)
    out = await s.run(range(300))  # items 25, 50, ... double to multiples of 50: four in each chunk of 64
    bad = {i for i in range(300) if i and (2 * i) % 50 == 0}
    assert out == [2 * i + 1 for i in range(300) if i not in bad]
    assert [(e.index, e.step) for e in s.errors] == [(i, "f") for i in sorted(bad)]
    assert all(e.error.__notes__ == [f"in stream 's', step 'f', item {e.index}"] for e in s.errors)
    f = s.progress["f"]
    assert (f.received, f.done, f.failed) == (300, 300 - len(bad), len(bad))
    returned = stream(Double(name="d"), FailEvery(name="f"), PlusOne(name="p"), on_error="return")
    out = await returned.run(range(300))
    assert [i for i, o in enumerate(out) if isinstance(o, ValueError)] == sorted(bad)
    with pytest.raises(ValueError, match="bad item 50") as raised:
        await stream(Double(name="d"), FailEvery(name="f")).run(range(300))
    assert raised.value.__notes__ == ["in stream 's', step 'f', item 25"]


async def test_a_slow_sources_first_item_arrives_without_waiting_for_a_chunk_to_fill() -> None:
    first_out = asyncio.Event()

    async def slow() -> AsyncIterator[int]:
        yield 0
        await first_out.wait()  # the next item only once the first came out at the end of the stream
        yield 1

    s = stream(Double(name="a"), PlusOne(name="b"), Step(Double(name="c"), SemaphoreExecutionStrategy(2)))
    out = []
    async with s.iterate(slow()) as items:
        async for item in items:
            out.append(item)
            first_out.set()
    assert out == [2, 6]


async def test_a_cancelled_run_counts_the_rest_of_a_workers_chunk_as_cancelled() -> None:
    source = _Counted(50)
    s = stream(Sleepy(name="slow", delay=3600), maxsize=10)  # one worker: it takes a chunk and runs its first
    task = asyncio.ensure_future(s.run(source))
    assert await eventually_async(lambda: s.progress["slow"].received == 1 and source.pulled == 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    slow = s.progress["slow"]
    # The one running is cut, the 4 others of its chunk (half of maxsize) never started, 10 wait in the queue.
    assert (slow.received, slow.done, slow.in_flight, slow.queued, slow.cancelled) == (1, 0, 0, 0, 15)


# -- a runner off the loop whose items all succeeded ---------------------------------------------
def _twice(x: int) -> Iterator[int]:
    yield x
    yield x


class _AllSucceed(ItemRunner):
    """Runs a chunk's items here and answers ``Succeeded`` with their results, as a process step does."""

    chunk = 4

    def __init__(self, make: Any) -> None:
        self.make = make

    async def call(self, values: list[Any]) -> list[Any]:
        return Succeeded([self.make(value) for value in values])


class _Succeeding(SequentialExecutionStrategy):
    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        return 2, _AllSucceed(self.make)


@pytest.mark.parametrize("stage, make, expected", [
    (Double, lambda x: x * 10, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]),
    # A generator stage's run gives a Flat of what it yielded (here made by the runner): each element goes on.
    (Explode, lambda x: Flat([x, x]) if x % 3 == 0 else x, [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9]),
    (_twice, lambda x: Flat([x, x]) if x % 3 == 0 else x, [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9]),
    # Only a generator's run gives a Flat: a plain stage's list result is one output, whatever its type.
    (Double, lambda x: Flat([x, x]), [[x, x] for x in range(10)]),
], ids=["values", "flat", "flat function", "plain"])
async def test_a_runner_whose_items_all_succeeded_gives_their_results_in_order(stage: Any, make: Any,
                                                                                expected: list[Any]) -> None:
    step = Step(stage(name="run"), _Succeeding(make)) if isinstance(stage, type) else Step(
        stage, _Succeeding(make), name="run")
    s = stream(step)
    assert await s.run(range(10)) == expected
    assert (s.progress["run"].done, s.progress["run"].failed) == (10, 0)


async def test_an_item_failed_upstream_passes_a_step_whose_items_all_succeeded() -> None:
    s = stream(FailOn(name="f", bad=2), Step(Double(name="run"), _Succeeding(lambda x: -x)), on_error="return")
    out = await s.run(range(5))
    assert out[:2] == [0, -1] and out[3:] == [-3, -4]
    assert type(out[2]) is ValueError
    assert (s.progress["run"].received, s.progress["run"].done) == (4, 4)
