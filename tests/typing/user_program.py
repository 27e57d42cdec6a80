"""A user's program, type-checked with ``mypy --strict`` (``make test``); it also runs.

It uses the public API the way the README does: Stage subclasses with either form of
``execute``, groups and pipelines with every strategy, a handler, contexts, timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import dynapipeline
from dynapipeline import Handler, Pipeline, PipelineFactory, PipeLineType, Stage, StageGroup, Step, StepProgress, Stream
from dynapipeline.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    ExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import (
    CycleStrategy,
    InfiniteLoopStrategy,
    InfinitLoopStrategy,
    LoopCycleStrategy,
    OnceCycleStrategy,
)


class Double(Stage):
    """An async stage with a specific signature and a user field."""

    factor: int = 2

    async def execute(self, x: int) -> int:
        await asyncio.sleep(0)
        return x * self.factor


class Greet(Stage):
    """A plain ``def`` stage."""

    greeting: str = "hello"

    def execute(self) -> str:
        return f"{self.greeting} from {self.name}"


class Count(Stage):
    """Counts its runs in the shared context."""

    async def execute(self) -> int:
        async with self.context as ctx:
            ctx["runs"] = ctx.get("runs", 0) + 1
            runs: int = ctx["runs"]
        return runs


class Stopper(Stage):
    """Sets an event, ending an infinite loop."""

    event: threading.Event

    def execute(self) -> None:
        self.event.set()


class Log(Handler):
    """Overrides every hook, sync and async."""

    lines: list[str]

    def before(self, component: Any, *args: Any, **kwargs: Any) -> None:
        self.lines.append(f"before {component.name}")

    async def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        return await execute(*args, **kwargs)

    def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        self.lines.append(f"after {component.name}")

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        self.lines.append(f"error {type(error).__name__}")


def group(name: str, stages: list[Stage], execution: ExecutionStrategy,
          cycle: CycleStrategy | None = None) -> StageGroup:
    return StageGroup(name=name, stages=stages, cycle_strategy=cycle or OnceCycleStrategy(),
                      execution_strategy=execution)


async def main() -> None:
    log = Log(lines=[])
    double = Double(name="double", timeout=1.0, retries=2, retry_delay=0.0, retry_backoff=2.0, factor=3)
    double.add_handler(log)
    assert await double.run(2) == 6
    assert double.execution_time is not None and double.execution_time >= 0.0
    mean: float = double.stats.mean
    assert mean >= 0.0 and double.stats.count == 1

    greet = Greet(name="greet", handlers=[log])
    assert await greet.run() == "hello from greet"

    event, other_event = threading.Event(), threading.Event()
    asyncio_groups: list[StageGroup] = [
        group("sequential", [Count(name="c1"), Greet(name="g1")], SequentialExecutionStrategy()),
        group("concurrent", [Count(name="c2")], ConcurrentExecutionStrategy(), LoopCycleStrategy(2)),
        group("semaphore", [Count(name="c3")], SemaphoreExecutionStrategy(2)),
        group("forever", [Stopper(name="stop", event=event)], SequentialExecutionStrategy(),
              InfinitLoopStrategy(event, 0.0)),
        group("forever too", [Stopper(name="stop too", event=other_event)], SequentialExecutionStrategy(),
              InfiniteLoopStrategy(other_event, interval=0.001)),
    ]
    simple: Pipeline = PipelineFactory().create_pipeline(
        PipeLineType.SIMPLE, "simple", asyncio_groups, OnceCycleStrategy(), SequentialExecutionStrategy(),
        context_data={"runs": 0},
    )
    simple.add_handler(log)
    await simple.run()
    assert simple.context["runs"] == 4
    assert isinstance(simple.context, AsyncLockableContext)

    # Stages that leave the event loop: an ADVANCED pipeline (its context is read-only during a run).
    offloaded: list[StageGroup] = [
        group("threads", [Double(name="t1"), Double(name="t2", factor=3)], MultithreadExecutionStrategy(2)),
        group("processes", [Double(name="p1")], MultiprocessExecutionStrategy(1)),
    ]
    advanced = PipelineFactory().create_pipeline(
        PipeLineType.ADVANCED, "advanced", offloaded, LoopCycleStrategy(1), ConcurrentExecutionStrategy())
    assert isinstance(advanced.context, ProtectedContext)
    with dynapipeline.Tracer() as tracer:
        assert await advanced.run(5) == [[[10, 15], [10]]]
    slices: list[dict[str, Any]] = [e for e in tracer.events if e["ph"] == "X"]
    assert {e["name"] for e in slices} >= {"advanced", "t1", "p1"}
    line: dynapipeline.ComponentReport = advanced.report()["p1"]
    assert line.pids and line.wait + line.ship + line.work > 0

    # Data flowing between members: a chain, and a failed member kept in its place.
    chained = group("chained", [Double(name="x2"), Double(name="x4")], SequentialExecutionStrategy(chain=True))
    assert await chained.run(1) == [2, 4]
    gathered = group("gathered", [Double(name="ok"), Greet(name="takes no argument")],
                     ConcurrentExecutionStrategy(return_exceptions=True))
    ok, failed = await gathered.run(1)
    assert ok == 2 and isinstance(failed, TypeError)

    # Items flowing through steps: a bare stage, a step with a strategy, a batch step, a generator source.
    def numbers() -> Iterator[int]:
        yield from range(4)

    stream = Stream(name="items", steps=[Double(name="s1"), Step(Double(name="s2"), SemaphoreExecutionStrategy(2)),
                                         Step(Double(name="s3"), batch=2, batch_timeout=0.1)],
                    maxsize=10, ordered=True, on_error="skip")
    assert await stream.run(numbers()) == [[0, 4, 0, 4], [8, 12, 8, 12]]
    counts: StepProgress = stream.progress["s1"]
    assert counts.done == 4 and stream.errors == []
    async for _ in stream.iterate(range(2)):
        pass
    async with stream.iterate(range(2)) as items:
        async for item in items:
            assert isinstance(item, list)
            break
    in_pipeline = PipelineFactory().create_pipeline(
        PipeLineType.SIMPLE, "with a stream", [stream], OnceCycleStrategy(), SequentialExecutionStrategy())
    assert await in_pipeline.run(range(2)) == [[[0, 4, 0, 4]]]  # s3 doubles its batch: a list * 2

    custom = PipelineFactory().create_pipeline(
        PipeLineType.CUSTOM, "custom", [group("once", [Double(name="d")], SequentialExecutionStrategy())],
        OnceCycleStrategy(), SequentialExecutionStrategy(), context=Context({"who": "me"}))
    assert await custom.run(1) == [[2]]
    assert custom.context["who"] == "me"
    assert [c.name for c in custom.iter_components()] == ["custom", "once", "d"]
    report: dynapipeline.Report = custom.report()
    slowest: list[dynapipeline.SlowRun] = report.slowest
    assert [s.name for s in slowest] == ["d"] and report.to_dict()["components"][0]["name"] == "custom"
    print(report)
    print("\n".join(log.lines))


if __name__ == "__main__":
    dynapipeline.run(main())
