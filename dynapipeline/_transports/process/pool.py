"""``ProcessPool``: warm worker processes served by one event loop, and the queue of jobs they take.

Long: one state machine (the workers, the jobs each holds, the queue) that every event below changes.

::

    submit(jobs) ─► queue ─► _pump ─► _send: message ══ pipe ══► worker process
                                               ▲
    _on_readable (add_reader) ◄══ pipe: reply ═╝ ─► job.finish(Replied)
    _on_death / _on_deadline / close ─► job.finish(Crashed / TimedOut / Closed)

Invariants:

- Each worker has its own pipe, watched by the event loop (``add_reader``), so
  the pool always knows which worker holds which job; a worker runs one job at
  a time. A stream step's next small chunk may wait in the pipe of a worker
  running one of the same step's (``Worker.queued``, ``Worker.may_queue``: the
  worker goes on without waiting for the parent), unless the pool recycles its
  workers; it goes to another worker if this one dies before reading it.
- The pool records what each worker has received (classes, stream stages, the
  item log's reset): a job only builds its message from it.
- Workers are started lazily (the first start runs in a thread, since a cold
  fork server takes ~0.5 s), replaced when they die, are killed or retire
  (``recycling``: a reply says so; the worker then gets nothing more), and
  stopped by ``close()``, which fails every job left with ``Closed``.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from dynapipeline._transports._remote.messages import SEGMENTS, STOP, MapReply, Recycling, Reply
from dynapipeline._transports.process.children import (
    LIVE_POOLS,
    close_quietly,
    start_context,
    start_worker,
    stop_process,
)
from dynapipeline._transports.process.handle import Closed, Crashed, PoolJob, Replied, TimedOut, Worker
from dynapipeline._transports.process.jobs import Job, singles_of
from dynapipeline._transports.process.recycling import fits
from dynapipeline._transports.process.shm import MAPPED, LocalArena, segment_fds, send_segments, take_segments

__all__ = ["ProcessPool"]

logger = logging.getLogger("dynapipeline")



class ProcessPool:
    """A warm pool of worker processes served by one event loop at a time."""

    def __init__(self, max_workers: int, start_method: str, threshold: int | None = None,
                 recycling: Recycling | None = None) -> None:
        self.max_workers = max_workers
        self.recycling = recycling  # when workers retire (None: never)
        self.retiring: list[Worker] = []  # retired, not exited yet: watched until their pipe ends
        self.start_method = start_method
        self.threshold = threshold  # buffers of this many bytes or more travel in shared memory (None: never)
        self.arena = LocalArena()  # what this pool sends to its workers (no segment until a large buffer)
        self._ctx = start_context(start_method)
        self.workers: list[Worker] = []
        self.queue: deque[PoolJob] = deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.reserved = 0  # dispatches that packed jobs for this pool and wait for it to start (not idle)
        self.started: list[Worker] = []  # started off the loop, not adopted yet
        self.starting: asyncio.Future[None] | None = None  # the off-loop start in progress
        self._pending = 0  # workers the off-loop start has still to start
        self._lock = threading.Lock()  # guards closed/started/_pending against the off-loop start
        self._start_done = threading.Event()
        self._start_done.set()
        self._failed_starts = 0
        # Set when workers keep dying on start-up; jobs submitted then fail at once (cleared by a ready worker).
        self.broken: Crashed | None = None
        self._counter = 0
        LIVE_POOLS.add(self)

    # -- life cycle ---------------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve this pool from ``loop`` (re-registers the pipes when the loop changed since last use)."""
        if self.loop is loop:
            return
        self.loop = loop
        for w in self.workers + self.retiring:
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

    def begin_start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
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
                stop_process(w.proc)
                close_quietly(w.conn)
        finally:
            with self._lock:
                self._pending = 0
            self._start_done.set()

    def _start_worker(self) -> Worker:
        self._counter += 1
        return start_worker(self._ctx, f"dynapipeline-worker-{self._counter}", self.threshold, self.recycling)

    def _adopt(self, w: Worker) -> None:
        self.workers.append(w)
        if self.closed:
            self._drop(w, kill=True)  # closed meanwhile
        elif self.loop is not None:
            self._watch(w)

    def _watch(self, w: Worker) -> None:
        assert self.loop is not None
        if w.loop is not None and w.loop is not self.loop:
            self._remove_reader(w)
        w.loop = self.loop
        self.loop.add_reader(w.fd, self._on_readable, w)
        # uvloop makes a watched fd non-blocking, but messages go whole (send_bytes/recv_bytes): on a
        # non-blocking pipe one larger than the socket buffer fails midway (a 10 MB item hung the run).
        os.set_blocking(w.fd, True)

    def _unwatch(self, w: Worker) -> None:
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        if w.loop is not None:
            self._remove_reader(w)
            w.loop = None

    def _remove_reader(self, w: Worker) -> None:
        assert w.loop is not None
        try:
            w.loop.remove_reader(w.fd)
        except (RuntimeError, ValueError, OSError) as error:  # that loop is closed, or the pipe is
            logger.debug("worker pid %s: removing its reader: %r", w.pid, error)

    def _drop(self, w: Worker, kill: bool, jobs: Iterable[PoolJob] = ()) -> int | None:
        """Remove a worker from the pool (killing it if asked); its exit code. ``jobs``: those it had read."""
        self._unwatch(w)
        if w in self.workers:
            self.workers.remove(w)
        code = stop_process(w.proc, grace=0.0 if kill else 1.0)
        close_quietly(w.conn)
        self._forget_memory(w, jobs)
        return code

    def _free_unsent(self, job: PoolJob) -> None:
        """A job that will not be sent: nobody holds its blocks (but those its caller keeps)."""
        kept = set(job.kept)
        self.arena.free([block for block in job.blocks if block not in kept])

    def _forget_memory(self, w: Worker, jobs: Iterable[PoolJob]) -> None:
        """A worker is gone: the blocks it held are free; its segments are unmapped here once unused."""
        for job in jobs:
            w.holding.difference_update(job.kept)  # its caller frees them, or sends them again
        self.arena.free(list(w.holding))
        w.holding.clear()
        MAPPED.forget(w.pid)
        w.close_sock()

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
        LIVE_POOLS.discard(self)
        workers = list(self.workers) + started + self.retiring
        self.workers.clear()
        self.retiring.clear()
        jobs = [job for w in workers for job in (w.job, w.queued) if job is not None]
        queued = list(self.queue)
        self.queue.clear()
        for w in workers:
            if w.job is None:
                try:
                    w.conn.send_bytes(STOP)
                except OSError as error:  # it died: stop_process below reaps it
                    logger.debug("worker pid %s: asking it to stop: %r", w.pid, error)
        end = time.monotonic() + 1.0
        for w in workers:
            stop_process(w.proc, grace=max(0.0, end - time.monotonic()) if w.job is None else 0.0)
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
                    close_quietly(w.conn)
        # A start in progress stops what it starts from now on; wait until it is over.
        self._start_done.wait(5.0)
        for w in workers:
            MAPPED.forget(w.pid)
        self.arena.close()

    def _after_close(self, workers: list[Worker], jobs: list[PoolJob], queued: list[PoolJob]) -> None:
        """The loop side of ``close()``: stop watching the pipes, close them, fail the jobs left."""
        for w in workers:
            self._unwatch(w)
            close_quietly(w.conn)
            w.close_sock()
            w.job = w.queued = None
        for job in jobs:
            job.finish(Closed(job.worker.pid if job.worker is not None else None))
        for job in queued:
            job.finish(Closed(None))

    # -- scheduling -----------------------------------------------------------------------------
    def submit(self, jobs: Iterable[PoolJob]) -> None:
        if self.closed:  # closed meanwhile (``close()`` from elsewhere): the jobs fail as queued ones did
            for job in jobs:
                job.finish(Closed(None))
            return
        self.queue.extend(jobs)
        self._pump()

    def _pump(self) -> None:
        queue = self.queue
        if not queue:
            return
        for w in list(self.workers):
            if w.ready and w.job is None:
                while queue and queue[0].done:
                    queue.popleft()
                if not queue:
                    return
                if self.recycling is not None and not fits(self.recycling, w, queue[0]):
                    self._retire(w, stop=True)  # the batch would take it past its limit: a fresh worker runs it
                    continue
                self._send(w, queue.popleft())
        if queue and self.recycling is None:  # a retiring worker exits after its reply: a chunk behind would wait
            for w in list(self.workers):  # every worker is busy: a chunk may wait behind one of its step's
                while queue and queue[0].done:
                    queue.popleft()
                if queue and w.may_queue(queue[0]):
                    self._send(w, queue.popleft())

    def _send(self, w: Worker, job: PoolJob) -> None:
        assert self.loop is not None
        job.sent_at = time.perf_counter()
        w.sent += 1
        job.serial = w.sent
        if job.stage_id:
            job.slot, w.next_slot = w.next_slot, 1 - w.next_slot
        message = job.message(*w.news_for(job))
        released = MAPPED.released(w.pid)
        if released:
            message = message._replace(released=tuple(released))
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        job.worker = w
        if w.job is None:
            w.job = job
            control = job.control
            w.drain.value = 1 if control is not None and control.draining else 0
        else:
            w.queued = job  # a chunk behind a chunk of the same step (``_pump``): the drain is the stream's
        blocks = job.blocks
        try:
            if blocks:
                w.holding.update(blocks)
                fds = segment_fds(self.arena, blocks, w.segments)
                if fds:
                    send_segments(w.conn, w.sock, self.arena.pid, fds)
            w.conn.send_bytes(data)
        except OSError as error:
            # The worker is dead: its reader sees the closed pipe and sends the job elsewhere.
            logger.debug("worker pid %s: sending a job failed (%r)", w.pid, error)
            return
        if job.deadline is not None:
            w.timer = self.loop.call_later(job.deadline, self._on_deadline, w, job)

    @property
    def idle(self) -> bool:
        """No job queued, running or packed for it (for any dispatch)."""
        return not self.reserved and not self.queue and all(w.job is None for w in self.workers)

    def withdraw(self, jobs: Iterable[PoolJob], kill_running: bool) -> None:
        """Forget these jobs: queued ones are not sent; running ones are killed if asked."""
        for job in jobs:
            if job.done:
                continue
            w = job.worker
            job.done = True
            if w is None:
                self._free_unsent(job)
                continue
            if kill_running and job in (w.job, w.queued):
                self._kill_withdrawn(w)
        if any(job.done for job in self.queue):
            # Withdrawn jobs leave the queue now, not when a worker next asks for work,
            # so that `idle` is true as soon as nothing real is left.
            self.queue = deque(job for job in self.queue if not job.done)
        if self.queue and not self.closed:
            self.fill()  # other dispatches' jobs wait: replace the workers just killed now, not lazily
        self._pump()

    def split(self, job: Job) -> None:
        """Replace a job whose batch a worker could not rebuild by one job per component, at the queue's head."""
        job.done = True
        singles = singles_of(job, self.threshold, self.arena)
        job.dispatch.pending += len(singles) - 1
        self.queue.extendleft(reversed(singles))

    # -- events from the loop ----------------------------------------------------------------------
    def _on_readable(self, w: Worker) -> None:
        try:
            data = w.conn.recv_bytes()
            if data[:1] == SEGMENTS:
                take_segments(w.sock, data)
                data = w.conn.recv_bytes()  # the reply that uses them, sent right after
        except (EOFError, OSError):
            self._on_death(w)
            return
        received = time.perf_counter()
        if not w.ready:
            w.ready = True
            self._failed_starts = 0
            self.broken = None
            self._pump()
            return
        job = w.job
        w.job, w.queued = w.queued, None  # the chunk queued behind it is the one it runs now
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        reply = pickle.loads(data)  # plain bytes and names: results and errors are decoded per stage
        if w.job is not None and type(reply) is MapReply and reply.clock is not None:
            # It waited in the pipe until its worker replied to the one before: waiting, not shipping.
            w.job.sent_at = max(w.job.sent_at, reply.clock.replying)
        if reply.released:
            self.arena.free(reply.released)
            w.holding.difference_update(reply.released)
        if self.recycling is not None:
            w.tasks += reply.ran if type(reply) is MapReply else len(reply.timings)
            if reply.retiring:
                self._retire(w, stop=False)
        if job is not None and not job.done:
            if type(reply) is Reply and reply.unloadable and isinstance(job, Job) and len(job.indices) > 1:
                self.split(job)  # nothing ran: find the component that cannot be rebuilt, run the others
            else:
                job.finish(Replied(reply, w.pid, received, time.perf_counter()))
        self._pump()

    def _retire(self, w: Worker, stop: bool) -> None:
        """``w`` gets nothing more (``recycling``); it exits (told to when ``stop``) and a new worker replaces it."""
        if w in self.workers:
            self.workers.remove(w)
            self.retiring.append(w)  # until its pipe ends (``_on_death``)
            if stop:
                try:
                    w.conn.send_bytes(STOP)
                except OSError as error:  # it died meanwhile: its pipe's end comes next
                    logger.debug("worker pid %s: asking it to stop: %r", w.pid, error)
            self.fill()

    def _on_death(self, w: Worker) -> None:
        if w in self.retiring:  # a retired worker exited, as it said it would: not a crash (it held no job)
            self.retiring.remove(w)
            self._drop(w, kill=False)  # the blocks it still held are free now
            return
        was_ready = w.ready
        position = w.current.value
        read, unread = w.take_back()  # final: the worker is dead
        exitcode = self._drop(w, kill=False, jobs=read)
        self._send_again(unread)
        for job in read:  # one at most: a reply written before it died was read before its end
            job.finish(Crashed(position, w.pid, exitcode))
        if self.closed:
            return
        if was_ready:
            self.fill()
        else:
            self._failed_starts += 1
            if self._failed_starts >= 3:
                # Workers die on start-up: fail what is queued rather than respawning forever.
                self.broken = Crashed(-1, w.pid, exitcode, at_start=True)
                while self.queue:
                    queued = self.queue.popleft()
                    self._free_unsent(queued)
                    queued.finish(self.broken)
            else:
                self.fill()
        self._pump()

    def _on_deadline(self, w: Worker, job: PoolJob) -> None:
        w.timer = None
        if w.job is not job:
            return
        w.job = None  # nothing is queued behind a timed job (``_pump``)
        self._drop(w, kill=True, jobs=[job])
        job.finish(TimedOut())
        self.fill()
        self._pump()

    def _kill_withdrawn(self, w: Worker) -> None:
        """Kill a worker once every job it holds was withdrawn.

        While one of them is live, the worker runs on (the withdrawn one's reply is
        dropped): killing it would end the live one too, or run its items twice. A
        step's calls are withdrawn together, so the last withdrawal kills the worker.
        """
        if any(job is not None and not job.done for job in (w.job, w.queued)):
            return
        read, unread = w.take_back()
        self._drop(w, kill=True, jobs=read)
        self._send_again(unread)  # withdrawn too: their blocks are freed, now that nobody can read them

    def _send_again(self, jobs: list[PoolJob]) -> None:
        """Jobs a worker never read: to the queue's head, in order (or freed, when withdrawn meanwhile)."""
        for job in reversed(jobs):
            job.worker = None
            if job.done:
                self._free_unsent(job)
            else:
                self.queue.appendleft(job)
