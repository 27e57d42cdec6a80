"""``Tracer``: every run in its block becomes a slice of a valid Chrome trace-event file.

The file format is checked here by a schema check of the required fields of each
phase used (``X``, ``M``, ``s``, ``f``) and by the rule Perfetto enforces for
``X`` slices: on one (pid, tid) track they nest, never overlap partially.
Perfetto's own loader (the ``perfetto`` PyPI package's ``TraceProcessor``) is
not used: it downloads a ``trace_processor_shell`` binary on first use, and
the test machines reach package registries only.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import Echo, Nap, check_trace_format, eventually

import dynapipeline
from dynapipeline import Handler, PipelineFactory, PipeLineType, Stage, StageGroup, Step, Stream, Tracer
from dynapipeline._engine import tracing
from dynapipeline.errors import ConfigurationError, StageTimeoutError, WorkerCrashedError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy, OnceCycleStrategy


class Die(Stage):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        os._exit(3)


def slices(events: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["ph"] == "X" and (name is None or e["name"] == name)]


def inside(inner: dict[str, Any], outer: dict[str, Any]) -> bool:
    slack = 1e-3  # µs: rounding of the two ends
    return bool(outer["ts"] - slack <= inner["ts"]
                and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + slack)


def mixed_pipeline(processes: MultiprocessExecutionStrategy) -> Any:
    concurrent = StageGroup(name="concurrent", stages=[Echo(name=f"c{i}", delay=0.05) for i in range(3)],
                            cycle_strategy=LoopCycleStrategy(2), execution_strategy=ConcurrentExecutionStrategy())
    threads = StageGroup(name="threads", stages=[Nap(name="t", seconds=0.03)], cycle_strategy=OnceCycleStrategy(),
                         execution_strategy=MultithreadExecutionStrategy(max_workers=1))
    procs = StageGroup(name="processes", stages=[Nap(name="p", seconds=0.05)], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=processes)
    return PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "mixed", [concurrent, threads, procs],
                                             OnceCycleStrategy(), SequentialExecutionStrategy())


async def test_mixed_pipeline_trace(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    processes = MultiprocessExecutionStrategy(max_workers=1)
    pipeline = mixed_pipeline(processes)
    async with processes:
        async with Tracer(path):
            await pipeline.run()
    events = check_trace_format(json.loads(path.read_text()))
    here = os.getpid()
    # Every run has a slice, with its cycle.
    for name, cycles in [("c0", [1, 2]), ("c1", [1, 2]), ("c2", [1, 2]), ("t", [1]), ("p", [1]),
                         ("concurrent", [1]), ("threads", [1]), ("processes", [1]), ("mixed", [1])]:
        assert sorted(s["args"]["cycle"] for s in slices(events, name)) == cycles, name
    # Concurrent stages overlap in time (on separate tracks of the loop's thread).
    first = sorted((s for s in slices(events) if s["name"] in ("c0", "c1", "c2")), key=lambda s: s["ts"])[:3]
    assert max(s["ts"] for s in first) < min(s["ts"] + s["dur"] for s in first)
    assert len({s["tid"] for s in first}) == 3 and all(s["pid"] == here for s in first)
    # The process stage carries its worker's pid, named by metadata; the thread stage its thread.
    [p] = slices(events, "p")
    assert p["pid"] != here and p["pid"] == pipeline.report()["p"].pids[0]
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    assert (p["pid"], f"worker {p['pid']}") in names and (here, "dynapipeline") in names
    [t] = slices(events, "t")
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert thread_names[(here, t["tid"])].startswith("dynapipeline-thread")
    assert {"wait ms", "ship ms"} <= set(p["args"]) and {"wait ms", "ship ms"} <= set(t["args"])
    # Every stage slice lies inside its group's slice, every group inside the pipeline's.
    [mixed] = slices(events, "mixed")
    for group, members in [("concurrent", ["c0", "c1", "c2"]), ("threads", ["t"]), ("processes", ["p"])]:
        [g] = slices(events, group)
        assert inside(g, mixed)
        for member in members:
            assert all(inside(s, g) for s in slices(events, member)), member
    # Arrows from the dispatch to the runs in the thread and in the worker process.
    finishes = [e for e in events if e["ph"] == "f"]
    assert {(e["pid"], e["tid"], e["ts"]) for e in finishes} == {(t["pid"], t["tid"], t["ts"]),
                                                                  (p["pid"], p["tid"], p["ts"])}


def test_plain_with_around_a_loop_records_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "sync.json"
    group = StageGroup(name="g", stages=[Echo(name="a"), Echo(name="b")], cycle_strategy=LoopCycleStrategy(3),
                       execution_strategy=SequentialExecutionStrategy())
    with Tracer(str(path)) as tracer:
        dynapipeline.run(group.run())
    assert not tracing()
    events = check_trace_format(json.loads(path.read_text()))
    assert events == json.loads(json.dumps(tracer.events))
    assert [s["args"]["cycle"] for s in slices(events, "a")] == [1, 2, 3]


async def test_only_runs_inside_the_block_are_recorded() -> None:
    inner, outer, later = Echo(name="inner", delay=0.02), Echo(name="outer", delay=0.02), Echo(name="later")
    outside = asyncio.ensure_future(outer.run())  # started outside the block: its context has no tracer
    with Tracer() as tracer:
        await asyncio.gather(inner.run(), outside)
    await later.run()
    assert [s["name"] for s in slices(tracer.events)] == ["inner"]
    assert not tracing()


async def test_nested_tracers_the_innermost_records() -> None:
    with Tracer() as outer:
        await Echo(name="a").run()
        with Tracer() as inner:
            await Echo(name="b").run()
        assert tracing()
    assert not tracing()
    assert [s["name"] for s in slices(outer.events)] == ["a"]
    assert [s["name"] for s in slices(inner.events)] == ["b"]


async def test_stream_steps_and_items() -> None:
    stream = Stream(name="s", steps=[Step(Echo(name="first")), Step(Echo(name="second"))], source=range(3))
    with Tracer() as tracer:
        await stream.run()
    events = check_trace_format({"traceEvents": tracer.events})
    [whole] = slices(events, "s")
    assert whole["cat"] == "stream"
    for step in ("first", "second"):
        [span] = slices(events, f"step {step}")
        assert span["cat"] == "step" and inside(span, whole)
        runs = slices(events, step)
        assert sorted(r["args"]["item"] for r in runs) == [0, 1, 2]
        assert all(inside(r, span) for r in runs)


async def test_file_is_written_when_the_block_fails(tmp_path: Path) -> None:
    class Boom(Stage):
        async def execute(self) -> Any:
            raise ValueError("boom")

    path = tmp_path / "failed.json"
    with pytest.raises(ValueError):
        async with Tracer(path):
            await Boom(name="boom").run()
    [boom] = slices(check_trace_format(json.loads(path.read_text())), "boom")
    assert boom["args"]["error"] is True


async def test_worker_crash_and_hang_are_traced_and_leave_nothing_running(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    processes = MultiprocessExecutionStrategy(max_workers=1)
    crash = StageGroup(name="crash", stages=[Die(name="die")], cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=processes)
    hang = StageGroup(name="hang", stages=[Nap(name="nap", seconds=60, timeout=0.3)],
                      cycle_strategy=OnceCycleStrategy(), execution_strategy=processes)
    async with processes:
        async with Tracer(path):
            with pytest.raises(WorkerCrashedError):
                await crash.run()
            with pytest.raises(StageTimeoutError):
                await hang.run()
    assert processes.worker_pids() == []
    events = check_trace_format(json.loads(path.read_text()))
    assert slices(events, "crash")[0]["args"]["error"] and slices(events, "hang")[0]["args"]["error"]
    assert [s["args"].get("error") for s in slices(events, "nap")] == [True]
    assert eventually(lambda: not [t for t in threading.enumerate() if t.name.startswith("dynapipeline-thread")])


async def test_a_run_whose_after_handler_raises_is_traced_as_failed() -> None:
    class FailAfter(Handler):
        def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
            raise LookupError("after")

    with Tracer() as tracer:
        await Echo(name="fine").run()
        with pytest.raises(LookupError):
            await Echo(name="failed after", handlers=[FailAfter()]).run()
    [fine] = slices(tracer.events, "fine")
    [failed] = slices(tracer.events, "failed after")
    assert not fine.get("args", {}).get("error") and failed["args"]["error"] is True


def test_bad_paths_are_rejected_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Tracer: field 'path' must be a file path or None, got"):
        Tracer(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Tracer: field 'path': folder .* does not exist"):
        Tracer(tmp_path / "missing" / "run.json")


async def test_a_tracer_is_not_entered_twice_at_once() -> None:
    tracer = Tracer()
    with tracer:
        with pytest.raises(RuntimeError, match="already active"):
            tracer.__enter__()
        with pytest.raises(RuntimeError, match="still active"):
            _ = tracer.events
    assert not tracing()
