"""Plain callables as stream steps (``Step(fn)``, a bare callable in ``steps``): every kind on every strategy,
their names, their own policies (on_error, ordered, timeout, retries) and what fails at construction or dispatch.

The functions a process or a Dask worker runs are defined at module level (workers import this module by name)
or are closures, lambdas and partials (cloudpickle sends those by value).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import closing_pool, healed, wait_no_threads_async

from dynapipeline import ItemError, Stage, Step, Stream, Tracer
from dynapipeline._model.functions import (
    AsyncFunctionStage,
    AsyncGeneratorStage,
    FunctionStage,
    GeneratorStage,
)
from dynapipeline.errors import ConfigurationError, PicklingError, StageTimeoutError, WorkerCrashedError
from dynapipeline.execution import (
    DaskExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
)


# -- the callables ----------------------------------------------------------------------------------
def plus_one(x: int) -> int:
    return x + 1


async def doubled(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def signed(x: int) -> Iterator[int]:
    """A flat-map that filters: ``x, -x``, nothing for 2."""
    if x != 2:
        yield x
        yield -x


async def signed_async(x: int) -> AsyncIterator[int]:
    await asyncio.sleep(0)
    if x != 2:
        yield x
        yield -x


def scaled(k: int, x: int) -> int:
    return k * x


async def scaled_async(k: int, x: int) -> int:
    await asyncio.sleep(0)
    return k * x


def times(k: int) -> Callable[[int], int]:
    def closure(x: int) -> int:
        return k * x

    return closure


class Multiply:
    """A callable object (``Multiply(3)(x)``); ``.minus`` is a bound method."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return self.k * x

    def minus(self, x: int) -> int:
        return -x


class MultiplyAsync:
    def __init__(self, k: int) -> None:
        self.k = k

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return self.k * x


class Repeat:
    """A callable object whose ``__call__`` is an async generator: ``x``, ``times`` times."""

    async def __call__(self, times: int, x: int) -> AsyncIterator[int]:
        for _ in range(times):
            await asyncio.sleep(0)
            yield x


@dataclass
class Kind:
    """One kind of callable: how to make it, the stage class and name it gets, its outputs for items 1, 2, 3."""

    make: Callable[[], Any]
    cls: type[FunctionStage]
    name: str
    expected: list[Any]


KINDS: dict[str, Kind] = {
    "def": Kind(lambda: plus_one, FunctionStage, "plus_one", [2, 3, 4]),
    "async def": Kind(lambda: doubled, AsyncFunctionStage, "doubled", [2, 4, 6]),
    "generator": Kind(lambda: signed, GeneratorStage, "signed", [1, -1, 3, -3]),
    "async generator": Kind(lambda: signed_async, AsyncGeneratorStage, "signed_async", [1, -1, 3, -3]),
    "lambda": Kind(lambda: lambda x: x * 100, FunctionStage, "lambda", [100, 200, 300]),
    "closure": Kind(lambda: times(7), FunctionStage, "closure", [7, 14, 21]),
    "partial": Kind(lambda: functools.partial(scaled, 5), FunctionStage, "scaled", [5, 10, 15]),
    "async partial": Kind(lambda: functools.partial(scaled_async, 6), AsyncFunctionStage, "scaled_async",
                          [6, 12, 18]),
    "callable object": Kind(lambda: Multiply(3), FunctionStage, "Multiply", [3, 6, 9]),
    "async callable object": Kind(lambda: MultiplyAsync(4), AsyncFunctionStage, "MultiplyAsync", [4, 8, 12]),
    "partial of an async callable object": Kind(lambda: functools.partial(MultiplyAsync(2)), AsyncFunctionStage,
                                                "MultiplyAsync", [2, 4, 6]),
    "partial of an async generator object": Kind(lambda: functools.partial(Repeat(), 2), AsyncGeneratorStage,
                                                 "Repeat", [1, 1, 2, 2, 3, 3]),
    "bound method": Kind(lambda: Multiply(1).minus, FunctionStage, "minus", [-1, -2, -3]),
    "class str": Kind(lambda: str, FunctionStage, "str", ["1", "2", "3"]),
    "class int": Kind(lambda: int, FunctionStage, "int", [1, 20, 300]),
    "partial of a class": Kind(lambda: functools.partial(int, base=2), FunctionStage, "int", [1, 2, 3]),
}
ITEMS: dict[str, list[Any]] = {"class int": ["1", "20", "300"], "partial of a class": ["1", "10", "11"]}

STRATEGIES = ("loop", "semaphore", "threads", "processes", "dask")


@pytest.fixture(params=STRATEGIES)
async def strategy(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Each strategy a step can run on (None: one item at a time on the loop); closed and checked afterwards."""
    kind = request.param
    if kind == "loop":
        yield None
    elif kind == "semaphore":
        yield SemaphoreExecutionStrategy(2)
    elif kind == "threads":
        threads = MultithreadExecutionStrategy(2)
        try:
            yield threads
        finally:
            await threads.aclose()
        await wait_no_threads_async()
    elif kind == "processes":
        async with closing_pool(MultiprocessExecutionStrategy(2)) as procs:  # closed, no worker left
            yield procs
    else:
        from distributed import Client

        cluster = request.getfixturevalue("cluster")  # the module's LocalCluster
        connecting = Client(cluster.scheduler_address, asynchronous=True,  # type: ignore[no-untyped-call]
                            set_as_default=False)
        async with connecting as client:
            await healed(cluster, client)
            dask = DaskExecutionStrategy(client=client)
            try:
                yield dask
            finally:
                await dask.aclose()


# -- every kind on every strategy --------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_of_callable_runs_as_a_step_on_each_strategy(kind: str, strategy: Any) -> None:
    case = KINDS[kind]
    stream = Stream(name="s", steps=[Step(case.make(), strategy)])
    assert await stream.run(ITEMS.get(kind, [1, 2, 3])) == case.expected
    [stage] = [c for c in stream.iter_components() if c is not stream]
    assert type(stage) is case.cls and stage.name == case.name
    assert list(stream.progress) == [case.name]
    assert stream.progress[case.name].done == 3
    assert stream.report()[case.name].runs == 3


@pytest.mark.parametrize("kind", ["def", "async def", "generator", "async generator", "lambda", "closure"])
@pytest.mark.parametrize("strategy", ["processes", "dask"], indirect=True)
async def test_a_function_step_on_processes_or_dask_runs_in_a_worker(kind: str, strategy: Any) -> None:
    def pid(x: int) -> int:
        return os.getpid()

    async def pid_async(x: int) -> int:
        await asyncio.sleep(0)
        return os.getpid()

    def pid_gen(x: int) -> Iterator[int]:
        yield os.getpid()

    async def pid_agen(x: int) -> AsyncIterator[int]:
        yield os.getpid()

    fn = {"def": pid, "async def": pid_async, "generator": pid_gen, "async generator": pid_agen,
          "lambda": lambda x: os.getpid(), "closure": pid}[kind]
    pids = await Stream(name="s", steps=[Step(fn, strategy)]).run(range(4))
    assert len(pids) == 4 and os.getpid() not in pids


class Countdown(Stage):
    """A Stage whose ``execute`` is an async generator: ``x, x - 1, ..., 1``."""

    async def execute(self, x: int) -> AsyncIterator[int]:
        for value in range(x, 0, -1):
            await asyncio.sleep(0)
            yield value


async def test_a_stage_with_an_async_generator_execute_runs_on_a_process_step(
        procs: MultiprocessExecutionStrategy) -> None:
    # It failed with "cannot pickle 'coroutine' object" before functions as steps (eac4b3e).
    stream = Stream(name="s", steps=[Step(Countdown(name="countdown"), procs)])
    assert await stream.run([1, 3, 0, 2]) == [1, 3, 2, 1, 2, 1]
    assert stream.progress["countdown"].done == 4


# -- names -------------------------------------------------------------------------------------------
def parse(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad {x}")
    return x


def fail_on(bad: Any, x: Any) -> Any:
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


def names(stream: Stream) -> list[str]:
    return [c.name for c in stream.iter_components() if c is not stream]


def test_automatic_names_are_made_unique_in_order() -> None:
    stream = Stream(name="s", steps=[parse, Step(parse), lambda x: x, lambda x: x, Step(parse), str])
    assert names(stream) == ["parse", "parse_2", "lambda", "lambda_2", "parse_3", "str"]


def test_the_same_function_object_or_step_twice_gets_two_names() -> None:
    step = Step(plus_one)
    assert names(Stream(name="s", steps=[plus_one, plus_one])) == ["plus_one", "plus_one_2"]
    assert names(Stream(name="s", steps=[step, step])) == ["plus_one", "plus_one_2"]
    assert step.stage.name == "plus_one"  # the user's Step is left as it was


def test_an_explicit_name_wins_over_an_automatic_one_that_gets_the_suffix() -> None:
    assert names(Stream(name="s", steps=[parse, Step(plus_one, name="parse")])) == ["parse_2", "parse"]
    assert names(Stream(name="s", steps=[Step(plus_one, name="parse_2"), parse, parse])) == \
        ["parse_2", "parse", "parse_3"]


class Keep(Stage):
    def execute(self, x: int) -> int:
        return x


def test_a_stage_name_takes_precedence_over_an_automatic_name() -> None:
    assert names(Stream(name="s", steps=[parse, Keep(name="parse")])) == ["parse_2", "parse"]


@pytest.mark.parametrize("steps", [
    [Step(plus_one, name="x"), Step(parse, name="x")],
    [Step(plus_one, name="keep"), Keep(name="keep")],
    [Keep(name="keep"), Keep(name="keep")],
])
def test_explicit_duplicate_names_are_refused(steps: list[Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"Stream 's': field 'steps\[1\]' repeats the stage name"):
        Stream(name="s", steps=steps)


def test_the_same_named_step_twice_is_refused() -> None:
    step = Step(plus_one, name="p")
    with pytest.raises(ConfigurationError, match=r"field 'steps\[1\]' repeats the stage name 'p'"):
        Stream(name="s", steps=[step, step])


async def test_progress_report_and_errors_use_the_step_names() -> None:
    stream = Stream(name="s", steps=[functools.partial(fail_on, 99), functools.partial(fail_on, 3), lambda x: x],
                    on_error="skip")
    assert await stream.run(range(5)) == [0, 1, 2, 4]
    assert list(stream.progress) == ["fail_on", "fail_on_2", "lambda"]
    assert stream.progress["fail_on_2"].failed == 1 and stream.progress["lambda"].done == 4
    report = stream.report()
    assert [c.name for c in report.components] == ["s", "fail_on", "fail_on_2", "lambda"]
    assert report["fail_on"].runs == 5 and report["fail_on_2"].errors == 1 and report["lambda"].runs == 4
    [error] = stream.errors
    assert (error.index, error.step) == (3, "fail_on_2")


@pytest.mark.parametrize("strategy", ["loop", "processes"], indirect=True)
async def test_an_items_error_note_names_the_stream_the_step_and_the_item(strategy: Any) -> None:
    with pytest.raises(ValueError, match="bad 3") as info:
        await Stream(name="s", steps=[Step(parse, strategy)]).run(range(5))
    assert "in stream 's', step 'parse', item 3" in info.value.__notes__
    stream = Stream(name="s", steps=[functools.partial(fail_on, 99), Step(functools.partial(fail_on, 2), strategy)],
                    on_error="return")
    out = await stream.run(range(4))
    assert out[:2] == [0, 1] and out[3] == 3
    assert isinstance(out[2], ValueError) and "in stream 's', step 'fail_on_2', item 2" in out[2].__notes__


@pytest.mark.parametrize("strategy", ["loop", "threads", "processes"], indirect=True)
async def test_the_tracer_shows_function_steps_by_name(strategy: Any) -> None:
    stream = Stream(name="s", steps=[plus_one, Step(plus_one, strategy), Step(doubled, strategy, name="twice")],
                    source=range(3))
    with Tracer() as tracer:
        assert await stream.run() == [4, 6, 8]
    events = [e for e in tracer.events if e["ph"] == "X"]
    for name in ("plus_one", "plus_one_2", "twice"):
        assert [e["cat"] for e in events if e["name"] == f"step {name}"] == ["step"]
        assert sorted(e["args"]["item"] for e in events if e["name"] == name) == [0, 1, 2]


@pytest.mark.parametrize("strategy", ["loop", "threads", "processes", "dask"], indirect=True)
async def test_opentelemetry_spans_are_named_after_the_function(strategy: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dynapipeline.otel import OpenTelemetryHandler

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = OpenTelemetryHandler(tracer_provider=provider)
    stream = handler.instrument(Stream(name="s", steps=[Step(plus_one, strategy), Step(plus_one, strategy)]))
    assert await stream.run([1, 2]) == [3, 4]
    provider.shutdown()
    finished = exporter.get_finished_spans()
    [outer] = [span for span in finished if span.name == "s"]
    for name in ("plus_one", "plus_one_2"):
        spans = [span for span in finished if span.name == name]
        assert len(spans) == 2
        assert all(span.parent is not None and outer.context is not None
                   and span.parent.span_id == outer.context.span_id for span in spans)
        assert all((span.attributes or {})["dynapipeline.component.name"] == name for span in spans)


def total(batch: list[int]) -> int:
    return sum(batch)


@pytest.mark.parametrize("strategy", ["loop", "threads", "processes", "dask"], indirect=True)
async def test_a_batched_function_step_gets_lists_of_consecutive_items(strategy: Any) -> None:
    stream = Stream(name="s", steps=[Step(total, strategy, batch=3), Step(signed, strategy, batch=None)])
    assert await stream.run(range(7)) == [3, -3, 12, -12, 6, -6]


# -- a step's own on_error and ordered -----------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["loop", "processes"], indirect=True)
async def test_a_skip_step_in_a_raise_stream_drops_its_failed_item(strategy: Any) -> None:
    stream = Stream(name="s", steps=[Step(parse, strategy, on_error="skip"), str], on_error="raise")
    assert await stream.run(range(5)) == ["0", "1", "2", "4"]
    assert stream.errors == [ItemError(index=3, step="parse", error=stream.errors[0].error)]
    assert str(stream.errors[0].error) == "bad 3"


@pytest.mark.parametrize("strategy", ["loop", "processes"], indirect=True)
async def test_a_raise_step_in_a_skip_stream_fails_the_stream(strategy: Any) -> None:
    stream = Stream(name="s", steps=[str, Step(functools.partial(fail_on, "3"), strategy, on_error="raise")],
                    on_error="skip")
    with pytest.raises(ValueError, match="bad 3") as info:
        await stream.run(range(5))
    assert "in stream 's', step 'fail_on', item 3" in info.value.__notes__


async def test_a_return_step_passes_its_error_on_through_the_later_steps() -> None:
    seen: list[Any] = []

    def record(x: Any) -> Any:
        seen.append(x)
        return x

    stream = Stream(name="s", steps=[Step(parse, on_error="return"), record, str], on_error="skip")
    out = await stream.run(range(5))
    assert out[:3] == ["0", "1", "2"] and out[4] == "4"
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"
    assert seen == [0, 1, 2, 4]  # the error passed record untouched
    assert stream.errors == []


async def test_a_skip_stream_keeps_skipping_in_a_step_without_its_own() -> None:
    stream = Stream(name="s", steps=[Step(parse, on_error="return"), Step(functools.partial(fail_on, 1))],
                    on_error="skip")
    out = await stream.run(range(5))
    assert out[:2] == [0, 2] and isinstance(out[2], ValueError) and out[3] == 4
    assert [(e.index, e.step) for e in stream.errors] == [(1, "fail_on")]


def gated(gates: dict[int, asyncio.Event], step: int = -1) -> Callable[[int], Any]:
    """Item ``x`` waits for its gate, then opens ``x + step``'s: with gate 2 open first, they finish 2, 1, 0."""

    async def run(x: int) -> int:
        await gates[x].wait()
        if x + step in gates:
            gates[x + step].set()
        return x

    return run


def opened_gates(first: int = 2) -> dict[int, asyncio.Event]:
    gates = {i: asyncio.Event() for i in range(3)}
    gates[first].set()
    return gates


@pytest.mark.parametrize(("stream_ordered", "step_ordered", "expected"), [
    (True, False, [2, 1, 0]),  # an unordered step in an ordered stream: completion order
    (False, True, [0, 1, 2]),  # an ordered step in an unordered stream: its input order
    (True, None, [0, 1, 2]),  # None: the stream's
    (False, None, [2, 1, 0]),
])
async def test_a_steps_own_ordered_decides_the_order_of_its_outputs(stream_ordered: bool, step_ordered: bool | None,
                                                                    expected: list[int]) -> None:
    step = Step(gated(opened_gates()), SemaphoreExecutionStrategy(3), ordered=step_ordered)
    stream = Stream(name="s", steps=[step, plus_one], ordered=stream_ordered)
    assert await asyncio.wait_for(stream.run(range(3)), 30) == [x + 1 for x in expected]


@pytest.mark.parametrize(("ordered", "expected"), [(True, [2, 1, 0]), (False, [0, 1, 2])])
async def test_an_ordered_step_keeps_the_order_it_took_its_items_in_not_the_sources(ordered: bool,
                                                                                     expected: list[int]) -> None:
    first = Step(gated(opened_gates()), SemaphoreExecutionStrategy(3), ordered=False)  # emits 2, 1, 0
    second = Step(gated(opened_gates(0), +1), SemaphoreExecutionStrategy(3), ordered=ordered)  # finishes 0, 1, 2
    stream = Stream(name="s", steps=[first, second], ordered=True)
    assert await asyncio.wait_for(stream.run(range(3)), 30) == expected


# -- a function step's timeout and retries ------------------------------------------------------------
def flaky_file(folder: str, x: int) -> int:
    """Fails its first two attempts at each item; counts attempts in a file (works across processes)."""
    path = Path(folder, str(x))
    with path.open("a") as f:
        f.write(".")
    attempts = len(path.read_text())
    if attempts < 3:
        raise RuntimeError(f"attempt {attempts} of {x}")
    return x


async def slow(x: int) -> int:
    await asyncio.sleep(30)
    return x


@pytest.mark.parametrize("strategy", ["loop", "threads", "processes"], indirect=True)
async def test_a_function_step_with_retries_succeeds_on_its_third_attempt(strategy: Any, tmp_path: Path) -> None:
    stream = Stream(name="s", steps=[Step(functools.partial(flaky_file, str(tmp_path)), strategy, retries=2)])
    assert await stream.run(range(4)) == [0, 1, 2, 3]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {str(x): "..." for x in range(4)}
    assert stream.progress["flaky_file"].failed == 0


@pytest.mark.parametrize("strategy", ["loop", "processes"], indirect=True)
async def test_a_function_step_without_enough_retries_fails_with_the_last_error(strategy: Any,
                                                                                tmp_path: Path) -> None:
    stream = Stream(name="s", steps=[Step(functools.partial(flaky_file, str(tmp_path)), strategy, retries=1)])
    with pytest.raises(RuntimeError, match="attempt 2 of 0"):
        await stream.run([0])


@pytest.mark.parametrize("strategy", ["loop", "semaphore", "threads", "processes", "dask"], indirect=True)
async def test_an_async_function_step_times_out_per_item(strategy: Any) -> None:
    stream = Stream(name="s", steps=[Step(slow, strategy, timeout=0.1)], on_error="return")
    out = await asyncio.wait_for(stream.run(range(2)), 30)
    assert [type(x) for x in out] == [StageTimeoutError, StageTimeoutError]
    assert all("stage 'slow' timed out after 0.1 s" in str(x) for x in out)


async def test_a_timeout_on_a_generator_function_covers_the_whole_generator() -> None:
    async def trickle(x: int) -> AsyncIterator[int]:
        yield x
        await asyncio.sleep(30)
        yield -x

    out = await asyncio.wait_for(Stream(name="s", steps=[Step(trickle, timeout=0.1)], on_error="return").run([1]),
                                 30)
    assert [type(x) for x in out] == [StageTimeoutError]


@pytest.mark.parametrize(("field", "hint"), [
    ("timeout", "name=..., timeout=..."),
    ("retries", "name=..., retries=..."),
    ("retry_delay", "name=..., retry_delay=..."),
    ("retry_backoff", "name=..., retry_backoff=..."),
    ("name", "name=..."),
])
def test_a_stage_refuses_the_steps_policy_fields_naming_the_field(field: str, hint: str) -> None:
    value: Any = "x" if field == "name" else 1
    with pytest.raises(ConfigurationError) as info:
        Step(Keep(name="keep"), **{field: value})
    assert str(info.value) == (f"Step 'keep': field '{field}' is the Stage's own: set it on the Stage "
                               f"(Keep({hint})), not on the Step")


def test_function_step_policy_fields_are_checked_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match="'plus_one': field 'retries' must be an int >= 0, got -1"):
        Step(plus_one, retries=-1)
    with pytest.raises(ConfigurationError, match="'plus_one': field 'retry_delay' must be a finite number >= 0"):
        Step(plus_one, retry_delay=-1)
    with pytest.raises(ConfigurationError, match="'plus_one': field 'timeout'"):
        Step(plus_one, timeout="soon")  # type: ignore[arg-type]
    step = Step(plus_one, timeout=2, retries=3, retry_delay=0.5, retry_backoff=2)
    stage = step.stage
    assert (stage.timeout, stage.retries, stage.retry_delay, stage.retry_backoff) == (2, 3, 0.5, 2)


# -- what fails at construction or at first dispatch ----------------------------------------------------
untyped_step: Any = Step  # the bad values below are refused by mypy too: these reach the runtime checks
untyped_stream: Any = Stream


@pytest.mark.parametrize(("make", "message"), [
    (lambda: untyped_step(5), "Step: field 'stage' must be a Stage or a callable, got int"),
    (lambda: untyped_step("parse"), "Step: field 'stage' must be a Stage or a callable, got str"),
    (lambda: Step(Keep), r"Step: field 'stage' must be a Stage instance, got the class Keep \(pass an instance: "
                         r"Keep\(name=...\)\)"),
    (lambda: untyped_step(Step(plus_one)), "Step 'plus_one': field 'stage' must be a Stage or a callable, got a Step"),
    (lambda: untyped_stream(name="s", steps=[plus_one, None]),
     r"Stream 's': field 'steps\[1\]' must be a Step, a Stage or a callable, got NoneType"),
    (lambda: Stream(name="s", steps=[Keep]),
     r"Stream 's': field 'steps\[0\]' must be a Step, a Stage or a callable, got the class Keep"),
    (lambda: Step(plus_one, name=""), "Step: field 'name' must be a non-empty string, got ''"),
    (lambda: untyped_step(plus_one, name=3), "Step: field 'name' must be a non-empty string, got 3"),
    (lambda: untyped_step(plus_one, on_error="ignore"),
     "Step 'plus_one': field 'on_error' must be 'raise', 'skip', 'return' or None"),
    (lambda: untyped_step(Keep(name="keep"), on_error=True),
     "Step 'keep': field 'on_error' must be 'raise', 'skip', 'return'"),
    (lambda: untyped_step(plus_one, ordered=1),
     r"Step 'plus_one': field 'ordered' must be a bool or None \(the stream's\), got 1"),
    (lambda: untyped_step(Keep(name="keep"), ordered="yes"), "Step 'keep': field 'ordered' must be a bool or None"),
])
def test_bad_steps_fail_at_construction_naming_the_step_and_the_field(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


@pytest.mark.parametrize("strategy", ["processes", "dask"], indirect=True)
async def test_an_unpicklable_closure_fails_at_first_dispatch_naming_the_step_and_field(strategy: Any) -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    stream = Stream(name="s", steps=[Step(locked, strategy)])  # constructs: pickling is checked at dispatch
    with pytest.raises(PicklingError, match="stage 'locked' field 'fn' closure variable 'lock'") as info:
        await stream.run(range(5))
    assert isinstance(info.value, ConfigurationError)
    assert await Stream(name="s", steps=[Step(plus_one, strategy)]).run(range(3)) == [1, 2, 3]  # still usable
    # The strategy fixture then closes the pool and checks that no worker process is left.


def die_on_2(x: int) -> int:
    if x == 2:
        os._exit(3)
    return x


async def test_a_function_step_that_crashes_its_worker_fails_that_item_alone() -> None:
    async with closing_pool(MultiprocessExecutionStrategy(2)) as procs:
        stream = Stream(name="s", steps=[Step(die_on_2, procs), plus_one], on_error="skip")
        assert await asyncio.wait_for(stream.run(range(6)), 60) == [1, 2, 4, 5, 6]
        [error] = stream.errors
        assert (error.index, error.step) == (2, "die_on_2") and isinstance(error.error, WorkerCrashedError)
        assert "stage 'die_on_2'" in str(error.error)
