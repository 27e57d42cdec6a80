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
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from dynapipeline._engine import EPOCH_OFFSET, RunControl, TraceSink, current_control, current_trace, set_tracing
from dynapipeline._model.component import private_of
from dynapipeline._model.group import Container
from dynapipeline._transports.calling import needs_loop, plain_call, run_component
from dynapipeline._transports.process_messages import (
    IDLE,
    LOG_HEAD,
    LOG_RECORD,
    MAX_KEPT_STAGES,
    READY,
    STOP,
    TAKEN,
    ItemResult,
    MapCall,
    MapReply,
    Reply,
)
from dynapipeline._transports.rebuild import register_class, timings_of

__all__ = ["error_bytes", "main", "reply_bytes", "run_batch", "run_components", "run_map"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
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
        return pickle.dumps(MapReply(0, b"", (), 0, failure), protocol=pickle.HIGHEST_PROTOCOL)
    log = _ItemLog(state.get("log"), stage.name)
    clock = time.perf_counter  # the engine's clock: Runner.record takes its readings
    rebuilt = clock()
    plain = plain_call(stage)
    loop = None
    if plain is None and needs_loop(stage):
        loop = state.get("loop")
        if loop is None:
            loop = state["loop"] = asyncio.new_event_loop()
    runner = stage.__pydantic_private__["_runner"]
    no_kwargs: dict[str, Any] = {}
    ran = 0
    for position, item in enumerate(items):
        current.value = position
        if plain is not None:
            t0 = clock()
            try:
                value = plain(item)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                t1 = clock()
                log.failed(t0, t1, error, traceback.format_exc())
            else:
                t1 = clock()
                log.value(t0, t1, value)
        else:
            try:
                value = run_component(stage, (item,), no_kwargs, loop)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                t0, t1 = runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET
                log.failed(t0, t1, error, traceback.format_exc())
            else:
                log.value(runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, value)
        ran = position + 1
        if log.last:
            break  # no room left in the log: the parent sends the rest again
    current.value = IDLE
    reply = MapReply(ran, log.last, (rebuilt_from, rebuilt, clock()), threading.get_native_id())
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)


class _ItemLog:
    """Writes a chunk's item outcomes to the worker's shared item log (``LOG_HEAD``), one record per item."""

    def __init__(self, buffer: Any, name: str) -> None:
        self.view = memoryview(buffer).cast("B") if buffer is not None else memoryview(bytearray(LOG_HEAD.size))
        self.name = name
        self.count = 0
        self.used = 0
        self.last = b""  # the record that did not fit: it travels in the reply and ends the chunk
        LOG_HEAD.pack_into(self.view, 0, 0, 0)

    def value(self, t0: float, t1: float, value: Any) -> None:
        try:
            data = _dump_value(value)
        except Exception as bad:
            unpicklable = TypeError(f"stage {self.name!r} returned a result that cannot be pickled "
                                    f"({type(value).__name__}: {bad})")
            self._add(t0, t1, True, pickle.dumps(_item_failure(unpicklable, ""), protocol=pickle.HIGHEST_PROTOCOL))
            return
        self._add(t0, t1, False, data)

    def failed(self, t0: float, t1: float, error: BaseException, tb: str) -> None:
        self._add(t0, t1, True, pickle.dumps(_item_failure(error, tb), protocol=pickle.HIGHEST_PROTOCOL))

    def _add(self, t0: float, t1: float, failed: bool, data: bytes) -> None:
        pickled = time.perf_counter()
        at = LOG_HEAD.size + self.used
        end = at + LOG_RECORD.size + len(data)
        if end > len(self.view):
            self.last = LOG_RECORD.pack(t0, t1, pickled, failed, len(data)) + data
            return
        LOG_RECORD.pack_into(self.view, at, t0, t1, pickled, failed, len(data))
        self.view[at + LOG_RECORD.size:end] = data
        self.count += 1
        self.used = end - LOG_HEAD.size
        LOG_HEAD.pack_into(self.view, 0, self.count, self.used)  # commits the record


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
