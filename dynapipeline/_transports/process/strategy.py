"""Work that goes to other processes: ``MultiprocessExecutionStrategy``.

Where things live (``process/`` unless named; ``_remote/`` is shared with Dask)::

    strategy.MultiprocessExecutionStrategy.dispatch
        │ _remote.planning.plan_batches ─► jobs.Job per batch ─► _remote.pickling.dumps_batch (checked first)
        ▼
    pool.ProcessPool ── queue ──► handle.Worker ══ pipe: Call ══► worker.main (child)
        ▲                                      ◄═ pipe: Reply ══    │ _remote.batch.run_call rebuilds and runs
        │ handle.Outcome (Replied / TimedOut / Crashed / Closed)    │ the components (_remote.rebuild, calling)
    jobs.collect ─► results, timing, or the stage's error (_remote.replies)

How it works:

- **Start method**: ``forkserver`` where available (Linux, macOS), else ``spawn``.
  ``fork`` is never used: it copies the parent's threads' locks mid-state. The
  fork server preloads ``dynapipeline._transports.process.worker`` (pydantic, cloudpickle
  and the model are imported once, in the server), so a worker starts in tens
  of ms instead of the ~0.3 s of a fresh ``spawn`` interpreter. Pass
  ``start_method="spawn"`` to choose spawn. As with any ``multiprocessing`` pool,
  the main script must guard its entry point with ``if __name__ == "__main__":``.
- **Warm pool**: started at the first dispatch, reused across cycles and runs,
  closed by ``close()``/``await aclose()``/``async with strategy:`` or at
  interpreter exit. Cancellation (Ctrl-C included) kills only the workers
  running the cancelled work (they are replaced lazily, at the next dispatch).
  ``pipeline.stop()`` does the same and then closes the pool too, unless
  another run sharing the strategy still has work in it, so a stopped run
  leaves no worker behind; the next dispatch starts a new pool.
- **Transport**: one pipe per worker, watched by the event loop (``add_reader``),
  so the parent always knows which worker runs which stage. Components go in
  batches (sized from their past run times: tiny stages travel together, heavy
  ones one per worker) pickled with cloudpickle; classes defined in ``__main__``
  or locally are pickled once and sent once per worker (see ``_remote.pickling``).
- **Results and timing** come back in component order; ``start_time``,
  ``end_time``, ``execution_time`` and stats are copied onto the parent's
  objects. Other attribute changes a stage makes in the worker are *not*
  copied back. The context is a read-only snapshot in the worker
  (writes raise ``ContextLockedError``).
- **Errors**: a stage's exception is re-raised with its own type and args,
  ``__cause__`` a ``RemoteError`` holding the worker's traceback, with
  ``stage_name`` and ``worker_pid`` attributes and a note. The first error ends
  the dispatch: batches not yet sent are dropped; batches already running
  finish in their workers and their results are discarded.
- **return_exceptions=True**: every component travels in its own job (no
  batching), so a failure - its own exception, its ``StageTimeoutError``, the
  ``WorkerCrashedError`` of its worker - takes only its own place in the results
  and every other component runs to completion. Many tiny components then cost
  one message each instead of sharing batches. A component that cannot be
  pickled still fails the dispatch before anything is sent.
- **Drain**: ``stop(drain=True)`` reaches groups running in workers: the parent
  polls the run's drain flag (every 20 ms, only while groups are out) and sets
  a flag shared with the worker, which runs the groups under its own run
  control mirroring it, so their cycle loops end after the current cycle.
- **Timeout**: a Stage with ``timeout`` travels alone and the parent arms a
  deadline (``timeout`` × attempts + retry delays + 0.1 s grace); at the deadline
  the worker is terminated (then killed) and replaced, and
  ``StageTimeoutError`` is raised. An ``async def`` stage usually times out
  inside the worker first (same error, the worker survives).
  *Limitation*: the parent arms deadlines only for Stages shipped on their own.
  A timed stage inside a shipped StageGroup relies on the worker: an ``async
  def`` stage times out there, but a plain ``def`` stage that never returns
  cannot be interrupted in the worker (it blocks the group's loop), so the run
  hangs until ``stop()`` (which kills that worker). No parent deadline is
  derived for groups, since their length (cycles, intervals, handlers,
  untimed stages, infinite loops) has no safe upper bound.
- **Crash**: a worker that dies (signal, ``os._exit``, OOM kill) while it holds
  a job raises ``WorkerCrashedError`` (stage, pid, exit code/signal) and is
  replaced. A worker that dies before it read its job (killed while idle) fails
  nothing: the job goes to another worker. Workers killed by a ``stop()`` are
  replaced at once when other runs' jobs are queued, later otherwise.
- **A stage that cannot be rebuilt in the worker** (its ``model_post_init``
  raises there) raises its own exception for that stage, as an error in
  ``execute`` would; the worker survives and the other components of its batch
  run. Classes and functions of a module the worker cannot import by name (loaded
  from a file path) travel by value. A result that cannot be rebuilt in the
  parent raises ``PicklingError`` naming its stage, the unpickling error as cause.
- **No orphans**: workers ignore SIGINT (the parent handles Ctrl-C and stops
  them) and exit as soon as the parent process dies (SIGTERM, SIGKILL). On
  Linux with ``forkserver`` this holds whatever the stage is doing, even a long
  C call holding the GIL: the kernel's parent-death signal ties each worker to
  the fork server, which exits with the parent. With ``spawn`` and on macOS a
  watcher thread in the worker does it, which waits while a stage holds the GIL.
- **Recycling** (``max_tasks_per_worker``, ``max_memory_per_worker``): a worker
  retires after that many stage runs (a stream step's items count one each), or
  after the item during which its RSS passed the limit; it says so in its reply,
  exits, and a fresh worker takes its place. No item fails or runs twice because
  of it (see ``recycling``).
- **What outlives ``close()``**: multiprocessing's fork server and resource
  tracker (one each per parent process, shared by every pool) stay until the
  parent process exits; they then exit on their own.

Components may be Stages or StageGroups (a pipeline whose execution strategy is
processes ships whole groups, with their asyncio strategies). Workers are
daemonic processes, so a stage cannot start processes of its own.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import time
from typing import Any

from dynapipeline._engine import current_control, current_trace, tracing
from dynapipeline._model.checks import check_bytes, check_int, check_max_workers
from dynapipeline._model.group import Container
from dynapipeline._model.strategy import ItemRunner
from dynapipeline._transports._remote.messages import Recycling
from dynapipeline._transports._remote.pickling import pack_batch
from dynapipeline._transports._remote.planning import deadline, plan_batches, plan_singles
from dynapipeline._transports.offloop import OffLoopStrategy
from dynapipeline._transports.process.children import default_start_method
from dynapipeline._transports.process.items import ProcessItems
from dynapipeline._transports.process.jobs import Dispatch, Job, report_jobs, watch_drain
from dynapipeline._transports.process.pool import ProcessPool
from dynapipeline._transports.process.recycling import cap_batches
from dynapipeline.errors import ConfigurationError

__all__ = ["MultiprocessExecutionStrategy"]

logger = logging.getLogger("dynapipeline")


SHARED_MEMORY_THRESHOLD = 1 << 20  # joblib's max_nbytes is 1 MB too: below it, the pipe is as fast


class MultiprocessExecutionStrategy(OffLoopStrategy):
    """Runs each component in a warm pool of worker processes; results in component order.

    ``max_workers``: pool size (default ``os.cpu_count()``). ``start_method``:
    ``"forkserver"`` (default where available) or ``"spawn"``.
    ``shared_memory_threshold``: buffers of this many bytes or more (numpy arrays,
    bytes, bytearray, memoryview) in what travels to and from the workers are
    written once into shared memory instead of the pipe (default 1 MiB; ``None``:
    never). See docs/threads-and-processes.md for what the receiving side gets.
    ``return_exceptions=True``: a member's ``Exception`` (its ``StageTimeoutError``
    or ``WorkerCrashedError`` included) is returned in its place and the others
    run to completion; members then travel one per message.
    ``max_tasks_per_worker``: a worker is replaced after this many stage runs
    (a stream step's items count one each; default None: never).
    ``max_memory_per_worker``: bytes (an int, or ``"300MB"``, ``"1.5GB"``,
    ``"512MiB"``): a worker whose RSS is above it after an item is replaced
    (default None: never checked). See the module docstring for batching,
    errors, timeouts, crashes, recycling and shutdown.
    """

    ships_members = True

    def __init__(self, max_workers: int | None = None, *, start_method: str | None = None,
                 return_exceptions: bool = False,
                 shared_memory_threshold: int | None = SHARED_MEMORY_THRESHOLD,
                 max_tasks_per_worker: int | None = None, max_memory_per_worker: int | str | None = None) -> None:
        self.max_workers = check_max_workers("MultiprocessExecutionStrategy", max_workers)
        self.max_tasks_per_worker: int | None = check_int(
            "MultiprocessExecutionStrategy", "max_tasks_per_worker", max_tasks_per_worker, least=1, optional=True)
        self.max_memory_per_worker: int | None = check_bytes(
            "MultiprocessExecutionStrategy", "max_memory_per_worker", max_memory_per_worker, optional=True)
        self.shared_memory_threshold: int | None = check_int(
            "MultiprocessExecutionStrategy", "shared_memory_threshold", shared_memory_threshold, least=1,
            optional=True)
        super().__init__(return_exceptions=return_exceptions)
        self._plan = plan_singles if return_exceptions else plan_batches
        method = start_method or default_start_method()
        if method not in ("forkserver", "spawn") or method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                "MultiprocessExecutionStrategy: field 'start_method' must be 'forkserver' or 'spawn' "
                f"(available here: {multiprocessing.get_all_start_methods()}), got {start_method!r}"
            )
        self.start_method = method
        self._pool: ProcessPool | None = None
        self._stop_key = ("dynapipeline.MultiprocessExecutionStrategy.stopped", id(self))

    @property
    def workers(self) -> int:
        return self.max_workers or os.cpu_count() or 1

    @property
    def pool(self) -> ProcessPool | None:
        """The live pool (None before the first dispatch and after close)."""
        return self._pool

    def worker_pids(self) -> list[int]:
        """Pids of the pool's current workers."""
        return [w.pid for w in self._pool.workers] if self._pool is not None else []

    async def ensure_pool(self, loop: Any) -> ProcessPool:
        pool = self._pool
        if pool is None or pool.closed:
            pool = self._pool = self._new_pool()
        if not pool.workers and not pool.started and pool.starting is None:
            # A cold start can take ~0.5 s (fork server, imports): keep the event loop free meanwhile.
            pool.begin_start(loop)
        if pool.starting is not None:
            await asyncio.shield(pool.starting)
        pool.bind(loop)
        pool.fill()
        return pool

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        """As a stream step: chunks of items on this pool, two chunks in flight per worker (one runs, one waits)."""
        width = self.workers * 2
        return width, ProcessItems(self, stage, maxsize, width)

    async def start(self) -> None:
        """Start the pool now and wait until every worker is ready (optional; dispatch starts it lazily)."""
        pool = await self.ensure_pool(asyncio.get_running_loop())
        while not pool.closed and not all(w.ready for w in pool.workers):
            await asyncio.sleep(0.005)

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        dispatch = Dispatch(done, n, args, kwargs, self.return_exceptions)
        jobs = []
        control = run = current_control.get()
        if control is not None and not any(isinstance(r.owner, Container) for r in runners):
            control = None  # only groups cycle, so only they care about a drain
        sink = current_trace.get() if tracing() else None
        pool = self._pool
        if pool is None or pool.closed:
            pool = self._pool = self._new_pool()  # not started yet: its shared memory takes the large buffers
        if run is not None and (key := (self._stop_key, pool)) not in run.cleanups:
            # However a stop finds this run (in a dispatch, or between two), no worker of this pool outlives it.
            run.add_cleanup(key, functools.partial(self._close_after, run, pool))
        # Everything is pickled (and checked) before a worker is started or anything is sent.
        try:
            for indices in cap_batches(self._plan(runners, self.workers), self.max_tasks_per_worker):
                members = [runners[i] for i in indices]
                packed_from = time.perf_counter()
                packed, cids = pack_batch([r.owner for r in members], args, kwargs, pool.threshold, pool.arena)
                limit = deadline(members[0].owner) if len(members) == 1 else None
                job = Job(dispatch, indices, members, packed.data, cids, limit, control)
                job.blocks = list(packed.blocks)
                job.packed = (packed_from, time.perf_counter())
                job.sink = sink
                jobs.append(job)
        except BaseException:
            pool.arena.free([block for job in jobs for block in job.blocks])
            raise
        try:
            if pool.loop is not loop or not pool.workers:
                packed_for = pool
                packed_for.reserved += 1  # its jobs are packed: another run's stop must not take it for idle
                try:
                    pool = await self.ensure_pool(loop)
                finally:
                    packed_for.reserved -= 1
            elif len(pool.workers) < pool.max_workers:
                pool.fill()
            dispatch.pending = len(jobs)
            pool.submit(jobs)
            if control is not None:
                watch_drain(loop, control, jobs, done)
            await done
        except asyncio.CancelledError:
            # stop() or cancellation: only the workers running *this* dispatch's jobs are killed (the
            # pool may serve other runs meanwhile); they are replaced lazily. After pipeline.stop() the
            # pool closes unless another run still uses it; the next dispatch starts a new one.
            pool.withdraw(jobs, kill_running=True)
            self.close_if_stopped(in_use=not pool.idle)
            raise
        except BaseException as error:
            pool.withdraw(jobs, kill_running=False)
            report_jobs(jobs, error)
            raise
        report_jobs(jobs, None)
        return dispatch.values

    def _close_after(self, run: Any, pool: ProcessPool) -> None:
        """At the end of a pipeline run that dispatched to ``pool``: close it if ``stop()`` ended the run and no
        other run uses it (the cancelled dispatch does the same, but a stop between two dispatches cancels none).
        A drained run (``stop(drain=True)``) keeps its workers, as its dispatches finished normally."""
        if run.stopped and not run.draining and pool is self._pool and pool.idle:
            self.close()

    def _new_pool(self) -> ProcessPool:
        recycling = None
        if self.max_tasks_per_worker is not None or self.max_memory_per_worker is not None:
            recycling = Recycling(max_tasks=self.max_tasks_per_worker, max_memory=self.max_memory_per_worker)
        return ProcessPool(self.workers, self.start_method, self.shared_memory_threshold, recycling)

    def close(self) -> None:
        """Stop the pool's workers (idle ones exit, busy ones are terminated)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the pool at every ``async with`` exit, nested or not (the next dispatch starts a new one)."""
        await super().aclose()
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("MultiprocessExecutionStrategy cannot be sent to a worker process (a worker cannot "
                        "start processes); give groups that run inside processes another strategy")

    def __del__(self) -> None:
        pool = self.__dict__.get("_pool")
        if pool is not None:
            try:
                pool.close()
            except Exception as error:  # noqa: BLE001 - __del__ must not raise
                logger.debug("closing a process pool from __del__: %r", error)

    def __repr__(self) -> str:
        extra = ", return_exceptions=True" if self.return_exceptions else ""
        if self.shared_memory_threshold != SHARED_MEMORY_THRESHOLD:
            extra += f", shared_memory_threshold={self.shared_memory_threshold}"
        if self.max_tasks_per_worker is not None:
            extra += f", max_tasks_per_worker={self.max_tasks_per_worker}"
        if self.max_memory_per_worker is not None:
            extra += f", max_memory_per_worker={self.max_memory_per_worker}"
        return (f"MultiprocessExecutionStrategy(max_workers={self.max_workers}, "
                f"start_method={self.start_method!r}{extra})")
