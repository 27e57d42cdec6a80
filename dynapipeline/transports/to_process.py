"""Work that goes to other processes: ``MultiprocessExecutionStrategy`` and its warm worker pool.

How it works:

- **Start method**: ``forkserver`` where available (Linux, macOS), else ``spawn``.
  ``fork`` is never used: it copies the parent's threads' locks mid-state. The
  fork server preloads ``dynapipeline.transports.worker`` (pydantic, cloudpickle
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
  or locally are pickled once and sent once per worker (see ``pickling``).
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
- **What outlives ``close()``**: multiprocessing's fork server and resource
  tracker (one each per parent process, shared by every pool) stay until the
  parent process exits; they then exit on their own.

Components may be Stages or StageGroups (a pipeline whose execution strategy is
processes ships whole groups, with their asyncio strategies). Workers are
daemonic processes, so a stage cannot start processes of its own.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import multiprocessing
import os
import pickle
import threading
import time
import weakref
from collections import deque
from typing import Any

from dynapipeline.engine import current_control
from dynapipeline.errors import (
    ConfigurationError,
    PicklingError,
    RemoteError,
    StageTimeoutError,
    WorkerCrashedError,
)
from dynapipeline.model.component import Stage
from dynapipeline.model.group import Container
from dynapipeline.model.strategy import ExecutionStrategy
from dynapipeline.transports import worker as worker_module
from dynapipeline.transports.pickling import REGISTRY, dumps_batch
from dynapipeline.transports.worker import SENT, Call

logger = logging.getLogger("dynapipeline")

__all__ = ["MultiprocessExecutionStrategy", "ProcessPool", "default_start_method"]

_WORKER_MODULE = worker_module.__name__
_GRACE = 0.1              # seconds added to a timed stage's deadline in the parent
_PER_STAGE_COST = 20e-6   # estimated IPC + rebuild cost of one component (seconds)
_SMALL_BATCH = 1e-3       # estimated work below this goes to one worker in one message
_CHUNKS_PER_WORKER = 4
_DRAIN_POLL = 0.02        # seconds between checks for a drain while groups run in workers
_LIVE_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def default_start_method() -> str:
    """``forkserver`` when the platform has it, else ``spawn`` (never ``fork``)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _context(method: str) -> Any:
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        if _WORKER_MODULE not in preload:
            ctx.set_forkserver_preload(preload + [_WORKER_MODULE])
    return ctx


class _Job:
    """One batch of components for one worker, and where its outcome goes."""

    __slots__ = ("batch", "indices", "runners", "payload", "cids", "deadline", "worker", "done", "control")

    def __init__(self, batch: _Batch, indices: list[int], runners: list[Any], payload: bytes,
                 cids: set[int], deadline: float | None, control: Any = None) -> None:
        self.batch = batch
        self.indices = indices
        self.runners = runners
        self.payload = payload
        self.cids = cids
        self.deadline = deadline
        self.worker: _Worker | None = None
        self.done = False
        self.control = control  # the run's RunControl, when the job ships groups (drain reaches them)

    def finish(self, outcome: tuple[Any, ...]) -> None:
        if not self.done:
            self.done = True
            self.batch.on_job(self, outcome)


class _Batch:
    """The jobs of one dispatch: fills the results, completes its future when all are in or one failed."""

    def __init__(self, future: asyncio.Future[Any], n: int, args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None) -> None:
        self.future = future
        self.args = args  # kept to re-send a job's components one by one (see ProcessPool._split)
        self.kwargs = kwargs or {}
        self.results: list[Any] = [None] * n
        self.pending = 0
        self.error: BaseException | None = None

    def on_job(self, job: _Job, outcome: tuple[Any, ...]) -> None:
        self.pending -= 1
        if self.future.done():
            return
        try:
            _collect(job, outcome, self.results)
        except BaseException as error:  # noqa: B902 - handed to the waiting dispatch
            self.future.set_exception(error)
            return
        if self.pending == 0:
            self.future.set_result(None)


def _apply_timings(runner: Any, timings: list[tuple[Any, ...]]) -> None:
    owner = runner.owner
    if len(timings) == 1:
        runner.copy_timing(*timings[0])
        return
    for component, timing in zip(owner.iter_components(), timings, strict=False):
        component.__pydantic_private__["_runner"].copy_timing(*timing)


def _collect(job: _Job, outcome: tuple[Any, ...], results: list[Any]) -> None:
    """Store a job's results and timing; raise its error, if any, the way the contract says."""
    kind = outcome[0]
    if kind == "reply":
        reply, pid = outcome[1], outcome[2]
        for position, timing in enumerate(reply.timings):
            _apply_timings(job.runners[position], timing)
        for position, value in enumerate(reply.values):
            try:
                results[job.indices[position]] = pickle.loads(value)
            except Exception as error:
                name = job.runners[position].name
                failure = PicklingError(f"stage {name!r} returned a result that cannot be rebuilt in the parent "
                                        f"process ({type(error).__name__}: {error})")
                _tag(failure, name, pid)
                raise failure from error
        if reply.failed_at < 0:
            return
        name = job.runners[reply.failed_at].name
        error: BaseException | None = None
        if reply.error:
            try:
                error = pickle.loads(reply.error)
            except Exception as unloadable:
                logger.debug("the error of stage %r cannot be rebuilt here (%r); raising its text", name,
                             unloadable)
        if error is None:
            error = RemoteError(reply.traceback or reply.text)
            raise_from = None
        else:
            raise_from = RemoteError(reply.traceback) if reply.traceback else None
        if reply.unloadable:
            # Raised while the worker rebuilt the component: the innermost stage it was rebuilding is named.
            name = getattr(error, "stage_name", None) or name
        _tag(error, name, pid)
        raise error from raise_from
    if kind == "timeout":
        runner = job.runners[0]
        raise StageTimeoutError(runner.name, runner.owner.timeout)
    if kind == "crash":
        position, pid, exitcode = outcome[1], outcome[2], outcome[3]
        runner = job.runners[position if 0 <= position < len(job.runners) else 0]
        raise WorkerCrashedError(runner.name, pid, exitcode)
    if kind == "closed":
        raise WorkerCrashedError(job.runners[0].name, outcome[1], None)
    raise RuntimeError(f"unknown outcome {kind!r}")  # pragma: no cover


def _tag(error: BaseException, stage: str, pid: int | None) -> None:
    try:
        error.stage_name = stage  # type: ignore[attr-defined]
        error.worker_pid = pid  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - exceptions with __slots__
        pass
    error.add_note(f"raised in stage {stage!r}, in worker process pid {pid}")


class _Worker:
    """One worker process, its pipe, and what it is doing."""

    __slots__ = ("proc", "conn", "fd", "current", "drain", "pid", "ready", "job", "known", "timer", "loop")

    def __init__(self, proc: Any, conn: Any, current: Any, drain: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.fd = conn.fileno()
        self.current = current
        self.drain = drain  # set by the parent when the run of the job it runs drains
        self.pid: int = proc.pid
        self.ready = False
        self.job: _Job | None = None
        self.known: set[int] = set()
        self.timer: Any = None
        self.loop: Any = None


class ProcessPool:
    """A warm pool of worker processes served by one event loop at a time."""

    def __init__(self, max_workers: int, start_method: str) -> None:
        self.max_workers = max_workers
        self.start_method = start_method
        self._ctx = _context(start_method)
        self.workers: list[_Worker] = []
        self.queue: deque[_Job] = deque()
        self.loop: Any = None
        self.closed = False
        self.started: list[_Worker] = []  # started off the loop, not adopted yet
        self.starting: Any = None  # the off-loop start in progress (a future)
        self._pending = 0  # workers the off-loop start has still to start
        self._lock = threading.Lock()  # guards closed/started/_pending against the off-loop start
        self._start_done = threading.Event()
        self._start_done.set()
        self._failed_starts = 0
        self._counter = 0
        _LIVE_POOLS.add(self)

    # -- life cycle ---------------------------------------------------------------------------
    def bind(self, loop: Any) -> None:
        """Serve this pool from ``loop`` (re-registers the pipes when the loop changed since last use)."""
        if self.loop is loop:
            return
        self.loop = loop
        for w in self.workers:
            self._watch(w)
        self.fill()

    def fill(self) -> None:
        """Adopt workers started off the loop, then start more up to ``max_workers``."""
        with self._lock:
            started, self.started = self.started, []
        for w in started:
            self._adopt(w)
        while not self.closed and len(self.workers) + len(self.started) + self._pending < self.max_workers:
            self._adopt(self._start_worker())

    def begin_start(self, loop: Any) -> Any:
        """Start the missing workers in a thread (a cold fork server takes ~0.5 s); the future of that start."""
        if self.starting is None:
            count = self.max_workers - len(self.workers) - len(self.started)
            with self._lock:
                self._pending = count
                self._start_done.clear()
            future = self.starting = loop.run_in_executor(None, self.start_off_loop, count)

            def done(_: Any) -> None:
                if self.starting is future:
                    self.starting = None

            future.add_done_callback(done)
        return self.starting

    def start_off_loop(self, count: int) -> None:
        """Start ``count`` workers (run in a thread); a worker started after ``close()`` is stopped at once."""
        try:
            for _ in range(count):
                if self.closed:
                    return
                w = self._start_worker()
                with self._lock:
                    self._pending = max(0, self._pending - 1)
                    if not self.closed:
                        self.started.append(w)
                        continue
                _stop_process(w)
        finally:
            with self._lock:
                self._pending = 0
            self._start_done.set()

    def _start_worker(self) -> _Worker:
        ctx = self._ctx
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        current = ctx.RawValue("l", -1)
        drain = ctx.RawValue("b", 0)
        self._counter += 1
        proc = ctx.Process(target=worker_module.main, args=(child_conn, current, drain), daemon=True,
                           name=f"dynapipeline-worker-{self._counter}")
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn, current, drain)

    def _adopt(self, w: _Worker) -> None:
        if self.closed:
            self.workers.append(w)  # closed meanwhile: let _drop/close stop it
            self._drop(w, kill=True)
            return
        self.workers.append(w)
        if self.loop is not None:
            self._watch(w)

    def _watch(self, w: _Worker) -> None:
        old = w.loop
        if old is not None and old is not self.loop:
            try:
                old.remove_reader(w.fd)
            except Exception:
                pass
        w.loop = self.loop
        self.loop.add_reader(w.fd, self._on_readable, w)

    def _unwatch(self, w: _Worker) -> None:
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        if w.loop is not None:
            try:
                w.loop.remove_reader(w.fd)
            except Exception:
                pass
            w.loop = None

    def _drop(self, w: _Worker, kill: bool) -> int | None:
        """Remove a worker from the pool (terminate, then kill it if asked); its exit code."""
        self._unwatch(w)
        if w in self.workers:
            self.workers.remove(w)
        proc = w.proc
        if kill and proc.is_alive():
            proc.terminate()
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
        proc.join(1.0)
        try:
            w.conn.close()
        except OSError:
            pass
        return proc.exitcode

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are terminated; fail queued jobs.

        Workers still being started off the loop are waited for (briefly) and stopped too.
        Safe from any thread (``__del__``, atexit): the processes are always stopped
        first; what touches the event loop (readers, timers, the waiting futures) runs
        on the loop's thread (``call_soon_threadsafe`` from another thread) and is
        skipped when that loop is closed.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            started, self.started = self.started, []
        _LIVE_POOLS.discard(self)
        workers = list(self.workers) + started
        self.workers.clear()
        jobs = [w.job for w in workers if w.job is not None]
        queued = list(self.queue)
        self.queue.clear()
        for w in workers:
            try:
                if w.job is None:
                    w.conn.send_bytes(b"")
                else:
                    w.proc.terminate()
            except Exception:
                pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(1.0)
            except Exception:
                pass
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self.loop
        if loop is None or running is loop:
            self._after_close(workers, jobs, queued)
        else:
            try:
                loop.call_soon_threadsafe(self._after_close, workers, jobs, queued)
            except RuntimeError:  # the loop is closed: nothing waits on it any more
                for w in workers:
                    _close_conn(w)
        # A start in progress stops what it starts from now on; wait until it is over.
        self._start_done.wait(5.0)

    def _after_close(self, workers: list[_Worker], jobs: list[_Job], queued: list[_Job]) -> None:
        """The loop side of ``close()``: stop watching the pipes, close them, fail the jobs left."""
        for w in workers:
            try:
                self._unwatch(w)
            except Exception:
                pass
            _close_conn(w)
            w.job = None
        for job in jobs:
            try:
                job.finish(("closed", job.worker.pid if job.worker is not None else None))
            except Exception:
                pass
        for job in queued:
            try:
                job.finish(("closed", None))
            except Exception:
                pass

    # -- scheduling -----------------------------------------------------------------------------
    def submit(self, jobs: list[_Job]) -> None:
        self.queue.extend(jobs)
        self._pump()

    def _pump(self) -> None:
        queue = self.queue
        if not queue:
            return
        for w in self.workers:
            if w.ready and w.job is None:
                while queue and queue[0].done:
                    queue.popleft()
                if not queue:
                    return
                self._send(w, queue.popleft())

    def _send(self, w: _Worker, job: _Job) -> None:
        blobs = REGISTRY.blobs_for(job.cids, w.known) if job.cids else []
        message = pickle.dumps(Call(blobs, job.payload), protocol=pickle.HIGHEST_PROTOCOL)
        w.job = job
        job.worker = w
        control = job.control
        w.drain.value = 1 if control is not None and control.draining else 0
        w.current.value = SENT  # the worker marks TAKEN once it has read the job
        try:
            w.conn.send_bytes(message)
        except OSError:
            return  # the reader sees the dead pipe and reports the crash
        w.known.update(cid for cid, _ in blobs)
        if job.deadline is not None:
            w.timer = self.loop.call_later(job.deadline, self._on_deadline, w, job)

    @property
    def idle(self) -> bool:
        """No job queued or running (for any dispatch)."""
        return not self.queue and all(w.job is None for w in self.workers)

    def withdraw(self, jobs: list[_Job], kill_running: bool) -> None:
        """Forget these jobs: queued ones are not sent; running ones are killed if asked."""
        for job in jobs:
            if job.done:
                continue
            w = job.worker
            job.done = True
            if w is None:
                continue
            if kill_running and w.job is job:
                w.job = None
                self._drop(w, kill=True)
        if any(job.done for job in self.queue):
            # Withdrawn jobs leave the queue now, not when a worker next asks for work,
            # so that `idle` is true as soon as nothing real is left.
            self.queue = deque(job for job in self.queue if not job.done)
        if self.queue and not self.closed:
            self.fill()  # jobs of other dispatches wait: replace the workers just killed now, not lazily
        self._pump()

    # -- events from the loop ----------------------------------------------------------------------
    def _on_readable(self, w: _Worker) -> None:
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._on_death(w)
            return
        if not w.ready:
            w.ready = True
            self._failed_starts = 0
            self._pump()
            return
        job = w.job
        w.job = None
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        if job is not None and not job.done:
            reply = pickle.loads(data)  # plain bytes and names only: results and errors are decoded per stage
            if reply.unloadable and len(job.indices) > 1:
                self._split(job)  # nothing ran: find the component that cannot be rebuilt, run the others
            else:
                job.finish(("reply", reply, w.pid))
        self._pump()

    def _split(self, job: _Job) -> None:
        """Replace a job whose batch a worker could not rebuild by one job per component, at the queue's head."""
        batch = job.batch
        job.done = True
        singles = []
        for index, runner in zip(job.indices, job.runners, strict=True):
            payload, cids = dumps_batch([runner.owner], batch.args, batch.kwargs)
            singles.append(_Job(batch, [index], [runner], payload, cids, _deadline(runner.owner), job.control))
        batch.pending += len(singles) - 1
        self.queue.extendleft(reversed(singles))

    def _on_death(self, w: _Worker) -> None:
        job = w.job
        was_ready = w.ready
        position = w.current.value
        w.job = None
        exitcode = self._drop(w, kill=False)
        if job is not None and position == SENT and not job.done:
            # The worker died before it read the job (killed while idle): the job never ran, send it elsewhere.
            job.worker = None
            self.queue.appendleft(job)
        elif job is not None:
            job.finish(("crash", position, w.pid, exitcode))
        if self.closed:
            return
        if was_ready:
            self.fill()
        else:
            self._failed_starts += 1
            if self._failed_starts >= 3:
                # Workers die on start-up: fail what is queued rather than respawning forever.
                while self.queue:
                    queued = self.queue.popleft()
                    queued.finish(("crash", -1, w.pid, exitcode))
            else:
                self.fill()
        self._pump()

    def _on_deadline(self, w: _Worker, job: _Job) -> None:
        w.timer = None
        if w.job is not job:
            return
        w.job = None
        self._drop(w, kill=True)
        job.finish(("timeout",))
        self.fill()
        self._pump()


def _watch_drain(loop: Any, control: Any, jobs: list[_Job], future: Any) -> None:
    """While ``future`` is pending, pass a drain of the run on to the workers running its groups."""

    def poll() -> None:
        if future.done():
            return
        if control.draining:
            for job in jobs:
                w = job.worker
                if w is not None and w.job is job:
                    w.drain.value = 1
            return  # jobs sent from now on carry the drain (_send)
        loop.call_later(_DRAIN_POLL, poll)

    loop.call_later(_DRAIN_POLL, poll)


def _close_conn(w: _Worker) -> None:
    try:
        w.conn.close()
    except OSError:
        pass


def _stop_process(w: _Worker) -> None:
    """Stop a worker that was never adopted (terminate, then kill) and close its pipe."""
    proc = w.proc
    try:
        if proc.is_alive():
            proc.terminate()
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
        proc.join(1.0)
    finally:
        try:
            w.conn.close()
        except OSError:
            pass


def _close_all() -> None:
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:
            pass


atexit.register(_close_all)


def _cost(runner: Any) -> float | None:
    count = runner.count
    return runner.total / count if count else None


def _deadline(owner: Any) -> float | None:
    """Seconds the parent allows a timed stage (all attempts), or None."""
    if not isinstance(owner, Stage):
        return None
    timeout = owner.timeout
    if timeout is None or timeout <= 0:
        return None
    attempts = owner.retries + 1
    delays = sum(owner.retry_delay * owner.retry_backoff ** k for k in range(owner.retries))
    return timeout * attempts + delays + _GRACE


def plan_batches(runners: tuple[Any, ...], workers: int) -> list[list[int]]:
    """Split components into contiguous batches: one per timed stage, the rest by estimated cost."""
    batches: list[list[int]] = []
    rest: list[int] = []
    for index, runner in enumerate(runners):
        if _deadline(runner.owner) is not None:
            batches.append([index])
        else:
            rest.append(index)
    if not rest:
        return batches
    costs = [_cost(runners[i]) for i in rest]
    known = all(c is not None for c in costs)
    if known:
        weights = [c + _PER_STAGE_COST for c in costs]  # type: ignore[operator]
        total = sum(weights)
        if total < _SMALL_BATCH:
            return batches + [rest]
        count = min(len(rest), workers * _CHUNKS_PER_WORKER, max(1, math.ceil(total / (_SMALL_BATCH / 2))))
    else:
        weights = [1.0] * len(rest)
        total = float(len(rest))
        count = min(len(rest), workers * _CHUNKS_PER_WORKER)
    target = total / count
    current: list[int] = []
    acc = 0.0
    made = 0
    for index, weight in zip(rest, weights, strict=True):
        # Cut before this component when its midpoint falls past the next boundary.
        if current and made < count - 1 and acc + weight / 2 > target * (made + 1):
            batches.append(current)
            current = []
            made += 1
        current.append(index)
        acc += weight
    if current:
        batches.append(current)
    return batches


class MultiprocessExecutionStrategy(ExecutionStrategy):
    """Runs each component in a warm pool of worker processes; results in component order.

    ``max_workers``: pool size (default ``os.cpu_count()``). ``start_method``:
    ``"forkserver"`` (default where available) or ``"spawn"``. See the module
    docstring for batching, errors, timeouts, crashes and shutdown.
    """

    offloads = True

    def __init__(self, max_workers: int | None = None, *, start_method: str | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ConfigurationError(
                f"MultiprocessExecutionStrategy: field 'max_workers' must be an int >= 1 or None, got {max_workers!r}"
            )
        method = start_method or default_start_method()
        if method not in ("forkserver", "spawn") or method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                "MultiprocessExecutionStrategy: field 'start_method' must be 'forkserver' or 'spawn' "
                f"(available here: {multiprocessing.get_all_start_methods()}), got {start_method!r}"
            )
        self.max_workers = max_workers
        self.start_method = method
        self._pool: ProcessPool | None = None

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

    async def _ensure_pool(self, loop: Any) -> ProcessPool:
        pool = self._pool
        if pool is None or pool.closed:
            pool = self._pool = ProcessPool(self.workers, self.start_method)
        if not pool.workers and not pool.started and pool.starting is None:
            # A cold start can take ~0.5 s (fork server, imports): keep the event loop free meanwhile.
            pool.begin_start(loop)
        if pool.starting is not None:
            await asyncio.shield(pool.starting)
        pool.bind(loop)
        pool.fill()
        return pool

    async def start(self) -> None:
        """Start the pool now and wait until every worker is ready (optional; dispatch starts it lazily)."""
        pool = await self._ensure_pool(asyncio.get_running_loop())
        while not pool.closed and not all(w.ready for w in pool.workers):
            await asyncio.sleep(0.005)

    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), n, args, kwargs)
        jobs = []
        control = current_control.get()
        if control is not None and not any(isinstance(r.owner, Container) for r in runners):
            control = None  # only groups cycle, so only they care about a drain
        # Everything is pickled (and checked) before a worker is started or anything is sent.
        for indices in plan_batches(runners, self.workers):
            members = [runners[i] for i in indices]
            payload, cids = dumps_batch([r.owner for r in members], args, kwargs)
            deadline = _deadline(members[0].owner) if len(members) == 1 else None
            jobs.append(_Job(batch, indices, members, payload, cids, deadline, control))
        pool = self._pool
        if pool is None or pool.closed:
            pool = self._pool = ProcessPool(self.workers, self.start_method)
        try:
            if pool.loop is not loop or not pool.workers:
                pool = await self._ensure_pool(loop)
            elif len(pool.workers) < pool.max_workers:
                pool.fill()
            batch.pending = len(jobs)
            pool.submit(jobs)
            if control is not None:
                _watch_drain(loop, control, jobs, batch.future)
            await batch.future
        except asyncio.CancelledError:
            # stop() or cancellation: only the workers running *this* dispatch's jobs are killed (the
            # pool may serve other runs meanwhile); they are replaced lazily.
            pool.withdraw(jobs, kill_running=True)
            run = current_control.get()
            if run is not None and run.stopped and pool.idle:
                # pipeline.stop() leaves no worker behind unless another run still uses the pool;
                # the next dispatch starts a new one.
                self.close()
            raise
        except BaseException:
            pool.withdraw(jobs, kill_running=False)
            raise
        return batch.results

    def close(self) -> None:
        """Stop the pool's workers (idle ones exit, busy ones are terminated)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("MultiprocessExecutionStrategy cannot be sent to a worker process (a worker cannot "
                        "start processes); give groups that run inside processes another strategy")

    def __del__(self) -> None:
        pool = self.__dict__.get("_pool")
        if pool is not None:
            try:
                pool.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"MultiprocessExecutionStrategy(max_workers={self.max_workers}, start_method={self.start_method!r})"
