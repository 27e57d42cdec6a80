"""``component.report()``: the structured report, its table, its time split and its slowest runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from helpers import Die, Echo, Fail, Nap, group, pipeline

from dynapipeline import PipeLineType, Report, Stage, Step, Stream
from dynapipeline.errors import StageTimeoutError, WorkerCrashedError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy


class Cycles(Stage):
    """Sleeps ``delays[k]`` seconds in its k-th run."""

    delays: list[float]
    runs: int = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        delay = self.delays[self.runs % len(self.delays)]
        self.runs += 1
        await asyncio.sleep(delay)


def _split_sum(line: Any) -> float:
    return float(line.wait + line.ship + line.work)


async def test_process_stage_split_adds_up_to_its_wall_time() -> None:
    # A cold pool: starting the worker is waiting for a worker, so it counts as wait.
    strategy = MultiprocessExecutionStrategy(max_workers=1)
    g = group([Nap(name="nap", seconds=0.3)], strategy, name="procs")
    try:
        await g.run()
    finally:
        strategy.close()
    line = g.report()["nap"]
    wall = g.execution_time
    assert wall is not None
    assert line.work == pytest.approx(0.3, abs=0.1)
    assert line.wait > 0 and line.ship > 0
    assert abs(_split_sum(line) - wall) <= 0.1 * wall, (line, wall)
    assert line.where == (f"process {line.pids[0]}",) and len(line.pids) == 1


async def test_queued_process_stages_wait_for_the_worker() -> None:
    # One worker, three stages: each waits in the queue for the ones before it; the last one's
    # split spans the whole dispatch.
    strategy = MultiprocessExecutionStrategy(max_workers=1)
    stages = [Nap(name=f"n{i}", seconds=0.1) for i in range(3)]
    g = group(stages, strategy, name="procs")
    async with strategy:
        await strategy.start()
        await g.run()
    wall = g.execution_time
    assert wall is not None
    report = g.report()
    waits = [report[s.name].wait for s in stages]
    assert waits[1] - waits[0] >= 0.08 and waits[2] - waits[1] >= 0.08  # each waits ~0.1 s more
    assert abs(_split_sum(report["n2"]) - wall) <= 0.1 * wall, (report["n2"], wall)


async def test_thread_stage_records_wait_ship_and_where() -> None:
    g = group([Nap(name="t", seconds=0.05)], MultithreadExecutionStrategy(max_workers=1), LoopCycleStrategy(2),
              name="threads")
    await g.run()
    line = g.report()["t"]
    assert line.where == ("thread",) and line.pids == ()
    assert line.runs == 2 and line.wait >= 0 and line.ship > 0
    wall = g.stats.total
    assert abs(_split_sum(line) - wall) <= 0.1 * wall + 0.01


async def test_thread_stages_with_return_exceptions_record_wait_ship_and_where() -> None:
    g = group([Nap(name="a", seconds=0.05), Nap(name="b", seconds=0.05)],
              MultithreadExecutionStrategy(max_workers=1, return_exceptions=True), name="threads")
    await g.run()
    b = g.report()["b"]
    assert b.where == ("thread",) and b.ship > 0
    assert b.wait >= 0.02  # one thread: "b" waited for "a"


async def test_loop_stages_never_wait_or_ship() -> None:
    p = pipeline(kind=PipeLineType.SIMPLE, groups=[group([Echo(name="a", delay=0.001), Echo(name="b")],
                                                              ConcurrentExecutionStrategy())])
    await p.run()
    for line in p.report().components:
        assert (line.wait, line.ship, line.where) == (0.0, 0.0, ("loop",))


async def test_slowest_five_name_the_stage_and_cycle_across_stages() -> None:
    slow = Cycles(name="slow", delays=[0.001, 0.09, 0.001, 0.07, 0.001, 0.02])  # the 5th slowest: 20 ms vs 1 ms
    steady = Cycles(name="steady", delays=[0.05, 0.001, 0.001, 0.001, 0.001, 0.03])
    g = group([slow, steady], SequentialExecutionStrategy(), cycle=LoopCycleStrategy(6), name="g")
    await g.run()
    report = g.report()
    assert [(s.name, s.cycle) for s in report.slowest] == [
        ("slow", 2), ("slow", 4), ("steady", 1), ("steady", 6), ("slow", 6)]
    assert report.slowest[0].path == ("g", "slow")
    assert report.slowest[0].seconds >= 0.09
    assert "slowest stage runs:" in str(report) and "g / slow  cycle 2" in str(report)


async def test_percentiles_come_from_the_last_64_runs_and_stats_from_all() -> None:
    stage = Echo(name="e")
    runner = stage._runner
    for ms in range(1, 101):  # runs of 1 ms, 2 ms, ... 100 ms
        runner.record(10.0, 10.0 + ms / 1e3)
    line = stage.report()["e"]
    assert len(runner.durations()) == 64  # bounded: the last 64 of 100 runs (37 ms .. 100 ms)
    assert line.p50 == pytest.approx(0.068)  # nearest rank 32 of 64
    assert line.p95 == pytest.approx(0.097)  # nearest rank 61 of 64
    assert line.max == pytest.approx(0.1) and line.mean == pytest.approx(0.0505) and line.runs == 100
    assert [s.cycle for s in stage.report().slowest] == [100, 99, 98, 97, 96]


async def test_errors_count_failed_runs_not_retried_attempts() -> None:
    class Flaky(Stage):
        fails: int = 1

        async def execute(self) -> Any:
            if self.fails:
                self.fails -= 1
                raise ValueError("once")
            return "ok"

    flaky = Flaky(name="flaky", retries=1)
    bad = Fail(name="bad")
    g = group([flaky, bad], SequentialExecutionStrategy(), name="g")
    with pytest.raises(ValueError, match="bad"):
        await g.run()
    report = g.report()
    assert (report["flaky"].runs, report["flaky"].errors) == (1, 0)
    assert (report["bad"].runs, report["bad"].errors) == (1, 1)
    assert report["g"].errors == 1


@pytest.mark.parametrize("strategy", [SequentialExecutionStrategy(chain=True),
                                      SemaphoreExecutionStrategy(2, return_exceptions=True)],
                         ids=["chain", "semaphore-gather"])
async def test_errors_count_under_chain_and_return_exceptions(strategy: Any) -> None:
    bad = Fail(name="bad")
    g = group([Echo(name="ok"), bad], strategy, name="g")
    try:
        await g.run()
    except ValueError:
        pass  # the chain propagates the error; the gather returns it in place
    report = g.report()
    assert (report["bad"].runs, report["bad"].errors) == (1, 1)
    assert (report["ok"].runs, report["ok"].errors) == (1, 0)


async def test_to_dict_is_plain_json_with_every_field() -> None:
    p = pipeline(kind=PipeLineType.SIMPLE, groups=[group([Echo(name="a"), Fail(name="f")])])
    with pytest.raises(ValueError):
        await p.run()
    data = json.loads(json.dumps(p.report().to_dict()))
    rows = {row["name"]: row for row in data["components"]}
    assert set(rows) == {"p", "g", "a", "f"}
    assert set(rows["a"]) == {"name", "kind", "depth", "path", "where", "pids", "runs", "errors", "total", "mean",
                              "p50", "p95", "max", "wait", "ship", "work"}
    assert rows["f"]["errors"] == 1 and rows["a"]["errors"] == 0 and rows["a"]["runs"] == 1
    assert rows["a"]["path"] == ["p", "g", "a"] and rows["a"]["depth"] == 2
    assert rows["a"]["total"] == rows["a"]["work"] == p.groups[0].stages[0].stats.total
    assert [s["name"] for s in data["slowest"]] and all(s["cycle"] == 1 for s in data["slowest"])


async def test_str_is_the_aligned_table() -> None:
    g = group([Echo(name="alpha")], name="grp")
    await g.run()
    report = g.report()
    assert isinstance(report, Report)
    head, *rows = str(report).splitlines()
    assert head.split()[:4] == ["component", "kind", "runs", "total"]
    assert head.endswith("where") and rows[1].split()[0] == "alpha" and rows[1].endswith("loop")


async def test_a_stream_reports_like_a_group() -> None:
    double = Echo(name="double")
    stream = Stream(name="s", steps=[Step(double)], source=range(5))
    await stream.run()
    lines = stream.report().components
    assert [(c.name, c.kind, c.depth) for c in lines] == [("s", "Stream", 0), ("double", "Echo", 1)]
    assert lines[1].runs == 5


async def test_crashed_worker_counts_as_a_failed_run() -> None:
    strategy = MultiprocessExecutionStrategy(max_workers=1)
    g = group([Die(name="die")], strategy)
    async with strategy:
        with pytest.raises(WorkerCrashedError):
            await g.run()
    line = g.report()["die"]
    assert (line.runs, line.errors) == (1, 1)
    assert g.report()["g"].errors == 1


async def test_hanging_process_stage_counts_as_a_failed_run_at_its_deadline() -> None:
    strategy = MultiprocessExecutionStrategy(max_workers=1)
    g = group([Nap(name="hang", seconds=60, timeout=0.3)], strategy)
    async with strategy:
        await strategy.start()
        with pytest.raises(StageTimeoutError):
            await g.run()
    line = g.report()["hang"]
    assert (line.runs, line.errors) == (1, 1)
    assert 0.3 <= line.max < 5


async def test_process_stream_step_reports_its_workers_percentiles_and_split() -> None:
    strategy = MultiprocessExecutionStrategy(max_workers=2)
    stream = Stream(name="s", steps=[Step(Nap(name="nap", seconds=0.002), strategy)])
    async with strategy:
        await strategy.start()
        pids = set(strategy.worker_pids())
        await stream.run(range(100))
    line = stream.report()["nap"]
    assert line.runs == 100 and line.errors == 0
    assert line.pids and set(line.pids) <= pids and line.where == tuple(f"process {p}" for p in line.pids)
    assert 0.002 <= line.p50 <= line.p95 <= line.max  # the items' own timings, not the parent's empty ring
    assert line.work >= 100 * 0.002
    assert line.wait > 0 and line.ship > 0
