"""``flow(source)``: the typed builder over ``Stream``. Each method, branching, a flow against the ``Stream`` built
by hand on the same data (on processes and with ``on_error="skip"`` too), iterating, ``to_stream`` and the errors.

The static types are in ``tests/typing/flow_program.py`` and ``test_typing.py``. The functions a process runs are
defined at module level (workers import this module by name) or are lambdas and closures (sent by value).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import closing_pool, healed, pipeline, wait_no_threads_async

from dynapipeline import Flow, Stage, Step, Stream, flow
from dynapipeline.errors import ConfigurationError
from dynapipeline.execution import (
    DaskExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
)


@dataclass(frozen=True)
class Record:
    ident: int
    value: float
    site: str = ""


def parse(line: str) -> Record:
    ident, value = line.split(",")
    return Record(int(ident), float(value))


async def enrich(record: Record) -> Record:
    await asyncio.sleep(0)
    return Record(record.ident, record.value, "north" if record.ident % 2 else "south")


def save(batch: list[Record]) -> int:
    return len(batch)


def lines(n: int = 300, bad: tuple[int, ...] = ()) -> list[str]:
    return [f"{i},{i / 2}" if i not in bad else f"{i},oops" for i in range(n)]


def words(line: str) -> list[str]:
    return line.split()


async def words_async(line: str) -> list[str]:
    await asyncio.sleep(0)
    return line.split()


def words_gen(line: str) -> Iterator[str]:
    yield from line.split()


async def words_agen(line: str) -> AsyncIterator[str]:
    for word in line.split():
        await asyncio.sleep(0)
        yield word


def is_even(x: int) -> bool:
    return x % 2 == 0


async def is_even_async(x: int) -> bool:
    await asyncio.sleep(0)
    return x % 2 == 0


class Double(Stage):
    async def execute(self, x: int) -> int:
        return 2 * x


# -- each method ------------------------------------------------------------------------------------------
async def test_map_takes_plain_async_lambda_partial_and_callable_object_functions() -> None:
    class Times:
        def __call__(self, x: int) -> int:
            return 3 * x

    async def plus(x: int, n: int) -> int:
        return x + n

    out = await (flow(range(5)).map(lambda x: x + 1).map(enrich_int).map(functools.partial(plus, n=10))
                 .map(Times()).run())
    assert out == [3 * (2 * (x + 1) + 10) for x in range(5)]


async def enrich_int(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def test_map_takes_a_stage_as_it_is() -> None:
    double = Double(name="double")
    stream = flow([1, 2, 3]).map(double).to_stream()
    assert await stream.run() == [2, 4, 6]
    assert stream._steps[0].stage is double and double.stats.count == 3


@pytest.mark.parametrize("fn", [words, words_async, words_gen, words_agen, lambda s: iter(s.split()),
                                lambda s: tuple(s.split())],
                         ids=["list", "async list", "generator", "async generator", "iterator", "tuple"])
async def test_flat_map_flattens_whatever_the_function_returns(fn: Any) -> None:
    assert await flow(["a b", "", "c d e"]).flat_map(fn).run() == ["a", "b", "c", "d", "e"]


async def test_flat_map_of_an_async_def_returning_an_async_iterable() -> None:
    async def later(line: str) -> AsyncIterator[str]:
        await asyncio.sleep(0)
        return words_agen(line)

    assert await flow(["a b", "c"]).flat_map(later).run() == ["a", "b", "c"]


async def test_flat_map_refuses_a_plain_function_returning_an_async_iterable_per_item() -> None:
    with pytest.raises(TypeError, match="'lambda' returned an async iterable"):
        await flow(["a b"]).flat_map(lambda s: words_agen(s)).run()


@pytest.mark.parametrize("pred", [is_even, is_even_async, lambda x: x % 2 == 0, lambda x: x % 2 - 1 or None],
                         ids=["def", "async def", "lambda", "truthy"])
async def test_filter_keeps_the_items_whose_predicate_is_truthy(pred: Any) -> None:
    assert await flow(range(10)).filter(pred).run() == [0, 2, 4, 6, 8]


async def test_batch_at_the_end_is_a_pass_through_step_named_batch() -> None:
    f = flow(range(7)).batch(3)
    assert await f.run() == [[0, 1, 2], [3, 4, 5], [6]]
    stream = f.to_stream()
    assert [step.stage.name for step in stream._steps] == ["batch"]
    assert await flow(range(5)).batch(2).batch(2).run() == [[[0, 1], [2, 3]], [[4]]]
    assert [s.stage.name for s in flow(range(5)).batch(2).batch(2).to_stream()._steps] == ["batch", "batch_2"]


async def test_batch_is_the_next_steps_batch_option() -> None:
    stream = flow(range(250)).batch(100, timeout=0.5).map(len, name="count").to_stream()
    [step] = stream._steps
    assert (step.stage.name, step.batch, step.batch_timeout) == ("count", 100, 0.5)
    assert await stream.run() == [100, 100, 50]
    assert await flow(range(5)).batch(2).filter(lambda b: len(b) == 2).run() == [[0, 1], [2, 3]]
    assert await flow(range(5)).batch(2).flat_map(reversed).run() == [1, 0, 3, 2, 4]


async def test_batch_timeout_cuts_a_batch_of_a_slow_source() -> None:
    async def slow() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await asyncio.sleep(0.75)
        yield 3

    assert await flow(slow()).batch(10, timeout=0.25).run() == [[0, 1, 2], [3]]


async def test_steps_are_named_after_their_functions_and_numbered_apart() -> None:
    f = flow(["1,2"]).map(parse).map(lambda r: f"{r.ident},{r.value}").filter(lambda r: True)
    f = f.flat_map(lambda r: [r]).map(parse).filter(is_even_record).flat_map(words)
    stream = f.map(str, name="text").to_stream()
    assert list(stream.progress) == ["parse", "lambda", "lambda_2", "lambda_3", "parse_2", "is_even_record",
                                     "words", "text"]


def is_even_record(record: Record) -> bool:
    return record.ident % 2 == 0


async def test_step_options_reach_the_step() -> None:
    threads = MultithreadExecutionStrategy(2)
    f = flow(range(3)).map(str, on=threads, name="s", on_error="skip", ordered=False, timeout=5.0, retries=2,
                           retry_delay=0.1, retry_backoff=2.0)
    [step] = f.to_stream()._steps
    assert (step.strategy, step.on_error, step.ordered) == (threads, "skip", False)
    assert (step.stage.timeout, step.stage.retries, step.stage.retry_delay, step.stage.retry_backoff) == \
        (5.0, 2, 0.1, 2.0)
    assert sorted(await f.run()) == ["0", "1", "2"]


async def test_flow_options_reach_the_stream() -> None:
    stream = flow([1], maxsize=5, ordered=False, on_error="return").map(str).to_stream(name="etl")
    assert (stream.name, stream.maxsize, stream.ordered, stream.on_error, stream.source) == \
        ("etl", 5, False, "return", [1])


async def test_on_error_return_lets_the_error_flow_on_in_the_items_place() -> None:
    out = await flow([1, 0, 4], on_error="return").map(lambda x: 1 / x).map(lambda x: x * 2).run()
    assert out[0] == 2.0 and isinstance(out[1], ZeroDivisionError) and out[2] == 0.5


async def test_an_error_propagates_naming_the_flow_step_and_item() -> None:
    with pytest.raises(ValueError) as caught:
        await flow(lines(10, bad=(4,))).map(parse).run()
    assert caught.value.__notes__ == ["in stream 'flow', step 'parse', item 4"]


# -- branching ----------------------------------------------------------------------------------------------
async def test_a_flow_is_immutable_and_branches() -> None:
    base = flow(range(6)).map(lambda x: x + 1)
    evens, doubled = base.filter(is_even), base.map(lambda x: 2 * x)
    assert await base.run() == [1, 2, 3, 4, 5, 6]
    assert await evens.run() == [2, 4, 6]
    assert await doubled.run() == [2, 4, 6, 8, 10, 12]
    batched = base.batch(4)
    assert await batched.map(sum).run() == [10, 11]
    assert await batched.run() == [[1, 2, 3, 4], [5, 6]]  # the map after it did not take its batch
    assert await base.run() == [1, 2, 3, 4, 5, 6]


async def test_branches_run_their_own_stages() -> None:
    base = flow(range(4)).map(str)
    one, two = base.to_stream(), base.to_stream()
    await asyncio.gather(one.run(), two.run(), base.map(len).run())
    assert one._steps[0].stage is not two._steps[0].stage
    assert one.progress["str"].done == two.progress["str"].done == 4
    assert one._steps[0].stage.stats.count == 4


async def test_an_iterator_source_serves_one_run_of_the_flows_built_from_it() -> None:
    base = flow(iter(range(3)))
    assert await base.map(str).run() == ["0", "1", "2"]
    with pytest.raises(ConfigurationError, match="field 'source' is an iterator that an earlier run consumed"):
        await base.map(repr).run()
    once = flow(iter(range(3))).map(str)
    with pytest.raises(ConfigurationError, match="field 'name' must be"):
        once.to_stream(name="")
    assert await once.to_stream().run() == ["0", "1", "2"]  # the refused stream did not use the source up
    again = flow(range(3)).map(str)
    assert await again.run() == await again.run() == ["0", "1", "2"]


# -- against the Stream built by hand --------------------------------------------------------------------
async def test_a_flow_equals_its_hand_built_stream_on_processes_with_skip(procs: Any) -> None:
    data = lines(500, bad=(7, 123))
    semaphore = SemaphoreExecutionStrategy(16)
    by_hand = Stream(name="etl", steps=[Step(parse, procs), Step(keep_not_threes), Step(enrich, semaphore),
                                        Step(save, batch=50)], on_error="skip")
    expected = await by_hand.run(data)
    f = (flow(data, on_error="skip").map(parse, on=procs).filter(lambda r: r.ident % 3 != 0)
         .map(enrich, on=semaphore).batch(50).map(save))
    assert await f.run() == expected
    stream = f.to_stream(name="etl")
    assert await stream.run() == expected
    # Sorted: two workers may fail their items in either order.
    assert sorted((e.index, e.step) for e in stream.errors) == sorted((e.index, e.step) for e in by_hand.errors) \
        == [(7, "parse"), (123, "parse")]
    assert sum(expected) == len([i for i in range(500) if i not in (7, 123) and i % 3 != 0])


def keep_not_threes(record: Record) -> Iterator[Record]:
    if record.ident % 3 != 0:
        yield record


async def test_a_flow_equals_its_hand_built_stream_with_flat_map_on_processes(procs: Any) -> None:
    data = ["a b", "", "c d e", "f"] * 50
    expected = await Stream(name="s", steps=[Step(words_gen, procs), Step(str.upper)]).run(data)
    assert await flow(data).flat_map(words, on=procs).map(str.upper).run() == expected
    assert await flow(data).flat_map(words_async, on=procs).map(str.upper).run() == expected
    assert await flow(data).flat_map(lambda s: s.split(), on=procs).map(str.upper).run() == expected


async def test_a_filter_and_a_flat_map_on_processes_run_there(procs: Any) -> None:
    async def pid_if_even(x: int) -> bool:
        return x % 2 == 0 and os.getpid() != parent

    parent = os.getpid()
    assert await flow(range(10)).filter(pid_if_even, on=procs).run() == [0, 2, 4, 6, 8]
    pids = await flow(range(4)).flat_map(lambda x: [os.getpid()] * x, on=procs).run()
    assert len(pids) == 6 and parent not in pids


@pytest.fixture(params=["threads", "processes", "dask"])
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A strategy off the loop, closed afterwards (no thread or worker left); Dask on the module's cluster."""
    if request.param == "threads":
        threads = MultithreadExecutionStrategy(2)
        try:
            yield threads
        finally:
            await threads.aclose()
        await wait_no_threads_async()
    elif request.param == "processes":
        async with closing_pool(MultiprocessExecutionStrategy(2)) as procs:
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


async def test_every_method_and_kind_of_function_runs_off_the_loop(pool: Any) -> None:
    async def halves(x: int) -> list[float]:
        return [x / 2, -x / 2]

    f = (flow(range(20)).map(lambda x: x + 1, on=pool).map(enrich_int, on=pool).filter(is_even_async, on=pool)
         .filter(lambda x: x % 4 == 0, on=pool).flat_map(halves, on=pool).flat_map(lambda x: [x] * 2, on=pool)
         .batch(3).map(sum, on=pool))
    kept = [2 * (x + 1) for x in range(20) if (2 * (x + 1)) % 4 == 0]
    flat = [v for x in kept for v in (x / 2, -x / 2) for _ in range(2)]
    assert await f.run() == [sum(flat[i:i + 3]) for i in range(0, len(flat), 3)]


# -- iterating ------------------------------------------------------------------------------------------------
async def test_async_for_over_a_flow() -> None:
    assert [x async for x in flow(range(5)).map(lambda x: x * x)] == [0, 1, 4, 9, 16]


async def test_iterate_stops_the_run_as_the_block_ends() -> None:
    seen: list[int] = []
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(1_000_000):
            pulled.append(i)
            yield i

    async with flow(source(), maxsize=10).map(lambda x: 2 * x).iterate() as items:
        async for x in items:
            seen.append(x)
            if x >= 10:
                break
    before = len(pulled)
    await asyncio.sleep(0.05)
    assert seen == [0, 2, 4, 6, 8, 10] and len(pulled) == before < 1000


async def test_iterate_by_hand_with_anext_and_aclose() -> None:
    items = flow(range(3)).map(str).iterate()
    assert await items.__anext__() == "0"
    await items.aclose()


async def test_async_sources() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(4):
            await asyncio.sleep(0)
            yield i

    assert await flow(numbers()).map(lambda x: -x).run() == [0, -1, -2, -3]


# -- to_stream ----------------------------------------------------------------------------------------------
async def test_to_stream_keeps_the_source_so_run_needs_no_argument() -> None:
    stream = flow(lines(20, bad=(3,)), on_error="skip").map(parse).map(lambda r: r.ident).to_stream(name="etl")
    assert isinstance(stream, Stream) and stream.name == "etl"
    assert await stream.run() == [i for i in range(20) if i != 3]
    assert stream.progress["parse"].failed == 1 and stream.errors[0].index == 3
    assert stream.report()["parse"].runs == 20


async def test_to_stream_is_a_pipeline_member_that_runs_each_cycle() -> None:
    from dynapipeline.execution.cycle_strategies import LoopCycleStrategy

    stream = flow(range(4)).map(lambda x: x * x).batch(2).map(sum).to_stream(name="squares")
    p = pipeline([stream], cycle=LoopCycleStrategy(2))
    assert await p.run() == [[[1, 13]]] * 2
    assert stream.progress["sum"].done == 2


# -- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["map", "flat_map", "filter"])
@pytest.mark.parametrize("bad", [3, None, "parse", Step(str), Double], ids=["int", "None", "str", "Step", "class"])
def test_a_step_that_is_not_a_callable_is_refused_naming_the_field(method: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"flow\.{method}: field 'fn' must be a callable"):
        getattr(flow([1]), method)(bad)


def test_map_refuses_a_generator_function_and_flat_map_or_filter_a_stage() -> None:
    with pytest.raises(ConfigurationError, match="flow.map: field 'fn' is a generator function .'words_gen'.*"
                                                 "use flat_map"):
        flow(["a"]).map(words_gen)
    with pytest.raises(ConfigurationError, match="flow.map: field 'fn' is an async generator function .'words_agen'."):
        flow(["a"]).map(words_agen)
    for method in ("flat_map", "filter"):
        with pytest.raises(ConfigurationError, match=rf"flow\.{method}: field 'fn' must be a callable"):
            getattr(flow([1]), method)(Double(name="d"))


@pytest.mark.parametrize(("options", "field"), [
    ({"maxsize": 0}, "maxsize"), ({"maxsize": 1.5}, "maxsize"), ({"ordered": 1}, "ordered"),
    ({"on_error": "ignore"}, "on_error"),
])
def test_bad_flow_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^flow: field '{field}' must be"):
        flow([1], **options)


@pytest.mark.parametrize("source", ["abc", b"abc", 3, None])
def test_a_bad_source_is_refused(source: Any) -> None:
    with pytest.raises(ConfigurationError, match="flow: field 'source' must be an iterable"):
        flow(source)


@pytest.mark.parametrize(("options", "field"), [
    ({"on": "threads"}, "strategy"), ({"on_error": "ignore"}, "on_error"), ({"ordered": "yes"}, "ordered"),
    ({"timeout": "1"}, "timeout"), ({"retries": -1}, "retries"), ({"retry_delay": -1.0}, "retry_delay"),
    ({"retry_backoff": 0}, "retry_backoff"), ({"name": ""}, "name"),
])
@pytest.mark.parametrize("method", ["map", "flat_map", "filter"])
def test_bad_step_options_are_refused_naming_the_field(method: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"field '{field}' must be"):
        getattr(flow([1]), method)(is_even, **options)


def test_a_stage_refuses_the_policy_options_which_are_its_own() -> None:
    with pytest.raises(ConfigurationError, match="field 'retries' is the Stage's own"):
        flow([1]).map(Double(name="d"), retries=2)  # type: ignore[call-overload]


@pytest.mark.parametrize(("args", "field"), [((0,), "batch"), ((1.5,), "batch"), ((2, 0), "batch_timeout"),
                                             ((2, "1"), "batch_timeout")])
def test_bad_batch_options_are_refused_naming_the_field(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"field '{field}' must be"):
        flow([1]).batch(*args)


def test_names_given_by_hand_must_differ() -> None:
    f = flow([1]).map(str, name="x")
    with pytest.raises(ConfigurationError, match="flow: field 'name' repeats the step name 'x'"):
        f.map(repr, name="x")
    with pytest.raises(ConfigurationError, match="repeats the step name 'x'"):
        f.map(Double(name="x"))
    stream = f.map(str).map(repr, name="str").to_stream()  # an automatic name gives way to one given by hand
    assert list(stream.progress) == ["x", "str_2", "str"]


async def test_a_flow_without_steps_is_refused_when_it_runs() -> None:
    with pytest.raises(ConfigurationError, match="flow: field 'steps' must not be empty"):
        await flow([1]).run()
    with pytest.raises(ConfigurationError, match="must not be empty"):
        flow([1]).to_stream()


def test_repr_shows_the_steps() -> None:
    text = repr(flow(range(10_000)).map(str).batch(3))
    assert text == "Flow(source=range(0, 10000), steps=['str', 'batch'], maxsize=1000, ordered=True, " \
                   "on_error='raise')"
    assert isinstance(flow([1]), Flow)


async def test_a_flow_steps_rate_paces_its_starts_as_steps_rate_does() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    def stamp(x: int) -> int:
        starts.append(loop.time())
        return x

    f = flow(range(11)).map(stamp, rate=20).filter(lambda x: x % 2 == 0, rate=1000, burst=3)
    assert await f.run() == [0, 2, 4, 6, 8, 10]
    assert starts[-1] - starts[0] >= 0.45  # 10 intervals of 50 ms after the first start (a lower bound only)
    assert f.to_stream()._steps[0].rate == 20 and f.to_stream()._steps[1].burst == 3
    with pytest.raises(ConfigurationError, match="field 'rate'"):
        flow([1]).map(stamp, rate=-1)
