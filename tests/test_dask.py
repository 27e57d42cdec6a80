"""DaskExecutionStrategy on a real LocalCluster (2 worker processes, 1 thread each): what only Dask does.

Shipping a lost class pickle again, client ownership, bad input, the missing extra and stream steps on
Dask. The off-loop contract it shares with threads and processes (results, errors, timeouts, crashes,
stop, return_exceptions, drain) is tested once in test_offloop.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from distributed import Client
from helpers import Batch, Double, ItemNap, Pid, group, healed, pipeline, workers_replaced

from dynapipeline import Stage
from dynapipeline._model.step import Step
from dynapipeline._model.stream import Stream
from dynapipeline._transports.dask.futures import wait_for_task
from dynapipeline.errors import (
    ClusterError,
    ConfigurationError,
    StageTimeoutError,
    WorkerCrashedError,
)
from dynapipeline.execution import DaskExecutionStrategy


@pytest.fixture
def dask_strategy(client: Any) -> DaskExecutionStrategy:
    return DaskExecutionStrategy(client=client)


# -- shipping ---------------------------------------------------------------------------------------

async def test_a_class_whose_scattered_pickle_was_lost_is_sent_again(dask_strategy, client):
    class Local(Stage):
        value: int

        def execute(self, item: int = 1) -> int:
            return self.value * item

    assert await dask_strategy.execute([Local(name="a", value=1)]) == [1]
    await client.restart()  # every worker restarts: the class pickle scattered to them is gone
    assert await dask_strategy.execute([Local(name="b", value=2)]) == [2]
    await client.restart()
    out = await Stream(name="s", steps=[Step(Local(name="c", value=3), dask_strategy)]).run([1, 2])
    assert out == [3, 6]


# -- client ownership --------------------------------------------------------------------------------

async def test_with_an_address_the_client_lives_for_the_run(cluster):
    strategy = DaskExecutionStrategy(address=cluster.scheduler_address)
    groups = [group([Pid(name="a")], strategy)]
    assert (await pipeline(groups).run())[0][0][0] == "a"
    assert strategy._owned is None  # closed at the end of the run
    async with strategy:
        await pipeline(groups).run()
        held = strategy._owned
        await pipeline(groups).run()
        assert strategy._owned is held and held.status == "running"
    assert strategy._owned is None and held.status == "closed"


async def test_with_neither_a_local_cluster_is_started_and_closed_by_aclose():
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    strategy = DaskExecutionStrategy()
    try:
        assert (await strategy.execute([Pid(name="a")]))[0][0] == "a"
        started = [c for c in me.children(recursive=True) if c.pid not in before]
        assert started
    finally:
        await strategy.aclose()
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []


# -- bad input and the missing extra --------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"address": ""}, "field 'address' must be a scheduler address"),
    ({"address": 8786}, "field 'address' must be a scheduler address"),
    ({"client": "tcp://x:1"}, "field 'client' must be a distributed.Client, got str"),
    ({"pure": True}, "field 'pure' cannot be set"),
    ({"retries": 2}, "field 'retries' cannot be set: use the Stage's own retries"),
    ({"key": "k"}, "field 'key' cannot be set"),
    ({"worker": "tcp://x:1"}, "field 'worker' is not a client.submit option"),
    ({"address": "tcp://scheduler"}, "field 'address' must be a scheduler address .*missing port"),
    ({"address": "tcp://scheduler:port"}, "field 'address' must be a scheduler address"),
    ({"address": "tcp://:8786"}, "field 'address' must be a scheduler address .*host is empty"),
    ({"address": "tcp://scheduler:99999"}, "field 'address' must be a scheduler address .*port"),
    ({"address": "nope://scheduler:8786"}, "field 'address' must be a scheduler address .*unknown address scheme"),
    ({"address": "tcp://sched uler:8786"}, "field 'address' must be a scheduler address .*without spaces"),
    ({"connect_timeout": 0}, "field 'connect_timeout' must be a finite number of seconds > 0"),
    ({"connect_timeout": "10"}, "field 'connect_timeout' must be a finite number of seconds > 0"),
])
def test_bad_input_names_the_strategy_and_the_field(kwargs, message):
    with pytest.raises(ConfigurationError, match=f"DaskExecutionStrategy: {message}"):
        DaskExecutionStrategy(**kwargs)


async def test_an_unreachable_scheduler_fails_within_connect_timeout_naming_the_address():
    strategy = DaskExecutionStrategy(address="tcp://127.0.0.1:9", connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' \(field "
                                           r"'address'\) within connect_timeout=1 s") as info:
        await strategy.execute([Pid(name="p")])
    assert time.monotonic() - t0 < 20  # Dask's own connect timeout is 30 s
    assert info.value.stage_name == "p"
    out = await Stream(name="s", steps=[Step(Double(name="d", bad=13), strategy)], on_error="return").run(range(2))
    assert [type(e) for e in out] == [ClusterError, ClusterError] and out[0] is not out[1]
    assert all(e.stage_name == "d" for e in out)


async def test_a_closed_client_fails_each_item_naming_the_stage_and_the_client(cluster):
    closed = await Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)
    await closed.close()
    strategy = DaskExecutionStrategy(client=closed)
    with pytest.raises(ClusterError, match=f"the Dask client '{closed.id}' \\(field 'client'\\) is closed") as info:
        await strategy.execute([Pid(name="p")])
    assert info.value.stage_name == "p"
    stream = Stream(name="s", steps=[Step(Double(name="d", bad=13), strategy)], on_error="skip")
    assert await stream.run(range(3)) == []
    assert [(e.index, type(e.error), e.error.stage_name) for e in stream.errors] == [
        (i, ClusterError, "d") for i in range(3)]


async def test_a_client_closed_mid_run_fails_the_remaining_items_one_by_one(cluster):
    class Slow(Stage):
        def execute(self, x: int) -> int:
            time.sleep(0.05)
            return x

    mine = await Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)
    try:
        stream = Stream(name="s", steps=[Step(Slow(name="slow"), DaskExecutionStrategy(client=mine))], maxsize=2,
                        on_error="skip")
        got = []
        async for x in stream.iterate(range(30)):
            got.append(x)
            if len(got) == 3:
                await mine.close()
    finally:
        await mine.close()
    failed = [e.index for e in stream.errors]
    assert sorted(got + failed) == list(range(30)) and len(failed) > 0
    assert {type(e.error) for e in stream.errors} == {ClusterError}
    assert all(e.error.stage_name == "slow" and mine.id in str(e.error) for e in stream.errors)


def test_a_bare_run_on_a_strategy_that_owns_its_cluster_exits_without_warnings(tmp_path):
    script = tmp_path / "bare.py"
    script.write_text(
        "import asyncio\n"
        "from dynapipeline import Stage\n"
        "from dynapipeline import Step, Stream\n"
        "from dynapipeline.execution import DaskExecutionStrategy\n\n\n"
        "class Inc(Stage):\n"
        "    def execute(self, x: int) -> int:\n"
        "        return x + 1\n\n\n"
        "async def main() -> None:\n"
        "    strategy = DaskExecutionStrategy()\n"
        "    print(await Stream(name='s', steps=[Step(Inc(name='inc'), strategy)]).run(range(3)))\n"
        "    print(len(await strategy.execute([Inc(name='once')], 1)))\n\n\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-W", "default", str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[1,", "2,", "3]", "1"]
    assert "never awaited" not in out.stderr and "Traceback" not in out.stderr, out.stderr


async def test_client_and_address_together_are_rejected(client):
    with pytest.raises(ConfigurationError, match="DaskExecutionStrategy: give field 'client' or field 'address'"):
        DaskExecutionStrategy(client=client, address="tcp://x:1")


def test_without_distributed_constructing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install dynapipeline\[dask\]"):
        DaskExecutionStrategy()


def test_without_distributed_the_execution_module_still_imports():
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from dynapipeline.execution import DaskExecutionStrategy, SequentialExecutionStrategy\n"
            "try:\n    DaskExecutionStrategy(address='tcp://x:1')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "pip install dynapipeline[dask]" in out.stdout


# -- as a stream step ----------------------------------------------------------------------------------

async def test_a_stream_step_on_dask_reports_the_items_own_percentiles(dask_strategy):
    stream = Stream(name="s", steps=[Step(ItemNap(name="nap", seconds=0.002), dask_strategy)])
    assert await stream.run(range(100)) == list(range(100))
    line = stream.report()["nap"]
    assert line.runs == 100 and line.errors == 0
    assert 0.002 <= line.p50 <= line.p95 <= line.max  # every item's own time, none lost to a stale ring
    assert line.work >= 100 * 0.002


async def test_runs_on_dask_get_spans_under_their_group_or_stream_with_the_worker(dask_strategy, client):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from dynapipeline.otel import OpenTelemetryHandler

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = OpenTelemetryHandler(tracer_provider=provider)
    workers = {address: pid for address, pid in (await client.run(os.getpid)).items()}
    # "b" fails well after "a" has ended (a failure cancels the members still running).
    napping = group([ItemNap(name="a", seconds=0.05), ItemNap(name="b", seconds=0.5, bad=13)], dask_strategy)
    with pytest.raises(ValueError, match="bad 13"):
        await handler.instrument(napping).run(13)
    doubling = Step(Double(name="d", bad=13), dask_strategy)
    stream = handler.instrument(Stream(name="s", steps=[doubling], on_error="skip"))
    assert len(await stream.run(range(20))) == 19
    provider.shutdown()
    finished = exporter.get_finished_spans()
    [g] = [span for span in finished if span.name == "g"]
    [s] = [span for span in finished if span.name == "s"]
    inside = {name: [span for span in finished if span.name == name] for name in ("a", "b", "d")}
    assert len(inside["a"]) == 1 and len(inside["b"]) == 1 and len(inside["d"]) == 20
    for name, parent in (("a", g), ("b", g), ("d", s)):
        for span in inside[name]:
            attributes = span.attributes or {}
            assert span.parent is not None and parent.context is not None
            assert span.parent.span_id == parent.context.span_id
            assert workers[attributes["dynapipeline.worker_address"]] == attributes["dynapipeline.worker_pid"]
    [a], [b] = inside["a"], inside["b"]
    assert a.end_time is not None and a.start_time is not None and a.end_time - a.start_time >= 0.05e9
    assert b.status.status_code is StatusCode.ERROR and b.status.description == "ValueError: bad 13"
    failed = [span for span in inside["d"] if span.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and [e.name for e in failed[0].events] == ["exception"]


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_stream_step_on_dask_keeps_every_item(dask_strategy, client, ordered):
    maxsize = 4
    outstanding = []

    async def watch() -> None:
        while True:
            outstanding.append(sum(1 for key, state in list(client.futures.items())
                                   if "run_items_task" in str(key) and state.status == "pending"))
            await asyncio.sleep(0.002)

    stage = Double(name="double", bad=13)
    stream = Stream(name="s", steps=[Step(stage, dask_strategy)], maxsize=maxsize, ordered=ordered,
                    on_error="skip")
    watcher = asyncio.ensure_future(watch())
    try:
        out = await stream.run(range(200))
    finally:
        watcher.cancel()
    expected = [2 * x for x in range(200) if x != 13]
    assert (out if ordered else sorted(out)) == expected
    assert [(e.index, type(e.error), e.error.stage_name) for e in stream.errors] == [(13, ValueError, "double")]
    assert 0 < max(outstanding) <= maxsize
    assert stage.stats.count == 200


async def test_a_stream_step_returns_or_raises_item_errors(dask_strategy):
    doubling = Step(Double(name="d", bad=13), dask_strategy)
    out = await Stream(name="s", steps=[doubling], on_error="return").run(range(15))
    assert isinstance(out[13], ValueError) and out[13].stage_name == "d"
    assert out[:13] == [2 * x for x in range(13)] and out[14] == 28
    with pytest.raises(ValueError, match="bad 13"):
        await Stream(name="s", steps=[Step(Double(name="d", bad=13), dask_strategy)]).run(range(20))


async def test_a_batched_stream_step_on_dask_gets_consecutive_items_in_order(dask_strategy):
    async def slow_source() -> Any:
        for i in range(12):
            await asyncio.sleep(0.01)
            yield i

    step = Step(Batch(name="batch"), dask_strategy, batch=5, batch_timeout=60)
    out = await asyncio.wait_for(Stream(name="s", steps=[step]).run(slow_source()), 60)
    assert out == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


async def test_a_rated_stream_step_on_dask_is_paced(dask_strategy):
    stream = Stream(name="s", steps=[Step(Double(name="d"), dask_strategy, rate=20)])
    started = time.monotonic()
    out = await asyncio.wait_for(stream.run(range(10)), 60)
    assert time.monotonic() - started >= 9 / 20  # a lower bound only: items one per call, each start paced
    assert out == [2 * x for x in range(10)]


async def test_a_stream_step_times_out_per_item(dask_strategy):
    class Slow(Stage):
        def execute(self, x: float) -> float:
            time.sleep(x)
            return x

    stream = Stream(name="s", steps=[Step(Slow(name="slow", timeout=0.3), dask_strategy)], on_error="return")
    out = await stream.run([0.0, 1.0, 0.0])
    assert out[0] == 0.0 and out[2] == 0.0
    assert isinstance(out[1], StageTimeoutError) and out[1].stage_name == "slow"


async def test_a_stream_step_retries_an_item_whose_worker_was_lost(dask_strategy, client, cluster, tmp_path):
    class DiesOnce(Stage):
        folder: str

        def execute(self, x: int) -> int:
            mark = Path(self.folder, str(x))
            if x == 1 and not mark.exists():
                mark.write_text("died")
                os._exit(3)
            return x

    stage = DiesOnce(name="once", folder=str(tmp_path), retries=1, retry_delay=0.05)
    # One item: tasks of other items queued on the dying worker would be lost with it too (Dask counts
    # them as processing there) and spend their own retry, which made a several-item version flaky.
    out = await Stream(name="s", steps=[Step(stage, dask_strategy)]).run([1])
    assert out == [1]
    await healed(cluster, client)
    (tmp_path / "again").mkdir()
    never = DiesOnce(name="never", folder=str(tmp_path / "again"))  # no retries: the lost task fails its item
    out = await Stream(name="s", steps=[Step(never, dask_strategy)], on_error="return").run([1])
    assert isinstance(out[0], WorkerCrashedError) and out[0].stage_name == "never"
    await healed(cluster, client)


class KillsOn(Stage):
    """Returns its item; on item ``culprit`` notes the run in ``folder`` and kills its worker."""

    folder: str
    culprit: int

    def execute(self, x: int) -> int:
        if x == self.culprit:
            with Path(self.folder, "runs").open("a") as runs:
                runs.write("run\n")
            os._exit(3)
        return x


@pytest.mark.timeout(300)
@pytest.mark.parametrize("retries", [0, 1])
async def test_a_stream_item_that_kills_its_worker_fails_alone(client, cluster, tmp_path, retries):
    stage = KillsOn(name="kills", folder=str(tmp_path), culprit=30, retries=retries, retry_delay=0.01)
    stream = Stream(name="s", steps=[Step(stage, DaskExecutionStrategy(client=client))], maxsize=40,
                    on_error="skip")
    # The item kills up to 3 workers of 2, so the cluster loses all of them and waits for its nannies to
    # start new ones (a fresh interpreter each): seconds alone, but past 90 s in two CI runs (the whole
    # suite before it), and a nanny may lose its worker altogether (``workers_replaced`` starts another). The
    # bound tells a slow restart from a hang, and fails before the test's own timeout.
    async with workers_replaced(cluster):
        out = await asyncio.wait_for(stream.run(range(40)), 240)
    assert out == [x for x in range(40) if x != 30]
    assert [(e.index, type(e.error), e.error.stage_name) for e in stream.errors] == [(30, WorkerCrashedError,
                                                                                      "kills")]
    # Its chunk died with it (nobody charged), then it ran alone once, then once per retry.
    assert (tmp_path / "runs").read_text().count("run") == retries + 2
    await healed(cluster, client)


async def test_a_stream_step_on_dask_starts_no_more_workers_than_the_cluster_can_use(dask_strategy):
    maxsize = 20_000
    seen = []

    async def watch() -> None:
        while True:
            seen.append(len(asyncio.all_tasks()))
            await asyncio.sleep(0.005)

    async def source() -> Any:
        for x in range(10):
            await asyncio.sleep(0.01)  # the step's workers wait for items meanwhile
            yield x

    watcher = asyncio.ensure_future(watch())
    try:
        doubling = Step(Double(name="double", bad=13), dask_strategy)
        out = await Stream(name="s", steps=[doubling], maxsize=maxsize).run(source())
    finally:
        watcher.cancel()
    assert out == [2 * x for x in range(10)]
    assert max(seen) < 100  # 2 worker threads: a handful of calls, not one per slot of maxsize


async def test_a_slow_stream_step_on_dask_keeps_the_items_in_flight_near_maxsize(dask_strategy):
    maxsize = 4
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for x in range(60):
            pulled += 1
            yield x

    class Slow(Stage):
        def execute(self, x: int) -> int:
            time.sleep(0.01)
            return x

    got: list[int] = []
    ahead = []
    async for x in Stream(name="s", steps=[Step(Slow(name="slow"), dask_strategy)], maxsize=maxsize).iterate(source()):
        got.append(x)
        ahead.append(pulled - len(got))
    assert got == list(range(60))
    # The step's queue, the items in its tasks and the output queue: each at most maxsize.
    assert max(ahead) <= 3 * maxsize + 1, ahead


async def test_on_a_default_local_cluster_a_crashing_item_fails_alone_without_spending_the_others_retries(tmp_path):
    # Dask's defaults here: allowed-failures=3 (the scheduler runs a lost task again itself) and the class pickle
    # scattered to workers that all die, which cancels the tasks that need it.
    stage = KillsOn(name="kills", folder=str(tmp_path), culprit=37, retries=2, retry_delay=0.01)
    async with DaskExecutionStrategy() as strategy:
        stream = Stream(name="s", steps=[Step(stage, strategy)], on_error="skip")
        out = await asyncio.wait_for(stream.run(range(100)), 90)
    assert out == [x for x in range(100) if x != 37]
    assert [(e.index, type(e.error)) for e in stream.errors] == [(37, WorkerCrashedError)]


# -- distributed's shared gather: cancelled by another caller --------------------------------------------------------


class FinishedFuture:
    """A finished Dask future whose first ``cancelled`` gathers fail with ``CancelledError``, as a gather does
    that joined ``distributed``'s gather in progress when the caller that started it is cancelled."""

    status = "finished"

    def __init__(self, cancelled: int) -> None:
        self.cancelled = cancelled
        self.gathers = 0

    def __await__(self) -> Any:
        self.gathers += 1
        yield from asyncio.sleep(0).__await__()
        if self.gathers <= self.cancelled:
            raise asyncio.CancelledError
        return 123, ["reply"]


RUNNER = SimpleNamespace(name="s", owner=SimpleNamespace(timeout=None))


async def test_a_gather_cancelled_by_another_caller_is_gathered_again() -> None:
    future = FinishedFuture(cancelled=1)
    assert await wait_for_task(future, None, RUNNER) == (123, ["reply"])
    assert future.gathers == 2


async def test_gathering_again_is_bounded() -> None:
    future = FinishedFuture(cancelled=100)
    with pytest.raises(asyncio.CancelledError):
        await wait_for_task(future, None, RUNNER)
    assert future.gathers == 4


async def test_a_cancelled_caller_is_not_gathered_again() -> None:
    future = FinishedFuture(cancelled=100)
    task = asyncio.ensure_future(wait_for_task(future, None, RUNNER))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.gathers == 1
