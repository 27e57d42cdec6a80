"""Work that goes to threads: ``MultithreadExecutionStrategy`` and its pool of threads, each with its own loop.

- Each component runs in a worker thread. An ``async def execute`` runs on that
  thread's own event loop, created once per thread and reused across calls
  (the same kind as the caller's loop: uvloop or asyncio). A plain ``def
  execute`` is called directly, with no event loop in the thread.
- Pool lifetime: inside ``async with strategy:`` the pool lives until the block
  exits; otherwise, during a pipeline run, it lives for that run and is shut
  down when the run ends (however it ends); outside one, for the outermost run
  (a stage's, group's or cycle strategy's ``run()``, one ``execute()`` call).
- The first error cancels the siblings (like the concurrent strategy) and
  propagates; with ``return_exceptions=True`` a member's ``Exception`` (a
  ``StageTimeoutError`` at its deadline included) is returned in its place and
  the others run to completion; ``stop()``/cancellation cancels the coroutines running on worker
  loops and waits (up to 1 s) for them to unwind; the end-of-run shutdown waits
  (up to 1 s more) for the threads to exit. Neither wait blocks the caller's
  event loop. A stage that blocks its thread in a call that ignores
  cancellation (``time.sleep`` in an ``async def`` stage, a plain ``def``
  stage) is abandoned: its daemon thread can outlive the run, runs on until
  the call returns, and then exits.
- Timeout: an ``async def`` stage is cancelled on its thread's loop at the
  deadline. A plain ``def`` stage cannot be interrupted: the caller gets
  ``StageTimeoutError`` at the deadline, the thread runs on until the call
  returns, and its result is discarded. Worker threads are daemon threads, so
  such a runaway call never blocks interpreter exit.
- ``contextvars`` of the caller (the current run included) are visible in the threads.
- Recycling: with ``max_tasks_per_worker=N`` a thread exits after N jobs (a
  stream step's items count one each), between jobs: it closes its event loop
  and a new thread (a new loop) takes its place. ``max_memory_per_worker`` is
  refused: memory (RSS) is per process, not per thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from dynapipeline._engine import EPOCH_OFFSET, current_control, current_trace, tracing
from dynapipeline._loops import loop_factory, loop_kind_of
from dynapipeline._model.checks import check_int, check_max_workers
from dynapipeline._model.component import Stage, runner_of
from dynapipeline._model.lifecycle import current_scope
from dynapipeline._model.strategy import ItemRunner, rebuild_strategy
from dynapipeline._transports.calling import drive, needs_loop, note_place, time_limit
from dynapipeline._transports.offloop import OffLoopStrategy, Results, merge_wait_ship
from dynapipeline.errors import ConfigurationError, StageTimeoutError

__all__ = ["MultithreadExecutionStrategy", "ThreadPool"]

_counter = 0


def _loop_factory(loop: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    return loop_factory(loop_kind_of(loop))


def _sync_deadline(owner: Any) -> float | None:
    """How long the caller waits for a plain-def timed stage (all attempts), or None."""
    if not isinstance(owner, Stage) or asyncio.iscoroutinefunction(owner.execute):
        return None  # not a stage, or cancelled on its own loop by the runner
    return time_limit(owner)


class _Job:
    """One component for one thread; reports back to the caller's loop."""

    __slots__ = ("index", "runner", "args", "kwargs", "batch", "context", "lock", "task", "loop",
                 "cancelled", "running", "done", "submitted", "started", "ended")

    def __init__(self, index: int, runner: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 batch: _Batch, context: contextvars.Context) -> None:
        self.index = index
        self.runner = runner
        self.args = args
        self.kwargs = kwargs
        self.batch = batch
        self.context = context
        self.lock = threading.Lock()
        self.task: Any = None
        self.loop: Any = None
        self.cancelled = False
        self.running = False  # an async run is in progress on a worker loop
        self.done = False
        # perf_counter readings: handed to the pool, taken by a thread, finished there (0.0: not yet).
        self.submitted = 0.0
        self.started = 0.0
        self.ended = 0.0

    def cancel(self) -> None:
        """Cancel the job: not started, it never runs; running on a loop, its task is cancelled."""
        with self.lock:
            self.cancelled = True
            task, loop = self.task, self.loop
        if task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass

    def report(self, ok: bool, value: Any) -> None:
        self.ended = time.perf_counter()
        try:
            self.batch.loop.call_soon_threadsafe(self.batch.on_done, self, ok, value)
        except RuntimeError:
            pass  # the caller's loop is gone: the result is discarded


class _Batch(Results):
    """The jobs of one dispatch: results in order; completes when all are in or one failed."""

    __slots__ = ("loop", "timers", "sink")

    def __init__(self, loop: Any, n: int, keeps_errors: bool, done: asyncio.Future[None]) -> None:
        super().__init__(done, n, keeps_errors)
        self.loop = loop
        self.timers: list[Any] = []
        self.sink: Any = None  # the TraceSink of the dispatching context, when it traces

    def on_done(self, job: _Job, ok: bool, value: Any) -> None:
        if job.done:
            return
        job.done = True
        if job.ended:
            self.split(job)
        if self.future is None or self.future.done():
            return
        if ok:
            self.put(job.index, value)
        elif not self.fail(job.index, value):
            self.part_done()

    def split(self, job: _Job) -> None:
        """Add the job's waiting (for a thread) and shipping (its result back to this loop) to its runner."""
        runner = job.runner
        merge_wait_ship(runner, job.started - job.submitted, time.perf_counter() - job.ended, self.sink,
                        job.submitted, None, runner.start_time - EPOCH_OFFSET)
        note_place(runner, "thread")

    def arm(self, job: _Job, seconds: float) -> None:
        """Start a plain-def timed stage's deadline (called when its thread starts it)."""
        if not job.done:
            self.timers.append(self.loop.call_later(seconds, self.on_deadline, job))

    def on_deadline(self, job: _Job) -> None:
        owner = job.runner.owner
        self.on_done(job, False, StageTimeoutError(job.runner.name, owner.timeout))

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()


# Which pool the current thread serves: a dispatch from inside one of a pool's own
# threads must not queue behind the very threads that wait for it.
_on_thread = threading.local()


class ThreadPool:
    """Up to ``max_workers`` daemon threads, started on demand, each with a lazily created event loop.

    ``max_tasks``: a thread is replaced by a new one after this many jobs (None: never).
    """

    def __init__(self, max_workers: int, loop_factory: Any, max_tasks: int | None = None) -> None:
        self.max_workers = max_workers
        self.max_tasks = max_tasks
        self._lock = threading.Lock()  # guards threads/closed between the caller, retiring threads and shutdown
        self.loop_factory = loop_factory
        self.threads: list[threading.Thread] = []
        self.closed = False
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._busy_sync: set[int] = set()
        self._running: set[_Job] = set()

    def submit(self, job: _Job) -> None:
        if self.closed:
            raise RuntimeError("the thread pool is shut down")
        self._queue.put(job)
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if len(self.threads) < self.max_workers:
                self.threads.append(self._start_thread())

    def _start_thread(self) -> threading.Thread:
        global _counter
        _counter += 1
        thread = threading.Thread(target=self._work, name=f"dynapipeline-thread-{_counter}", daemon=True)
        thread.start()
        return thread

    def _retire(self) -> bool:
        """This thread did its ``max_tasks`` jobs: a new thread takes its place (False when shut down)."""
        with self._lock:
            if self.closed:
                return False
            me = threading.current_thread()
            self.threads = [self._start_thread() if t is me else t for t in self.threads]
        return True

    def _work(self) -> None:
        _on_thread.pool = self
        loop = None
        tasks = 0
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    break
                loop = self._run(job, loop)
                tasks += job.started > 0.0  # it ran (a job cancelled before it started did not)
                if self.max_tasks is not None and tasks >= self.max_tasks and self._retire():
                    self._idle.release()  # for its replacement, idle from the start
                    break
                self._idle.release()
        finally:
            if loop is not None:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()

    def _run(self, job: _Job, loop: Any) -> Any:
        if job.cancelled:
            return loop
        job.started = time.perf_counter()
        runner = job.runner
        owner = runner.owner
        deadline = _sync_deadline(owner)
        if deadline is not None:
            try:
                job.batch.loop.call_soon_threadsafe(job.batch.arm, job, deadline)
            except RuntimeError:
                return loop
        self._running.add(job)
        try:
            if not needs_loop(owner):
                ident = threading.get_ident()
                self._busy_sync.add(ident)
                try:
                    value = job.context.run(drive, runner.run(job.args, job.kwargs))
                except BaseException as error:  # noqa: B902 - handed to the caller
                    job.report(False, error)
                else:
                    job.report(True, value)
                finally:
                    self._busy_sync.discard(ident)
                return loop
            if loop is None:
                loop = self.loop_factory()
            task = job.context.run(loop.create_task, runner.run(job.args, job.kwargs))
            with job.lock:
                job.task = task
                job.loop = loop
                job.running = True
                if job.cancelled:
                    task.cancel()
            try:
                value = loop.run_until_complete(task)
            except BaseException as error:  # noqa: B902 - cancellation included
                job.report(False, error)
            else:
                job.report(True, value)
            finally:
                job.running = False
            return loop
        finally:
            self._running.discard(job)

    def _begin_shutdown(self) -> list[threading.Thread]:
        """Cancel running coroutines and ask idle threads to exit; the threads worth waiting for."""
        with self._lock:
            if self.closed:
                return []
            self.closed = True
            threads = list(self.threads)
        for job in list(self._running):
            job.cancel()
        for _ in threads:
            self._queue.put(None)
        return [t for t in threads if t.ident not in self._busy_sync]

    def shutdown(self) -> None:
        """Cancel running coroutines, let idle threads exit (joined up to 1 s), abandon threads stuck in a call."""
        deadline = time.monotonic() + 1.0
        for thread in self._begin_shutdown():
            thread.join(max(0.0, deadline - time.monotonic()))

    async def ashutdown(self) -> None:
        """``shutdown()`` that waits (up to 1 s) for the threads without blocking the event loop.

        A thread blocked in a call that ignores cancellation (``time.sleep`` in an
        ``async def`` stage, a plain ``def`` stage) is abandoned: it is a daemon
        thread, runs on until the call returns and then exits.
        """
        threads = self._begin_shutdown()
        deadline = time.monotonic() + 1.0
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class _ThreadItems(ItemRunner):
    """A stream step on threads: each item is one dispatch of the stage; the pool is held for the step's run."""

    def __init__(self, strategy: MultithreadExecutionStrategy, stage: Stage) -> None:
        self.strategy = strategy
        self.runners = (runner_of(stage),)

    async def open(self) -> None:
        await self.strategy.__aenter__()

    async def call(self, values: list[Any]) -> list[tuple[bool, Any]]:
        try:
            return [(True, (await self.strategy.dispatch(self.runners, (values[0],), {}))[0])]
        except Exception as error:
            return [(False, error)]

    async def aclose(self) -> None:
        await self.strategy.aclose()


class MultithreadExecutionStrategy(OffLoopStrategy):
    """Runs each component in a worker thread (``async def`` on the thread's own reused loop).

    ``max_workers``: threads in the pool (default ``min(32, cpu_count + 4)``).
    ``max_tasks_per_worker``: a thread (and its event loop) is replaced after
    this many jobs (default None: never). ``max_memory_per_worker`` is refused
    (memory is per process: use ``MultiprocessExecutionStrategy``).
    ``return_exceptions=True``: a member's ``Exception`` (its ``StageTimeoutError``
    included) is returned in its place and the others run to completion; its
    handlers' ``on_error`` have run in the worker thread.
    See the module docstring for pool lifetime, cancellation and timeouts.
    """

    def __init__(self, max_workers: int | None = None, *, return_exceptions: bool = False,
                 max_tasks_per_worker: int | None = None, max_memory_per_worker: Any = None) -> None:
        self.max_workers = check_max_workers("MultithreadExecutionStrategy", max_workers)
        self.max_tasks_per_worker: int | None = check_int(
            "MultithreadExecutionStrategy", "max_tasks_per_worker", max_tasks_per_worker, least=1, optional=True)
        if max_memory_per_worker is not None:
            raise ConfigurationError(
                "MultithreadExecutionStrategy: field 'max_memory_per_worker' is not supported on threads (memory "
                "is per process, shared by every thread): use MultiprocessExecutionStrategy(max_memory_per_worker="
                f"...), got {max_memory_per_worker!r}")
        super().__init__(return_exceptions=return_exceptions)
        self._held: ThreadPool | None = None  # inside `async with`
        self._run_pools: dict[int, tuple[Any, ThreadPool]] = {}
        # Nested thread strategies dispatch from several worker threads at once: one pool per run.
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self.max_workers or min(32, (os.cpu_count() or 1) + 4)

    def _pool_for(self, loop: Any) -> tuple[ThreadPool, bool]:
        """The pool to use and whether this dispatch owns it (and so shuts it down)."""
        mine = getattr(_on_thread, "pool", None)
        if mine is not None:
            with self._lock:
                nested = mine is self._held or any(mine is p for _, p in self._run_pools.values())
        if mine is not None and nested:
            # Nested use of this same instance from one of its pool's threads: that pool may be
            # full of dispatches waiting for this one, so the nested dispatch gets its own pool.
            return ThreadPool(self.workers, _loop_factory(loop), self.max_tasks_per_worker), True
        if self.held:
            with self._lock:
                if self._held is None or self._held.closed:
                    self._held = ThreadPool(self.workers, _loop_factory(loop), self.max_tasks_per_worker)
                return self._held, False
        # One pool per run (so stages set up once per thread, not on fresh threads at each dispatch).
        run: Any = current_control.get()
        scope = current_scope.get()
        if run is None and scope is not None and scope.thread == threading.get_ident():
            run = scope
        if run is not None:
            key = id(run)
            with self._lock:
                entry = self._run_pools.get(key)
                if entry is None or entry[1].closed:
                    pool = ThreadPool(self.workers, _loop_factory(loop), self.max_tasks_per_worker)
                    self._run_pools[key] = (run, pool)
                    ends = scope.add_cleanup if scope is not None and run is scope else self.end_with_run
                    ends(lambda: self._end_run(key))
                    return pool, False
                return entry[1], False
        return ThreadPool(self.workers, _loop_factory(loop), self.max_tasks_per_worker), True

    async def _end_run(self, key: int) -> None:
        with self._lock:
            entry = self._run_pools.pop(key, None)
        if entry is not None:
            await entry[1].ashutdown()

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        loop = asyncio.get_running_loop()
        pool, owned = self._pool_for(loop)
        done: asyncio.Future[None] = loop.create_future()
        batch = _Batch(loop, n, self.return_exceptions, done)
        if tracing():
            batch.sink = current_trace.get()
        context = contextvars.copy_context()
        jobs = [_Job(i, r, args, kwargs, batch, context.copy()) for i, r in enumerate(runners)]
        try:
            for job in jobs:
                job.submitted = time.perf_counter()
                pool.submit(job)
            await done
        except BaseException:
            for job in jobs:
                job.cancel()
            # Let cancelled coroutines on worker loops unwind (plain-def calls are abandoned).
            end = time.monotonic() + 1.0
            while any(job.running for job in jobs) and time.monotonic() < end:
                await asyncio.sleep(0.002)
            raise
        finally:
            batch.cancel_timers()
            if owned:
                await pool.ashutdown()
        return batch.values

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        """As a stream step: one item per call, as many calls at once as the pool has threads."""
        return self.workers, _ThreadItems(self, stage)

    async def release_held(self) -> None:
        """Shut down the pool held by ``async with``."""
        if self._held is not None:
            held, self._held = self._held, None
            await held.ashutdown()

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_strategy, (type(self), (self.max_workers,), {
            "return_exceptions": self.return_exceptions, "max_tasks_per_worker": self.max_tasks_per_worker}))

    def __repr__(self) -> str:
        extra = ", return_exceptions=True" if self.return_exceptions else ""
        if self.max_tasks_per_worker is not None:
            extra += f", max_tasks_per_worker={self.max_tasks_per_worker}"
        return f"MultithreadExecutionStrategy(max_workers={self.max_workers}{extra})"
