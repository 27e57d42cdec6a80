"""A stream step on processes: its items go to the pool's workers in chunks, and come back one result each.

::

    stream step ──call(values)──► ProcessItems ── MapJob (chunk) ──► ProcessPool ══ MapCall ══► worker
                ◄─ (ok, value) ──              ◄─ Replied / Crashed / TimedOut / Closed ══ MapReply ═╝

- **Chunks**: the first chunks are small; then each chunk aims at ~2 ms of work
  (from the stage's measured time per item), up to ``maxsize`` ÷ workers items,
  so IPC is not paid per item and the items out stay bounded (see below). A
  timed stage's items travel one per chunk, so a deadline concerns one item.
- **Calls in flight**: two chunks per worker, of at most ``maxsize`` ÷ workers
  items each: one runs, the next waits in the worker's pipe (``ProcessPool``),
  so a worker never waits for the parent between chunks. Tiny items fill the
  cap (the parent's cost per chunk is what limits them: fewer, larger chunks),
  so up to twice ``maxsize`` items can be out; items with work to do fill their
  ~2 ms first. The step starts with one call per worker and takes the second
  once a chunk came back: large items (one per chunk, in shared memory) keep
  one per worker and one more, so the parent holds no more of them.
- **The stage travels once per worker**: the first chunk a worker gets carries it,
  later ones only the items.
- **The item log**: the worker writes each item's outcome (its pickle, its clock
  readings) to a buffer it shares with the parent as soon as the item has run
  (``_remote.messages``); the results also come back as one list with the reply.
  Each item's run is added to the stage's stats (p50/p95 from the items' own
  durations, the wait/ship split, the worker pid as its place), and to the
  tracer (a slice per item, an arrow from the dispatch) and the handlers that
  record runs made elsewhere (OpenTelemetry spans).
- **Per item**: each item's exception (or a result that cannot be pickled) is its
  own outcome; the other items of its chunk are unaffected. Retries and timeouts
  inside the worker are the stage's own (its runner applies ``retries`` there).
- **Timeout**: a timed stage's item that outlives its whole time budget
  (``timeout`` × attempts + retry delays) is killed with its worker, which is
  replaced; the item fails with ``StageTimeoutError``.
- **Crash**: when a worker dies, the items of its chunk that had finished keep the
  outcomes the item log holds, and are never run again. The item it was running
  is retried on a fresh worker while the stage's ``retries`` last (with its
  delays), but never after it crashed 3 workers; the chunk's items not yet run
  are sent again. The item then fails with ``WorkerCrashedError``. A pool whose
  workers die on start-up fails the call's items at once.

See docs/streams.md and docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dynapipeline._engine import EPOCH_OFFSET, current_control, current_trace, tracing
from dynapipeline._model.component import runner_of
from dynapipeline._model.handlers import report_elsewhere, reports_elsewhere
from dynapipeline._model.strategy import ItemRunner, Succeeded, chunk_items
from dynapipeline._transports._remote.buffers import Packed, unpack
from dynapipeline._transports._remote.messages import MapReply
from dynapipeline._transports._remote.pickling import pack_batch
from dynapipeline._transports._remote.planning import deadline
from dynapipeline._transports.calling import ItemRuns, add_item_runs, sum_runs
from dynapipeline._transports.offloop import crash_retry, merge_wait_ship
from dynapipeline._transports.process.failures import crashed, remote_failure, unloadable
from dynapipeline._transports.process.handle import Crashed, Outcome, Replied, TimedOut
from dynapipeline._transports.process.jobs import MapJob, Split
from dynapipeline._transports.process.packing import pack_in, pack_items
from dynapipeline._transports.process.shm import MAPPED
from dynapipeline.errors import StageTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from dynapipeline._transports.process.pool import ProcessPool

__all__ = ["PoolOwner", "ProcessItems"]

logger = logging.getLogger("dynapipeline")
_CHUNK_SECONDS = 2e-3  # the work one chunk aims at
_FIRST_CHUNK = 16
_ids = itertools.count(1)


class PoolOwner(Protocol):
    """What ``ProcessItems`` needs of its strategy: the pool for this loop, and closing it."""

    async def ensure_pool(self, loop: asyncio.AbstractEventLoop) -> ProcessPool:
        """The strategy's pool, started and bound to ``loop``."""

    def close(self) -> None:
        """Close the pool (its workers stop)."""

    def close_if_stopped(self, *, in_use: bool) -> None:
        """Close the pool if the current run was stopped and nothing else uses it."""

    @property
    def workers(self) -> int:
        """The pool's size."""


class ProcessItems(ItemRunner):
    """Runs a stream step's stage on a ``MultiprocessExecutionStrategy``'s pool, chunk by chunk."""

    grows = True  # one call per worker until a chunk came back (``_size_chunks``), then two

    def __init__(self, strategy: PoolOwner, stage: Any, maxsize: int, width: int) -> None:
        self.strategy = strategy
        self.stage = stage
        self.name: str = stage.name
        self.limit = deadline(stage)
        self.maxsize = maxsize
        self.wide = width  # the most calls in flight: two per worker
        # A timed stage's chunks hold one item; others at most maxsize / workers (see the module's docstring).
        self.cap = 1 if self.limit is not None else max(1, maxsize // strategy.workers)
        # Sized before any item was seen: as for two chunks per worker (large items take one call each).
        self.chunk = min(self.cap, max(1, maxsize // width), _FIRST_CHUNK)
        # One call per worker until the first chunk tells what items are: large ones stay near that (``call``).
        self.width = self.wide if self.limit is not None else strategy.workers
        self.stage_id = 0
        self.payload = Packed(b"", ())
        self.cids: set[int] = set()
        self.pool: ProcessPool | None = None
        self.runner = runner_of(stage)
        self.releases = True  # _call_large drops a large item once it is in shared memory

    async def open(self) -> None:
        # The stage is pickled (and checked) once, before any worker starts.
        self.payload, self.cids = pack_batch([self.stage], (), {}, None, None)
        self.stage_id = next(_ids)
        self.pool = await self.strategy.ensure_pool(asyncio.get_running_loop())

    def _pack_stage(self) -> Packed:
        """The stage for one worker: a stage with large buffers is packed again, into that send's own blocks."""
        pool = self.pool
        threshold = pool.threshold if pool is not None else None
        if pool is None or threshold is None or len(self.payload.data) < threshold:
            return self.payload
        return pack_batch([self.stage], (), {}, threshold, pool.arena)[0]

    async def call(self, values: list[Any]) -> list[Any]:
        if self.pool is not None and self._large(values[0]):
            # One item more than workers: its copy into shared memory overlaps their work (no worker waits for a
            # copy), at the price of one item held in shared memory while it waits.
            self.width = self.strategy.workers + 1
            if self.limit is None:  # a timed stage's chunks hold one item, whatever their items
                self.cap = max(1, self.maxsize // (2 * self.strategy.workers))  # that of tiny items is for them only
            if len(values) > 1:
                # Large items travel one per chunk (their copy dominates, and a chunk goes to one worker): a
                # first chunk, sized before any item was seen, is split across the workers now.
                self.chunk = 1
                parts = await asyncio.gather(*(self.call([value]) for value in values))
                return [(True, part[0]) if type(part) is Succeeded else part[0] for part in parts]
            return [await self._call_large(values)]
        results: list[tuple[bool, Any] | None] = [None] * len(values)
        crashes: dict[int, int] = {}  # per item position, the workers it killed
        pending: Sequence[int] = range(len(values))  # positions; a list once some are done
        one_by_one = False
        sink = current_trace.get() if tracing() else None
        indices = chunk_items.get() if sink is not None else None
        while pending:
            batch = pending[:1] if one_by_one else pending
            await self._live_pool()
            packed_from = time.perf_counter()
            items = pack_items(values, batch, results, self.name, self.pool)
            if items is None:  # an item could not be pickled: it failed alone, the others go
                batch = [i for i in batch if results[i] is None]
            if not batch:
                pending = [i for i in pending if results[i] is None]
                continue
            if items is None:
                items = pack_in(self.pool, [values[i] for i in batch])
            outcome, job = await self._run(items, packed_from)
            if isinstance(outcome, Replied):
                reply = outcome.reply
                assert type(reply) is MapReply
                if reply.unloadable is not None:
                    for i in batch:
                        results[i] = (False, remote_failure(self.name, reply.unloadable, outcome.pid))
                elif len(batch) == len(values) and (succeeded := self._succeeded(job, outcome, len(batch))) is not None:
                    return succeeded  # every item of the call ran well at the first go (the common case)
                elif self._take_items(job, outcome, batch, results, sink, indices) == len(pending) == len(batch):
                    break  # every item of the call ran (the common case): nothing left to look for
            elif isinstance(outcome, TimedOut):
                results[batch[0]] = (False, StageTimeoutError(self.name, self.stage.timeout))
            elif isinstance(outcome, Crashed):
                position = outcome.position
                done = self._take_items(job, outcome, batch, results, sink, indices)  # they never run again
                if outcome.at_start:
                    for i in pending:  # no worker can start: no item of this call could ever run
                        results[i] = (False, crashed(self.name, outcome, 0))
                elif 0 <= position < done or done == len(batch):
                    pass  # it died after its item had finished: the others go again
                elif position < 0 and len(batch) - done > 1:
                    one_by_one = True  # died before running any item: find the culprit alone
                else:
                    culprit = batch[max(position, done)]
                    crashes[culprit] = crashes.get(culprit, 0) + 1
                    delay = crash_retry(self.stage, crashes[culprit])
                    if delay is None:
                        results[culprit] = (False, crashed(self.name, outcome, crashes[culprit]))
                    else:
                        await asyncio.sleep(delay)
            else:
                for i in batch:
                    if results[i] is None:
                        results[i] = (False, WorkerCrashedError(self.name, outcome.pid, None))
            pending = [i for i in pending if results[i] is None]
        return results  # every slot is filled when nothing is pending

    async def aclose(self) -> None:
        run = current_control.get()
        pool = self.pool
        if pool is not None and not pool.closed and (run is None or not run.draining):
            # As in _run: a stopped run leaves no worker behind, even when this step never sent a chunk.
            self.strategy.close_if_stopped(in_use=not pool.idle)

    async def _call_large(self, values: list[Any]) -> tuple[bool, Any]:
        """One large item: written to shared memory once, then this step holds no other copy of it.

        Its blocks are this call's (``MapJob.kept``): a crashed worker's retry sends them again; they
        are freed here when no worker will read them, or by the worker that did.
        """
        await self._live_pool()
        packed_from = time.perf_counter()
        results: list[Any] = [None]
        items = pack_items(values, [0], results, self.name, self.pool)
        if items is None:
            return results[0]  # type: ignore[no-any-return]  # it cannot be pickled: its error
        values[0] = None  # the caller's reference goes too (``ItemRunner.call``)
        sink = current_trace.get() if tracing() else None
        indices = chunk_items.get() if sink is not None else None
        crashes = 0
        sent = False  # a worker holds the blocks (and releases them)
        try:
            while True:
                outcome, job = await self._run(items, packed_from, keep=True)
                sent = job is not None and job.worker is not None
                if isinstance(outcome, Replied):
                    reply = outcome.reply
                    assert type(reply) is MapReply
                    if reply.unloadable is not None:
                        return False, remote_failure(self.name, reply.unloadable, outcome.pid)
                    self._take_items(job, outcome, [0], results, sink, indices, sizes=False)
                    if results[0] is not None:
                        return results[0]  # type: ignore[no-any-return]
                    continue  # no room in the item log for its outcome: impossible for one item, but go again
                sent = False  # its worker is dead: nobody else holds the blocks
                if isinstance(outcome, TimedOut):
                    return False, StageTimeoutError(self.name, self.stage.timeout)
                if not isinstance(outcome, Crashed):
                    return False, WorkerCrashedError(self.name, outcome.pid, None)
                if self._take_items(job, outcome, [0], results, sink, indices, sizes=False):
                    return results[0]  # type: ignore[no-any-return]  # it had finished: its outcome stands
                crashes += 1
                delay = None if outcome.at_start else crash_retry(self.stage, crashes)
                if delay is None:
                    return False, crashed(self.name, outcome, crashes if not outcome.at_start else 0)
                await asyncio.sleep(delay)
                packed_from = time.perf_counter()
        finally:
            if not sent and self.pool is not None:
                self.pool.arena.free(list(items.blocks))

    def _large(self, value: Any) -> bool:
        """An item at least as large as the shared-memory threshold (bytes-like or with ``nbytes``)."""
        threshold = self.pool.threshold if self.pool is not None else None
        if threshold is None:
            return False
        size = len(value) if type(value) in (bytes, bytearray) else getattr(value, "nbytes", 0)
        return isinstance(size, int) and size >= threshold

    async def _live_pool(self) -> None:
        """The strategy's pool, started again if a stop closed it or killed its workers."""
        pool = self.pool
        if pool is not None and not pool.closed and pool.broken is not None:
            return  # its workers die on start-up: _run fails the items without starting more
        if pool is None or pool.closed or (not pool.workers and not pool.started and pool.starting is None):
            self.pool = await self.strategy.ensure_pool(asyncio.get_running_loop())

    async def _run(self, items: Packed, packed_from: float, keep: bool = False) -> tuple[Outcome, MapJob | None]:
        """Send the items as one chunk; its outcome. ``keep``: the caller frees its items' blocks."""
        pool = self.pool
        assert pool is not None  # _live_pool made it, before the items were packed into its shared memory
        if pool.broken is not None:
            if not keep:
                pool.arena.free(list(items.blocks))
            return pool.broken, None  # its workers die on start-up: starting more would only die the same way
        loop = asyncio.get_running_loop()
        job = MapJob(loop.create_future(), self.stage_id, self._pack_stage, self.cids, items, self.limit)
        job.each_run = tracing() or reports_elsewhere(self.stage)
        if keep:
            job.kept = items.blocks
        job.packed = (packed_from, time.perf_counter())
        pool.submit([job])
        try:
            return await job.future, job
        except asyncio.CancelledError:
            pool.withdraw([job], kill_running=True)
            self.strategy.close_if_stopped(in_use=not pool.idle)  # as a group's dispatch does
            raise

    def _succeeded(self, job: MapJob | None, outcome: Replied, n: int) -> Succeeded | None:
        """The results when all ``n`` items of the job ran well and the worker summed up their runs; else None.

        Nothing is recorded then: ``_take_items`` says item by item what happened."""
        reply = outcome.reply
        if job is None or type(reply) is not MapReply or reply.runs is None or job.logged[0] or reply.runs.ran != n:
            return None  # the log's rows were read: an error, a tracer or OpenTelemetry wants each item
        runs = reply.runs
        try:
            values = unpack(reply.values, MAPPED.attach)
        except Exception:  # noqa: BLE001 - _take_items fails each item with the error
            return None
        if len(values) != runs.ran:
            return None
        self._add_summed(job, outcome, runs, 0)
        return Succeeded(values)

    def _add_summed(self, job: MapJob, outcome: Replied | Crashed, runs: ItemRuns, errors: int,
                    sizes: bool = True) -> None:
        """Add runs summed up to the stage's stats, with their wait and ship time; size the next chunks from them
        (``sizes``: False for a large item's run, which says nothing of the small items' chunks)."""
        runner = self.runner
        add_item_runs(runner, runs, errors, f"process {outcome.pid}", EPOCH_OFFSET)
        if isinstance(outcome, Replied) and type(reply := outcome.reply) is MapReply and reply.clock is not None \
                and job.sent_at:
            split = Split(job.packed, job.sent_at, reply.clock.rebuilt, reply.clock.replying, outcome.loaded)
            split.add_sums(runner, runs.ran, runs.started_to_pickled, runs.ended_to_pickled)
        if sizes:
            self._size_chunks(runs)

    def _size_chunks(self, runs: ItemRuns) -> None:
        per_item = (runs.end - runs.start) / runs.ran  # back to back: the time per item, the log's cost included
        ideal = math.ceil(_CHUNK_SECONDS / max(per_item, 1e-7))
        if self.width == self.strategy.workers:
            self.width = self.wide  # not large items: the next chunk of each worker waits in its pipe
        self.chunk = max(1, min(self.cap, ideal))

    def _take_items(self, job: MapJob | None, outcome: Replied | Crashed, batch: Sequence[int], results: list[Any],
                    sink: Any, indices: list[int] | None, sizes: bool = True) -> int:
        """Fill the results of the items the worker ran (from its item log) and add their runs; how many ran.

        Each item's run is added to the stage's stats (p50/p95 included), its place
        to the report's ``where``; after a reply, its wait and ship time too; while a
        tracer records, a slice on the worker's track and an arrow from the dispatch.
        ``sizes``: the runs size the next chunks (``_add_summed``).
        """
        if job is None:
            return 0
        rows, data, failures = job.logged
        replied = outcome if isinstance(outcome, Replied) else None
        reply = replied.reply if replied is not None else None
        last = reply.last if type(reply) is MapReply else None
        if last is not None:
            rows = [*rows, last.started, last.ended, last.pickled, -len(last.data) if last.failed else len(last.data)]
            data += last.data
            failures += last.failed
        pid = outcome.pid
        # Summed up in the worker when all went well and no run is wanted one by one: the rows were not read.
        runs = reply.runs if type(reply) is MapReply and not rows else None
        count = min(len(rows) // 4 if runs is None else runs.ran, len(batch))
        if not count:
            return 0
        size = 4 * count
        starts, ends, pickled = rows[0:size:4], rows[1:size:4], rows[2:size:4]
        runner = self.runner
        first_cycle = runner.count + 1
        failed: list[int] = []
        values: list[Any] | None = None
        broken = None
        if type(reply) is MapReply and reply.values:
            try:
                values = unpack(reply.values, MAPPED.attach)
            except Exception as unpickling:
                # The chunk's results travel as one pickle: which of them cannot be rebuilt here is not known.
                broken = unpickling
        if broken is not None:
            for i in batch[:count]:  # an error each: the stream adds each item's own note to it
                results[i] = (False, unloadable(self.name, broken, pid, count))
            failed = list(range(count))
        elif values is not None and not failures:
            first = batch[0]
            if len(values) >= count and batch[count - 1] - first == count - 1:  # consecutive: filled at C speed
                results[first:first + count] = zip(itertools.repeat(True), values[:count])
            else:
                for i, value in zip(batch, values, strict=False):
                    results[i] = (True, value)
        else:
            codes = rows[3:size:4]
            offsets = list(itertools.accumulate(map(int, map(abs, codes)), initial=0))
            view = memoryview(data)
            for position, i in enumerate(batch[:count]):
                if values is not None and codes[position] >= 0:
                    results[i] = (True, values[position])
                    continue
                try:
                    value = unpack(view[offsets[position]:offsets[position + 1]], MAPPED.attach)
                except Exception as unpickling:
                    results[i] = (False, unloadable(self.name, unpickling, pid, 1))
                    failed.append(position)
                    continue
                if codes[position] < 0:
                    results[i] = (False, remote_failure(self.name, value, pid))
                    failed.append(position)
                else:
                    results[i] = (True, value)
        if runs is None:
            runs = sum_runs(starts, ends, pickled)
        else:  # the rows were not read (each run was not wanted when the chunk was sent): the sum only
            sink = None
        if sink is None:
            self._add_summed(job, outcome, runs, len(failed), sizes)
        else:  # each run's wait and ship go to the tracer too
            add_item_runs(runner, runs, len(failed), f"process {pid}", EPOCH_OFFSET)
            if sizes:
                self._size_chunks(runs)
            if type(reply) is MapReply and replied is not None and reply.clock is not None and job.sent_at:
                split = Split(job.packed, job.sent_at, reply.clock.rebuilt, reply.clock.replying, replied.loaded)
                for started, ended, done in zip(starts, ends, pickled, strict=True):
                    wait, ship = split.times(started, ended, done)
                    merge_wait_ship(runner, wait, ship, sink, job.sent_at, pid, started)
        if sink is not None and pid is not None:
            thread = reply.thread if type(reply) is MapReply else pid
            errors = set(failed)
            traced = [(runner, starts[k], ends[k], thread, first_cycle + k, k in errors,
                       indices[i] if indices is not None and i < len(indices) else None)
                      for k, i in enumerate(batch[:count])]
            sink.remote.append((pid, {thread: "MainThread"}, traced))
        if starts and reports_elsewhere(self.stage):
            for k, i in enumerate(batch[:count]):
                ok, value = results[i]
                report_elsewhere(self.stage, starts[k] + EPOCH_OFFSET, ends[k] + EPOCH_OFFSET, None if ok else value,
                                 {"dynapipeline.worker_pid": pid, "dynapipeline.run": first_cycle + k})
        return count
