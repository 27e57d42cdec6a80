"""OpenTelemetry spans, checked against the real SDK (InMemorySpanExporter + SimpleSpanProcessor)."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import dynapipeline
from dynapipeline import PipeLineType, Stage, Step, Stream
from dynapipeline.errors import WorkerCrashedError
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, LoopCycleStrategy
from dynapipeline.otel import OpenTelemetryHandler
from tests.helpers import Die, Double, Echo, Fail, ItemNap, group, pipeline


class Blocking(Stage):
    def execute(self) -> str:
        return self.name


@pytest.fixture
def spans() -> Iterator[tuple[OpenTelemetryHandler, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OpenTelemetryHandler(tracer_provider=provider), exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), "one span per component run"
    return named


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_spans_nest_pipeline_group_stage_with_attributes(spans: Any) -> None:
    handler, exporter = spans
    instrumented = handler.instrument(pipeline([group([Echo(name="a", retries=2, timeout=5.0)])],
                                               kind=PipeLineType.SIMPLE))
    assert await instrumented.run() == [["a"]]
    named = _by_name(exporter)
    assert set(named) == {"p", "g", "a"}
    p, g, a = named["p"], named["g"], named["a"]
    assert _parent_id(p) is None
    assert _parent_id(g) == _span_id(p)
    assert _parent_id(a) == _span_id(g)
    assert len({span.context.trace_id for span in (p, g, a) if span.context}) == 1
    assert dict(p.attributes or {}) == {
        "dynapipeline.component.name": "p",
        "dynapipeline.component.kind": "pipeline",
        "dynapipeline.component.class": "SimplePipeline",
        "dynapipeline.run": 1,
        "dynapipeline.execution_strategy": "SequentialExecutionStrategy",
        "dynapipeline.cycle_strategy": "OnceCycleStrategy",
    }
    assert g.attributes is not None and g.attributes["dynapipeline.component.kind"] == "group"
    assert dict(a.attributes or {}) == {
        "dynapipeline.component.name": "a",
        "dynapipeline.component.kind": "stage",
        "dynapipeline.component.class": "Echo",
        "dynapipeline.run": 1,
        "dynapipeline.execution_strategy": "SequentialExecutionStrategy",
        "dynapipeline.retries": 2,
        "dynapipeline.timeout": 5.0,
    }
    assert all(span.status.status_code is StatusCode.UNSET for span in named.values())


async def test_a_handler_on_the_pipeline_alone_makes_only_the_pipeline_span(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="a")])
    p = pipeline([g], kind=PipeLineType.SIMPLE)
    p.add_handler(handler)
    await p.run()
    assert [span.name for span in exporter.get_finished_spans()] == ["p"]


async def test_instrument_twice_attaches_once(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="a")])
    handler.instrument(g)
    handler.instrument(g)
    await g.run()
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["a", "g"]


async def test_concurrent_siblings_are_both_children_of_the_group(spans: Any) -> None:
    handler, exporter = spans
    log: list[Any] = []
    g = group([Echo(name="a", delay=0.05, log=log), Echo(name="b", delay=0.05, log=log)], ConcurrentExecutionStrategy())
    await handler.instrument(pipeline([g], kind=PipeLineType.SIMPLE)).run()
    assert [e for e, _ in log[:2]] == ["start", "start"], "the siblings overlapped"
    named = _by_name(exporter)
    assert _parent_id(named["a"]) == _parent_id(named["b"]) == _span_id(named["g"])
    assert named["a"].attributes is not None
    assert named["a"].attributes["dynapipeline.execution_strategy"] == "ConcurrentExecutionStrategy"


async def test_stage_error_is_recorded_with_status_error_up_the_tree(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="ok"), Fail(name="bad")])
    with pytest.raises(ValueError, match="bad"):
        await handler.instrument(pipeline([g], kind=PipeLineType.SIMPLE)).run()
    named = _by_name(exporter)
    assert named["ok"].status.status_code is StatusCode.UNSET
    for name in ("bad", "g", "p"):
        assert named[name].status.status_code is StatusCode.ERROR
        assert named[name].status.description == "ValueError: bad"
    [event] = named["bad"].events
    assert event.name == "exception"
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"


async def test_cancelled_sibling_is_marked_cancelled_not_failed(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="slow", delay=5), Fail(name="bad", delay=0.01)], ConcurrentExecutionStrategy())
    with pytest.raises(ValueError):
        await handler.instrument(g).run()
    named = _by_name(exporter)
    assert named["slow"].attributes is not None and named["slow"].attributes["dynapipeline.cancelled"] is True
    assert named["slow"].status.status_code is StatusCode.UNSET
    assert named["bad"].status.status_code is StatusCode.ERROR


async def test_run_number_counts_cycles(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="a")], cycle=LoopCycleStrategy(3))
    await handler.instrument(g).run()
    runs = [span.attributes["dynapipeline.run"] for span in exporter.get_finished_spans()
            if span.name == "a" and span.attributes]
    assert runs == [1, 2, 3]


async def test_stop_of_an_infinite_loop_ends_every_span(spans: Any) -> None:
    handler, exporter = spans
    g = group([Echo(name="a", delay=0.01)], cycle=InfiniteLoopStrategy())
    p = handler.instrument(pipeline([g], kind=PipeLineType.SIMPLE))
    task = asyncio.ensure_future(p.run())
    await asyncio.sleep(0.1)
    p.stop()
    assert await asyncio.wait_for(task, 10) is None
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("p") == 1 and names.count("g") == 1 and names.count("a") >= 2


async def test_thread_stages_are_children_of_their_group_and_name_their_thread(spans: Any) -> None:
    handler, exporter = spans
    g = group([Blocking(name="a"), Blocking(name="b")], MultithreadExecutionStrategy(2))
    assert await handler.instrument(pipeline([g])).run() == [["a", "b"]]
    named = _by_name(exporter)
    for name in ("a", "b"):
        attributes = named[name].attributes or {}
        assert _parent_id(named[name]) == _span_id(named["g"])
        assert str(attributes["thread.name"]).startswith("dynapipeline-thread-")
    assert "thread.name" not in (named["g"].attributes or {})


def test_process_stages_get_spans_from_their_workers_times_under_their_group(spans: Any) -> None:
    handler, exporter = spans

    async def main() -> Any:
        async with MultiprocessExecutionStrategy(1) as processes:
            napping = group([ItemNap(name="a", seconds=0.05), ItemNap(name="b", bad=0)], processes)
            with pytest.raises(ValueError, match="bad 0"):
                await handler.instrument(pipeline([napping])).run()
            return processes.worker_pids()

    pids = dynapipeline.run(main())  # on this leg's loop
    named = _by_name(exporter)
    assert set(named) == {"p", "g", "a", "b"}
    g = named["g"]
    assert g.attributes is not None and list(g.attributes["dynapipeline.worker_pids"]) == pids
    for name in ("a", "b"):
        span = named[name]
        attributes = span.attributes or {}
        assert _parent_id(span) == _span_id(g)
        assert attributes["dynapipeline.worker_pid"] == pids[0] != os.getpid()
        assert attributes["dynapipeline.component.kind"] == "stage"
        assert attributes["dynapipeline.execution_strategy"] == "MultiprocessExecutionStrategy"
        assert span.start_time is not None and span.end_time is not None and g.start_time is not None
        assert g.start_time <= span.start_time <= span.end_time
    a, b = named["a"], named["b"]
    assert a.end_time is not None and a.start_time is not None and b.start_time is not None
    assert a.end_time - a.start_time >= 0.05e9  # the run's own time in its worker
    assert a.end_time <= b.start_time and a.status.status_code is StatusCode.UNSET
    assert b.status.status_code is StatusCode.ERROR and b.status.description == "ValueError: bad 0"
    [event] = b.events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"


def test_a_process_stage_whose_worker_died_gets_a_failed_span(spans: Any) -> None:
    handler, exporter = spans

    async def main() -> None:
        async with MultiprocessExecutionStrategy(1) as processes:
            g = group([Die(name="die")], processes)
            with pytest.raises(WorkerCrashedError):
                await handler.instrument(g).run()

    dynapipeline.run(main())
    named = _by_name(exporter)
    die = named["die"]
    assert _parent_id(die) == _span_id(named["g"])
    assert die.status.status_code is StatusCode.ERROR
    assert (die.status.description or "").startswith("WorkerCrashedError: worker pid")
    assert isinstance((die.attributes or {})["dynapipeline.worker_pid"], int)


def test_process_stream_step_items_get_a_span_each_under_the_stream(spans: Any) -> None:
    handler, exporter = spans

    async def main() -> Any:
        async with MultiprocessExecutionStrategy(2) as processes:
            await processes.start()
            stream = handler.instrument(Stream(name="s", steps=[Step(ItemNap(name="nap", bad=7), processes)],
                                               on_error="skip"))
            out = await stream.run(range(20))
            return out, processes.worker_pids()

    out, pids = dynapipeline.run(main())
    assert out == [x for x in range(20) if x != 7]
    finished = exporter.get_finished_spans()
    [outer] = [span for span in finished if span.name == "s"]
    items = [span for span in finished if span.name == "nap"]
    assert len(items) == 20 and all(_parent_id(span) == _span_id(outer) for span in items)
    assert {(span.attributes or {})["dynapipeline.worker_pid"] for span in items} <= set(pids)
    assert sorted((span.attributes or {})["dynapipeline.run"] for span in items) == list(range(1, 21))
    failed = [span for span in items if span.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].status.description == "ValueError: bad 7"


async def test_stream_step_spans_are_children_of_the_stream(spans: Any) -> None:
    handler, exporter = spans
    stream = handler.instrument(Stream(name="s", steps=[Double(name="double")]))
    assert await stream.run([1, 2]) == [2, 4]
    finished = exporter.get_finished_spans()
    [outer] = [span for span in finished if span.name == "s"]
    steps = [span for span in finished if span.name == "double"]
    assert len(steps) == 2 and all(_parent_id(span) == _span_id(outer) for span in steps)
    assert outer.attributes is not None and outer.attributes["dynapipeline.component.kind"] == "stream"


def test_deepcopy_keeps_the_handler() -> None:
    handler = OpenTelemetryHandler(tracer_provider=TracerProvider())
    stage = handler.instrument(Echo(name="a"))
    assert copy.deepcopy(stage).handlers[0] is handler


def test_without_opentelemetry_the_import_error_names_the_extra() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        try:
            import dynapipeline.otel
        except ImportError as error:
            print(error)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert "pip install 'dynapipeline[otel]'" in out
