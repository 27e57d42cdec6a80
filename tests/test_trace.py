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
from helpers import Die, Echo, Nap, check_trace_format, eventually, group, pipeline

import dynapipeline
from dynapipeline import Handler, Stage, Step, Stream, Tracer
from dynapipeline._engine import tracing
from dynapipeline.errors import ConfigurationError, StageTimeoutError, WorkerCrashedError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy


def slices(events: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["ph"] == "X" and (name is None or e["name"] == name)]


def inside(inner: dict[str, Any], outer: dict[str, Any]) -> bool:
    slack = 1e-3  # µs: rounding of the two ends
    return bool(outer["ts"] - slack <= inner["ts"]
                and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + slack)


def mixed_pipeline(processes: MultiprocessExecutionStrategy) -> Any:
    concurrent = group([Echo(name=f"c{i}", delay=0.05) for i in range(3)], ConcurrentExecutionStrategy(),
                       LoopCycleStrategy(2), name="concurrent")
    threads = group([Nap(name="t", seconds=0.03)], MultithreadExecutionStrategy(max_workers=1), name="threads")
    procs = group([Nap(name="p", seconds=0.05)], processes, name="processes")
    return pipeline([concurrent, threads, procs], name="mixed")


async def test_mixed_pipeline_trace(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    processes = MultiprocessExecutionStrategy(max_workers=1)
    whole = mixed_pipeline(processes)
    async with processes:
        async with Tracer(path):
            await whole.run()
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
    assert p["pid"] != here and p["pid"] == whole.report()["p"].pids[0]
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    assert (p["pid"], f"worker {p['pid']}") in names and (here, "dynapipeline") in names
    [t] = slices(events, "t")
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert thread_names[(here, t["tid"])].startswith("dynapipeline-thread")
    assert {"wait ms", "ship ms"} <= set(p["args"]) and {"wait ms", "ship ms"} <= set(t["args"])
    # Every stage slice lies inside its group's slice, every group inside the pipeline's.
    [mixed] = slices(events, "mixed")
    for name, members in [("concurrent", ["c0", "c1", "c2"]), ("threads", ["t"]), ("processes", ["p"])]:
        [g] = slices(events, name)
        assert inside(g, mixed)
        for member in members:
            assert all(inside(s, g) for s in slices(events, member)), member
    # Arrows from the dispatch to the runs in the thread and in the worker process.
    finishes = [e for e in events if e["ph"] == "f"]
    assert {(e["pid"], e["tid"], e["ts"]) for e in finishes} == {(t["pid"], t["tid"], t["ts"]),
                                                                  (p["pid"], p["tid"], p["ts"])}


def test_plain_with_around_a_loop_records_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "sync.json"
    g = group([Echo(name="a"), Echo(name="b")], cycle=LoopCycleStrategy(3))
    with Tracer(str(path)) as tracer:
        dynapipeline.run(g.run())
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
    crash = group([Die(name="die")], processes, name="crash")
    hang = group([Nap(name="nap", seconds=60, timeout=0.3)], processes, name="hang")
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


async def test_an_after_that_raises_on_a_sampled_out_item_marks_no_other_run_failed() -> None:
    class FailAfterItem3(Handler):
        def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
            if args == (3,):
                raise LookupError("after")

    stream = Stream(name="s", steps=[Step(Echo(name="echo", handlers=[FailAfterItem3()]))], on_error="skip")
    with Tracer(items=2) as tracer:  # items 0 and 1 kept; item 3's run is left out
        assert len(await stream.run(range(5))) == 4 and len(stream.errors) == 1
    kept = slices(tracer.events, "echo")
    assert len(kept) == 2 and not any(s.get("args", {}).get("error") for s in kept)


def test_bad_paths_are_rejected_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Tracer: field 'path' must be a file path or None, got"):
        Tracer(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Tracer: field 'path': folder .* does not exist"):
        Tracer(tmp_path / "missing" / "run.json")


@pytest.mark.parametrize(("path", "message"), [
    ("{tmp}", "Tracer: field 'path': '{tmp}' is a folder, not a file"),
    ("", "Tracer: field 'path': the path is empty"),
    ("/proc/dynapipeline-trace.json", "Tracer: field 'path': '/proc/dynapipeline-trace.json' cannot be written: "),
])
def test_paths_that_cannot_be_written_are_rejected_when_made(tmp_path: Path, path: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Tracer(path.format(tmp=tmp_path))
    assert str(info.value).startswith(message.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_check_leaves_no_file_behind_and_an_existing_one_as_it_is(tmp_path: Path) -> None:
    Tracer(tmp_path / "new.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old.json").write_text("kept")
    Tracer(tmp_path / "old.json")
    assert (tmp_path / "old.json").read_text() == "kept"


async def test_a_failed_write_never_replaces_the_runs_own_error(caplog: pytest.LogCaptureFixture) -> None:
    # /dev/full accepts the open and fails every write that reaches it (ENOSPC): a disk full during the run.
    with pytest.raises(ValueError, match="the run's own") as info:
        async with Tracer("/dev/full"):
            await Echo(name="a").run()
            raise ValueError("the run's own")
    assert any("Tracer: the trace could not be written to '/dev/full'" in note for note in info.value.__notes__)
    assert "the trace could not be written" in caplog.text
    with pytest.raises(ValueError, match="the run's own") as info:
        with Tracer("/dev/full"):
            raise ValueError("the run's own")
    assert not tracing()


async def test_a_failed_write_after_a_good_run_raises_naming_the_file() -> None:
    with pytest.raises(OSError, match="Tracer: the trace could not be written to '/dev/full'"):
        async with Tracer("/dev/full"):
            await Echo(name="a").run()
    assert not tracing()


@pytest.mark.parametrize("items", [-1, 1.5, True, "10"])
def test_bad_item_samples_are_rejected_naming_the_field(items: Any) -> None:
    with pytest.raises(ConfigurationError, match="Tracer: field 'items' must be a whole number >= 0 or None, got"):
        Tracer(items=items)


class Peek(Stage):
    """Passes its item on; at item ``at`` notes the size of the trace file being written."""

    path: Any = None
    at: int = 0
    sizes: Any = None

    async def execute(self, item: int) -> int:
        if item == self.at:
            self.sizes.append(os.path.getsize(self.path))
        return item


async def test_a_long_stream_is_written_to_the_file_as_it_runs(tmp_path: Path) -> None:
    path, sizes, n = tmp_path / "long.json", [], 30_000
    stream = Stream(name="long", steps=[Step(Peek(name="peek", path=path, at=25_000, sizes=sizes)),
                                        Step(Echo(name="last"))])
    async with Tracer(path) as tracer:
        assert len(await stream.run(range(n))) == n
    # Some 50,000 runs had ended by the first step's item 25,000: most of them were in the file already.
    assert sizes and sizes[0] > 1_000_000
    events = check_trace_format(json.loads(path.read_text()))
    assert events == tracer.events
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    for step in ("peek", "last"):
        runs = slices(events, step)
        assert sorted(r["args"]["item"] for r in runs) == list(range(n))
        assert {names[(r["pid"], r["tid"])] for r in runs} == {f"{threading.current_thread().name}: {step}"}
        [span] = slices(events, f"step {step}")
        assert all(inside(r, span) for r in runs)


async def test_overlapping_item_runs_of_one_stage_get_concurrent_tracks() -> None:
    stream = Stream(name="wide", steps=[Step(Echo(name="slow", delay=0.01), ConcurrentExecutionStrategy())],
                    source=range(20), maxsize=5)
    with Tracer() as tracer:
        await stream.run()
    events = check_trace_format({"traceEvents": tracer.events})
    runs = slices(events, "slow")
    assert sorted(r["args"]["item"] for r in runs) == list(range(20))
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    tracks = {names[r["tid"]] for r in runs}
    assert len(tracks) > 1 and any(name.endswith("slow (concurrent 1)") for name in tracks)


async def test_items_records_the_first_item_runs_of_each_stage_and_every_other_run(tmp_path: Path) -> None:
    path = tmp_path / "sampled.json"
    stream = Stream(name="s", steps=[Step(Echo(name="first")), Step(Echo(name="second"))], source=range(100))
    g = group([Echo(name="plain")], cycle=LoopCycleStrategy(20))
    async with Tracer(path, items=5) as tracer:
        for _ in range(2):
            await g.run()
            await stream.run()
    document = json.loads(path.read_text())
    events = check_trace_format(document)
    for step in ("first", "second"):
        assert sorted(r["args"]["item"] for r in slices(events, step)) == [0, 1, 2, 3, 4]
        assert [s["args"]["stream"] for s in slices(events, f"step {step}")] == ["s", "s"]
    assert len(slices(events, "plain")) == 40 and len(slices(events, "g")) == len(slices(events, "s")) == 2
    assert tracer.left_out == 2 * 2 * 100 - 2 * 5  # the first 5 of each stage in the block: all in the first run
    assert document["otherData"]["items per stage"] == 5
    assert document["otherData"]["item runs left out"] == 390
    with Tracer(items=0) as none:
        await stream.run()
    assert slices(none.events, "first") == [] and len(slices(none.events, "step first")) == 1


async def test_a_tracer_is_not_entered_twice_at_once() -> None:
    tracer = Tracer()
    with tracer:
        with pytest.raises(RuntimeError, match="already active"):
            tracer.__enter__()
        with pytest.raises(RuntimeError, match="still active"):
            _ = tracer.events
    assert not tracing()


async def test_process_stream_step_items_are_traced_on_their_workers() -> None:
    processes = MultiprocessExecutionStrategy(max_workers=2)
    stream = Stream(name="s", steps=[Step(Nap(name="nap", seconds=0.001), processes)])
    async with processes:
        await processes.start()
        pids = set(processes.worker_pids())
        with Tracer() as tracer:
            await stream.run(range(100))
    events = check_trace_format({"traceEvents": tracer.events})
    runs = slices(events, "nap")
    assert sorted(r["args"]["item"] for r in runs) == list(range(100))
    assert {r["pid"] for r in runs} <= pids
    assert sorted(r["args"]["cycle"] for r in runs) == list(range(1, 101))
    assert all({"wait ms", "ship ms"} <= set(r["args"]) for r in runs)
    # An arrow from the dispatch in this process to each item's run in its worker.
    finishes = {(e["pid"], e["tid"], e["ts"]) for e in events if e["ph"] == "f"}
    assert finishes == {(r["pid"], r["tid"], r["ts"]) for r in runs}
    starts = [e for e in events if e["ph"] == "s"]
    assert len(starts) == 100 and all(e["pid"] == os.getpid() for e in starts)
