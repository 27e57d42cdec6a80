"""What travels between the parent and another process, as named types (never positional tuples).

``Call`` and ``Reply`` are the batch runner's (``_remote.batch``) input and output,
in a worker process and in a Dask task alike (Dask ships them itself). Over each
worker process's pipe (``multiprocessing.connection``)::

    worker -> parent   READY                         once, when the worker can take jobs
    parent -> worker   pickle(Call)                   one batch of components
    worker -> parent   pickle(Reply)                  its outcome
    parent -> worker   pickle(MapCall)                a chunk of a stream step's items for its stage (the next
                                                      chunk of that stage may follow before this one's reply: the
                                                      worker reads it when it is done with this one)
    worker -> parent   pickle(MapReply)               the chunk's end: its results (each item's outcome is in the log)
                                                      (a reply with ``retiring``: the worker exits right after it)
    parent -> worker   STOP                           exit when idle
    either way         SEGMENTS + pickle(Segments),   the sender's new shared-memory segments, then their fds
                       then the fds (SCM_RIGHTS)      (before the first message whose blocks are in them)

Large buffers (numpy arrays, bytes, ...) of any pickle above are not in it: they are
written once into the sender's shared memory, and the pickle names their blocks
(``_remote.buffers``, ``process.shm``). Each message says which of the receiver's
blocks its sender has released since the last one (``released``): the receiver
reuses them.

Besides the pipe, each worker shares with the parent three small values,
``current`` (where the worker is with its job: see ``IDLE``/``TAKEN``, or the
position of the component it runs), ``taken`` (how many jobs it has read from its
pipe: a job sent after those never ran, and goes to another worker when this one
dies) and ``drain`` (set by the parent when the run of the groups it runs
drains), and two buffers, its *item logs*: a stream step's chunk writes each
item's outcome to the one its ``MapCall`` names (``slot``) as soon as the item
has run (see ``LOG_SIZE``), so the parent still has the outcomes of the items
that finished when a later item of the chunk kills the worker, and never runs
them again. Two, so that the chunk queued behind a running one has its own.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from dynapipeline._transports._remote.buffers import Block
from dynapipeline._transports.calling import ItemRuns

__all__ = ["IDLE", "LOG_DATA", "LOG_HEAD", "LOG_SIZE", "LOG_SLOTS", "LOG_TABLE", "MAX_KEPT_STAGES", "READY",
           "SEGMENTS", "STOP", "TAKEN", "Call", "Clock", "Failure", "LoggedItem", "MapCall", "MapReply",
           "Recycling", "Reply", "RunStats", "Segments", "Timing", "Trace"]

READY = b"R"
STOP = b""
SEGMENTS = b"G"  # first byte of a Segments message (a pickled message starts with b"\x80")

# Values of the shared ``current`` besides a component's position: between jobs, and
# as soon as the worker has read one (before it counts it in ``taken``).
IDLE, TAKEN = -1, -3

# An item log, in one shared buffer of LOG_SIZE bytes (two per worker):
# - LOG_HEAD: items committed, how many of them failed;
# - at LOG_TABLE, LOG_SLOTS rows of 4 doubles per item: perf_counter readings of its run's start and end and
#   of its pickle's end (its run's end when the compiled loop encoded it: that takes nanoseconds), then its
#   pickle's length (negated when the item failed);
# - at LOG_DATA, the items' pickles one after the other (the result, or a ``Failure`` when failed).
# The worker writes a row and its pickle first and the head last, so the head never counts an item that
# is not whole; the parent resets the head before it sends a chunk. An item whose pickle finds no room
# (or no row) left travels in ``MapReply.last`` instead and ends its chunk (the parent sends the rest again).
LOG_SIZE = 1 << 20
LOG_SLOTS = 4096
LOG_HEAD = struct.Struct("<qq")
LOG_TABLE = LOG_HEAD.size
LOG_DATA = LOG_TABLE + LOG_SLOTS * 32

# Stream steps' stages a worker keeps (oldest dropped first). The parent mirrors the
# worker's set in the same order, so both forget the same stage at the same time.
MAX_KEPT_STAGES = 256


class Call(NamedTuple):
    """Parent to worker: one batch of components to run."""

    class_blobs: list[tuple[int, bytes]]  # (class id, pickle) of the classes this worker has not received yet
    payload: bytes  # cloudpickle of (components, args, kwargs) (``buffers.pack``: large buffers in shared memory)
    trace: bool = False  # a tracer is active in the dispatching context: send the runs back (``Reply.trace``)
    released: tuple[Block, ...] = ()  # the worker's blocks the parent is done with


class Failure(NamedTuple):
    """An exception raised in a worker, as it travels; the parent rebuilds it (``replies.remote_error``)."""

    error: bytes  # the pickled exception; b"" if it cannot be rebuilt in the parent (then see ``text``)
    traceback: str  # the worker's formatted traceback ("" when there is none, e.g. a result that cannot be pickled)
    text: str  # "Type: message" of the error, for when ``error`` cannot travel


class RunStats(NamedTuple):
    """The fields of a ``Timing``'s stats (``Runner.timing()``): ``RunStats._make(stats).end_time``.

    A name to read them by, off the hot path: the stats travel as the engine's
    plain tuple, one less object to pickle per component.
    """

    start_time: float  # epoch seconds, as the parent's
    end_time: float
    runs: int  # how many runs (``Runner.count``; ``count`` is a tuple method)
    total: float
    min: float
    max: float
    errors: int


# A component's timing in the worker and the runs made there, for ``Runner.adopt`` in the parent:
# ``(stats, durations, slowest)``, always read by unpacking into those three names.
#   stats: the engine's record (see ``RunStats``); durations: the runs made in the worker (up to the
#   ring's size, oldest first); slowest: (elapsed, cycle) of the slowest of them.
# A plain tuple on purpose: one travels per component, and as a NamedTuple it cost about 1 µs more
# each (pickling 1,000 went from 0.12 to 0.73 ms, unpickling from 0.24 to 0.44 ms): 10% of a batch
# of 1,000 no-op stages (benchmarks/test_process_bench.py::test_engine_process_noop_1000).
Timing = tuple[tuple[float, float, int, float, float, float, int], list[float], list[tuple[float, int]]]


class Clock(NamedTuple):
    """time.perf_counter() readings in the worker, which the parent splits each run's wall time with.

    A system-wide monotonic clock on Linux and macOS, so they compare with the
    parent's: waiting, shipping and work (``jobs.Split``).
    """

    received: float  # the message arrived
    rebuilt: float  # its components (or items) were rebuilt
    replying: float  # the reply was about to be pickled
    runs: Sequence[tuple[float, float, float]] = ()  # per component: (run start, run end, result pickled)


class Trace(NamedTuple):
    """The runs a worker traced for the parent's tracer (when ``Call.trace``)."""

    pid: int
    threads: dict[int, str]  # native thread id: name
    runs: list[tuple[Any, ...]]  # (position in the batch, index below it, then the engine's trace record)


class Reply(NamedTuple):
    """Worker to parent: the outcome of one ``Call``."""

    values: list[bytes]  # each result pickled on its own, so one that cannot be rebuilt names its stage
    # Per component run: its Timing and, for a group, its members' (``rebuild.timings_of``).
    timings: list[list[Timing]]
    failure: Failure | None = None  # the error that ended the batch, if any
    failed_at: int = -1  # position of the component that failed, -1 if none
    unloadable: bool = False  # the batch could not be rebuilt in the worker, so nothing in it ran
    clock: Clock | None = None  # None when nothing ran
    trace: Trace | None = None
    released: tuple[Block, ...] = ()  # the parent's blocks this worker is done with
    retiring: bool = False  # the worker reached its limits (``Recycling``): it exits after this reply


class MapCall(NamedTuple):
    """Parent to worker: a chunk of a stream step's items, each to be run through the step's stage."""

    class_blobs: list[tuple[int, bytes]]
    stage_id: int  # the parent's id for the stage: the worker keeps the stage under it
    stage: bytes  # the stage (``dumps_batch`` of it); b"" when this worker has received it before
    items: bytes  # the list of items (``buffers.pack``)
    released: tuple[Block, ...] = ()  # as in ``Call``
    slot: int = 0  # the item log its items go to (0 or 1: the chunk queued behind this one uses the other)


class LoggedItem(NamedTuple):
    """One item's outcome, as in the item log (for the one that did not fit there)."""

    started: float
    ended: float
    pickled: float
    failed: bool
    data: bytes  # the pickled result, or the pickled ``Failure`` when ``failed``


class MapReply(NamedTuple):
    """Worker to parent: the end of one ``MapCall``; its items' timings and errors are in the item log."""

    ran: int  # items run, from the chunk's first (fewer than sent when ``last`` ended the chunk early)
    # pickle of the list of the results of the items run (None where one failed): one pickle is much cheaper
    # to load than one per item. b"" when the list cannot be pickled at once: the item log's pickles serve then.
    values: bytes
    last: LoggedItem | None  # the last item run, when the item log had no room left for it
    clock: Clock | None  # None when the chunk could not be rebuilt (``unloadable``)
    thread: int  # native id of the thread that ran the items (the tracer's track)
    unloadable: Failure | None = None  # the error rebuilding the stage or the items, if any
    released: tuple[Block, ...] = ()  # as in ``Reply``
    retiring: bool = False  # as in ``Reply`` (``ran`` may then be fewer than sent: the parent sends the rest again)
    # The runs of the items logged, summed up (None when ``last`` holds one): the parent adds them to the stage's
    # stats without reading the log's rows, unless it needs each run (errors, a tracer, OpenTelemetry).
    runs: ItemRuns | None = None


class Recycling(NamedTuple):
    """Parent to worker, at its start: when it retires (``process.recycling``); None: no such limit."""

    max_tasks: int | None  # stage runs (a chunk's items count one each) before it retires
    max_memory: int | None  # bytes of resident memory (RSS) above which it retires after the current item


class Segments(NamedTuple):
    """Either way: the sender's shared-memory segments whose fds follow on the pipe's socket, in this order."""

    owner: int  # the sender's pid (``Block.owner``)
    serials: list[int]
