"""What travels between the parent and a worker process, as named types (never positional tuples).

Over each worker's pipe (``multiprocessing.connection``)::

    worker -> parent   READY                         once, when the worker can take jobs
    parent -> worker   pickle(Call)                   one batch of components
    worker -> parent   pickle(Reply)                  its outcome
    parent -> worker   STOP                           exit when idle

Besides the pipe, each worker shares two small values with the parent:
``current`` (where the worker is with its job: see ``IDLE``/``SENT``/``TAKEN``,
or the position of the component it runs) and ``drain`` (set by the parent when
the run of the groups it runs drains).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["IDLE", "READY", "SENT", "STOP", "TAKEN", "Call", "Reply"]

READY = b"R"
STOP = b""

# Values of the shared ``current`` besides a component's position. The parent sets SENT
# before sending a job and the worker TAKEN as soon as it has read it: a worker that
# dies while the value is still SENT never held its job, which then goes elsewhere.
IDLE, SENT, TAKEN = -1, -2, -3


class Call(NamedTuple):
    """Parent to worker: one batch of components to run."""

    class_blobs: list[tuple[int, bytes]]  # (class id, pickle) of the classes this worker has not received yet
    payload: bytes  # cloudpickle of (components, args, kwargs)
    trace: bool = False  # a tracer is active in the dispatching context: send the runs back (``Reply.trace``)


class Reply(NamedTuple):
    """Worker to parent: the outcome of one ``Call``."""

    values: list[bytes]  # each result pickled on its own, so one that cannot be rebuilt names its stage
    # Per component run: (timing, durations, slowest) of it and, for a group, of its members (``rebuild.timings_of``).
    timings: list[list[tuple[Any, ...]]]
    error: bytes  # the pickled exception; b"" if none or if it cannot be rebuilt (then see ``text``)
    traceback: str
    text: str  # "Type: message" of the error, for when ``error`` cannot travel
    failed_at: int  # position of the component that failed, -1 if none
    unloadable: bool = False  # the batch could not be rebuilt in the worker, so nothing in it ran
    # time.perf_counter() readings in the worker (a system-wide monotonic clock on Linux and macOS, so they
    # compare with the parent's): (received, rebuilt, replying), then per component (run start, run end,
    # result pickled). The parent splits each run's wall time into waiting, shipping and work with them.
    clock: tuple[Any, ...] = ()
    trace: tuple[Any, ...] = ()  # when Call.trace: (pid, {thread id: name}, [(position, member, t0, t1, tid, ...)])
