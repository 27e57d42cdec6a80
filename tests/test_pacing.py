"""Rate limits (issue 18): ``SemaphoreExecutionStrategy(k, rate=, burst=)`` and ``Step(..., rate=, burst=)``.

Timing is only ever bounded from below (a paced run cannot be faster than its
rate, however busy the machine); upper bounds are generous or event-based.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
import time
from typing import Any

import pytest
from helpers import GRACE, Double, Echo, Fail, Tracked, Tracker, engine_tasks

from dynapipeline import Stage, StageGroup, Step, Stream
from dynapipeline._model.pacing import PacedItems, TokenBucket
from dynapipeline._model.strategy import ItemRunner
from dynapipeline._strategies.pacing import Paced
from dynapipeline.errors import ConfigurationError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy

SLACK = 0.02  # the clock a stage reads vs the bucket's: only ever subtracted from a lower bound


class Starts(Stage):
    """Notes the time it starts (``time.monotonic``) in ``log``, then sleeps ``delay``."""

    log: Any
    delay: float = 0.0

    async def execute(self, *args: Any) -> Any:
        self.log.append(time.monotonic())
        await asyncio.sleep(self.delay)
        return args[0] if args else self.name


async def _until(check: Any) -> None:
    """Wait (up to GRACE) until ``check()`` is true."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GRACE)


def _group(stages: list[Any], strategy: Any, name: str = "g") -> StageGroup:
    return StageGroup(name=name, stages=stages, cycle_strategy=OnceCycleStrategy(), execution_strategy=strategy)


# -- the issue's numbers -----------------------------------------------------------------------------
async def test_a_step_of_100_items_at_rate_50_takes_at_least_1_9_s():
    started = time.monotonic()
    out = await Stream(name="s", steps=[Step(lambda x: x + 1, rate=50)]).run(range(100))
    assert time.monotonic() - started >= 1.9
    assert out == list(range(1, 101))


async def test_a_group_of_100_members_on_a_semaphore_at_rate_50_takes_at_least_1_9_s():
    strategy = SemaphoreExecutionStrategy(100, rate=50)
    started = time.monotonic()
    out = await strategy.execute([Echo(name=f"s{i}") for i in range(100)])
    assert time.monotonic() - started >= 1.9
    assert out == [f"s{i}" for i in range(100)]


async def test_a_group_of_20_at_semaphore_5_rate_20_is_paced_and_never_has_more_than_5_in_flight():
    tracker = Tracker()
    strategy = SemaphoreExecutionStrategy(5, rate=20)
    started = time.monotonic()
    out = await _group([Tracked(name=f"s{i}", tracker=tracker, delay=0.3) for i in range(20)], strategy).run()
    assert time.monotonic() - started >= 0.95
    assert out == [f"s{i}" for i in range(20)]
    assert tracker.peak <= 5 and tracker.now == 0 and strategy.in_flight == 0


async def test_two_streams_sharing_one_rated_semaphore_stay_under_its_rate_together():
    shared = SemaphoreExecutionStrategy(4, rate=40)
    log: list[float] = []

    def stream(name: str) -> Stream:
        return Stream(name=name, steps=[Step(Starts(name=f"{name} start", log=log), shared)])

    started = time.monotonic()
    a, b = await asyncio.gather(stream("a").run(range(20)), stream("b").run(range(20, 40)))
    assert time.monotonic() - started >= 39 / 40
    assert a == list(range(20)) and b == list(range(20, 40))
    log.sort()
    assert len(log) == 40
    # Any 21 starts in a row span at least 20 intervals (a start delayed by the machine only widens the gap
    # after it, so a generous slack covers the one before it).
    assert all(log[i + 20] - log[i] >= 20 / 40 - 0.1 for i in range(len(log) - 20))


def test_groups_in_two_threads_sharing_one_rated_semaphore_stay_under_its_rate():
    shared = SemaphoreExecutionStrategy(3, rate=40)
    results: list[Any] = []

    def in_thread(tag: str) -> None:
        stages = [Echo(name=f"{tag}{i}") for i in range(20)]
        results.append(asyncio.run(asyncio.wait_for(shared.execute(stages), GRACE)))

    started = time.monotonic()
    threads = [threading.Thread(target=in_thread, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GRACE)
    assert time.monotonic() - started >= 39 / 40
    assert sorted(r[0] for r in results) == ["a0", "b0"]
    assert shared.in_flight == 0


async def test_a_group_and_a_stream_share_one_strategy_s_rate():
    shared = SemaphoreExecutionStrategy(4, rate=40)
    stream = Stream(name="s", steps=[Step(lambda x: x, shared)])
    started = time.monotonic()
    out, items = await asyncio.gather(shared.execute([Echo(name=f"g{i}") for i in range(20)]), stream.run(range(20)))
    assert time.monotonic() - started >= 39 / 40
    assert out == [f"g{i}" for i in range(20)] and items == list(range(20))


# -- burst, limits, errors, cancellation ---------------------------------------------------------------
@pytest.mark.parametrize("burst", [1, 5])
async def test_burst_lets_that_many_start_at_once_and_the_next_waits_for_its_token(burst):
    log: list[float] = []
    strategy = SemaphoreExecutionStrategy(10, rate=0.5, burst=burst)  # a token every 2 s after the burst
    run = asyncio.ensure_future(strategy.execute([Starts(name=f"s{i}", log=log, delay=GRACE) for i in range(8)]))
    await _until(lambda: len(log) >= burst)
    await asyncio.sleep(0.2)
    assert len(log) == burst  # the next start is 2 s away
    assert strategy.in_flight == 8  # each worker holds its slot while it waits for its token
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert engine_tasks() == set()
    assert strategy.in_flight == 0
    assert len(log) == burst  # nothing started as the run was cancelled


async def test_a_rate_never_lifts_max_concurrent():
    tracker = Tracker()
    strategy = SemaphoreExecutionStrategy(2, rate=1000, burst=100)
    await strategy.execute([Tracked(name=f"s{i}", tracker=tracker, delay=0.02) for i in range(10)])
    assert tracker.peak == 2


async def test_a_rated_step_on_a_semaphore_keeps_its_width():
    tracker = Tracker()
    stream = Stream(name="s", steps=[Step(Tracked(name="t", tracker=tracker, delay=0.05),
                                          SemaphoreExecutionStrategy(2, rate=1000, burst=100))])
    assert await stream.run(range(10)) == ["t"] * 10
    assert tracker.peak == 2


async def test_return_exceptions_with_a_rate_keeps_each_error_in_place():
    strategy = SemaphoreExecutionStrategy(2, return_exceptions=True, rate=100)
    out = await strategy.execute([Echo(name="a"), Fail(name="b", delay=0.01), Echo(name="c")])
    assert out[0] == "a" and out[2] == "c"
    assert isinstance(out[1], ValueError) and str(out[1]) == "b"
    assert strategy.in_flight == 0


async def test_the_first_error_with_a_rate_cancels_the_others_and_propagates():
    tracker = Tracker()
    strategy = SemaphoreExecutionStrategy(2, rate=100)
    stages = [Fail(name="boom", delay=0.05)] + [Tracked(name=f"s{i}", tracker=tracker, delay=5) for i in range(3)]
    with pytest.raises(ValueError, match="boom"):
        await strategy.execute(stages)
    assert tracker.now == 0 and strategy.in_flight == 0
    assert engine_tasks() == set()


async def test_a_waiter_cancelled_last_gives_its_token_back():
    bucket = TokenBucket(1.0)
    await bucket.take()  # the burst of 1: at once
    waiter = asyncio.ensure_future(bucket.take())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    start, _, _ = bucket.reserve()  # the next start is the cancelled one's moment, not one after it
    assert start - time.monotonic() <= 1.0


async def test_a_stream_cancelled_while_its_items_wait_for_tokens_leaves_nothing_running():
    log: list[float] = []
    stream = Stream(name="s", steps=[Step(Starts(name="st", log=log), ConcurrentExecutionStrategy(), rate=0.5)])
    run = asyncio.ensure_future(stream.run(range(10)))
    await _until(lambda: len(log) >= 1)
    await asyncio.sleep(0.1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert engine_tasks() == set()
    assert len(log) == 1
    progress = stream.progress["st"]
    assert progress.in_flight == 0 and progress.done == 1


# -- a step's own rate, whatever its strategy -------------------------------------------------------------
@pytest.mark.parametrize("make", [
    pytest.param(lambda: None, id="loop"),
    pytest.param(SequentialExecutionStrategy, id="sequential"),
    pytest.param(ConcurrentExecutionStrategy, id="concurrent"),
    pytest.param(lambda: SemaphoreExecutionStrategy(4), id="semaphore"),
    pytest.param(lambda: MultithreadExecutionStrategy(2), id="threads"),
    pytest.param(lambda: MultiprocessExecutionStrategy(2), id="processes"),
])
async def test_a_step_s_rate_paces_its_items_on_every_strategy(make):
    strategy = make()
    stream = Stream(name="s", steps=[Step(Double(name="double"), strategy, rate=20)])
    started = time.monotonic()
    out = await stream.run(range(10))
    assert time.monotonic() - started >= 9 / 20
    assert out == [2 * x for x in range(10)]
    if strategy is not None:
        await strategy.aclose()


async def test_a_step_s_rate_and_its_strategy_s_rate_both_apply():
    # The strategy allows 100 per second, the step 20: the step's is the one felt; and the other way round.
    for step_rate, strategy_rate in ((20, 100), (100, 20)):
        strategy = SemaphoreExecutionStrategy(4, rate=strategy_rate)
        started = time.monotonic()
        out = await Stream(name="s", steps=[Step(lambda x: x, strategy, rate=step_rate)]).run(range(10))
        assert time.monotonic() - started >= 9 / 20
        assert out == list(range(10))


async def test_a_batch_is_one_start(monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = TokenBucket.reserve
    tokens = []

    def counted(self: TokenBucket) -> tuple[float, float, float]:
        tokens.append(1)
        return reserve(self)

    monkeypatch.setattr(TokenBucket, "reserve", counted)
    stream = Stream(name="s", steps=[Step(lambda batch: sum(batch), batch=5, rate=1)])
    started = time.monotonic()
    assert await stream.run(range(10)) == [10, 35]
    assert time.monotonic() - started >= 1.0 - SLACK  # the second batch waited for its token
    assert len(tokens) == 2  # a token per batch, not per item


async def test_failed_items_passing_through_take_no_token():
    stream = Stream(name="s", on_error="return", steps=[Step(Double(name="d", bad=1)), Step(lambda x: x, rate=0.5,
                                                                                            burst=2)])
    out = await stream.run(range(3))
    assert out[0] == 0 and isinstance(out[1], ValueError) and out[2] == 4
    # The burst of 2 went to the 2 items: the next token is at most one interval (2 s) away, not two.
    start, _, _ = stream._steps[1].bucket.reserve()
    assert start - time.monotonic() <= 2.0


def test_an_off_loop_rated_step_sends_one_item_per_call():
    class Inner(ItemRunner):
        chunk = 64
        width = 3
        releases = True

    inner = Inner()
    paced = PacedItems(inner, TokenBucket(1.0).take)
    assert paced.chunk == 1 and paced.width == 3 and paced.releases
    paced.width = 1
    assert inner.width == 1


# -- construction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 0, 0.0, float("nan"), float("inf"), True, "5", 10**400, 5e-324])
def test_a_bad_rate_fails_at_construction_naming_the_field(bad):
    with pytest.raises(ConfigurationError, match=r"^SemaphoreExecutionStrategy: field 'rate' must be a finite "
                                                 r"number > 0, got "):
        SemaphoreExecutionStrategy(2, rate=bad)
    with pytest.raises(ConfigurationError, match=r"^Step 'double': field 'rate' must be a finite number > 0"):
        Step(Double(name="double"), rate=bad)


def test_the_issue_s_message_for_a_negative_rate():
    with pytest.raises(ConfigurationError) as caught:
        SemaphoreExecutionStrategy(2, rate=-1)
    assert str(caught.value) == "SemaphoreExecutionStrategy: field 'rate' must be a finite number > 0, got -1"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", 2**64])
def test_a_bad_burst_fails_at_construction_naming_the_field(bad):
    with pytest.raises(ConfigurationError, match=r"^SemaphoreExecutionStrategy: field 'burst' must be an int >= 1"):
        SemaphoreExecutionStrategy(2, rate=1, burst=bad)
    with pytest.raises(ConfigurationError, match=r"^Step 'double': field 'burst' must be an int >= 1"):
        Step(Double(name="double"), rate=1, burst=bad)


def test_burst_without_a_rate_is_refused():
    with pytest.raises(ConfigurationError, match=r"SemaphoreExecutionStrategy: field 'burst' needs 'rate'"):
        SemaphoreExecutionStrategy(2, burst=3)
    with pytest.raises(ConfigurationError, match=r"Step 'double': field 'burst' needs 'rate'"):
        Step(Double(name="double"), burst=3)


def test_rate_and_burst_show_and_travel():
    strategy = SemaphoreExecutionStrategy(3, return_exceptions=True, rate=2.5, burst=4)
    assert repr(strategy) == "SemaphoreExecutionStrategy(max_concurrent=3, return_exceptions=True, rate=2.5, burst=4)"
    assert (strategy.rate, strategy.burst) == (2.5, 4)
    copied = pickle.loads(pickle.dumps(strategy))  # a copy in a worker process: its own slots and bucket
    assert repr(copied) == repr(strategy) and copied.bucket is not strategy.bucket
    assert copy.deepcopy(strategy) is strategy  # a strategy is shared, not copied
    plain = SemaphoreExecutionStrategy(3)
    assert (plain.rate, plain.burst, plain.bucket) == (None, None, None)
    assert repr(plain) == "SemaphoreExecutionStrategy(max_concurrent=3)"
    step = Step(Double(name="double"), rate=2, burst=3)
    assert repr(step).endswith(", rate=2, burst=3)") and (step.rate, step.burst) == (2, 3)
    assert (Step(Double(name="double")).rate, Step(Double(name="double")).burst) == (None, None)
    assert copy.deepcopy(step).bucket is not step.bucket
    assert repr(TokenBucket(50)) == "TokenBucket(rate=50, burst=1)"


def test_only_a_rated_semaphore_pays_for_pacing():
    assert type(SemaphoreExecutionStrategy(3).dispatch.__self__) is not Paced
    assert type(SemaphoreExecutionStrategy(3, rate=1).dispatch.__self__) is Paced
