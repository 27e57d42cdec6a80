"""The worker process's side: read a message from the pipe, run it, send the reply back, until told to stop.

::

    parent ══ pipe: pickle(Call) ══► main ─► _remote.batch.run_call ─► Reply ══ pipe ══► parent
    parent ══ pipe: pickle(MapCall) ═► main ─► run_map ─► item log (shared) + MapReply ══► parent

Invariants:

- One message at a time (the next may wait in the pipe); the shared ``current``
  says where the worker is (``TAKEN`` once it has read a message, then the
  position it runs) and ``taken`` counts the messages read, so the parent knows
  what a dead worker held and what it never read.
- Nothing a stage does ends the loop: errors travel in the reply. Only ``STOP``,
  a closed pipe, the parent's death (``_die_with_parent``) or the worker's own
  limits do (``recycling.Budget``: it says so in its last reply, then exits).
- Each item of a chunk is in the item log (``_remote.messages``) as soon as it
  has run, before the next one starts.
- A plain Python module on purpose (never the compiled engine), preloaded by the
  fork server so that a worker starts with pydantic, cloudpickle and the model
  already imported.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from dynapipeline._model.lifecycle import close_process_scope
from dynapipeline._transports._remote.batch import (
    failure_of,
    loop_of,
    register_classes,
    run_call,
    unloadable_reply,
)
from dynapipeline._transports._remote.buffers import unpack
from dynapipeline._transports._remote.messages import (
    IDLE,
    MAX_KEPT_STAGES,
    READY,
    SEGMENTS,
    STOP,
    TAKEN,
    Clock,
    MapCall,
    MapReply,
    Recycling,
    Reply,
)
from dynapipeline._transports.calling import plain_call
from dynapipeline._transports.process.itemlog import ItemLog
from dynapipeline._transports.process.recycling import Budget
from dynapipeline._transports.process.shm import MAPPED, LocalArena, send_segments, take_segments

__all__ = ["main", "run_map", "run_message", "teardown_all"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
logger = logging.getLogger("dynapipeline")


def main(conn: Any, current: Any, drain: Any = None, logs: tuple[Any, ...] = (), threshold: int | None = None, *,
         recycling: Recycling | None = None, taken: Any = None) -> None:
    """The worker's loop: signal ready, then run messages until told to stop or the parent goes away.

    ``logs``: the shared item logs that stream steps' chunks write to (``_remote.messages``; ``MapCall.slot``
    picks one).
    ``taken``: the shared count of jobs read from the pipe (the parent sends again those it does not count).
    ``threshold``: results' buffers of this many bytes or more go to this worker's shared memory.
    ``recycling``: the limits after which this worker retires (``recycling.Budget``), or None.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    _run_as_batch()
    parent_process = multiprocessing.parent_process()
    parent: int = (parent_process.pid if parent_process is not None else None) or os.getppid()  # the pool's
    arena = LocalArena() if threshold is not None else None
    state: dict[str, Any] = {"logs": logs, "threshold": threshold, "arena": arena, "attach": MAPPED.attach}
    budget = state["budget"] = Budget(recycling) if recycling is not None else None
    announced: set[int] = set()  # this worker's segments the parent has
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv_bytes()
            if message[:1] == SEGMENTS:
                take_segments(sock, message)
                continue
        except (EOFError, OSError):
            break
        if message == STOP:
            teardown_all(state)  # a clean exit: the stages set up here are torn down
            break
        current.value = TAKEN
        if taken is not None:
            taken.value += 1  # from here on a death is this job's: the parent no longer sends it elsewhere
        reply = run_message(message, current, state, drain)
        del message  # its items' blocks are released with the reply (below) unless a stage keeps them
        released = MAPPED.released(parent)
        if released:
            reply = reply._replace(released=tuple(released))
        retiring = budget is not None and budget.spent(reply)
        if retiring:
            reply = reply._replace(retiring=True)
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        if arena is not None and len(arena.segments) > len(announced):
            fds = [(serial, segment.fd) for serial, segment in arena.segments.items() if serial not in announced]
            announced.update(serial for serial, _ in fds)
            send_segments(conn, sock, arena.pid, fds)
        conn.send_bytes(data)
        if retiring:
            teardown_all(state)  # a recycled worker exits cleanly: after its last reply, so nobody waits for it
            break  # the parent sends nothing more after that reply, and starts a replacement
    loop = state.get("loop")
    if loop is not None:
        loop.close()


def teardown_all(state: dict[str, Any]) -> None:
    """Run the teardowns of the stages this worker set up, last set up first (call it before a clean exit only).

    Async teardowns run on the worker's loop (``state["loop"]``, made if needed); errors are logged.
    """
    close_process_scope(lambda: loop_of(state))


def _run_as_batch() -> None:
    """Run under Linux's ``SCHED_BATCH`` policy: a worker that wakes never preempts the parent's event loop.

    A worker sleeps between chunks, so the scheduler favours it when it wakes, and
    on a machine with no spare core it would take the CPU from the parent the moment
    the parent sends it work, in the middle of what the parent does next (measured:
    tiny items through 2 workers on 2 cores ran 10-35% faster as batch). Batch is
    the policy the kernel has for such CPU-bound work: the same share of the CPU
    and the same nice value, no wake-up preemption. Nothing to do elsewhere; a
    refusal (a sandbox) only costs that speed.
    """
    if not hasattr(os, "SCHED_BATCH"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        logger.debug("worker pid %s: SCHED_BATCH refused (%r)", os.getpid(), error)


def _die_with_parent() -> None:
    """Make this worker exit when the parent process dies, whatever the stage is doing.

    - Linux, ``forkserver`` start (the default there): the worker's own parent is the
      fork server, and the kernel kills the worker when it dies (``PR_SET_PDEATHSIG``),
      even inside a long C call that holds the GIL. The fork server exits once every
      holder of its "alive" pipe is gone; each worker inherits that pipe (so that it
      could start processes, which a daemonic worker may not), so the worker closes it:
      then the parent's death ends the fork server, which ends the workers.
    - Everywhere: a thread that waits on the parent's sentinel and exits. It is the
      only guard with ``spawn`` (its parent death signal would follow the thread that
      started the worker, not the process) and on macOS; it cannot run while a stage
      holds the GIL in one long C call.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux") and os.getppid() != parent.pid:
        _set_parent_death_signal()
        _close_inherited_fork_server_pipe()
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(70)

    threading.Thread(target=watch, name="dynapipeline-parent-watch", daemon=True).start()


def _set_parent_death_signal() -> None:
    fork_server = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as error:
        logger.debug("no parent death signal (%r): the watcher thread is the only guard", error)
        return
    if os.getppid() != fork_server:
        os._exit(70)  # the fork server died before the signal was armed


def _close_inherited_fork_server_pipe() -> None:
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if server is None or fd is None:
        return
    try:
        os.close(fd)
    except OSError as error:
        logger.debug("cannot close the fork server's alive pipe (%r)", error)
    server._forkserver_alive_fd = None


def run_message(message: bytes, current: Any, state: dict[str, Any], drain: Any = None) -> Reply | MapReply:
    """The reply to one message from the parent: a ``Call`` (a batch) or a ``MapCall`` (a chunk of items)."""
    received = time.perf_counter()
    try:
        call = pickle.loads(message)
        if call.released and state.get("arena") is not None:
            state["arena"].free(call.released)
        register_classes(call.class_blobs)
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        return unloadable_reply(error, traceback.format_exc())
    if type(call) is MapCall:
        return run_map(current, call, state, received)
    return run_call(call, state, current, drain, received)


def run_map(current: Any, call: MapCall, state: dict[str, Any], received: float = 0.0) -> MapReply:
    """Run each item of a stream step's chunk through the step's stage; the pickled ``MapReply``.

    The stage arrives once per worker (``call.stage`` is empty afterwards) and is
    kept here. Each item's outcome (its result or error, and its clock readings)
    goes to the item log as soon as it has run, before the next item starts.
    """
    rebuilt_from = received or time.perf_counter()
    stages: dict[int, Any] = state.setdefault("stages", {})
    try:
        attach = state.get("attach")
        if call.stage:
            stages[call.stage_id] = unpack(call.stage, attach)[0][0]
            if len(stages) > MAX_KEPT_STAGES:
                del stages[next(iter(stages))]  # the oldest; the parent forgets it too (Worker.stages)
        stage = stages[call.stage_id]
        items = unpack(call.items, attach)
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        return MapReply(ran=0, values=b"", last=None, clock=None, thread=0,
                        unloadable=failure_of(error, traceback.format_exc()))
    logs = state.get("logs")
    log = ItemLog(logs[call.slot] if logs else None, stage.name, state)  # None: a private log
    budget: Budget | None = state.get("budget")
    stop = None
    if budget is not None:  # a recycled worker runs what its budget allows: the parent sends the rest again
        items, stop = budget.items(items), budget.stop
    rebuilt = time.perf_counter()
    plain = plain_call(stage)  # asked per chunk: a batch sent to this worker may refresh the kept stage's fields
    if plain is not None:
        ran = log.run_plain(current, plain, items, stop)
    else:
        ran = log.run_stage(current, stage, items, state, stop)
    current.value = IDLE
    del items
    values = b""  # when results are in shared memory, or need cloudpickle: the item log's pickles serve
    if not log.shared:
        try:
            values = log.pickled_values()
        except Exception:  # noqa: BLE001 - a result only cloudpickle can pickle: the parent reads the item log
            logger.debug("stage %r: results pickled one by one (cloudpickle)", stage.name)
    log.values = []
    clock = Clock(received=rebuilt_from, rebuilt=rebuilt, replying=time.perf_counter())
    return MapReply(ran=ran, values=values, last=log.last, clock=clock, thread=threading.get_native_id(),
                    runs=log.summed())
