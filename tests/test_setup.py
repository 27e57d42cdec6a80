"""Setup and teardown once per place that runs a stage (``dynapipeline._model.lifecycle``).

Each stage here logs to a directory of its own: one file per process, a line per
setup or teardown naming the thread (``setup <thread>``), so the tests count
setups per worker process and per worker thread without any timing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from helpers import Pid, group, pipeline

from dynapipeline import Stage, Step, Stream
from dynapipeline.errors import ConfigurationError, WorkerCrashedError
from dynapipeline.execution import (
    DaskExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy


def _log(log: str, what: str) -> None:
    with open(Path(log) / str(os.getpid()), "a") as file:
        file.write(f"{what} {threading.get_ident()}\n")


def events(log: Path) -> dict[int, list[str]]:
    """pid -> the lines its process logged (``setup <thread>``, ``teardown <thread>``), in order."""
    return {int(path.name): path.read_text().split("\n")[:-1] for path in log.iterdir()}


def count(log: Path, what: str) -> dict[int, int]:
    """pid -> how many ``what`` lines it logged."""
    return {pid: sum(line.split()[0] == what for line in lines) for pid, lines in events(log).items()}


class Model(Stage):
    """Loads a "model" (its process, thread and a token) in setup; each item returns what it was run with."""

    log: str
    crash_on: int = -1  # an item that ends its worker process (os._exit): a crash
    pause: float = 0.0  # seconds per item: work enough for chunks of a few items, spread over the workers

    def setup(self) -> None:
        _log(self.log, "setup")
        self._model = (os.getpid(), threading.get_ident(), os.urandom(8).hex())

    def teardown(self) -> None:
        _log(self.log, "teardown")
        self._model = None

    def execute(self, item: Any) -> tuple[Any, int, int, str]:
        if item == self.crash_on:
            os._exit(3)
        if self.pause:
            time.sleep(self.pause)
        pid, thread, token = self._model
        return item, pid, thread, token


class AsyncModel(Stage):
    """``Model`` with an async setup and teardown (and a plain ``execute``)."""

    log: str

    async def setup(self) -> None:
        await asyncio.sleep(0)
        _log(self.log, "setup")
        self._model = os.getpid()

    async def teardown(self) -> None:
        await asyncio.sleep(0)
        _log(self.log, "teardown")

    def execute(self, item: int) -> tuple[int, int]:
        return item, self._model


class BadSetup(Stage):
    """A setup that raises."""

    log: str

    def setup(self) -> None:
        _log(self.log, "setup")
        load_the_model_that_is_not_there()

    def teardown(self) -> None:
        _log(self.log, "teardown")

    def execute(self, item: int) -> int:
        return item


def load_the_model_that_is_not_there() -> None:
    raise FileNotFoundError("model.bin")


class Fails(Stage):
    def execute(self, item: Any) -> Any:
        if (item[0] if isinstance(item, tuple) else item) == 3:
            raise ValueError("item 3")
        return item


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path


# -- the event loop: once per run -----------------------------------------------------------------------

@pytest.mark.parametrize("strategy", [None, SemaphoreExecutionStrategy(4)], ids=["loop", "semaphore"])
async def test_on_the_loop_a_stream_sets_up_once_per_run_and_tears_down_at_its_end(log, strategy):
    stage = Model(name="m", log=str(log))
    stream = Stream(name="s", steps=[Step(stage, strategy)])
    for run in (1, 2):
        out = await stream.run(range(100))
        assert [o[0] for o in out] == list(range(100))
        assert len({o[1:] for o in out}) == 1  # one setup, on the loop's thread
        assert out[0][1:3] == (os.getpid(), threading.get_ident())
        assert count(log, "setup") == {os.getpid(): run}
        assert count(log, "teardown") == {os.getpid(): run}
    assert stage._model is None  # teardown ran on the user's own object


async def test_on_the_loop_a_group_stage_sets_up_once_per_pipeline_run(log):
    stage = Model(name="m", log=str(log))
    p = pipeline([group([stage], cycle=LoopCycleStrategy(5))])
    await p.run(1)
    assert count(log, "setup") == {os.getpid(): 1}
    assert count(log, "teardown") == {os.getpid(): 1}


async def test_a_stage_run_alone_sets_up_and_tears_down_each_run(log):
    stage = Model(name="m", log=str(log))
    assert (await stage.run(7))[0] == 7
    assert (await stage.run(8))[0] == 8
    assert events(log)[os.getpid()] == [f"{w} {threading.get_ident()}" for w in ("setup", "teardown") * 2]


async def test_teardown_runs_when_the_run_fails(log):
    stage = Model(name="m", log=str(log))
    stream = Stream(name="s", steps=[stage, Fails(name="f")])
    with pytest.raises(ValueError, match="item 3"):
        await stream.run(range(10))
    assert count(log, "setup") == count(log, "teardown") == {os.getpid(): 1}


async def test_teardown_runs_when_the_run_is_cancelled(log):
    started = asyncio.Event()

    async def wait_forever(item: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return item

    stream = Stream(name="s", steps=[Model(name="m", log=str(log)), wait_forever])
    task = asyncio.ensure_future(stream.run(range(10)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert count(log, "setup") == count(log, "teardown") == {os.getpid(): 1}


async def test_iterate_sets_up_once_and_tears_down_when_the_block_is_left(log):
    stream = Stream(name="s", steps=[Model(name="m", log=str(log))])
    async with stream.iterate(range(1000)) as items:
        async for item in items:
            if item[0] == 10:
                break
        assert count(log, "setup") == {os.getpid(): 1}
        assert count(log, "teardown") == {os.getpid(): 0}
    assert count(log, "teardown") == {os.getpid(): 1}


async def test_a_stage_without_setup_is_called_as_it_is():
    stage = Fails(name="f")
    assert stage.call_target() == stage.execute
    assert Step(abs).stage.call_target() is abs


# -- threads: once per worker thread per run, each on its own copy ----------------------------------------

async def test_threads_set_up_once_per_worker_thread_each_on_its_own_copy(log):
    stage = Model(name="m", log=str(log))
    stream = Stream(name="s", steps=[Step(stage, MultithreadExecutionStrategy(3))])
    out = await stream.run(range(300))
    threads = {o[2] for o in out}
    assert threading.get_ident() not in threads
    lines = events(log)[os.getpid()]
    setups = [line.split()[1] for line in lines if line.startswith("setup")]
    assert sorted(setups) == sorted(str(t) for t in threads)  # one setup per thread that ran items
    assert len({o[3] for o in out}) == len(threads)  # each thread's own model: its own copy of the stage
    assert len([line for line in lines if line.startswith("teardown")]) == len(threads)
    assert not hasattr(stage, "_model")  # the user's stage was not the one set up
    await stream.run(range(30))  # a new run sets up again
    assert len([line for line in events(log)[os.getpid()] if line.startswith("setup")]) > len(threads)


# -- processes: once per worker process, torn down when the pool closes ------------------------------------

async def test_two_process_workers_and_1000_items_set_up_twice_and_tear_down_twice_on_aclose(log):
    strategy = MultiprocessExecutionStrategy(2)
    stage = Model(name="m", log=str(log))
    stream = Stream(name="s", steps=[Step(stage, strategy)])
    try:
        pids: set[int] = set()
        for _ in range(3):  # runs reuse the workers' setup
            out = await stream.run(range(1000))
            assert [o[0] for o in out] == list(range(1000))
            pids |= {o[1] for o in out}
        assert pids <= set(strategy.worker_pids())
        assert count(log, "setup") == {pid: 1 for pid in pids}
        assert count(log, "teardown") == {pid: 0 for pid in pids}
        assert not hasattr(stage, "_model")  # nothing came back
    finally:
        await strategy.aclose()
    assert count(log, "teardown") == {pid: 1 for pid in pids}


async def test_exactly_two_setups_when_both_workers_run_items(log):
    strategy = MultiprocessExecutionStrategy(2)
    stream = Stream(name="s", steps=[Step(Model(name="m", log=str(log), pause=0.001), strategy)])
    try:
        await strategy.execute([Pid(name="a"), Pid(name="b")])  # both workers up
        out = await stream.run(range(1000))  # ~1 s of work: chunks of a few items, taken by both workers
        ran = {o[1] for o in out}
        workers = set(strategy.worker_pids())
    finally:
        await strategy.aclose()
    assert ran == workers and len(ran) == 2
    setups = [line for lines in events(log).values() for line in lines if line.startswith("setup")]
    teardowns = [line for lines in events(log).values() for line in lines if line.startswith("teardown")]
    assert len(setups) == len(teardowns) == 2
    assert count(log, "setup") == count(log, "teardown") == {pid: 1 for pid in ran}


async def test_a_crashed_worker_never_tears_down_and_its_replacement_sets_up_again(log):
    strategy = MultiprocessExecutionStrategy(2)
    stream = Stream(name="s", steps=[Step(Model(name="m", log=str(log), crash_on=500), strategy)],
                    on_error="skip")
    try:
        out = await stream.run(range(1000))
        assert len(out) == 999
        [error] = stream.errors
        assert isinstance(error.error, WorkerCrashedError) and error.index == 500
        live = set(strategy.worker_pids())
    finally:
        await strategy.aclose()
    setups, teardowns = count(log, "setup"), count(log, "teardown")
    dead = set(setups) - live
    assert dead, "the crashed worker's pid"
    assert all(setups[pid] == 1 for pid in setups)
    assert all(teardowns[pid] == 0 for pid in dead)
    assert all(teardowns[pid] == 1 for pid in live if pid in setups)
    assert {o[1] for o in out} - dead <= live  # the replacement ran items after setting up


async def test_a_recycled_worker_tears_down_and_its_replacement_sets_up_again(log):
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=10)
    stream = Stream(name="s", steps=[Step(Model(name="m", log=str(log)), strategy)])
    try:
        out = await stream.run(range(100))
        assert [o[0] for o in out] == list(range(100))
        live = set(strategy.worker_pids())
    finally:
        await strategy.aclose()
    setups, teardowns = count(log, "setup"), count(log, "teardown")
    assert len(setups) >= 10  # 100 items, at most 10 per worker
    assert setups == teardowns == {pid: 1 for pid in setups}  # retired workers included: a recycled exit is clean
    assert {o[1] for o in out} <= set(setups) and live <= set(setups) | live


async def test_group_stages_on_processes_set_up_once_per_worker_across_batches_and_runs(log):
    strategy = MultiprocessExecutionStrategy(2)
    stages = [Model(name="a", log=str(log)), Model(name="b", log=str(log))]
    try:
        tokens: dict[tuple[str, int], set[str]] = {}
        for item in range(20):
            results = await strategy.execute(stages, item)
            for stage, result in zip(stages, results, strict=True):
                tokens.setdefault((stage.name, result[1]), set()).add(result[3])
        assert all(len(t) == 1 for t in tokens.values())  # the model set up once stays across batches
        pids = {pid for _, pid in tokens}
        # each stage sets up once in each worker that ran it
        assert count(log, "setup") == {pid: sum(p == pid for _, p in tokens) for pid in pids}
    finally:
        await strategy.aclose()
    assert count(log, "teardown") == count(log, "setup")


async def test_async_setup_and_teardown_on_processes(log):
    strategy = MultiprocessExecutionStrategy(2)
    stream = Stream(name="s", steps=[Step(AsyncModel(name="m", log=str(log)), strategy)])
    try:
        out = await stream.run(range(200))
        assert all(o[1] != os.getpid() for o in out)
    finally:
        await strategy.aclose()
    assert count(log, "setup") == count(log, "teardown") == {pid: 1 for pid in {o[1] for o in out}}


# -- Dask: once per Dask worker ----------------------------------------------------------------------------

async def test_dask_sets_up_once_per_dask_worker(log, client):
    strategy = DaskExecutionStrategy(client=client)
    stages = [Model(name="a", log=str(log))]
    stream = Stream(name="s", steps=[Step(Model(name="m", log=str(log)), strategy)])
    try:
        out = await stream.run(range(50))
        out += await stream.run(range(50))  # a second run: the workers keep their setup
        group_pids = {(await strategy.execute(stages, 1))[0][1] for _ in range(5)}
    finally:
        await strategy.aclose()
    stream_pids = {o[1] for o in out}
    assert os.getpid() not in stream_pids | group_pids
    assert len({o[3] for o in out}) == len(stream_pids)  # one model per worker
    setups = count(log, "setup")
    assert setups == {pid: (pid in stream_pids) + (pid in group_pids) for pid in stream_pids | group_pids}
    # Dask workers are not torn down (no clean exit of theirs is ours to hook): see docs/threads-and-processes.md
    assert all(n == 0 for n in count(log, "teardown").values())


# -- a setup that raises ---------------------------------------------------------------------------------

def _formatted(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return text


@pytest.mark.parametrize("where", ["loop", "threads", "processes"])
async def test_a_failing_setup_fails_every_item_there_with_its_own_error(log, where):
    strategy = {"loop": None, "threads": MultithreadExecutionStrategy(2),
                "processes": MultiprocessExecutionStrategy(2)}[where]
    stream = Stream(name="s", steps=[Step(BadSetup(name="bad", log=str(log)), strategy)], on_error="skip")
    try:
        out = await asyncio.wait_for(stream.run(range(50)), 60)
    finally:
        if strategy is not None:
            await strategy.aclose()
    assert out == []
    assert len(stream.errors) == 50
    for item_error in stream.errors:
        error = item_error.error
        assert type(error) is FileNotFoundError and "model.bin" in str(error)
        assert "in setup of stage 'bad'" in error.__notes__
        assert f"item {item_error.index}" in error.__notes__[-1]  # each item's own note, on its own copy
        assert "load_the_model_that_is_not_there" in _formatted(error)  # the setup's traceback
    assert all(n == 0 for n in count(log, "teardown").values())  # no teardown after a failed setup
    assert sum(count(log, "setup").values()) <= 2  # tried once per place, not per item


# -- Step(fn, setup=, teardown=) ----------------------------------------------------------------------------

async def test_a_function_step_with_setup_and_teardown_on_the_loop():
    calls: list[str] = []
    model: dict[str, int] = {}

    def load() -> None:
        calls.append("setup")
        model["k"] = 10

    async def unload() -> None:
        calls.append("teardown")

    stream = Stream(name="s", steps=[Step(lambda x: x + model["k"], setup=load, teardown=unload)])
    assert await stream.run(range(5)) == [10, 11, 12, 13, 14]
    assert calls == ["setup", "teardown"]


async def test_a_function_step_with_async_setup_on_processes(log):
    strategy = MultiprocessExecutionStrategy(2)
    folder = str(log)

    async def load() -> None:
        _log(folder, "setup")

    def unload() -> None:
        _log(folder, "teardown")

    stream = Stream(name="s", steps=[Step(lambda x: os.getpid(), strategy,
                                          setup=load, teardown=unload)])
    try:
        pids = set(await stream.run(range(300)))
    finally:
        await strategy.aclose()
    assert count(log, "setup") == count(log, "teardown") == {pid: 1 for pid in pids}


def test_setup_and_teardown_are_refused_with_a_stage_and_must_be_callable(log):
    with pytest.raises(ConfigurationError, match="field 'setup'.*Model.setup"):
        Step(Model(name="m", log=str(log)), setup=print)
    with pytest.raises(ConfigurationError, match="field 'teardown'"):
        Step(Model(name="m", log=str(log)), teardown=print)
    with pytest.raises(ConfigurationError, match="field 'setup' must be a zero-argument callable"):
        Step(abs, setup="load")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="field 'teardown' must be a zero-argument callable"):
        Step(abs, teardown=1)  # type: ignore[arg-type]


async def test_async_setup_on_the_loop_runs_once_for_concurrent_items(log):
    stage = AsyncModel(name="m", log=str(log))
    stream = Stream(name="s", steps=[Step(stage, SemaphoreExecutionStrategy(8))])
    out = await stream.run(range(100))
    assert {o[1] for o in out} == {os.getpid()}
    assert count(log, "setup") == count(log, "teardown") == {os.getpid(): 1}


async def test_flow_steps_take_setup_and_teardown():
    from dynapipeline import flow

    calls: list[str] = []
    seen = await (flow(range(6))
                  .map(lambda x: x * 2, setup=lambda: calls.append("map setup"))
                  .filter(lambda x: x > 2, teardown=lambda: calls.append("filter teardown"))
                  .run())
    assert seen == [4, 6, 8, 10]
    assert calls == ["map setup", "filter teardown"]


async def test_async_setup_and_teardown_on_threads_once_per_thread(log):
    strategy = MultithreadExecutionStrategy(2)
    stream = Stream(name="s", steps=[Step(AsyncModel(name="m", log=str(log)), strategy)])
    try:
        out = await stream.run(range(100))
    finally:
        await strategy.aclose()
    lines = events(log)[os.getpid()]
    setup_threads = [line.split()[1] for line in lines if line.startswith("setup")]
    assert len(out) == 100 and 1 <= len(setup_threads) == len(set(setup_threads)) <= 2
    assert threading.get_ident() not in {int(t) for t in setup_threads}
    # the teardowns ran at the run's end, on the event loop's thread
    assert [line for line in lines if line.startswith("teardown")] == \
        [f"teardown {threading.get_ident()}"] * len(setup_threads)


@pytest.mark.parametrize("strategy", [SequentialExecutionStrategy(), MultithreadExecutionStrategy(2)],
                         ids=["sequential", "threads"])
async def test_a_strategy_called_outside_a_run_is_the_run(log, strategy):
    stages = [Model(name="a", log=str(log)), Model(name="b", log=str(log))]
    try:
        results = await strategy.execute(stages, 1)
        assert [r[0] for r in results] == [1, 1]
        assert sum(count(log, "setup").values()) == 2
        assert count(log, "teardown") == count(log, "setup")  # torn down when the call ended
        await LoopCycleStrategy(3).run(strategy, stages, 2)  # a cycle strategy's run too: once for its cycles
        # (on threads, once per stage and thread: a stage may run on either thread in each cycle)
        assert 4 <= sum(count(log, "setup").values()) <= (4 if isinstance(strategy, SequentialExecutionStrategy)
                                                          else 6)
        assert count(log, "teardown") == count(log, "setup")
    finally:
        await strategy.aclose()


class Keeps(Model):
    """A teardown that reads what setup made (so it fails if a worker's copy lost it)."""

    def teardown(self) -> None:
        _log(self.log, f"teardown-of {self._model[2]}")


async def test_a_group_stage_slimmed_after_shared_memory_batches_keeps_its_setup_for_teardown(log):
    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=1024)
    stages = [Keeps(name="k", log=str(log))]
    try:
        tokens = {(await strategy.execute(stages, bytes(100_000)))[0][3] for _ in range(6)}  # in shared memory
    finally:
        await strategy.aclose()
    torn = {line.split()[1] for lines in events(log).values() for line in lines if line.startswith("teardown-of")}
    assert torn == tokens, events(log)
