"""The worker process's side: read a ``Call``, run its components, send a ``Reply``, until told to stop.

A plain Python module on purpose (never the compiled engine), preloaded by the
fork server so that a worker starts with pydantic, cloudpickle and the model
already imported. The messages are in ``process_messages``; the functions that
rebuild shipped objects in ``rebuild``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from dynapipeline._engine import EPOCH_OFFSET, RunControl, TraceSink, current_control, current_trace, set_tracing
from dynapipeline._model.component import private_of
from dynapipeline._model.group import Container
from dynapipeline._transports._remote.messages import (
    IDLE,
    LOG_DATA,
    LOG_SIZE,
    LOG_SLOTS,
    LOG_TABLE,
    MAX_KEPT_STAGES,
    READY,
    STOP,
    TAKEN,
    ItemResult,
    LoggedItem,
    MapCall,
    MapReply,
    Reply,
)
from dynapipeline._transports._remote.rebuild import register_class, timings_of
from dynapipeline._transports.calling import needs_loop, plain_call, run_component

__all__ = ["error_bytes", "main", "reply_bytes", "run_batch", "run_components", "run_map"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_ROW = struct.Struct("=4d")  # an item log row (process_messages); native doubles, as the parent reads them
logger = logging.getLogger("dynapipeline")


def main(conn: Any, current: Any, drain: Any = None, log: Any = None) -> None:
    """The worker's loop: signal ready, then run batches until told to stop or the parent goes away.

    ``log``: the shared item log that stream steps' chunks write to (``process_messages``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    state: dict[str, Any] = {"log": log}
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if message == STOP:
            break
        current.value = TAKEN
        conn.send_bytes(run_batch(current, message, state, drain))
    loop = state.get("loop")
    if loop is not None:
        loop.close()


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


def error_bytes(error: BaseException) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(error)
        pickle.loads(data)  # an exception that cannot be rebuilt falls back to its text
        return data
    except Exception as error_of_error:  # the parent raises a RemoteError with the text instead
        logger.debug("an error of type %s cannot travel to the parent: %r", type(error).__name__, error_of_error)
        return b""


def _mirror_drain(control: Any, drain: Any, over: threading.Event) -> None:
    """Until ``over`` is set: once the parent sets the shared ``drain`` flag, drain ``control``."""
    while not over.wait(0.005):
        if drain.value:
            control.draining = True
            return


def run_batch(current: Any, message: bytes, state: dict[str, Any], drain: Any = None) -> bytes:
    """Run one batch and return the reply bytes.

    Groups run under a run control of their own whose ``draining`` mirrors the
    parent's ``drain`` flag, so ``stop(drain=True)`` ends their cycle loops. When
    the parent traces, the runs made here travel back in ``Reply.trace``.
    """
    received = time.perf_counter()
    try:
        call = pickle.loads(message)
        for class_id, blob in call.class_blobs:
            register_class(class_id, blob, pickle.loads)
        if type(call) is MapCall:
            return run_map(current, call, state, received)
        components, args, kwargs = pickle.loads(call.payload)
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        return reply_bytes([], [], error, traceback.format_exc(), 0, unloadable=True)
    batch = _Batch(components, (received, time.perf_counter()), call.trace)
    if drain is None or not any(isinstance(c, Container) for c in components):
        return batch.run(current, args, kwargs, state)
    control = RunControl()
    control.draining = bool(drain.value)
    over = threading.Event()
    watcher = threading.Thread(target=_mirror_drain, args=(control, drain, over), daemon=True,
                               name="dynapipeline-drain-watch")
    watcher.start()
    token = current_control.set(control)
    try:
        return batch.run(current, args, kwargs, state)
    finally:
        current_control.reset(token)
        over.set()
        watcher.join()
        if control.cleanups:
            # Resources that live for "the run" (a thread strategy's pool) end with the batch.
            loop = state.get("loop")
            if loop is None:
                loop = state["loop"] = asyncio.new_event_loop()
            loop.run_until_complete(control.finish())


def run_components(current: Any, components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   state: dict[str, Any]) -> bytes:
    """Run components in order until one fails; the pickled ``Reply`` (results, timings, the error if any)."""
    now = time.perf_counter()
    return _Batch(components, (now, now), False).run(current, args, kwargs, state)


def run_map(current: Any, call: MapCall, state: dict[str, Any], received: float = 0.0) -> bytes:
    """Run each item of a stream step's chunk through the step's stage; the pickled ``MapReply``.

    The stage arrives once per worker (``call.stage`` is empty afterwards) and is
    kept here. Each item's outcome (its result or error, and its clock readings)
    goes to the item log as soon as it has run, before the next item starts.
    """
    rebuilt_from = received or time.perf_counter()
    stages: dict[int, Any] = state.setdefault("stages", {})
    try:
        if call.stage:
            stages[call.stage_id] = pickle.loads(call.stage)[0][0]
            if len(stages) > MAX_KEPT_STAGES:
                del stages[next(iter(stages))]  # the oldest; the parent forgets it too (Worker.stages)
        stage = stages[call.stage_id]
        items = pickle.loads(call.items)
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        failure = _item_failure(error, traceback.format_exc())
        return pickle.dumps(MapReply(0, b"", None, (), 0, failure), protocol=pickle.HIGHEST_PROTOCOL)
    log = _ItemLog(state.get("log"), stage.name)
    rebuilt = time.perf_counter()
    plain = plain_call(stage)
    if plain is not None:
        ran = log.run_plain(current, plain, items)
    else:
        ran = log.run_stage(current, stage, items, state)
    current.value = IDLE
    try:
        values = pickle.dumps(log.values, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a result only cloudpickle can pickle: the parent takes each from the item log
        values = b""
    reply = MapReply(ran, values, log.last, (rebuilt_from, rebuilt, time.perf_counter()), threading.get_native_id())
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)


class _ItemLog:
    """Runs a chunk's items, writing each one's outcome to the worker's shared item log (``process_messages``)."""

    def __init__(self, buffer: Any, name: str) -> None:
        if buffer is None:  # not a pool's worker: a private log, the same layout
            buffer = (ctypes.c_ubyte * LOG_SIZE)()
        self.view = memoryview(buffer).cast("B")
        self.committed = ctypes.c_int64.from_buffer(buffer, 0)
        self.failures = ctypes.c_int64.from_buffer(buffer, 8)
        self.name = name
        self.count = 0
        self.used = 0
        self.last: LoggedItem | None = None  # the item that did not fit: it travels in the reply, ends the chunk
        self.values: list[Any] = []  # the results, None where an item failed (the reply's ``values``)
        self.committed.value = 0
        self.failures.value = 0

    def run_plain(self, current: Any, plain: Any, items: list[Any]) -> int:
        """Call ``plain`` on each item (a plain ``def`` stage: no runner needed); how many ran."""
        clock = time.perf_counter  # the engine's clock
        dumps = pickle.dumps
        protocol = pickle.HIGHEST_PROTOCOL
        pack_row = _ROW.pack_into
        view = self.view
        committed = self.committed
        room = LOG_SIZE - LOG_DATA
        used = 0
        count = 0
        keep = self.values.append
        for item in items:
            current.value = count
            t0 = clock()
            try:
                value = plain(item)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                self.count, self.used = count, used
                self.failed(t0, clock(), error, traceback.format_exc())
                count, used = self.count, self.used
                if self.last is not None:
                    return count + 1
                continue
            t1 = clock()
            keep(value)
            try:
                data = dumps(value, protocol)
            except Exception:
                self.count, self.used = count, used
                self.values.pop()
                self.value(t0, t1, value)  # cloudpickle, or the item fails
                count, used = self.count, self.used
                if self.last is not None:
                    return count + 1
                continue
            size = len(data)
            if count >= LOG_SLOTS or used + size > room:
                self.last = LoggedItem(t0, t1, clock(), False, data)
                return count + 1
            pack_row(view, LOG_TABLE + count * 32, t0, t1, clock(), size)
            at = LOG_DATA + used
            view[at:at + size] = data
            used += size
            count += 1
            committed.value = count  # last: the item is whole in the log from here on
        self.count, self.used = count, used
        return count

    def run_stage(self, current: Any, stage: Any, items: list[Any], state: dict[str, Any]) -> int:
        """Run each item through the stage's runner (handlers, timeout, retries); how many ran."""
        loop = None
        if needs_loop(stage):
            loop = state.get("loop")
            if loop is None:
                loop = state["loop"] = asyncio.new_event_loop()
        runner = stage.__pydantic_private__["_runner"]
        no_kwargs: dict[str, Any] = {}
        for position, item in enumerate(items):
            current.value = position
            try:
                value = run_component(stage, (item,), no_kwargs, loop)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                self.failed(runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, error,
                            traceback.format_exc())
            else:
                self.value(runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, value)
            if self.last is not None:
                return position + 1  # no room left in the log: the parent sends the rest again
        return len(items)

    def value(self, t0: float, t1: float, value: Any) -> None:
        try:
            data = _dump_value(value)
        except Exception as bad:
            self.values.append(None)
            unpicklable = TypeError(f"stage {self.name!r} returned a result that cannot be pickled "
                                    f"({type(value).__name__}: {bad})")
            self.add(t0, t1, True, pickle.dumps(_item_failure(unpicklable, ""), protocol=pickle.HIGHEST_PROTOCOL))
            return
        self.values.append(value)
        self.add(t0, t1, False, data)

    def failed(self, t0: float, t1: float, error: BaseException, tb: str) -> None:
        self.values.append(None)
        self.add(t0, t1, True, pickle.dumps(_item_failure(error, tb), protocol=pickle.HIGHEST_PROTOCOL))

    def add(self, t0: float, t1: float, failed: bool, data: bytes) -> None:
        """Log one item's outcome (its pickle, ``failed``: an ``ItemResult``) and commit it."""
        pickled = time.perf_counter()
        count = self.count
        size = len(data)
        used = self.used
        if count >= LOG_SLOTS or used + size > LOG_SIZE - LOG_DATA:
            self.last = LoggedItem(t0, t1, pickled, failed, data)
            return
        _ROW.pack_into(self.view, LOG_TABLE + count * 32, t0, t1, pickled, -size if failed else size)
        at = LOG_DATA + used
        self.view[at:at + size] = data
        self.used = used + size
        self.count = count + 1
        if failed:
            self.failures.value += 1
        self.committed.value = count + 1  # last: the item is whole in the log from here on


def _item_failure(error: BaseException, tb: str) -> ItemResult:
    return ItemResult(error_bytes(error), tb, f"{type(error).__qualname__}: {error}")


class _Batch:
    """One batch's components, its clock readings, and the runs it traces (when the parent traces)."""

    def __init__(self, components: list[Any], clock: tuple[float, float], trace: bool) -> None:
        self.components = components
        self.clock: list[Any] = list(clock)
        self.sink = TraceSink() if trace else None

    def run(self, current: Any, args: tuple[Any, ...], kwargs: dict[str, Any], state: dict[str, Any]) -> bytes:
        if self.sink is None:
            return self._run(current, args, kwargs, state)
        set_tracing(True)  # one batch at a time in a worker: on for exactly this batch
        token = current_trace.set(self.sink)
        try:
            return self._run(current, args, kwargs, state)
        finally:
            current_trace.reset(token)
            set_tracing(False)

    def _run(self, current: Any, args: tuple[Any, ...], kwargs: dict[str, Any], state: dict[str, Any]) -> bytes:
        results: list[Any] = []
        timings: list[Any] = []
        for position, component in enumerate(self.components):
            current.value = position
            loop = None
            if needs_loop(component):
                loop = state.get("loop")
                if loop is None:
                    loop = state["loop"] = asyncio.new_event_loop()
            try:
                result = run_component(component, args, kwargs, loop)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                timings.append(timings_of(component))
                self._ran(component)
                return self._reply(results, timings, error, traceback.format_exc(), position)
            timings.append(timings_of(component))
            try:
                results.append(_dump_value(result))
            except Exception as bad:
                unpicklable = TypeError(f"stage {component.name!r} returned a result that cannot be "
                                        f"pickled ({type(result).__name__}: {bad})")
                self._ran(component)
                return self._reply(results, timings, unpicklable, "", position)
            self._ran(component)
        current.value = IDLE
        return self._reply(results, timings, None, "", -1)

    def _ran(self, component: Any) -> None:
        runner = private_of(component)["_runner"]
        self.clock.append((runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, time.perf_counter()))

    def _reply(self, values: list[bytes], timings: list[Any], error: BaseException | None, tb: str,
               failed_at: int) -> bytes:
        self.clock.insert(2, time.perf_counter())
        trace = () if self.sink is None else self._trace()
        if error is None:
            reply = Reply(values, timings, b"", "", "", -1, False, tuple(self.clock), trace)
        else:
            reply = Reply(values, timings, error_bytes(error), tb, f"{type(error).__qualname__}: {error}",
                          failed_at, False, tuple(self.clock), trace)
        return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)

    def _trace(self) -> tuple[Any, ...]:
        """The traced runs, each naming its component by (position in the batch, index below it)."""
        sink = self.sink
        assert sink is not None
        where: dict[int, tuple[int, int]] = {}
        for position, component in enumerate(self.components):
            members = component.iter_components() if isinstance(component, Container) else (component,)
            for index, member in enumerate(members):
                where[id(private_of(member)["_runner"])] = (position, index)
        runs = [(*where[id(run[0])], *run[1:]) for run in sink.runs if id(run[0]) in where]
        return (os.getpid(), dict(sink.threads), runs)


def _dump_value(value: Any) -> bytes:
    """Pickle one result: the standard pickler when it can (several times faster), else cloudpickle."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # lambdas, local classes, ...: cloudpickle sends them by value
        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def reply_bytes(values: list[bytes], timings: list[Any], error: BaseException, tb: str, failed_at: int,
           unloadable: bool = False) -> bytes:
    reply = Reply(values, timings, error_bytes(error), tb, f"{type(error).__qualname__}: {error}", failed_at,
                  unloadable)
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
