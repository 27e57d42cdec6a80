"""Stream steps on processes (and threads): chunks, the stage once per worker, per-item faults."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest
from helpers import (
    GRACE,
    MIB,
    Batch,
    Blank,
    Leak,
    Nap,
    Pid,
    RunLog,
    Unloadable,
    assert_gone,
    assert_no_workers,
    closing_pool,
    dev_shm,
    eventually,
    eventually_async,
    gone,
    in_shared_memory,
    laid_on_shared_memory,
    large_items,
    leaves_nothing,
    memfds,
    run_log,
    same_value,
    stream_tasks,
)

from dynapipeline import Handler, PipelineFactory, PipeLineType, Stage, Step, Stream
from dynapipeline._model.pacing import PacedItems
from dynapipeline._transports._remote.messages import LOG_SIZE, MapCall
from dynapipeline._transports._remote.shared_bytes import LAYS_BYTES
from dynapipeline._transports.calling import ItemRuns
from dynapipeline._transports.process import items as process_items
from dynapipeline.errors import PicklingError, RemoteError, StageTimeoutError, WorkerCrashedError
from dynapipeline.execution import MultiprocessExecutionStrategy, MultithreadExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class Square(Stage):
    def execute(self, item: int) -> int:
        return item * item


class Length(Stage):
    def execute(self, item: bytes) -> int:
        return len(item)


class SpinOn(Stage):
    """Spins forever on item ``bad`` (a plain def: only killing its worker stops it)."""

    bad: int = 0

    def execute(self, item: int) -> int:
        while item == self.bad:
            pass
        return item


class ExitOn(Stage):
    """Kills its worker on item ``bad``; with ``once_marker`` only the first time (a file marks it)."""

    bad: int = 0
    once_marker: str = ""

    def execute(self, item: int) -> int:
        if item == self.bad:
            if not self.once_marker or not os.path.exists(self.once_marker):
                if self.once_marker:
                    open(self.once_marker, "w").close()
                os._exit(3)
        return item


class RaiseOn(Stage):
    bad: int = 0

    def execute(self, item: int) -> int:
        if item == self.bad:
            raise KeyError(f"no {item}")
        return item


class LockOn(Stage):
    """Returns something that cannot be pickled for item ``bad``."""

    bad: int = 0

    def execute(self, item: int) -> Any:
        return threading.Lock() if item == self.bad else item


def stream(step: Step, **fields: Any) -> Stream:
    return Stream(name="s", steps=[step], **fields)


async def test_items_run_in_worker_processes_in_order(procs: MultiprocessExecutionStrategy) -> None:
    out = await stream(Step(Pid(name="pid"), procs)).run(range(500))
    assert [args for _, _, args, _ in out] == [(item,) for item in range(500)]
    assert os.getpid() not in {pid for _, pid, _, _ in out}


async def test_items_travel_in_chunks_and_the_stage_once_per_worker(procs: MultiprocessExecutionStrategy,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[bool] = []
    real = process_items.MapJob.message

    def spy(self: process_items.MapJob, blobs: list[tuple[int, bytes]], stage: bool) -> MapCall:
        message = real(self, blobs, stage)
        messages.append(message.stage != b"")  # what was really sent
        return message

    monkeypatch.setattr(process_items.MapJob, "message", spy)
    square = Square(name="square")
    out = await stream(Step(square, procs)).run(range(5000))
    assert out == [i * i for i in range(5000)]
    assert len(messages) < 5000 / 10  # IPC is paid per chunk, not per item
    assert sum(messages) == 2  # the stage went to each of the 2 workers once
    assert square.stats.count == 5000  # each chunk's timing was added to the parent's stage


async def test_progress_and_timing_of_a_chunked_process_step_count_items(procs: MultiprocessExecutionStrategy) -> None:
    """Chunks of hundreds of items, one of which fails: progress and timing still say what each item did."""
    stage = RaiseOn(name="raise", bad=777)
    s = stream(Step(stage, procs), on_error="skip", maxsize=1000)
    out = await asyncio.wait_for(s.run(range(2000)), 60)
    assert out == [i for i in range(2000) if i != 777]
    p = s.progress["raise"]
    assert (p.received, p.done, p.failed, p.in_flight, p.queued) == (2000, 1999, 1, 0, 0)
    assert stage.stats.count == 2000  # failed runs included


class CallSizes:
    """Spies on ``ProcessItems.call``: each call's count of items, and the most calls in flight at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.now = self.most = 0
        real = process_items.ProcessItems.call

        async def call(runner: process_items.ProcessItems, values: list[Any]) -> list[Any]:
            self.sizes.append(len(values))
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                return await real(runner, values)
            finally:
                self.now -= 1

        monkeypatch.setattr(process_items.ProcessItems, "call", call)


async def test_tiny_items_travel_in_chunks_of_maxsize_over_workers_two_per_worker(
        procs: MultiprocessExecutionStrategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of tiny items fill the cap, maxsize / workers: the parent's cost per chunk is what limits them."""
    calls = CallSizes(monkeypatch)
    out = await stream(Step(Square(name="square"), procs), maxsize=1000).run(range(20_000))
    assert out == [i * i for i in range(20_000)]
    assert 2 < calls.most <= 4  # two chunks per worker: one runs, one waits in its pipe
    assert max(calls.sizes) == 500
    assert sum(size == 500 for size in calls.sizes) >= len(calls.sizes) - 10  # only the first ones are smaller


async def test_items_with_work_to_do_travel_in_chunks_of_their_2_ms(procs: MultiprocessExecutionStrategy,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Items of 1 ms: chunks of ~2 ms hold 2 items, far under the cap; still two chunks per worker."""
    calls = CallSizes(monkeypatch)
    out = await stream(Step(Nap(name="nap", seconds=0.001), procs), maxsize=1000).run(range(300))
    assert len(out) == 300
    assert 2 < calls.most <= 4
    assert max(calls.sizes[8:]) <= 10


async def test_large_items_of_little_work_still_go_one_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large item's run does not size the next chunks as a small item's does: its items still go one per call
    (a chunk of several would split into as many calls, each with its copy in shared memory)."""
    calls = CallSizes(monkeypatch)
    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=1000)
    async with leaves_nothing(strategy):
        out = await asyncio.wait_for(stream(Step(Length(name="length"), strategy), maxsize=8).run([bytes(5000)] * 200),
                                     60)
    assert out == [5000] * 200
    assert set(calls.sizes[8:]) == {1}  # past the first chunks, sized before any item was seen (and split)


class LengthOrItem(Stage):
    """The length of a bytes item, any other item itself."""

    def execute(self, item: Any) -> Any:
        return len(item) if type(item) is bytes else item


async def test_a_timed_stage_sends_one_item_a_chunk_after_a_large_item_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline is a chunk's: after a large item, a timed stage's small items still go one per chunk."""
    calls = CallSizes(monkeypatch)
    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=1000)
    async with leaves_nothing(strategy):
        s = stream(Step(LengthOrItem(name="timed", timeout=30), strategy), maxsize=1000)
        out = await asyncio.wait_for(s.run([bytes(5000), *range(300)]), 60)
    assert out == [5000, *range(300)]
    assert set(calls.sizes) == {1}


def test_chunks_are_sized_from_the_time_per_item_up_to_the_cap() -> None:
    """``_size_chunks``: ~2 ms of work a chunk, never more than maxsize / workers items; two calls per worker
    once a chunk came back (one per worker before: large items keep that, plus one)."""

    class Pool:
        workers = 2

    runner = process_items.ProcessItems(Pool(), Square(name="square"), 1000, 4)  # type: ignore[arg-type]

    def measured(per_item: float) -> None:
        runner._size_chunks(ItemRuns(10, 0.0, 10 * per_item, 10 * per_item, per_item, per_item, [], []))

    assert (runner.width, runner.cap, runner.chunk) == (2, 500, 16)
    measured(1e-6)
    assert (runner.width, runner.cap, runner.chunk) == (4, 500, 500)
    measured(1e-4)  # 20 items make 2 ms
    assert (runner.width, runner.cap, runner.chunk) == (4, 500, 20)


def test_a_paced_process_step_sends_one_item_a_call_on_every_call_it_may_make() -> None:
    class Pool:
        workers = 2

    async def pace() -> None:
        pass

    runner = process_items.ProcessItems(Pool(), Square(name="square"), 1000, 4)  # type: ignore[arg-type]
    paced = PacedItems(runner, pace)
    assert paced.chunk == 1
    assert paced.width is None and runner.width is None  # the step's 4 calls, not 2


def test_a_timed_stage_sends_one_item_a_chunk() -> None:
    class Pool:
        workers = 2

    runner = process_items.ProcessItems(Pool(), Square(name="square", timeout=1.0), 1000, 4)  # type: ignore[arg-type]
    assert (runner.width, runner.cap, runner.chunk) == (4, 1, 1)  # one item per chunk, as many as the step runs


async def test_unordered_process_step_yields_every_item(procs: MultiprocessExecutionStrategy) -> None:
    out = await stream(Step(Square(name="square"), procs), ordered=False).run(range(1000))
    assert sorted(out) == [i * i for i in range(1000)]


async def test_an_error_keeps_its_type_and_remote_traceback_and_names_the_step(
        procs: MultiprocessExecutionStrategy) -> None:
    s = stream(Step(RaiseOn(name="raiser", bad=7), procs), on_error="skip")
    out = await s.run(range(10))
    assert out == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    [failed] = s.errors
    assert failed.index == 7 and failed.step == "raiser"
    assert type(failed.error) is KeyError and failed.error.args == ("no 7",)
    assert isinstance(failed.error.__cause__, RemoteError)
    assert failed.error.stage_name == "raiser"  # type: ignore[attr-defined]


async def test_a_spinning_item_is_killed_alone_with_skip(procs: MultiprocessExecutionStrategy) -> None:
    # Every item has the deadline (counted from its sending): a fresh worker's first item includes importing this
    # module (and pytest), which on a loaded machine took over 0.6 s; 5 s is a generous bound for the good items.
    s = stream(Step(SpinOn(name="spin", bad=500, timeout=5), procs), on_error="skip")
    await procs.start()
    before = set(procs.worker_pids())
    out = await asyncio.wait_for(s.run(range(1000)), 60)
    assert out == [i for i in range(1000) if i != 500], [(e.index, repr(e.error)) for e in s.errors]
    [failed] = s.errors
    assert failed.index == 500 and type(failed.error) is StageTimeoutError
    after = set(procs.worker_pids())
    assert len(after) == 2 and before - after  # the stuck worker was replaced
    assert_gone(*(before - after))


async def test_a_spinning_item_with_raise_fails_the_stream_and_leaves_no_worker() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    try:
        await strategy.start()
        pids = strategy.worker_pids()
        with pytest.raises(StageTimeoutError):
            await asyncio.wait_for(stream(Step(SpinOn(name="spin", bad=3, timeout=0.5), strategy)).run(range(20)), 60)
        pids += strategy.worker_pids()
    finally:
        strategy.close()
    assert_no_workers(pids)


async def test_a_crashing_item_with_skip_is_reported_and_the_rest_complete(
        procs: MultiprocessExecutionStrategy) -> None:
    s = stream(Step(ExitOn(name="exit", bad=42), procs), on_error="skip")
    out = await asyncio.wait_for(s.run(range(300)), 60)
    assert out == [i for i in range(300) if i != 42]
    [failed] = s.errors
    assert failed.index == 42 and type(failed.error) is WorkerCrashedError


async def test_a_crash_is_retried_on_a_fresh_worker(procs: MultiprocessExecutionStrategy, tmp_path: Any) -> None:
    stage = ExitOn(name="exit", bad=5, once_marker=str(tmp_path / "crashed"), retries=1)
    assert await asyncio.wait_for(stream(Step(stage, procs)).run(range(10)), 60) == list(range(10))


async def test_an_item_that_crashed_three_workers_is_not_retried_again(procs: MultiprocessExecutionStrategy) -> None:
    s = stream(Step(ExitOn(name="exit", bad=1, retries=10), procs), on_error="skip")
    assert await asyncio.wait_for(s.run(range(3)), 60) == [0, 2]
    [failed] = s.errors
    assert type(failed.error) is WorkerCrashedError
    assert any("crashed 3 workers" in note for note in failed.error.__notes__)


async def test_an_unpicklable_result_names_the_step_and_item_and_the_pool_stays_usable(
        procs: MultiprocessExecutionStrategy) -> None:
    with pytest.raises(TypeError, match="stage 'lock' returned a result that cannot be pickled") as info:
        await stream(Step(LockOn(name="lock", bad=4), procs)).run(range(10))
    assert any("step 'lock', item 4" in note for note in info.value.__notes__)
    assert await stream(Step(Square(name="square"), procs)).run(range(3)) == [0, 1, 4]


async def test_an_unpicklable_item_fails_alone(procs: MultiprocessExecutionStrategy) -> None:
    s = stream(Step(Square(name="square"), procs), on_error="skip")
    out = await s.run([1, 2, threading.Lock(), 3])  # type: ignore[list-item]
    assert out == [1, 4, 9]
    [failed] = s.errors
    assert failed.index == 2 and type(failed.error) is PicklingError
    assert "stream step 'square'" in str(failed.error)


async def test_pipeline_stop_during_a_process_step_leaves_no_worker() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    s = stream(Step(SpinOn(name="spin", bad=0), strategy))
    p = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, name="p", groups=[s],
                                          cycle_strategy=OnceCycleStrategy(),
                                          execution_strategy=MultithreadExecutionStrategy(1))
    loop = asyncio.get_running_loop()
    pids: list[int] = []
    loop.call_later(1.0, lambda: pids.extend(strategy.worker_pids()))
    loop.call_later(1.2, p.stop)
    try:
        assert await asyncio.wait_for(p.run(range(10)), 30) is None
        assert pids and strategy.worker_pids() == []
        assert_no_workers(pids)  # before close(): the stop itself ended them
    finally:
        strategy.close()


# -- threads --------------------------------------------------------------------------------------
class SleepOn(Stage):
    bad: int = 0

    def execute(self, item: int) -> int:
        if item == self.bad:
            time.sleep(1.0)
        return item


async def test_thread_step_timeout_and_errors_are_per_item() -> None:
    s = stream(Step(SleepOn(name="sleep", bad=2, timeout=0.2), MultithreadExecutionStrategy(2)), on_error="skip")
    assert await s.run(range(6)) == [0, 1, 3, 4, 5]
    assert type(s.errors[0].error) is StageTimeoutError and s.errors[0].index == 2


# -- faults ---------------------------------------------------------------------------------------
class Hold(Stage):
    """An async stage that holds its item for a minute (the step before a process step)."""

    async def execute(self, item: int) -> int:
        await asyncio.sleep(60)
        return item


def _pipeline(s: Stream) -> Any:
    return PipelineFactory().create_pipeline(PipeLineType.ADVANCED, name="p", groups=[s],
                                             cycle_strategy=OnceCycleStrategy(),
                                             execution_strategy=MultithreadExecutionStrategy(1))


async def test_pipeline_stop_before_a_process_step_got_an_item_leaves_no_worker() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    try:
        await strategy.start()
        pids = strategy.worker_pids()
        s = Stream(name="s", steps=[Hold(name="hold"), Step(Square(name="square"), strategy)])
        p = _pipeline(s)
        asyncio.get_running_loop().call_later(0.3, p.stop)
        assert await asyncio.wait_for(p.run(range(10)), 30) is None
        assert s.progress["square"].received == 0
        assert pids and strategy.worker_pids() == []
        assert_no_workers(pids)  # before close(): the stop itself ended them
    finally:
        strategy.close()


class FailTwice(Stage):
    """Fails the first two attempts of each item; attempts are counted in files under ``folder``."""

    folder: str = ""

    def execute(self, item: int) -> int:
        path = os.path.join(self.folder, str(item))
        attempts = int(open(path).read()) if os.path.exists(path) else 0
        with open(path, "w") as f:
            f.write(str(attempts + 1))
        if attempts < 2:
            raise RuntimeError(f"attempt {attempts + 1} of {item}")
        return item


async def test_retries_of_a_process_step_stage_run_in_the_worker(procs: MultiprocessExecutionStrategy,
                                                                 tmp_path: Any) -> None:
    stage = FailTwice(name="flaky", folder=str(tmp_path), retries=2)
    assert await stream(Step(stage, procs)).run(range(6)) == list(range(6))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {str(i): "3" for i in range(6)}
    assert stage.stats.count == 6  # one run per item, its attempts inside it


class Note(Handler):
    """Appends each hook call to a file (the hooks of a process step's stage run in the worker)."""

    path: str = ""

    def _write(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def before(self, component: Any, *args: Any, **kwargs: Any) -> None:
        self._write(f"before {args[0]}")

    async def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        self._write(f"around {args[0]}")
        return await execute(*args, **kwargs)

    def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        self._write(f"after {result}")

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        self._write(f"on_error {args[0]}")


@pytest.mark.parametrize("where", ["processes", "threads"])
async def test_handlers_of_an_off_loop_step_stage_run_per_item(procs: MultiprocessExecutionStrategy, where: str,
                                                              tmp_path: Any) -> None:
    log = tmp_path / "log"
    strategy = procs if where == "processes" else MultithreadExecutionStrategy(1)
    stage = RaiseOn(name="raiser", bad=1, handlers=[Note(path=str(log))])
    s = stream(Step(stage, strategy), on_error="skip")
    assert await s.run(range(3)) == [0, 2]
    lines = log.read_text().splitlines()
    for item, outcome in ((0, "after 0"), (1, "on_error 1"), (2, "after 2")):
        assert {f"before {item}", f"around {item}", outcome} <= set(lines)
    assert len(lines) == 9


class SlowFailOn(Stage):
    """Item ``bad`` takes longest and then fails: the items after it finish first."""

    bad: int = 2

    def execute(self, item: int) -> int:
        time.sleep(0.2 if item == self.bad else 0.001)
        if item == self.bad:
            raise ValueError(f"bad {item}")
        return item


@pytest.mark.parametrize("on_error", ["skip", "return"])
@pytest.mark.parametrize("where", ["processes", "threads"])
async def test_ordered_output_keeps_its_order_around_a_failed_item(procs: MultiprocessExecutionStrategy,
                                                                  where: str, on_error: str) -> None:
    strategy = procs if where == "processes" else MultithreadExecutionStrategy(2)
    s = stream(Step(SlowFailOn(name="slow", bad=2), strategy), on_error=on_error, maxsize=8)
    out = await asyncio.wait_for(s.run(range(20)), 30)
    rest = [i for i in range(20) if i != 2]
    if on_error == "skip":
        assert out == rest and [e.index for e in s.errors] == [2]
    else:
        assert out[:2] + out[3:] == rest and type(out[2]) is ValueError


async def test_an_exception_flowing_on_passes_a_process_step_untouched(procs: MultiprocessExecutionStrategy) -> None:
    square = Square(name="square")
    s = Stream(name="s", steps=[RaiseOn(name="raiser", bad=2), Step(square, procs)], on_error="return")
    out = await s.run(range(5))
    assert out[:2] + out[3:] == [0, 1, 9, 16] and type(out[2]) is KeyError
    assert s.progress["square"].received == 4 and square.stats.count == 4


async def _slow_source(n: int) -> Any:
    for i in range(n):
        await asyncio.sleep(0.01)
        yield i


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("where", ["processes", "threads"])
async def test_batches_off_the_loop_are_cut_from_consecutive_items(procs: MultiprocessExecutionStrategy,
                                                                  where: str, ordered: bool) -> None:
    strategy = procs if where == "processes" else MultithreadExecutionStrategy(4)
    s = stream(Step(Batch(name="batch"), strategy, batch=10, batch_timeout=60), ordered=ordered)
    out = await asyncio.wait_for(s.run(_slow_source(12)), 60)
    assert (out if ordered else sorted(out)) == [list(range(10)), [10, 11]]
    s = stream(Step(Batch(name="batch"), strategy, batch=3, batch_timeout=60), ordered=ordered)
    out = await asyncio.wait_for(s.run(_slow_source(8)), 60)
    assert (out if ordered else sorted(out)) == [[0, 1, 2], [3, 4, 5], [6, 7]]


async def test_huge_items_through_a_process_step_hold_the_source_back(procs: MultiprocessExecutionStrategy) -> None:
    maxsize, size = 4, 10 * 2**20
    pulled = 0
    ahead = []

    def source() -> Any:
        nonlocal pulled
        for _ in range(20):
            pulled += 1
            yield b"x" * size

    s = stream(Step(Blank(name="blank"), procs), maxsize=maxsize)

    async def consume() -> int:
        got = 0
        async for value in s.iterate(source()):
            assert len(value) == size
            got += 1
            ahead.append(pulled - got)
        return got

    assert await asyncio.wait_for(consume(), 60) == 20
    # Pulled but not yet consumed: the step's queue, its chunks in flight (2 per worker), the output queue,
    # and the one the feeder holds. Memory is bounded by that many items, not by the source's length.
    assert max(ahead) <= maxsize + 2 * 2 + maxsize + 1


async def test_leaving_iterate_while_a_chunk_spins_kills_its_worker(procs: MultiprocessExecutionStrategy) -> None:
    await procs.start()
    before = set(procs.worker_pids())
    s = stream(Step(SpinOn(name="spin", bad=5), procs), maxsize=4)
    outputs = s.iterate(range(100))
    assert [await outputs.__anext__() for _ in range(3)] == [0, 1, 2]
    await asyncio.sleep(0.5)  # item 5 is spinning in a worker by now
    await asyncio.wait_for(outputs.aclose(), GRACE)  # what leaving ``async for`` does
    assert eventually(lambda: any(gone(pid) for pid in before))
    assert stream_tasks() == []


_NO_GUARD_SCRIPT = '''
import asyncio
from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy


class Square(Stage):
    def execute(self, item: int) -> int:
        return item * item


# No `if __name__ == "__main__":` guard: every worker re-runs this line while it starts, and dies.
steps = [Step(Square(name="square"), MultiprocessExecutionStrategy(2))]
print(asyncio.run(Stream(name="s", steps=steps, on_error=ON_ERROR).run(range(200))))
'''


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_process_step_in_a_script_without_the_main_guard_fails_and_leaves_no_process(
        tmp_path: Any, on_error: str) -> None:
    import subprocess
    import sys
    import uuid

    script = tmp_path / "no_guard.py"
    script.write_text(_NO_GUARD_SCRIPT.replace("ON_ERROR", repr(on_error)))
    marker = uuid.uuid4().hex
    env = {**os.environ, "DYNAPIPELINE_TEST_MARKER": marker}
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired:  # the bug: the stream waited forever for a worker that never came
        _kill_marked(marker)
        raise
    if on_error == "raise":
        assert done.returncode != 0, done.stdout
        assert "WorkerCrashedError" in done.stderr and "'square'" in done.stderr, done.stderr[-2000:]
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "[]"  # every item failed (skipped): none was lost silently
    assert "bootstrapping phase" in done.stderr
    deadline = time.monotonic() + 10
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked(marker) == []


def _marked(marker: str) -> list[int]:
    """Pids of live processes started with ``marker`` in their environment (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as file:
                    if marker.encode() in file.read():
                        found.append(int(entry))
            except OSError:  # gone meanwhile, or not ours
                continue
    return found


def _kill_marked(marker: str) -> None:
    import signal

    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # already gone
            continue


class LogThenExitOn(Stage):
    """Appends each item it runs to ``path`` (a side effect), then kills its worker on item ``bad``."""

    bad: int = 0
    path: str = ""

    def execute(self, item: int) -> int:
        with open(self.path, "a") as file:
            file.write(f"{item}\n")
        if item == self.bad:
            os._exit(3)
        return item


async def test_a_crash_never_runs_again_the_items_of_its_chunk_that_had_finished(
        procs: MultiprocessExecutionStrategy, tmp_path: Any) -> None:
    log = tmp_path / "runs.txt"
    s = stream(Step(LogThenExitOn(name="crash", bad=100, path=str(log)), procs), on_error="skip")
    out = await asyncio.wait_for(s.run(range(1000)), 60)
    assert out == [i for i in range(1000) if i != 100]
    [failed] = s.errors
    assert failed.index == 100 and type(failed.error) is WorkerCrashedError
    runs = [int(line) for line in log.read_text().split()]
    assert sorted(runs) == list(range(1000)), [i for i in set(runs) if runs.count(i) > 1][:20]


class Big(Stage):
    """Returns ``size`` bytes per item: a few fill a worker's item log."""

    size: int = 0

    def execute(self, item: int) -> bytes:
        return bytes([item % 256]) * self.size


async def test_results_bigger_than_the_item_log_all_arrive(procs: MultiprocessExecutionStrategy) -> None:
    size = LOG_SIZE // 3
    out = await asyncio.wait_for(stream(Step(Big(name="big", size=size), procs)).run(range(12)), 60)
    assert [(len(b), b[0]) for b in out] == [(size, i) for i in range(12)]
    huge = await asyncio.wait_for(stream(Step(Big(name="huge", size=3 << 20), procs)).run(range(3)), 60)
    assert [(len(b), b[0]) for b in huge] == [(3 << 20, i) for i in range(3)]


class KillsOnArrival:
    """An item whose unpickling kills the worker: it dies before running any item of its chunk."""

    def __reduce__(self) -> Any:
        return (os._exit, (3,))


async def test_an_item_that_kills_its_worker_on_arrival_fails_alone(procs: MultiprocessExecutionStrategy) -> None:
    items: list[Any] = [0, 1, 2, KillsOnArrival(), 4, 5]
    out = await asyncio.wait_for(stream(Step(Square(name="square"), procs), on_error="return").run(items), 60)
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 4, 16, 25]
    assert type(out[3]) is WorkerCrashedError


class BigOrBigError(Stage):
    """Returns ``size`` bytes per item; on item ``bad`` raises an error whose message is that big."""

    size: int = 0
    bad: int = -1

    def execute(self, item: int) -> bytes:
        if item == self.bad:
            raise ValueError("x" * self.size)
        return bytes([item]) * self.size


async def test_an_error_that_does_not_fit_the_item_log_arrives_whole(procs: MultiprocessExecutionStrategy) -> None:
    size = LOG_SIZE * 2 // 5
    s = stream(Step(BigOrBigError(name="big", size=size, bad=2), procs), on_error="return")
    out = await asyncio.wait_for(s.run(range(6)), 60)
    assert [(len(b), b[0]) for i, b in enumerate(out) if i != 2] == [(size, i) for i in (0, 1, 3, 4, 5)]
    assert type(out[2]) is ValueError and str(out[2]) == "x" * size


class UnloadableOn(Stage):
    """Returns a result the parent cannot rebuild on item ``bad``, the item itself otherwise."""

    bad: int = 0

    def execute(self, item: int) -> Any:
        return Unloadable() if item == self.bad else item


async def test_each_item_of_a_chunk_whose_results_cannot_be_rebuilt_gets_its_own_error(
        procs: MultiprocessExecutionStrategy) -> None:
    s = stream(Step(UnloadableOn(name="unloadable", bad=3), procs), on_error="return")
    out = await asyncio.wait_for(s.run(range(8)), GRACE)
    failed = [x for x in out if isinstance(x, BaseException)]
    assert 3 in [i for i, x in enumerate(out) if isinstance(x, PicklingError)]
    assert len({id(x) for x in failed}) == len(failed)  # never one exception object shared by several items
    for i, x in enumerate(out):
        if isinstance(x, BaseException):
            assert type(x) is PicklingError and "'unloadable'" in str(x)
            stream_notes = [n for n in x.__notes__ if n.startswith("in stream")]
            assert stream_notes == [f"in stream 's', step 'unloadable', item {i}"]
        else:
            assert x == i


# -- shared memory ------------------------------------------------------------------------------
# Buffers of 1 MiB or more (the default threshold) travel in the sender's shared memory: numpy arrays
# and memoryviews arrive as writable views on it, bytes and bytearray are copied out once.


class Same(Stage):
    """Returns its item as it received it."""

    def execute(self, item: Any) -> Any:
        return item


class Received(Stage):
    """Returns what the worker received: (type name, received on shared memory without a copy, writable)."""

    def execute(self, item: Any) -> tuple[str, bool, bool]:
        if type(item) is memoryview:
            return "memoryview", in_shared_memory(item), not item.readonly
        if type(item) is bytes:
            return "bytes", laid_on_shared_memory(item), False
        return type(item).__name__, in_shared_memory(item), bool(getattr(item, "flags", None) and item.flags.writeable)


class HalfView(Stage):
    """Returns a view of its item: every other element (``step``) from ``start``."""

    start: int = 0
    step: int = 1

    def execute(self, item: Any) -> Any:
        return item[self.start::self.step]


class Scale(Stage):
    """Multiplies its array item by ``factor`` in place and returns it."""

    factor: int = 2

    def execute(self, item: Any) -> Any:
        item *= self.factor
        return item


class AddField(Stage):
    """Returns its item plus the stage's own (large) array ``arr``."""

    arr: Any = None

    def execute(self, item: Any) -> Any:
        return self.arr + item


class FieldReceived(Stage):
    """Returns whether its (large) array field ``arr`` arrived as a view on shared memory."""

    arr: Any = None

    def execute(self, item: Any) -> bool:
        return in_shared_memory(self.arr)


async def test_large_items_and_results_of_every_kind_round_trip_through_a_process_step(
        procs: MultiprocessExecutionStrategy) -> None:
    items = large_items()
    out = await asyncio.wait_for(stream(Step(Same(name="same"), procs)).run(items), 60)
    assert len(out) == len(items)
    for sent, got in zip(items, out, strict=True):
        assert same_value(sent, got), type(sent)
    views = [got for got in out if getattr(got, "nbytes", 0) >= MIB]
    assert len(views) == 9 and all(in_shared_memory(got) for got in views)
    assert all(got.flags.writeable for got in views if type(got) is not memoryview)
    assert procs.pool is not None and procs.pool.arena.used == 0  # every item's block came back with its reply


async def test_a_worker_receives_large_items_as_writable_views_bytes_laid_on_them_and_bytearrays_copied_out(
        procs: MultiprocessExecutionStrategy) -> None:
    import numpy as np

    items = [np.arange(MIB // 8), memoryview(bytearray(MIB)), b"x" * MIB, bytearray(MIB), np.arange(10), b"x" * 10]
    out = await asyncio.wait_for(stream(Step(Received(name="received"), procs)).run(items), 60)
    assert out == [("ndarray", True, True), ("memoryview", True, True), ("bytes", LAYS_BYTES, False),
                   ("bytearray", False, False), ("ndarray", False, True), ("bytes", False, False)]


async def test_a_pickle_buffer_arrives_as_a_byte_view_and_a_read_only_array_stays_read_only(
        procs: MultiprocessExecutionStrategy) -> None:
    import numpy as np

    frozen = np.arange(MIB // 8)
    frozen.flags.writeable = False
    items = [pickle.PickleBuffer(bytearray(b"\x07" * MIB)), pickle.PickleBuffer(b"\x08" * MIB), frozen]
    received = await asyncio.wait_for(stream(Step(Received(name="received"), procs)).run(items), 60)
    assert received == [("memoryview", True, True), ("memoryview", True, False), ("ndarray", True, False)]
    out = await asyncio.wait_for(stream(Step(Same(name="same"), procs)).run(items), 60)
    assert [type(got) for got in out] == [memoryview, memoryview, np.ndarray]
    assert out[0].format == "B" and not out[0].readonly and out[0].tobytes() == b"\x07" * MIB
    assert out[1].readonly and out[1].tobytes() == b"\x08" * MIB
    assert not out[2].flags.writeable and bool((out[2] == frozen).all())
    assert all(in_shared_memory(got) for got in out)


async def test_without_a_threshold_the_same_items_give_the_same_results_as_copies() -> None:
    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=None)
    async with closing_pool(strategy):
        items = large_items()
        out = await asyncio.wait_for(stream(Step(Same(name="same"), strategy)).run(items), 60)
        differ = [type(sent) for sent, got in zip(items, out, strict=True) if not same_value(sent, got)]
        assert differ == []  # memoryviews included (the next test)
        assert not any(in_shared_memory(got) for got in out)
        assert strategy.pool is not None and strategy.pool.arena.segments == {}


async def test_a_threshold_of_its_own_decides_what_travels_in_shared_memory() -> None:
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=4096)
    async with leaves_nothing(strategy):
        items = [np.zeros(5000, np.uint8), np.zeros(3000, np.uint8), b"x" * 5000, b"x" * 3000]
        out = await asyncio.wait_for(stream(Step(Received(name="received"), strategy)).run(items), 60)
        assert out == [("ndarray", True, True), ("ndarray", False, True),
                       ("bytes", LAYS_BYTES, False), ("bytes", False, False)]
        field = await asyncio.wait_for(
            stream(Step(FieldReceived(name="field", arr=np.zeros(5000, np.uint8)), strategy)).run([0]), 60)
        assert field == [True]
        back = await asyncio.wait_for(stream(Step(Same(name="same"), strategy)).run(items[:2]), 60)
        assert [in_shared_memory(got) for got in back] == [True, False]
        del back


async def test_shared_memory_serves_spawned_workers_too() -> None:
    """Segments travel as fds over the pipe's socket, which spawn's workers have as forkserver's do."""
    strategy = MultiprocessExecutionStrategy(2, start_method="spawn")
    async with leaves_nothing(strategy):
        items = large_items()
        out = await asyncio.wait_for(stream(Step(Same(name="same"), strategy)).run(items), 120)
        assert [same_value(sent, got) for sent, got in zip(items, out, strict=True)] == [True] * len(items)
        assert sum(in_shared_memory(got) for got in out if getattr(got, "nbytes", 0) >= MIB) == 9
        laid = await asyncio.wait_for(stream(Step(Received(name="received"), strategy)).run([b"x" * MIB]), 90)
        assert laid == [("bytes", LAYS_BYTES, False)]
        del out


async def test_a_memoryview_item_arrives_as_a_memoryview_without_shared_memory_too() -> None:
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2, shared_memory_threshold=None)
    async with closing_pool(strategy):
        items = [memoryview(np.arange(10, dtype=np.int16)), memoryview(bytearray(MIB))]
        out = await asyncio.wait_for(stream(Step(Same(name="same"), strategy)).run(items), 60)
        assert [type(got) for got in out] == [memoryview, memoryview]


@pytest.mark.parametrize(("start", "step"), [(0, 1), (1, 1), (0, 2)], ids=["itself", "a slice", "strided"])
async def test_a_result_that_aliases_its_item_arrives_right(procs: MultiprocessExecutionStrategy,
                                                           start: int, step: int) -> None:
    import numpy as np

    items = [np.arange(3 * MIB // 8, dtype=np.float64) + i for i in range(6)]
    out = await asyncio.wait_for(stream(Step(HalfView(name="view", start=start, step=step), procs)).run(items), 60)
    assert [got.tolist() == sent[start::step].tolist() for sent, got in zip(items, out, strict=True)] == [True] * 6
    assert all(in_shared_memory(got) and got.flags.writeable for got in out)
    assert procs.pool is not None and procs.pool.arena.used == 0


async def test_a_stage_that_changes_its_item_in_place_leaves_the_callers_array_alone(
        procs: MultiprocessExecutionStrategy) -> None:
    import numpy as np

    items = [np.full(MIB // 8, i, dtype=np.int64) for i in range(6)]
    out = await asyncio.wait_for(stream(Step(Scale(name="scale", factor=3), procs)).run(items), 60)
    assert [(int(got[0]), int(got[-1])) for got in out] == [(3 * i, 3 * i) for i in range(6)]
    assert [(int(sent.min()), int(sent.max())) for sent in items] == [(i, i) for i in range(6)]
    out[0][:] = -1  # the caller's result is its own too
    assert int(out[1][0]) == 3 and int(items[0][0]) == 0


async def test_a_step_stage_with_a_large_array_field(procs: MultiprocessExecutionStrategy) -> None:
    import numpy as np

    field = np.arange(MIB // 8, dtype=np.float64)
    s = stream(Step(AddField(name="add", arr=field), procs))
    out = await asyncio.wait_for(s.run(range(20)), 60)
    assert all(bool((got == field + i).all()) for i, got in enumerate(out))
    assert bool((field == np.arange(MIB // 8)).all())  # the parent's stage is untouched
    # Run again on the same warm workers: each keeps its copy of the stage, the results stay right.
    again = await asyncio.wait_for(stream(Step(AddField(name="add2", arr=field * 2), procs)).run([1, 2]), 60)
    assert bool((again[0] == 2 * field + 1).all()) and bool((again[1] == 2 * field + 2).all())
    shared = await asyncio.wait_for(stream(Step(FieldReceived(name="field", arr=field), procs)).run(range(4)), 60)
    assert shared == [True] * 4  # the field arrived as a view on the parent's shared memory, not in the pipe


async def test_results_kept_after_the_pool_closed_stay_readable_and_right() -> None:
    import numpy as np

    gc.collect()  # views of earlier tests in reference cycles hold mappings (and their fds) until collected
    fds = len(memfds())
    strategy = MultiprocessExecutionStrategy(2)
    async with closing_pool(strategy):  # checks that no worker is left
        items = [np.arange(MIB // 8, dtype=np.int64) * i for i in range(8)] + [b"\x09" * MIB]
        out = await asyncio.wait_for(stream(Step(Same(name="same"), strategy)).run(items), 60)
    assert strategy.pool is None
    assert all(bool((got == sent).all()) for sent, got in zip(items[:-1], out, strict=False))
    assert out[-1] == items[-1]
    out[0][:] = 5  # still writable memory of this process's own
    assert int(out[0].sum()) == 5 * (MIB // 8)
    del out
    gc.collect()
    assert len(memfds()) == fds  # the last view gone, the workers' segments are unmapped here


# -- shared memory: faults ----------------------------------------------------------------------
# Whatever ends the work (a killed worker, a deadline, a cancelled run, the parent killed), each item's
# block goes back to the parent's arena, no result is lost or comes twice, and after the pool closes
# nothing is left: no worker, no memfd here, no name in /dev/shm.
class KillOnArray(Stage):
    """Logs each array item's first value to ``path``, SIGKILLs its own worker on ``bad``; returns item × 2."""

    bad: int = 0
    path: str = ""

    def execute(self, item: Any) -> Any:
        value = int(item[0])
        with open(self.path, "a") as file:
            file.write(f"{value}\n")
        if value == self.bad:
            os.kill(os.getpid(), signal.SIGKILL)
        return item * 2


class SpinOnArray(Stage):
    """Spins forever on the array item whose first value is ``bad`` (only killing its worker stops it)."""

    bad: int = 0

    def execute(self, item: Any) -> Any:
        while int(item[0]) == self.bad:
            pass
        return item


class HoldFrom(Stage):
    """Returns array items whose first value is below ``first``; holds the others for a minute."""

    first: int = 0

    def execute(self, item: Any) -> Any:
        if int(item[0]) >= self.first:
            time.sleep(60)
        return item


def array_items(count: int) -> list[Any]:
    """``count`` arrays of just over 1 MiB, item i filled with i."""
    import numpy as np

    return [np.full(MIB // 8 + 1, i, dtype=np.int64) for i in range(count)]


async def test_a_worker_killed_mid_item_fails_that_item_alone_and_leaks_nothing(tmp_path: Any) -> None:
    strategy = MultiprocessExecutionStrategy(2)
    log = tmp_path / "runs"
    async with leaves_nothing(strategy) as pids:
        items = array_items(12)
        s = stream(Step(KillOnArray(name="kill", bad=5, path=str(log)), strategy), on_error="skip")
        out = await asyncio.wait_for(s.run(items), 60)
        assert [int(got[0]) for got in out] == [2 * i for i in range(12) if i != 5]
        assert all(bool((got == 2 * int(got[0] // 2)).all()) and in_shared_memory(got) for got in out)
        [failed] = s.errors
        assert failed.index == 5 and type(failed.error) is WorkerCrashedError
        pids.append(failed.error.pid)
        assert sorted(int(line) for line in log.read_text().split()) == list(range(12))  # each ran once
        assert strategy.pool is not None and strategy.pool.arena.used == 0  # the dead worker's blocks too
        del out


async def test_a_timed_out_item_fails_alone_and_leaks_nothing() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        await strategy.start()
        pids += strategy.worker_pids()
        # 5 s: a fresh worker's first item includes importing this module (see the spinning item test).
        s = stream(Step(SpinOnArray(name="spin", bad=3, timeout=5), strategy), on_error="skip")
        out = await asyncio.wait_for(s.run(array_items(8)), 60)
        assert [int(got[0]) for got in out] == [0, 1, 2, 4, 5, 6, 7]
        [failed] = s.errors
        assert failed.index == 3 and type(failed.error) is StageTimeoutError
        assert strategy.pool is not None and strategy.pool.arena.used == 0
        del out


class DiesWhenPickled:
    """A result whose pickling kills the worker that made it: the worker dies sending its reply."""

    def __reduce__(self) -> Any:
        os._exit(3)


class DoubleOrDieSending(Stage):
    """Returns its array item doubled; on the item whose first value is ``bad``, with a ``DiesWhenPickled`` after it
    (the doubled array is in the worker's shared memory by then)."""

    bad: int = 0

    def execute(self, item: Any) -> Any:
        doubled = item * 2
        return (doubled, DiesWhenPickled()) if int(item[0]) == self.bad else doubled


async def test_a_worker_killed_while_receiving_a_large_item_fails_that_item_alone_and_leaks_nothing() -> None:
    """The item's array is attached in the worker, then unpickling its second half kills the worker."""
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        items: list[Any] = array_items(8)
        items[3] = (items[3], KillsOnArrival())
        s = stream(Step(Same(name="same"), strategy), on_error="skip")
        out = await asyncio.wait_for(s.run(items), 60)
        assert [int(got[0]) for got in out] == [0, 1, 2, 4, 5, 6, 7]
        assert all(bool((got == int(got[0])).all()) and in_shared_memory(got) for got in out)
        [failed] = s.errors
        assert failed.index == 3 and type(failed.error) is WorkerCrashedError
        pids.append(failed.error.pid)
        assert strategy.pool is not None and strategy.pool.arena.used == 0  # the dead worker's blocks came back
        del out


async def test_a_worker_killed_while_sending_a_large_result_fails_that_item_alone_and_leaks_nothing() -> None:
    """The worker dies pickling its reply, its result's array already in its own shared memory: nothing of that
    worker's memory stays mapped here once the results that came from it are gone."""
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        s = stream(Step(DoubleOrDieSending(name="double", bad=5), strategy), on_error="skip")
        out = await asyncio.wait_for(s.run(array_items(10)), 60)
        assert [int(got[0]) for got in out] == [2 * i for i in range(10) if i != 5]
        assert all(bool((got == int(got[0])).all()) and in_shared_memory(got) for got in out)
        [failed] = s.errors
        assert failed.index == 5 and type(failed.error) is WorkerCrashedError
        pids.append(failed.error.pid)
        assert strategy.pool is not None and strategy.pool.arena.used == 0
        del out


async def test_many_large_items_reuse_the_same_segments_both_ways() -> None:
    """Blocks are freed and allocated again in the same segments: 200 items of 2 MiB each way leave the parent's
    arena and its mappings of the workers' segments as they were after the first 40."""
    import numpy as np

    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy):
        await strategy.start()  # both workers up: the first items map both workers' segments here
        s = stream(Step(Scale(name="scale", factor=2), strategy), maxsize=4)
        sums = []

        async def some(count: int) -> tuple[int, int]:
            async with s.iterate(np.full(MIB // 4, i, dtype=np.int64) for i in range(count)) as outputs:
                async for got in outputs:
                    assert in_shared_memory(got)
                    sums.append(int(got[0]))
            pool = strategy.pool
            assert pool is not None
            return len(pool.arena.segments), len(memfds())

        first = await asyncio.wait_for(some(40), 60)
        after = await asyncio.wait_for(some(200), 90)
        assert sums == [2 * i for i in range(40)] + [2 * i for i in range(200)]
        assert after == first, (first, after)


async def _all_busy(strategy: MultiprocessExecutionStrategy) -> None:
    """Until every worker of the strategy's pool holds a job."""
    def busy() -> bool:
        pool = strategy.pool
        return pool is not None and len(pool.workers) == 2 and all(w.job is not None for w in pool.workers)

    assert await eventually_async(busy)


async def test_leaving_iterate_with_large_items_in_flight_gives_their_blocks_back() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        s = stream(Step(HoldFrom(name="hold", first=3), strategy), maxsize=4)
        async with s.iterate(array_items(10)) as outputs:
            got = [int((await outputs.__anext__())[0]) for _ in range(3)]
            await _all_busy(strategy)  # items 3 and 4 are held in the workers now
            pool = strategy.pool
            assert pool is not None and pool.arena.used > 0
            pids += strategy.worker_pids()
        assert got == [0, 1, 2]
        assert await eventually_async(lambda: pool.arena.used == 0), pool.arena.used
        assert stream_tasks() == []


async def test_cancelling_a_run_with_large_items_in_flight_gives_their_blocks_back() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        s = stream(Step(HoldFrom(name="hold", first=0), strategy), maxsize=4)
        task = asyncio.ensure_future(s.run(array_items(10)))
        await _all_busy(strategy)
        pool = strategy.pool
        assert pool is not None and pool.arena.used > 0
        pids += strategy.worker_pids()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually_async(lambda: pool.arena.used == 0), pool.arena.used
        assert stream_tasks() == []


_KILLED_PARENT_SCRIPT = """
import asyncio
import os
import sys
import time

import numpy as np

from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy


class Hold(Stage):
    folder: str

    def execute(self, item):
        open(os.path.join(self.folder, str(os.getpid())), "w").close()  # this worker holds an item
        time.sleep(120)
        return item


async def main(folder):
    strategy = MultiprocessExecutionStrategy(2)
    items = (np.full((1 << 20) // 8 + 1, i) for i in range(20))
    task = asyncio.ensure_future(Stream(name="s", steps=[Step(Hold(name="hold", folder=folder), strategy)]).run(items))
    while len(os.listdir(folder)) < 2:
        await asyncio.sleep(0.02)
    print(" ".join(str(w.pid) for w in strategy.pool.workers), flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
"""


def test_a_killed_parent_with_large_items_in_flight_leaves_no_worker_and_nothing_in_dev_shm(tmp_path: Any,
                                                                                         child_env: Any) -> None:
    import signal
    import subprocess
    import sys
    import uuid

    script = tmp_path / "killed_parent.py"
    script.write_text(_KILLED_PARENT_SCRIPT)
    folder = tmp_path / "holding"
    folder.mkdir()
    marker = uuid.uuid4().hex
    names = dev_shm()
    child = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True,
                             cwd=tmp_path, env={**child_env, "DYNAPIPELINE_TEST_MARKER": marker})
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # once both workers hold an item
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and sorted(pids) == sorted(int(name) for name in os.listdir(folder)), line
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(GRACE) == -signal.SIGKILL
        assert_gone(*pids)
        # Every process it started (workers, fork server, resource tracker) is gone too.
        assert eventually(lambda: _marked(marker) == []), _marked(marker)
        assert eventually(lambda: not dev_shm() - names), dev_shm() - names  # heap files are unlinked at once
    finally:
        _kill_marked(marker)
        child.kill()
        child.wait()


# -- recycling (max_tasks_per_worker, max_memory_per_worker) ----------------------------------------------------


async def test_recycling_every_ten_items_runs_each_item_once_and_in_order(tmp_path: Any) -> None:
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=10)
    async with closing_pool(strategy):
        out = await stream(Step(RunLog(name="log", path=str(tmp_path / "runs")), strategy)).run(range(100))
        assert out == list(range(100))
        runs = run_log(tmp_path / "runs")
        assert sorted(int(item) for item, _ in runs) == list(range(100))  # each item ran exactly once
        per_pid = Counter(pid for _, pid in runs)
        assert max(per_pid.values()) <= 10 and len(per_pid) >= 10
        # A second run on the same pool: the workers go on being recycled, and nothing was counted a crash.
        assert await stream(Step(Pid(name="pid"), strategy)).run(range(30)) is not None
    assert_gone(*per_pid)


async def test_recycling_a_timed_stage_one_item_per_chunk() -> None:
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=3)
    async with closing_pool(strategy):
        out = await stream(Step(Pid(name="pid", timeout=30), strategy)).run(range(20))
        assert [args for _, _, args, _ in out] == [(item,) for item in range(20)]
        assert max(Counter(pid for _, pid, _, _ in out).values()) <= 3


async def test_a_leaking_stage_stays_under_the_memory_limit() -> None:
    # The case: 20 MB leaked per item, a 300 MB limit, 200 items (~2 s here).
    limit, leak = 300 * 10**6, 20 << 20
    strategy = MultiprocessExecutionStrategy(2, max_memory_per_worker="300MB")
    async with closing_pool(strategy):
        out = await stream(Step(Leak(name="leak", mb=20), strategy)).run(range(200))
        assert [item for item, _, _ in out] == list(range(200))  # no failure, in order
        # Each worker's RSS after each item: the worker ends the item that passes the limit and is replaced.
        assert max(rss for _, _, rss in out) <= limit + leak + (4 << 20)
        per_pid = Counter(pid for _, pid, _ in out)
        assert len(per_pid) >= 200 // 15  # at most ~300/20 items fit in a worker
    assert_gone(*per_pid)


async def test_a_retiring_worker_during_a_cancelled_run_leaves_nothing_behind() -> None:
    strategy = MultiprocessExecutionStrategy(2, max_tasks_per_worker=1)
    async with leaves_nothing(strategy) as pids:
        task = asyncio.ensure_future(stream(Step(Pid(name="pid"), strategy)).run(range(10_000)))
        assert await eventually_async(lambda: len(strategy.worker_pids()) == 2 and task.done() is False)
        await asyncio.sleep(0.3)  # workers retire and are replaced meanwhile
        pids += strategy.worker_pids()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pids += strategy.worker_pids()
    assert_no_workers(pids)

