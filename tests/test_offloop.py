"""The off-loop contract, said once for every strategy that runs work off the caller's loop.

Threads (``MultithreadExecutionStrategy``), processes (``MultiprocessExecutionStrategy``) and Dask
(``DaskExecutionStrategy`` on a 2-worker LocalCluster) each give:

- results in component order, args and kwargs passed, each run off the caller's thread (and, remote, process);
- a stage's error with its own type and args (remote: its stage, worker pid, note and remote traceback);
- timeouts (``StageTimeoutError`` naming the stage), for an ``async def`` and a plain ``def`` stage;
- crashes (``WorkerCrashedError``, and the strategy heals);
- ``stop()`` ends the run at once, starts nothing queued and leaves no worker behind;
- ``return_exceptions=True``: each failure in its place, the others run to completion;
- ``async with`` reuse, timing and stats copied back, whole groups and drain, the flag checks.

Where a backend cannot do a case, the case's parametrization leaves it out and ``NOT_FOR`` says why
(``test_each_case_runs_on_every_backend_or_says_why`` holds the module to it). Backend-only
behaviour stays in test_threads.py, test_process.py and test_dask.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import (
    GRACE,
    Die,
    Hangs,
    KeyErrorStage,
    Marker,
    MarksError,
    Pid,
    RefusesWorkers,
    Sleepy,
    Tick,
    ValueErrorStage,
    Where,
    WhereAsync,
    assert_gone,
    assert_no_workers_async,
    eventually,
    group,
    healed,
    pipeline,
    pool_children,
    wait_no_threads_async,
)

from dynapipeline import PipeLineType, Stage
from dynapipeline.errors import (
    ConfigurationError,
    ContextLockedError,
    PicklingError,
    RemoteError,
    StageTimeoutError,
    WorkerCrashedError,
)
from dynapipeline.execution import (
    DaskExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy

BACKENDS = ("threads", "processes", "dask")
REMOTE = ("processes", "dask")

NOT_FOR: dict[str, dict[str, str]] = {
    "test_a_crash_raises_worker_crashed_and_the_strategy_heals": {
        "threads": "a thread cannot crash alone: os._exit in a thread ends the caller's process"},
    "test_with_return_exceptions_a_crash_takes_only_its_own_place": {
        "threads": "a thread cannot crash alone: os._exit in a thread ends the caller's process"},
    "test_an_unpicklable_stage_fails_before_anything_is_sent": {
        "threads": "threads share the caller's objects: nothing is pickled"},
    "test_a_stage_that_cannot_be_rebuilt_in_a_worker_fails_alone": {
        "threads": "threads share the caller's objects: nothing is rebuilt"},
    "test_in_an_advanced_pipeline_the_context_is_a_read_only_snapshot": {
        "threads": "threads share the caller's context object: there is no snapshot"},
}


def only(*names: str) -> list[str]:
    """The backends a case runs on: its NOT_FOR entry says why each one left out is."""
    return list(names)


@dataclass
class Backend:
    """One off-loop strategy kind, with what a contract test needs to know of where work ran."""

    name: str
    build: Callable[..., Any]
    cluster: Any = None
    client: Any = None
    made: list[Any] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return self.name != "threads"

    @property
    def strategy_name(self) -> str:
        return type(self.make()).__name__

    def make(self, **kwargs: Any) -> Any:
        """A strategy of this kind (2 workers) with ``kwargs``; closed after the test."""
        strategy = self.build(**kwargs)
        self.made.append(strategy)
        return strategy

    def off_the_loop(self, pid: int, ident: int) -> bool:
        """Work that reports ``pid`` and thread ``ident`` ran off the caller's thread (and process, remote)."""
        if self.remote:
            return pid != os.getpid()
        return pid == os.getpid() and ident != threading.get_ident()

    async def worker_pids(self, strategy: Any) -> set[int]:
        """The processes that run this strategy's work now."""
        if self.name == "processes":
            return set(strategy.worker_pids())
        if self.name == "dask":
            return set((await self.client.run(os.getpid)).values())
        return {os.getpid()}

    async def heal(self) -> None:
        """After a crash: wait for the cluster to be whole again (a process pool heals at its next dispatch)."""
        if self.name == "dask":
            await healed(self.cluster, self.client)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each backend in turn; afterwards its strategies are closed and no worker of theirs is left."""
    if request.param == "threads":
        threads = Backend("threads", lambda **kw: MultithreadExecutionStrategy(2, **kw))
        try:
            yield threads
        finally:
            for strategy in threads.made:
                await strategy.aclose()
        await wait_no_threads_async()
    elif request.param == "processes":
        made = Backend("processes", lambda **kw: MultiprocessExecutionStrategy(2, **kw))
        try:
            yield made
        finally:
            pids = [pid for strategy in made.made for pid in strategy.worker_pids()]
            for strategy in made.made:
                await strategy.aclose()
        await assert_no_workers_async(pids)
    else:
        from distributed import Client

        cluster = request.getfixturevalue("cluster")
        async with Client(cluster.scheduler_address, asynchronous=True, set_as_default=False) as client:
            await healed(cluster, client)
            made = Backend("dask", lambda **kw: DaskExecutionStrategy(client=client, **kw), cluster, client)
            yield made
            for strategy in made.made:
                await strategy.aclose()
            assert client.status == "running"  # a given client is never closed by the strategy


def test_each_case_runs_on_every_backend_or_says_why() -> None:
    import inspect
    import sys

    module = sys.modules[__name__]
    cases = {name: fn for name, fn in vars(module).items()
             if name.startswith("test_") and "backend" in inspect.signature(fn).parameters}
    assert set(NOT_FOR) <= set(cases), set(NOT_FOR) - set(cases)
    for name, fn in cases.items():
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize" and m.args[0] == "backend"]
        ran = set(marks[0].args[1]) if marks else set(BACKENDS)
        reasons = NOT_FOR.get(name, {})
        assert set(BACKENDS) - ran == set(reasons), f"{name} leaves out {set(BACKENDS) - ran}, NOT_FOR says {reasons}"
        assert all(reason.strip() for reason in reasons.values())


# -- results ---------------------------------------------------------------------------------------------

async def test_results_come_in_component_order_with_their_args_each_run_off_the_loop(backend):
    strategy = backend.make()
    stages = [WhereAsync(name=f"a{i}") if i % 2 else Where(name=f"s{i}") for i in range(40)]
    results = await strategy.execute(stages, 7, key="v")
    assert [r[0] for r in results] == [s.name for s in stages]
    assert all(r[3] == (7,) and r[4] == {"key": "v"} for r in results)
    assert all(backend.off_the_loop(r[1], r[2]) for r in results)
    assert {r[1] for r in results} <= await backend.worker_pids(strategy)


async def test_a_local_class_its_closure_and_a_lambda_reach_the_workers(backend):
    offset = 10

    class Local(Stage):
        fn: Any = None

        async def execute(self, x: int) -> tuple[int, int, int]:
            await asyncio.sleep(0)
            return self.fn(x) + offset, os.getpid(), threading.get_ident()

    stages = [Local(name="a", fn=lambda v: v * 2), Local(name="b", fn=lambda v: v * 3)]
    results = await backend.make().execute(stages, 5)
    assert [r[0] for r in results] == [20, 25]
    assert all(backend.off_the_loop(r[1], r[2]) for r in results)


async def test_timing_and_stats_are_copied_onto_the_callers_stages(backend):
    strategy = backend.make()
    stages = [Sleepy(name="a", seconds=0.05), Sleepy(name="b")]
    before = time.time()
    await strategy.execute(stages)
    await strategy.execute(stages)
    a = stages[0]
    assert a.stats.count == 2 and stages[1].stats.count == 2
    assert before <= a.start_time < a.end_time <= time.time()
    assert 0.04 <= a.execution_time < 5
    assert a.stats.total >= 0.08


async def test_a_whole_group_runs_in_one_place_when_the_pipeline_uses_the_strategy(backend):
    inner = group([Where(name="a"), Where(name="b")])
    ((a, b),) = await pipeline([inner], execution=backend.make()).run()
    assert (a[1], a[2]) == (b[1], b[2]) and backend.off_the_loop(a[1], a[2])
    assert inner.stats.count == 1 and inner.stages[0].stats.count == 1 and inner.stages[1].stats.count == 1


async def test_async_with_keeps_the_workers_across_dispatches(backend):
    async with backend.make() as strategy:
        first = await strategy.execute([Where(name="a"), Where(name="b")])
        places = await backend.worker_pids(strategy)
        second = await strategy.execute([WhereAsync(name="c")])
        assert [r[0] for r in first + second] == ["a", "b", "c"]
        assert {r[1] for r in first + second} <= places
        assert await backend.worker_pids(strategy) == places
    # Leaving the block releases what it held (a given Dask client stays open: the fixture checks it).
    if backend.name == "processes":
        assert strategy.pool is None
        await assert_no_workers_async(sorted(places))
    elif backend.name == "threads":
        await wait_no_threads_async()
    assert [r[0] for r in await strategy.execute([Where(name="d")])] == ["d"]  # and the strategy is still usable


# -- errors ------------------------------------------------------------------------------------------------

class Custom(Exception):
    """An exception class of the test's own, with several args."""


class Boom(Stage):
    def execute(self) -> None:
        raise Custom("bad", 42)


async def test_a_stage_error_keeps_its_type_and_args_and_names_its_stage(backend):
    strategy = backend.make()
    with pytest.raises(Custom) as info:
        await strategy.execute([Pid(name="fine"), Boom(name="boom")])
    error = info.value
    assert type(error) is Custom and error.args == ("bad", 42)
    if backend.remote:
        assert error.stage_name == "boom"
        assert error.worker_pid in await backend.worker_pids(strategy)
        assert any("boom" in note for note in error.__notes__)
        assert isinstance(error.__cause__, RemoteError)
        assert "in execute" in error.__cause__.traceback_text and "Custom" in error.__cause__.traceback_text
    with pytest.raises(ValueError, match="builtin"):
        await strategy.execute([ValueErrorStage(name="builtin")])
    assert [r[0] for r in await strategy.execute([Pid(name="after")])] == ["after"]  # still usable


@pytest.mark.parametrize("stage", [Sleepy(name="slow", seconds=5.0, timeout=0.2),
                                   Hangs(name="slow", seconds=30.0, timeout=0.2)], ids=["plain-def", "async-def"])
async def test_a_timed_stage_raises_at_its_deadline_naming_the_stage(backend, stage):
    strategy = backend.make()
    begun = time.monotonic()
    with pytest.raises(StageTimeoutError) as info:
        await strategy.execute([stage, Pid(name="quick")])
    assert time.monotonic() - begun < 4  # did not wait for the stage's 5 s or 30 s (generous for a busy machine)
    assert info.value.stage == "slow"
    if backend.name == "dask":  # processes name the stage in ``stage`` only when the parent's deadline fires
        assert info.value.stage_name == "slow"
    assert [r[0] for r in await strategy.execute([Pid(name="a"), Pid(name="b")])] == ["a", "b"]


@pytest.mark.parametrize("backend", only(*REMOTE), indirect=True)
async def test_a_crash_raises_worker_crashed_and_the_strategy_heals(backend):
    strategy = backend.make()
    with pytest.raises(WorkerCrashedError) as info:
        await asyncio.wait_for(strategy.execute([Die(name="die")]), 30)
    error = info.value
    assert not isinstance(error, StageTimeoutError)
    assert error.stage == "die"
    if backend.name == "processes":
        assert error.exitcode == 3
        assert_gone(error.pid)
    else:
        from distributed import KilledWorker

        assert isinstance(error.__cause__, KilledWorker) and error.stage_name == "die"
    await backend.heal()
    assert [r[0] for r in await strategy.execute([Pid(name="a"), Pid(name="b")])] == ["a", "b"]
    if backend.name == "processes":
        assert len(strategy.worker_pids()) == 2


@pytest.mark.parametrize("backend", only(*REMOTE), indirect=True)
@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_an_unpicklable_stage_fails_before_anything_is_sent(backend, tmp_path, return_exceptions):
    class Touch(Stage):
        path: str

        def execute(self) -> None:
            open(self.path, "w").close()

    class Reader(Stage):
        lock: Any = None

        def execute(self) -> None:
            return None

    strategy = backend.make(return_exceptions=return_exceptions)
    marker = tmp_path / "ran"
    with pytest.raises(PicklingError, match=r"stage 'reader' field 'lock': RLock"):
        await strategy.execute([Touch(name="touch", path=str(marker)), Reader(name="reader", lock=threading.RLock())])
    assert not marker.exists()  # nothing was sent
    nested = Reader(name="reader", lock={"inner": [1, threading.Lock()]})
    with pytest.raises(PicklingError, match=r"stage 'reader' field 'lock' key 'inner'\[1\]: lock"):
        await strategy.execute([nested])
    assert [r[0] for r in await strategy.execute([Pid(name="ok")])] == ["ok"]  # the strategy is unaffected


@pytest.mark.parametrize("backend", only(*REMOTE), indirect=True)
@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_a_stage_that_cannot_be_rebuilt_in_a_worker_fails_alone(backend, return_exceptions):
    strategy = backend.make(return_exceptions=return_exceptions)
    await strategy.execute([Pid(name="warm")])
    before = await backend.worker_pids(strategy)
    stages: list[Stage] = [Pid(name=f"ok{i}") for i in range(40)]  # batched: the others of its batch still run
    stages[9] = RefusesWorkers(name="refuses")
    if return_exceptions:
        results = await strategy.execute(stages)
        error = results[9]
        assert isinstance(error, LookupError)
        assert [r[0] for i, r in enumerate(results) if i != 9] == [s.name for i, s in enumerate(stages) if i != 9]
    else:
        with pytest.raises(LookupError, match="refuses cannot live in a worker") as info:
            await strategy.execute(stages)
        error = info.value
    assert error.stage_name == "refuses"
    assert isinstance(error.__cause__, RemoteError) and "model_post_init" in error.__cause__.traceback_text
    assert await backend.worker_pids(strategy) == before  # no worker died
    assert [r[0] for r in await strategy.execute([Pid(name="a"), Pid(name="b")])] == ["a", "b"]


@pytest.mark.parametrize("backend", only(*REMOTE), indirect=True)
async def test_in_an_advanced_pipeline_the_context_is_a_read_only_snapshot(backend):
    class Reads(Stage):
        def execute(self) -> Any:
            return self.context["k"]

    class Writes(Stage):
        def execute(self) -> Any:
            self.context["k"] = 2

    strategy = backend.make()
    assert await pipeline([group([Reads(name="r")], strategy)], context={"k": 1}).run() == [[1]]
    writing = pipeline([group([Writes(name="w")], strategy)], context={"k": 1})
    with pytest.raises(ContextLockedError, match="read-only"):
        await writing.run()
    assert writing.context["k"] == 1


# -- return_exceptions=True ------------------------------------------------------------------------------------

async def test_with_return_exceptions_each_failure_takes_its_place_and_the_others_complete(backend):
    stages: list[Stage] = [Where(name=f"s{i}") for i in range(8)]
    stages[1] = KeyErrorStage(name="key", handlers=[MarksError()])
    stages[4] = Sleepy(name="slow", seconds=0.2)  # still running when both failures are in
    stages[5] = ValueErrorStage(name="value", handlers=[MarksError()])
    results = await backend.make(return_exceptions=True).execute(stages)
    assert isinstance(results[1], KeyError) and results[1].args == ("key",)
    assert isinstance(results[5], ValueError) and results[5].args == ("value",)
    assert results[4] == "slow"  # the failures did not cancel the slow sibling
    assert [r[0] for i, r in enumerate(results) if i not in (1, 4, 5)] == [
        s.name for i, s in enumerate(stages) if i not in (1, 4, 5)]
    for error, name in ((results[1], "key"), (results[5], "value")):
        assert backend.off_the_loop(*error.handled_in)  # on_error ran where the member ran
        if backend.remote:
            assert error.stage_name == name and isinstance(error.__cause__, RemoteError)
            assert error.handled_in[0] == error.worker_pid
    assert all(s.stats.count == 1 for s in stages)


async def test_with_return_exceptions_a_timeout_takes_only_its_own_place(backend):
    strategy = backend.make(return_exceptions=True)
    begun = time.monotonic()
    results = await strategy.execute([Pid(name="ok1"), Hangs(name="hangs", timeout=0.2), Pid(name="ok2")])
    assert time.monotonic() - begun < 20  # well under the stage's 30 s (generous for a busy machine)
    assert isinstance(results[1], StageTimeoutError) and results[1].stage == "hangs"
    assert results[0][0] == "ok1" and results[2][0] == "ok2"


@pytest.mark.parametrize("backend", only(*REMOTE), indirect=True)
async def test_with_return_exceptions_a_crash_takes_only_its_own_place(backend):
    strategy = backend.make(return_exceptions=True)
    (crash,) = await asyncio.wait_for(strategy.execute([Die(name="die")]), 30)
    assert isinstance(crash, WorkerCrashedError) and crash.stage == "die"
    if backend.name == "processes":
        assert crash.exitcode == 3
        assert_gone(crash.pid)
    else:
        from distributed import KilledWorker

        assert isinstance(crash.__cause__, KilledWorker) and crash.stage_name == "die"
    await backend.heal()
    assert [r[0] for r in await strategy.execute([Pid(name="again")])] == ["again"]  # healed


async def test_bad_flags_are_rejected_naming_the_strategy_and_the_field(backend):
    name = backend.strategy_name
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigurationError, match=f"{name}: field 'return_exceptions' must be a bool"):
            backend.build(return_exceptions=bad)
    assert "return_exceptions=True" in repr(backend.make(return_exceptions=True))


def test_a_simple_pipeline_rejects_the_strategy_and_an_advanced_one_takes_it(backend):
    name = backend.strategy_name
    strategy = backend.make()
    at_group = [group([Pid(name="s")], strategy, name="workers")]
    with pytest.raises(ConfigurationError, match=rf"StageGroup 'workers'.*{name}.*ADVANCED"):
        pipeline(at_group, kind=PipeLineType.SIMPLE)
    with pytest.raises(ConfigurationError, match=rf"field 'execution_strategy' is {name}.*ADVANCED"):
        pipeline([group([Pid(name="s")])], strategy, kind=PipeLineType.SIMPLE)
    assert pipeline(at_group) is not None
    assert pipeline([group([Pid(name="s")])], strategy) is not None
    if backend.name == "processes":
        assert strategy.worker_pids() == [] and eventually(lambda: not pool_children())  # building starts no pool


# -- stop and drain ----------------------------------------------------------------------------------------------

async def test_stop_ends_the_run_at_once_starts_nothing_queued_and_leaves_no_worker(backend, tmp_path):
    strategy = backend.make()
    # Timed stages travel one per job on processes: two run, four wait in the queue.
    stages = [Marker(name=f"m{i}", folder=str(tmp_path), seconds=6.0, timeout=60) for i in range(6)]
    before = set(await backend.client.run_on_scheduler(_our_tasks)) if backend.name == "dask" else set()
    pids: list[int] = []
    run = pipeline([group(stages, strategy)])
    task = asyncio.ensure_future(run.run())
    while len(list(tmp_path.iterdir())) < 2:
        if backend.name == "processes":
            pids = strategy.worker_pids() or pids
        await asyncio.sleep(0.01)
    begun = time.monotonic()
    run.stop()
    assert await asyncio.wait_for(task, GRACE) is None
    assert time.monotonic() - begun < 5  # did not wait for the 6 s stages (generous for a busy machine)
    if backend.name == "processes":
        await assert_no_workers_async(pids)  # the stopped run's workers are gone, the idle ones too
        assert strategy.pool is None
    elif backend.name == "dask":
        async def left() -> dict[str, str]:
            return {key: state for key, state in (await backend.client.run_on_scheduler(_our_tasks)).items()
                    if key not in before}

        # The two running tasks end; then the scheduler holds none of ours, so none can start any more.
        deadline = time.monotonic() + GRACE
        while await left() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await left() == {}
    else:
        await wait_no_threads_async()  # the abandoned calls returned and their threads exited
    started = sorted(p.name for p in tmp_path.iterdir())
    assert len(started) == 2, started  # the queued ones never started
    assert [r[0] for r in await strategy.execute([Pid(name="again")])] == ["again"]  # a new run starts afresh


def _our_tasks(dask_scheduler: Any) -> dict[str, str]:
    """On the scheduler: the state of each task of a group's dispatch it holds."""
    return {str(key): task.state for key, task in dask_scheduler.tasks.items()
            if "run_components_task" in str(key)}


@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_drain_reaches_a_group_running_off_the_loop(backend, tmp_path, return_exceptions):
    strategy = backend.make(return_exceptions=return_exceptions)
    marker = tmp_path / "ticked"
    # 4,000 cycles of ~5 ms: without the drain the group would run for 20 s or more.
    cycling = group([Tick(name="t", marker=str(marker))], SequentialExecutionStrategy(), LoopCycleStrategy(4000),
                    name="cycling")
    run = pipeline([cycling], strategy)
    task = asyncio.ensure_future(run.run())
    while not marker.exists():  # the group cycles off the loop (a loaded machine may take a while to get there)
        await asyncio.sleep(0.01)
    pids = await backend.worker_pids(strategy)
    run.stop(drain=True)
    assert await asyncio.wait_for(task, GRACE) is None
    assert 0 < cycling.stages[0].stats.count < 4000
    assert await backend.worker_pids(strategy) == pids  # drained, not killed: the workers stay
