"""The parent's handle on a worker process (``Worker``), what a pool sends it (``PoolJob``), how that ends.

::

    ProcessPool ── PoolJob (a Job or a stream's MapJob) ──► Worker ══ pipe ══► the worker process
        ◄── Outcome: Replied / TimedOut / Crashed / Closed ──┘

Invariants:

- A job ends with exactly one ``Outcome`` (``PoolJob.finish`` ignores any later one).
- A worker holds at most two jobs: the one it runs and a stream step's next chunk,
  waiting in its pipe (``Worker.queued``), each with its own item log.
- What a worker has received (its classes, its stream steps' stages) is the
  pool's to record, on the ``Worker``: a job only builds its message from it.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from dynapipeline._transports._remote.buffers import Block
from dynapipeline._transports._remote.messages import LOG_HEAD, MAX_KEPT_STAGES, Call, MapCall, MapReply, Reply
from dynapipeline._transports._remote.pickling import REGISTRY

__all__ = ["QUEUED_BYTES", "Closed", "Crashed", "Outcome", "PoolJob", "Replied", "TimedOut", "Worker"]

# The largest chunk (its items' pickle) sent to a busy worker: far under a Unix socket's buffer (208 KiB by
# default on Linux), so that the write never blocks.
QUEUED_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class Replied:
    """The worker answered (a ``Reply`` to a ``Job``, a ``MapReply`` to a stream's ``MapJob``).

    ``received`` and ``loaded``: perf_counter when its reply was read and unpickled.
    """

    reply: Reply | MapReply
    pid: int
    received: float = 0.0
    loaded: float = 0.0


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The parent's deadline for a timed stage passed; its worker was killed."""


@dataclass(frozen=True, slots=True)
class Crashed:
    """The worker died holding the job; ``position`` is the component it was running (or a state < 0).

    ``at_start``: no worker got as far as taking a job (workers die on start-up, e.g. a script
    without the ``__main__`` guard): retrying cannot help.
    """

    position: int
    pid: int | None
    exitcode: int | None
    at_start: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """The pool was closed while the job was queued or running."""

    pid: int | None


Outcome = Replied | TimedOut | Crashed | Closed


class PoolJob(Protocol):
    """What the pool schedules: a batch of components (``Job``) or a chunk of a stream step's items (``MapJob``)."""

    done: bool
    worker: Worker | None
    sent_at: float
    serial: int  # the how-manyth job sent to its worker (``Worker.taken`` says whether it read it)
    slot: int  # the worker's item log it uses (a stream step's chunk)

    @property
    def cids(self) -> set[int]:
        """The ids of the classes its message needs."""

    @property
    def stage_id(self) -> int:
        """The stream step's stage it runs, kept by the worker across chunks; 0 for a batch."""

    @property
    def deadline(self) -> float | None:
        """Seconds the parent allows it once sent, or None."""

    @property
    def control(self) -> Any:
        """The run's ``RunControl`` when a drain must reach the worker, else None."""

    @property
    def queued_bytes(self) -> int:
        """The size of its message when sent behind another (a stream step's chunk: its items' pickle)."""

    @property
    def blocks(self) -> list[Block]:
        """The shared-memory blocks its message holds (the worker releases them, or they are freed if it dies)."""

    @property
    def kept(self) -> tuple[Block, ...]:
        """Those of its blocks the pool never frees: the job's caller does (it may send them again)."""

    def message(self, blobs: list[tuple[int, bytes]], stage: bool) -> Call | MapCall:
        """The message to send: ``blobs`` are the classes the worker lacks; ``stage``: it lacks the stage too."""

    def finish(self, outcome: Outcome) -> None:
        """Take its outcome (the first one only)."""


class Worker:
    """One worker process, its pipe, and what it is doing."""

    __slots__ = ("proc", "conn", "fd", "current", "taken", "drain", "log_views", "pid", "ready", "job",
                 "queued", "sent", "next_slot", "known", "stages", "timer", "loop", "segments", "holding", "tasks",
                 "_sock")

    def __init__(self, proc: Any, conn: Any, current: Any, drain: Any, logs: tuple[Any, ...] = (),
                 taken: Any = None) -> None:
        self.proc = proc
        self.conn = conn
        self.fd: int = conn.fileno()
        self.current = current  # shared: where the worker is with its job (_remote.messages)
        self.taken = taken  # shared: how many jobs the worker has read from its pipe
        self.drain = drain  # shared: set by the parent when the run of the job it runs drains
        # The shared item logs a stream step's chunks write (_remote.messages.LOG_HEAD), viewed once: read per chunk.
        self.log_views = tuple(memoryview(log).cast("B") for log in logs)
        self.pid: int = proc.pid
        self.ready = False
        self.job: PoolJob | None = None  # the job it runs (or will read next)
        self.queued: PoolJob | None = None  # a chunk sent behind ``job``, read when that one is done
        self.sent = 0  # jobs sent so far (``PoolJob.serial``)
        self.next_slot = 0  # the item log the next chunk uses
        self.known: set[int] = set()  # ids of the classes this worker has received
        self.stages: dict[int, None] = {}  # ids of the stream steps' stages it keeps, oldest first
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.segments: set[int] = set()  # the pool's shared-memory segments this worker has (their fds were sent)
        self.holding: set[Block] = set()  # the pool's blocks sent to it and not released yet
        self.tasks = 0  # stage runs its replies reported (counted when the pool recycles workers)
        self._sock: socket.socket | None = None

    def news_for(self, job: PoolJob) -> tuple[list[tuple[int, bytes]], bool]:
        """The classes this worker lacks for ``job`` and whether it lacks its stage; recorded as sent from here on."""
        blobs = REGISTRY.blobs_for(job.cids, self.known) if job.cids else []
        if blobs:
            self.known.update(cid for cid, _ in blobs)
        stage_id = job.stage_id
        if not stage_id:
            return blobs, False
        if self.log_views:
            LOG_HEAD.pack_into(self.log_views[job.slot], 0, 0, 0)  # the items of a chunk before are gone
        if stage_id in self.stages:
            return blobs, False
        self.stages[stage_id] = None
        if len(self.stages) > MAX_KEPT_STAGES:
            del self.stages[next(iter(self.stages))]  # the worker drops the same one
        return blobs, True

    def may_queue(self, job: PoolJob) -> bool:
        """Whether ``job`` may wait in this worker's pipe: a small chunk of the step it runs, neither timed.

        Small: its message fits in the pipe's buffer at once (no class the worker lacks, items under
        ``QUEUED_BYTES``), since the parent's write blocks while the busy worker does not read, and the
        worker's reply would then block too. Not in shared memory (large items): it waits in the parent,
        whose memory stays bounded by the step's calls.
        """
        running = self.job
        return running is not None and self.queued is None and running.stage_id == job.stage_id != 0 \
            and running.deadline is None and job.deadline is None and not job.blocks \
            and job.queued_bytes <= QUEUED_BYTES and job.cids <= self.known

    def take_back(self) -> tuple[list[PoolJob], list[PoolJob]]:
        """Empty the hands of a worker about to go: the jobs it read, and those it never read."""
        taken = self.taken.value
        read = []
        unread = []
        for job in (self.job, self.queued):
            if job is None:
                continue
            if job.serial <= taken:
                read.append(job)
            else:
                unread.append(job)
                self.holding.difference_update(job.blocks)  # still the job's: it is sent again, or freed
        self.job = self.queued = None
        return read, unread

    @property
    def sock(self) -> socket.socket:
        """The pipe's Unix socket, to pass shared-memory segments' fds (made on first need)."""
        if self._sock is None:
            self._sock = socket.socket(fileno=os.dup(self.fd))
        return self._sock

    def close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
