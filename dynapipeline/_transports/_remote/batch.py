"""The batch runner: a ``Call`` in, a ``Reply`` out, in whatever process runs it (a pool's worker, a Dask task).

::

    process worker loop: bytes ─► pickle.loads ─► Call ─┐
    Dask task:     (class blobs, payload) ─► Call ──────┤
                                                        ▼
                       run_call ─► rebuild (payload) ─► _Batch.run ─► Reply ─► the caller ships it

Invariants:

- Never raises for what a component does: every error, a component that cannot
  be rebuilt here and a result that cannot be pickled come back in the ``Reply``
  (``failed_at``, ``unloadable``), so a stage cannot kill its worker this way.
- Runs components in order and stops at the first failure (as one process
  running them one after the other would).
- Knows nothing of pipes or Dask: the caller handles the bytes. ``position``,
  when given, is told which component runs (the process pool's shared counter,
  read by the parent when the worker dies).
- Plain Python (never the compiled engine), importable by name on every worker.

See docs/threads-and-processes.md and docs/dask.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from dynapipeline._engine import EPOCH_OFFSET, RunControl, TraceSink, current_control, current_trace, set_tracing
from dynapipeline._model.component import private_of
from dynapipeline._model.group import Container
from dynapipeline._transports._remote.buffers import SHARED, pack, probe, unpack
from dynapipeline._transports._remote.messages import IDLE, Call, Clock, Failure, Reply, Trace
from dynapipeline._transports._remote.rebuild import register_class, slim_cached, timings_of
from dynapipeline._transports.calling import needs_loop, run_component

__all__ = ["dump_value", "dumper", "error_bytes", "failure_of", "loop_of", "register_classes", "run_call",
           "run_components", "unloadable_reply"]

logger = logging.getLogger("dynapipeline")


def loop_of(state: dict[str, Any]) -> asyncio.AbstractEventLoop:
    """The event loop kept in ``state`` for ``async def`` stages (made on first need, reused after)."""
    loop: asyncio.AbstractEventLoop | None = state.get("loop")
    if loop is None:
        loop = state["loop"] = asyncio.new_event_loop()
    return loop


def register_classes(class_blobs: list[tuple[int, bytes]]) -> None:
    """Register the classes a message carries (one this process has already is ignored)."""
    for class_id, blob in class_blobs:
        register_class(class_id, blob, pickle.loads)


def error_bytes(error: BaseException) -> bytes:
    """The pickled error, or b"" when it cannot be rebuilt (the parent then raises its text)."""
    try:
        data: bytes = cloudpickle.dumps(error)
        pickle.loads(data)  # an exception that cannot be rebuilt falls back to its text
        return data
    except Exception as error_of_error:  # the parent raises a RemoteError with the text instead
        logger.debug("an error of type %s cannot travel to the parent: %r", type(error).__name__, error_of_error)
        return b""


def dump_value(value: Any, state: dict[str, Any] | None = None) -> bytes:
    """Pickle one result: the standard pickler when it can (several times faster), else cloudpickle.

    In a pool's worker (``state`` has its ``arena`` and ``threshold``), large buffers go to shared memory.
    One ``pickle.dumps`` for a small result: this runs once per component.
    """
    threshold = None if state is None else state.get("threshold")
    try:
        if threshold is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=probe(threshold))
        if len(data) < threshold:
            return data
    except Exception:  # noqa: BLE001 - a large buffer (the probe), a memoryview, a lambda: pack says or raises
        pass
    return pack(value, threshold, None if state is None else state.get("arena")).data


def dumper(state: dict[str, Any]) -> Callable[[Any], bytes]:
    """``dump_value`` for ``state``, its look-ups done once (it runs once per component of a batch)."""
    threshold = state.get("threshold")
    if threshold is None:
        return dump_value
    arena = state.get("arena")
    buffer_callback = probe(threshold)
    dumps = pickle.dumps
    protocol = pickle.HIGHEST_PROTOCOL

    def dump(value: Any) -> bytes:
        try:
            data = dumps(value, protocol, buffer_callback=buffer_callback)
            if len(data) < threshold:
                return data
        except Exception:  # noqa: BLE001 - a large buffer (the probe), a memoryview, a lambda: pack says or raises
            pass
        return pack(value, threshold, arena).data

    return dump


def failure_of(error: BaseException, tb: str) -> Failure:
    """``error`` as it travels to the parent, with its formatted traceback ``tb``."""
    return Failure(error=error_bytes(error), traceback=tb, text=f"{type(error).__qualname__}: {error}")


def unloadable_reply(error: BaseException, tb: str) -> Reply:
    """The reply to a batch that could not be rebuilt here: nothing in it ran."""
    return Reply(values=[], timings=[], failure=failure_of(error, tb), failed_at=0, unloadable=True)


def _mirror_drain(control: Any, drain: Any, over: threading.Event) -> None:
    """Until ``over`` is set: once the parent sets the shared ``drain`` flag, drain ``control``."""
    while not over.wait(0.005):
        if drain.value:
            control.draining = True
            return


def run_call(call: Call, state: dict[str, Any], position: Any = None, drain: Any = None,
             received: float = 0.0) -> Reply:
    """Run one batch: rebuild its components, run them, say how it went.

    ``state`` keeps what outlives a batch (the event loop); ``drain``, when given,
    is the parent's flag (``value``): groups run under a run control of their own
    whose ``draining`` mirrors it, so ``stop(drain=True)`` ends their cycle loops.
    When the parent traces, the runs made here travel back in ``Reply.trace``.
    ``received``: perf_counter when the message arrived (now if not given).
    """
    components: list[Any] = []
    try:
        return _run_call(call, state, position, drain, received, components)
    finally:
        if call.payload[:1] == SHARED:
            # The stages this worker keeps between batches keep no field that is a view on the parent's memory.
            slim_cached(components, {id(stage) for stage in state.get("stages", {}).values()})


def _run_call(call: Call, state: dict[str, Any], position: Any, drain: Any, received: float,
              rebuilt: list[Any]) -> Reply:
    """``run_call``; ``rebuilt`` receives the components (for ``slim_cached``)."""
    received = received or time.perf_counter()
    try:
        register_classes(call.class_blobs)
        components, args, kwargs = unpack(call.payload, state.get("attach"))
        rebuilt += components
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        return unloadable_reply(error, traceback.format_exc())
    batch = _Batch(components, received, time.perf_counter(), call.trace)
    if drain is None or not any(isinstance(c, Container) for c in components):
        return batch.run(position, args, kwargs, state)
    control = RunControl()
    control.draining = bool(drain.value)
    over = threading.Event()
    watcher = threading.Thread(target=_mirror_drain, args=(control, drain, over), daemon=True,
                               name="dynapipeline-drain-watch")
    watcher.start()
    token = current_control.set(control)
    try:
        return batch.run(position, args, kwargs, state)
    finally:
        current_control.reset(token)
        over.set()
        watcher.join()
        if control.cleanups:
            # Resources that live for "the run" (a thread strategy's pool) end with the batch.
            loop_of(state).run_until_complete(control.finish())


def run_components(components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   state: dict[str, Any]) -> Reply:
    """Run components already rebuilt, in order until one fails: their ``Reply``."""
    now = time.perf_counter()
    return _Batch(components, now, now, False).run(None, args, kwargs, state)


class _Batch:
    """One batch's components, its clock readings, and the runs it traces (when the parent traces)."""

    def __init__(self, components: list[Any], received: float, rebuilt: float, trace: bool) -> None:
        self.components = components
        self.received = received
        self.rebuilt = rebuilt
        self.runs: list[tuple[float, float, float]] = []  # Clock.runs
        self.sink = TraceSink() if trace else None

    def run(self, position: Any, args: tuple[Any, ...], kwargs: dict[str, Any], state: dict[str, Any]) -> Reply:
        if self.sink is None:
            return self._run(position, args, kwargs, state)
        set_tracing(True)  # one batch at a time in a worker: on for exactly this batch
        token = current_trace.set(self.sink)
        try:
            return self._run(position, args, kwargs, state)
        finally:
            current_trace.reset(token)
            set_tracing(False)

    def _run(self, position: Any, args: tuple[Any, ...], kwargs: dict[str, Any], state: dict[str, Any]) -> Reply:
        results: list[Any] = []
        timings: list[Any] = []
        dump = state.get("dump")
        if dump is None:
            dump = state["dump"] = dumper(state)  # the state's threshold and arena never change
        for index, component in enumerate(self.components):
            if position is not None:
                position.value = index
            loop = loop_of(state) if needs_loop(component) else None
            try:
                result = run_component(component, args, kwargs, loop)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                timings.append(timings_of(component))
                self._ran(component)
                return self._reply(results, timings, error, traceback.format_exc(), index)
            timings.append(timings_of(component))
            try:
                results.append(dump(result))
            except Exception as bad:
                unpicklable = TypeError(f"stage {component.name!r} returned a result that cannot be "
                                        f"pickled ({type(result).__name__}: {bad})")
                self._ran(component)
                return self._reply(results, timings, unpicklable, "", index)
            self._ran(component)
        if position is not None:
            position.value = IDLE
        return self._reply(results, timings, None, "", -1)

    def _ran(self, component: Any) -> None:
        runner = private_of(component)["_runner"]
        self.runs.append((runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, time.perf_counter()))

    def _reply(self, values: list[bytes], timings: list[Any], error: BaseException | None, tb: str,
               failed_at: int) -> Reply:
        clock = Clock(received=self.received, rebuilt=self.rebuilt, replying=time.perf_counter(), runs=self.runs)
        trace = None if self.sink is None else self._trace()
        if error is None:
            return Reply(values=values, timings=timings, clock=clock, trace=trace)
        return Reply(values=values, timings=timings, failure=failure_of(error, tb), failed_at=failed_at,
                     clock=clock, trace=trace)

    def _trace(self) -> Trace:
        """The traced runs, each naming its component by (position in the batch, index below it)."""
        sink = self.sink
        assert sink is not None
        where: dict[int, tuple[int, int]] = {}
        for position, component in enumerate(self.components):
            members = component.iter_components() if isinstance(component, Container) else (component,)
            for index, member in enumerate(members):
                where[id(private_of(member)["_runner"])] = (position, index)
        runs = [(*where[id(run[0])], *run[1:]) for run in sink.runs if id(run[0]) in where]
        return Trace(pid=os.getpid(), threads=dict(sink.threads), runs=runs)
