"""Work that goes to a Dask cluster: ``DaskExecutionStrategy``.

Long: the client's life (connect, own, close per run) and the dispatch share this class's state.

Where things live (``dask/`` unless named; ``_remote/`` is shared with processes)::

    strategy.DaskExecutionStrategy.dispatch
        │ _remote.planning.plan_batches ─► one Dask task per batch ─► _remote.pickling.dumps_batch (checked first)
        ▼
    distributed.Client.submit(tasks.run_components_task, class pickles, payload, pure=False)
        │                                       │ on a Dask worker thread: _remote.batch.run_call
        ▼                                       ▼ (the same rebuild and run as in a worker process)
    _remote.replies.collect_reply ◄── (pid, [Reply]) ┘  results, timing, or the stage's error
    (futures.wait_for_task: the deadline, a lost task; observe: runs handed to ``ran_elsewhere``)

How it works (the contract is the process strategy's; what differs is said here):

- **Client**: ``client=`` is used as it is and never closed (an asynchronous
  ``distributed.Client`` on the loop that runs the pipeline). ``address=``
  connects an asynchronous ``Client`` on the running loop at the first
  dispatch. With neither, a ``LocalCluster`` of worker processes is started
  (in a thread, ~1 s) at the first dispatch and lives until ``close()``,
  ``await aclose()``, the end of ``async with strategy:`` or interpreter exit;
  it is for trying things out (no dashboard; pass your own cluster's client
  for one). A client the strategy connected itself lives until the end of the
  ``async with strategy:`` block, or else until the end of the pipeline run
  that connected it (however the run ends), or else (a bare ``execute`` call
  or stream run) until that call ends; a dispatch on another event loop
  connects anew. Connecting waits at most ``connect_timeout`` (10 s), then
  raises ``ClusterError`` naming the address; a malformed address is rejected
  at construction. A closed client raises ``ClusterError`` naming the stage
  and the client (a stream step fails each item with it).
- **Submissions**: every task is submitted with ``pure=False`` (a stage has side
  effects: Dask must never merge two runs into one). Components go in batches
  sized from their past run times (``plan_batches``, as on processes: tiny
  stages travel together, heavy ones one per worker thread, a timed stage
  alone). Classes that travel by value (defined in ``__main__``, in a function,
  or in a module the workers cannot import) are pickled once per client and
  scattered to every worker (``client.scatter(broadcast=True)``); each task
  refers to them, so each worker receives each class once (if every worker
  holding a class died or restarted, it is scattered again, and a task Dask
  cancelled for lack of it is submitted again: it never ran), and a worker
  rebuilds each stage object once per thread and then only refreshes its
  state. ``submit_options`` (``workers``, ``resources``, ``priority``,
  ``fifo_timeout``, ``allow_other_workers``) go to every ``client.submit``.
- **What must be installed on the workers**: dynapipeline itself and whatever
  your stages import by name. For your own modules that the workers cannot
  import, call ``cloudpickle.register_pickle_by_value(your_module)`` before the
  run: their classes and functions then travel by value.
- **Results and timing** come back in component order; timing and stats are
  copied onto the parent's objects; other attribute changes made on the worker
  are not. The context is a read-only snapshot on the worker.
- **Errors**: a stage's exception is re-raised with its own type and args,
  ``__cause__`` a ``RemoteError`` with the worker's traceback, ``stage_name``
  and ``worker_pid`` set. The first error ends the dispatch and cancels the
  tasks not finished yet. With ``return_exceptions=True`` a failed member's
  exception is returned in its place and its siblings complete (each member
  of a batch then runs whatever its batch-mates do).
- **Timeout**: a timed Stage travels alone and the parent waits ``timeout`` ×
  attempts + retry delays + 0.1 s from submission (so time spent queued for a
  free worker thread counts); then its task is cancelled and
  ``StageTimeoutError`` is raised. An ``async def`` stage usually times out on
  the worker first (same error). *Dask cannot kill a running task's thread*: a
  plain ``def`` that never returns keeps its worker thread busy until it does.
- **Lost workers**: a worker that dies holding a task is Dask's to handle: the
  scheduler runs the task again elsewhere, up to
  ``distributed.scheduler.allowed-failures`` times (default 3; set it to 0 on
  the scheduler for stages that must not run twice), then fails it with
  ``KilledWorker``. The strategy raises ``WorkerCrashedError`` for the batch's
  first stage, with Dask's error as ``__cause__`` (likewise for a task lost
  with its client's connection).
- **Stop**: ``pipeline.stop()`` cancels the dispatch's outstanding tasks: queued
  ones never run; running ones run to their end on the worker and their
  results are dropped. ``stop(drain=True)`` reaches groups running on Dask
  workers: the parent sets a Dask ``Event`` (one per dispatch of groups) that a
  thread on the worker waits on, and the groups end their cycle loops.
- **As a stream step**: two tasks per worker thread outstanding (at most the
  stream's ``maxsize``), items in chunks sized by time per item (one item per
  task for a timed stage); a crash is charged to the item that caused it; see
  ``dask.items``.

See docs/dask.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from dynapipeline._engine import current_control, run_tasks
from dynapipeline._model.checks import check_seconds, kind_of
from dynapipeline._model.group import Container
from dynapipeline._model.strategy import ItemRunner
from dynapipeline._transports._remote.pickling import REGISTRY, dumps_batch
from dynapipeline._transports._remote.planning import deadline, plan_batches
from dynapipeline._transports._remote.replies import collect_reply, tag
from dynapipeline._transports.dask.futures import Probe, wait_for_task
from dynapipeline._transports.dask.items import DaskItems
from dynapipeline._transports.dask.observe import report_task
from dynapipeline._transports.dask.tasks import run_components_task
from dynapipeline._transports.offloop import OffLoopStrategy, Results
from dynapipeline.errors import ClusterError, ConfigurationError, StageTimeoutError, WorkerCrashedError

__all__ = ["DaskExecutionStrategy", "require_distributed"]

logger = logging.getLogger("dynapipeline")

# client.submit's own keywords a user may set; anything else would reach our task function as an argument.
_SUBMIT_OPTIONS = frozenset({"workers", "resources", "priority", "fifo_timeout", "allow_other_workers"})
_REFUSED = {
    "pure": "every task is submitted with pure=False (stages have side effects)",
    "key": "each task needs its own key",
    "retries": "use the Stage's own retries (they apply on the worker)",
    "actor": "stages are not actors",
    "actors": "stages are not actors",
}
_NTHREADS_TTL = 10.0  # seconds the worker-thread count of a cluster is trusted
_RESUBMITS = 3  # times a task Dask cancelled (a class pickle it needed was lost) is sent again, with fresh copies
_DRAIN_POLL = 0.02  # seconds between looks at the run's drain flag while groups run on the cluster


def require_distributed() -> Any:
    """The ``distributed`` module, or an ImportError that names the extra to install."""
    try:
        import distributed
    except ImportError as missing:
        raise ImportError("DaskExecutionStrategy needs Dask's 'distributed' package, which is not installed: "
                          "pip install dynapipeline[dask]") from missing
    return distributed


@dataclass(eq=False)
class _Task:
    """One batch of components for one Dask task."""

    indices: list[int]
    runners: list[Any]
    payload: bytes
    cids: set[int]
    limit: float | None


class DaskExecutionStrategy(OffLoopStrategy):
    """Runs each component on a Dask cluster (``distributed``); results in component order.

    ``client``: an asynchronous ``distributed.Client`` to use (never closed here);
    ``address``: a scheduler to connect to (``"tcp://scheduler:8786"``, within
    ``connect_timeout`` seconds); neither: a ``LocalCluster`` for trying it
    out. ``return_exceptions=True`` returns a failed member's exception in its
    place. Other keywords go to ``client.submit``. See the module docstring for batching, errors, timeouts,
    lost workers and shutdown.
    """

    def __init__(self, client: Any = None, address: str | None = None, *, return_exceptions: bool = False,
                 connect_timeout: float = 10.0, **submit_options: Any) -> None:
        distributed = require_distributed()
        label = "DaskExecutionStrategy"
        if client is not None and address is not None:
            raise ConfigurationError(f"{label}: give field 'client' or field 'address', not both")
        if client is not None and not isinstance(client, distributed.Client):
            raise ConfigurationError(f"{label}: field 'client' must be a distributed.Client, got {kind_of(client)}")
        if client is not None and not client.asynchronous:
            raise ConfigurationError(f"{label}: field 'client' must be an asynchronous distributed.Client "
                                     "(await Client(..., asynchronous=True) on the loop that runs the pipeline)")
        if address is not None:
            _check_address(label, address)
        check_seconds(label, "connect_timeout", connect_timeout)
        super().__init__(return_exceptions=return_exceptions)
        for name in submit_options:
            if name in _REFUSED:
                raise ConfigurationError(f"{label}: field {name!r} cannot be set: {_REFUSED[name]}")
            if name not in _SUBMIT_OPTIONS:
                raise ConfigurationError(f"{label}: field {name!r} is not a client.submit option this strategy "
                                         f"passes on (allowed: {', '.join(sorted(_SUBMIT_OPTIONS))})")
        self.client = client
        self.address = address
        self.connect_timeout = float(connect_timeout)
        self.submit_options = submit_options
        self._cluster: Any = None
        self._owned: Any = None  # the client this strategy connected itself
        self._owned_loop: Any = None
        self._connecting: asyncio.Task[Any] | None = None
        self._active = 0  # dispatches and stream steps using the owned client now
        self._scattered: tuple[Any, dict[int, Any]] = (None, {})
        self._nthreads: tuple[Any, int, float] = (None, 1, 0.0)
        self._cancels: set[asyncio.Future[Any]] = set()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- the client ---------------------------------------------------------------------------------
    async def client_for_run(self) -> Any:
        """The client to submit to from the running loop (connecting, or starting a LocalCluster, if needed).

        ``ClusterError`` if the given client is closed or the scheduler cannot be
        reached within ``connect_timeout``.
        """
        if self.client is not None:
            self.check_open(self.client)
            return self.client
        loop = asyncio.get_running_loop()
        owned = self._owned
        if owned is None or self._owned_loop is not loop or owned.status not in ("running", "connecting"):
            connecting = self._connecting
            if connecting is None or connecting.get_loop() is not loop:
                connecting = self._connecting = loop.create_task(self._connect(loop))
                connecting.add_done_callback(self._connected)
            owned = await asyncio.shield(connecting)
        self.end_with_run(self._end_run)
        return owned

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if self._connecting is task:
            self._connecting = None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        distributed = require_distributed()
        address = self.address
        if address is None:
            if self._cluster is None:
                self._cluster = await loop.run_in_executor(None, _start_local_cluster)
                # Stopped at interpreter exit (or when the strategy is collected) if never closed.
                self._finalizer = weakref.finalize(self, _close_cluster, self._cluster)
            address = self._cluster.scheduler_address
        try:
            client = await distributed.Client(address, asynchronous=True, set_as_default=False,
                                              timeout=self.connect_timeout)
        except (OSError, TimeoutError) as error:
            field = " (field 'address')" if self.address is not None else ""
            raise ClusterError(f"DaskExecutionStrategy: cannot reach the Dask scheduler at {address!r}{field} "
                               f"within connect_timeout={self.connect_timeout:g} s ({type(error).__name__}: "
                               f"{error})") from error
        self._owned, self._owned_loop = client, loop
        return client

    def check_open(self, client: Any) -> None:
        """``ClusterError`` naming the client if it is closed (nothing can be submitted to it)."""
        if client.status in ("closing", "closed") or client.scheduler is None:
            field = " (field 'client')" if client is self.client else ""
            raise ClusterError(f"DaskExecutionStrategy: the Dask client {client.id!r}{field} is closed")

    def hold(self) -> None:
        """A dispatch or stream step uses the client: the end of a run must not close it meanwhile."""
        self._active += 1

    async def release(self) -> None:
        """The end of a dispatch or stream step; outside a pipeline run and ``async with``, closes the client.

        A bare ``execute`` or stream run has nobody to close the client it
        connected later: left open, it would be torn down at exit with warnings.
        """
        self._active -= 1
        if self._active == 0 and not self.held and current_control.get() is None:
            await self._close_owned()

    async def _end_run(self) -> None:
        """At the end of a pipeline run: close the client connected for it (unless still in use)."""
        if not self.held and self._active == 0:
            await self._close_owned()

    async def _close_owned(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None and self._owned_loop is asyncio.get_running_loop():
            await owned.close()

    async def nthreads(self, client: Any) -> int:
        """Worker threads in the cluster (refreshed every few seconds): sizes the batches."""
        known, count, when = self._nthreads
        now = time.monotonic()
        if known is not client or now - when > _NTHREADS_TTL:
            self.check_open(client)
            count = max(1, sum((await client.nthreads()).values()))
            self._nthreads = (client, count, now)
        return count

    async def class_blobs(self, client: Any, cids: set[int]) -> list[tuple[int, Any]]:
        """The classes a task needs, as (class id, scattered pickle).

        Each is scattered once per client, and again once the cluster has lost
        every copy (its workers died or restarted). Concurrent callers share one
        scatter. While no worker runs, a pickle goes as bytes inside the task.
        """
        if not cids:
            return []
        known, scatters = self._scattered
        if known is not client:
            scatters = {}
            self._scattered = (client, scatters)
        out = []
        for cid, blob in REGISTRY.blobs_for(cids, set()):
            scatter = scatters.get(cid)
            if scatter is None or (scatter.done() and not _on_cluster(scatter)):
                scatter = scatters[cid] = asyncio.ensure_future(client.scatter(blob, broadcast=True, hash=False))
                scatter.add_done_callback(_log_failed_scatter)
            try:
                out.append((cid, await asyncio.shield(scatter)))  # one caller's cancellation is not the others'
            except TimeoutError:
                # No worker is running (all restarting) and Dask's scatter gives up after 2 s: the pickle travels
                # inside the task, which waits for a worker as any task does; the next task scatters it again.
                if scatters.get(cid) is scatter:
                    del scatters[cid]
                out.append((cid, blob))
        return out

    async def run_task(self, client: Any, function: Any, cids: set[int], args: tuple[Any, ...],
                       limit: float | None, runner: Any, probe: Probe | None = None,
                       resubmit: bool = True) -> tuple[int, list[Any]]:
        """Submit one task and wait for its (pid, decoded replies); errors as ``wait_for_task`` says.

        A task that Dask cancelled (a class pickle it needed was lost: every
        worker holding it died or restarted) never ran to an outcome: it is
        submitted again with fresh copies of its classes, up to ``_RESUBMITS``
        times, without spending the stage's retries (unless ``resubmit`` is
        false: a stream step finds out itself). A closed client raises
        ``ClusterError`` naming the stage and the client. With ``probe``, a lost
        task's probe records whether it had started. The task is cancelled if we
        stop waiting for it.
        """
        resubmits = 0
        while True:
            try:
                self.check_open(client)
                blobs = await self.class_blobs(client, cids)
                future = client.submit(function, blobs, *args, pure=False, **self.submit_options)
            except ClusterError as error:
                tag(error, runner.name, None, "a Dask task")
                raise
            except Exception as error:
                closed = self._closed_or(client, runner, error)
                if closed is error:
                    raise
                raise closed from error
            try:
                return await wait_for_task(future, limit, runner)
            except WorkerCrashedError as crashed:
                closed = self._closed_or(client, runner, crashed)
                if closed is not crashed:
                    raise closed from crashed.__cause__
                if resubmit and future.status == "cancelled" and resubmits < _RESUBMITS:
                    logger.debug("Dask cancelled a task of stage %r (%r): sending it again with its classes",
                                 runner.name, crashed.__cause__)
                    self._forget_scatters(client, blobs)
                    resubmits += 1
                    continue
                if probe is not None:
                    await probe.read(client, future)
                raise
            except BaseException:
                self.cancel_later(client, [future])
                raise

    def _closed_or(self, client: Any, runner: Any, error: BaseException) -> BaseException:
        """A ``ClusterError`` for the stage if the client is closed now, else ``error`` itself."""
        try:
            self.check_open(client)
        except ClusterError as closed:
            tag(closed, runner.name, None, "a Dask task")
            return closed
        return error

    def _forget_scatters(self, client: Any, blobs: list[tuple[int, Any]]) -> None:
        """The next task that needs these classes scatters them again (Dask may have lost them)."""
        known, scatters = self._scattered
        if known is not client:
            return
        for cid, blob in blobs:
            scatter = scatters.get(cid)
            if scatter is not None and scatter.done() and not scatter.cancelled() \
                    and scatter.exception() is None and scatter.result() is blob:
                del scatters[cid]

    def cancel_later(self, client: Any, futures: list[Any]) -> None:
        """Cancel Dask futures without waiting (we may be cancelled ourselves); a failure is only logged."""
        futures = [f for f in futures if f is not None and not f.done()]
        if not futures:
            return
        try:
            cancel = asyncio.ensure_future(client.cancel(futures))
        except Exception as error:  # noqa: BLE001 - the client is closed: its tasks are gone with it
            logger.debug("cancelling Dask futures: %r", error)
            return
        self._cancels.add(cancel)
        cancel.add_done_callback(self._cancel_done)

    def _cancel_done(self, cancel: asyncio.Future[Any]) -> None:
        self._cancels.discard(cancel)
        if not cancel.cancelled() and cancel.exception() is not None:
            logger.debug("cancelling Dask futures: %r", cancel.exception())

    # -- running components ------------------------------------------------------------------------
    async def dispatch(self, runners: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        n = len(runners)
        if n == 0:
            return []
        self.hold()
        try:
            try:
                client = await self.client_for_run()
                threads = await self.nthreads(client)
            except ClusterError as error:
                tag(error, runners[0].name, None, "a Dask task")
                if len(runners) > 1:
                    error.add_note("members not run: " + ", ".join(repr(r.name) for r in runners))
                if not self.return_exceptions:
                    raise
                return [error] * n
            tasks = []
            # Everything is pickled (and checked) before anything is submitted.
            for indices in plan_batches(runners, threads):
                members = [runners[i] for i in indices]
                payload, cids = dumps_batch([r.owner for r in members], args, kwargs)
                limit = deadline(members[0].owner) if len(members) == 1 else None
                tasks.append(_Task(indices, members, payload, cids, limit))
            results = Results(None, n, self.return_exceptions)
            control = current_control.get()
            drain = None
            if control is not None and any(isinstance(r.owner, Container) for r in runners):
                drain = _Drain(client, control)  # only groups cycle, so only they care about a drain
            try:
                # Each waiter cancels its own task if it is cancelled (the first error cancels the others).
                await run_tasks([asyncio.ensure_future(self._finish(client, task, results, args, kwargs,
                                                                    drain.name if drain else None))
                                 for task in tasks])
            finally:
                if drain is not None:
                    await drain.close()
            return results.values
        finally:
            await self.release()

    async def _finish(self, client: Any, task: _Task, results: Results, args: tuple[Any, ...],
                      kwargs: dict[str, Any], drain: str | None = None) -> None:
        """Run one task and put its results (or raise / place its errors)."""
        try:
            pid, replies = await self.run_task(client, run_components_task, task.cids,
                                               (task.payload, self.return_exceptions, drain), task.limit,
                                               task.runners[0])
        except (StageTimeoutError, WorkerCrashedError, ClusterError) as error:
            if not results.keeps(error):
                raise
            for index in task.indices:
                results.values[index] = error
            return
        if len(replies) == 1 and replies[0].unloadable and len(task.indices) > 1:
            # Nothing ran: one component cannot be rebuilt on the worker; run each alone to find it.
            singles = []
            for index, runner in zip(task.indices, task.runners, strict=True):
                payload, cids = dumps_batch([runner.owner], args, kwargs)
                singles.append(_Task([index], [runner], payload, cids, deadline(runner.owner)))
            await run_tasks([asyncio.ensure_future(self._finish(client, s, results, args, kwargs, drain))
                             for s in singles])
            return
        if len(replies) == 1:
            segments = [(task.runners, task.indices)]
        else:  # return_exceptions: one reply per member
            segments = [([r], [i]) for r, i in zip(task.runners, task.indices, strict=True)]
        for (runners, indices), reply in zip(segments, replies, strict=True):
            try:
                collect_reply(runners, indices, reply, pid, results.values)
            except Exception as error:
                if not results.keeps(error):
                    await report_task(client, runners, reply, pid)
                    raise
                results.values[indices[0]] = error
            await report_task(client, runners, reply, pid)

    def stream_runner(self, stage: Any, maxsize: int) -> tuple[int, ItemRunner | None]:
        """Two tasks per worker thread outstanding (at most ``maxsize``); chunks sized by time per item."""
        return maxsize, DaskItems(self, stage, maxsize)

    # -- life cycle ----------------------------------------------------------------------------------
    async def release_held(self) -> None:
        """Close what this strategy started (its client, its LocalCluster) once the outermost ``async with`` ends."""
        await self._close_owned()
        cluster = self._take_cluster()
        if cluster is not None:
            await asyncio.get_running_loop().run_in_executor(None, _close_cluster, cluster)

    def close(self) -> None:
        """Stop the LocalCluster this strategy started (blocking); a connected client is dropped."""
        owned, self._owned = self._owned, None
        if owned is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None and running is self._owned_loop:
                asyncio.ensure_future(owned.close())
        cluster = self._take_cluster()
        if cluster is not None:
            _close_cluster(cluster)

    def _take_cluster(self) -> Any:
        cluster, self._cluster = self._cluster, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return cluster

    def __reduce__(self) -> Any:
        raise TypeError("DaskExecutionStrategy cannot be sent to a worker (its client stays in this process); "
                        "give groups that run on workers another strategy")

    def __repr__(self) -> str:
        where = "client" if self.client is not None else (f"address={self.address!r}" if self.address
                                                          else "LocalCluster")
        return f"DaskExecutionStrategy({where}, return_exceptions={self.return_exceptions})"


class _Drain:
    """Passes a drain of the run on to the groups running on the cluster, through a Dask ``Event``."""

    def __init__(self, client: Any, control: Any) -> None:
        distributed = require_distributed()
        self.name = f"dynapipeline-drain-{uuid.uuid4().hex}"
        self.event = distributed.Event(self.name, client=client)
        self.sent = False
        self.watcher = asyncio.ensure_future(self._watch(control))

    async def _watch(self, control: Any) -> None:
        while not control.draining:
            await asyncio.sleep(_DRAIN_POLL)
        await self.event.set()
        self.sent = True

    async def close(self) -> None:
        self.watcher.cancel()
        await asyncio.wait((self.watcher,))
        if not self.watcher.cancelled() and self.watcher.exception() is not None:
            logger.debug("passing a drain on to Dask: %r", self.watcher.exception())
        if self.sent:
            try:
                await self.event.clear()  # the scheduler forgets an event nobody waits for once it is clear
            except Exception as error:  # noqa: BLE001 - the client closed meanwhile: the event went with it
                logger.debug("clearing a Dask drain event: %r", error)


def _check_address(label: str, address: object) -> None:
    """A scheduler address Dask can parse (a known scheme; host and port for tcp, tls, ws and wss)."""
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import backends

    problem = None
    if not isinstance(address, str) or not address or any(c.isspace() for c in address):
        problem = "it is not a non-empty string without spaces"
    else:
        try:
            scheme, _ = parse_address(address, strict=False)
            if scheme not in backends and scheme != "inproc":
                problem = f"unknown address scheme {scheme!r} (known: {', '.join(sorted({*backends, 'inproc'}))})"
            elif scheme in ("tcp", "tls", "ws", "wss"):
                host, port = get_address_host_port(address, strict=False)
                if not host or not 0 < port < 65536:
                    problem = "its host is empty or its port is not in 1..65535"
        except ValueError as error:
            problem = str(error)
    if problem is not None:
        raise ConfigurationError(f"{label}: field 'address' must be a scheduler address such as "
                                 f"'tcp://scheduler:8786', got {address!r} ({problem})")


def _on_cluster(scatter: asyncio.Future[Any]) -> bool:
    """Whether a finished scatter still has its data on the cluster."""
    return not scatter.cancelled() and scatter.exception() is None and scatter.result().status == "finished"


def _log_failed_scatter(scatter: asyncio.Future[Any]) -> None:
    # Retrieved here so that a failure nobody awaited any more is not reported as "never retrieved";
    # the callers that await it get the error themselves.
    if not scatter.cancelled() and scatter.exception() is not None:
        logger.debug("scattering a class pickle: %r", scatter.exception())


def _start_local_cluster() -> Any:
    distributed = require_distributed()
    return distributed.LocalCluster(processes=True, dashboard_address=None)


def _close_cluster(cluster: Any) -> None:
    try:
        cluster.close()
    except Exception as error:  # noqa: BLE001 - at exit or from a finalizer: nothing may raise
        logger.debug("closing a Dask LocalCluster: %r", error)

