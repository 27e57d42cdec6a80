"""What runs inside a worker process: the receive-run-reply loop and the helpers that rebuild shipped objects.

A plain Python module on purpose (never the compiled engine): the functions a
parent pickles by reference (``cached_class``, ``rebuild_component``,
``locked_context``) must be importable by name in the child.

Protocol over the worker's pipe (``multiprocessing.connection``):

- the worker first sends ``b"R"`` (ready);
- the parent sends a pickled ``Call`` (the class pickles the worker lacks and the
  cloudpickle of ``(components, args, kwargs)``); ``b""`` asks the worker to exit;
- the worker replies a pickled ``Reply``.

The shared ``current`` value says where a job is: the parent sets ``SENT`` before
sending, the worker sets ``TAKEN`` as soon as it has read the job, then the
position of the component it runs, then ``IDLE``. A worker that dies while the
value is still ``SENT`` never held its job, so the parent sends it elsewhere.
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
import traceback
from typing import Any, NamedTuple

import cloudpickle
from pydantic_core import PydanticUndefined

from dynapipeline.engine import RunControl, current_control
from dynapipeline.model.contexts import ProtectedContext
from dynapipeline.model.group import Container
from dynapipeline.transports.calling import needs_loop, run_component

__all__ = [
    "IDLE",
    "SENT",
    "TAKEN",
    "Call",
    "Reply",
    "cached_class",
    "cached_stage",
    "locked_context",
    "main",
    "rebuild_component",
    "timings_of",
]

IDLE, SENT, TAKEN = -1, -2, -3  # values of the shared ``current`` besides a component's position


class Call(NamedTuple):
    """Parent to worker: one batch of components to run."""

    class_blobs: list[tuple[int, bytes]]  # (class id, pickle) of classes this worker has not received yet
    payload: bytes  # cloudpickle of (components, args, kwargs)


class Reply(NamedTuple):
    """Worker to parent: the outcome of one ``Call``."""

    values: list[bytes]  # each result pickled on its own, so one that cannot be rebuilt names its stage
    timings: list[list[tuple[Any, ...]]]  # per component run: its timing and, for a group, its members'
    error: bytes  # the pickled exception, b"" if none (or if it cannot be rebuilt: see ``text``)
    traceback: str
    text: str  # "Type: message" of the error, for when ``error`` cannot travel
    failed_at: int  # position of the component that failed, -1 if none
    unloadable: bool = False  # the batch could not be rebuilt here, so nothing in it ran

# Classes shipped by value, by the id the parent gave them (each arrives once per worker).
_CLASSES: dict[int, type] = {}
# Stages rebuilt earlier, by the parent's key: later batches only refresh their state.
_STAGES: dict[int, Any] = {}
_MAX_STAGES = 100_000
# Private attributes the model rebuilds itself in model_post_init (never shipped).
INTERNAL_PRIVATE = frozenset({"_runner", "_members", "_plan", "_active"})
READY = b"R"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
logger = logging.getLogger("dynapipeline")


def cached_class(class_id: int) -> type:
    """A class this worker received earlier, by its id."""
    return _CLASSES[class_id]


def locked_context(data: dict[str, Any]) -> ProtectedContext:
    """A read-only snapshot of the parent's context: reads work, writes raise ContextLockedError."""
    context = ProtectedContext(data)
    context.lock("the parent process (a worker sees a read-only snapshot)")
    return context


def rebuild_component(cls: type, state: dict[str, Any], fields_set: set[str], extra: Any,
                      private: dict[str, Any], timing: tuple[Any, ...]) -> Any:
    """Recreate a shipped Stage/StageGroup without validation; model_post_init rebuilds its runner."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", state)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", extra)
    for name, attr in cls.__private_attributes__.items():  # type: ignore[attr-defined]
        if name not in private:
            default = attr.get_default()
            if default is not PydanticUndefined:
                private[name] = default
    object.__setattr__(obj, "__pydantic_private__", private)
    try:
        obj.model_post_init(None)
    except BaseException as error:
        _blame(error, state.get("name"))
        raise
    obj._runner.copy_timing(*timing)
    return obj


def _blame(error: BaseException, name: Any) -> None:
    """Mark the innermost component whose rebuild raised (a group's rebuild re-raises its stage's error)."""
    if not hasattr(error, "stage_name"):
        try:
            error.stage_name = name  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__: the parent names the batch's component
            pass


def cached_stage(key: int, cls: type, state: dict[str, Any], fields_set: set[str], extra: Any,
                 private: dict[str, Any], timing: tuple[Any, ...]) -> Any:
    """A shipped Stage: the one this worker rebuilt before under ``key``, refreshed with the parent's state.

    Equivalent to a fresh rebuild (every field, private attribute and the timing
    come from the parent), without re-running model_post_init each time.
    """
    obj = _STAGES.get(key)
    if obj is None or type(obj) is not cls:
        obj = rebuild_component(cls, state, fields_set, extra, private, timing)
        if len(_STAGES) >= _MAX_STAGES:
            _STAGES.clear()
        _STAGES[key] = obj
        return obj
    old = obj.__dict__
    runner = obj.__pydantic_private__["_runner"]
    private["_runner"] = runner
    object.__setattr__(obj, "__dict__", state)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", extra)
    object.__setattr__(obj, "__pydantic_private__", private)
    if state["name"] != old["name"]:
        runner.name = state["name"]
    if (state["timeout"] != old["timeout"] or state["retries"] != old["retries"]
            or state["retry_delay"] != old["retry_delay"] or state["retry_backoff"] != old["retry_backoff"]):
        runner.configure(state["timeout"], state["retries"], state["retry_delay"], state["retry_backoff"])
    if state["handlers"] or old["handlers"]:
        runner.set_handlers(state["handlers"])
    runner.copy_timing(*timing)
    return obj


def timings_of(component: Any) -> list[tuple[Any, ...]]:
    """Timing of a component and, for a group, of everything below it (depth first)."""
    if isinstance(component, Container):
        return [c.__pydantic_private__["_runner"].timing() for c in component.iter_components()]
    return [component.__pydantic_private__["_runner"].timing()]


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
    if fd is None:
        return
    try:
        os.close(fd)
    except OSError as error:
        logger.debug("cannot close the fork server's alive pipe (%r)", error)
    server._forkserver_alive_fd = None


def _error_bytes(error: BaseException) -> bytes:
    try:
        data = cloudpickle.dumps(error)
        pickle.loads(data)  # an exception that cannot be rebuilt falls back to its text
        return data
    except Exception:
        return b""


def _mirror_drain(control: Any, drain: Any, over: threading.Event) -> None:
    """Until ``over`` is set: once the parent sets the shared ``drain`` flag, drain ``control``."""
    while not over.wait(0.005):
        if drain.value:
            control.draining = True
            return


def run_batch(conn: Any, current: Any, message: bytes, state: dict[str, Any], drain: Any = None) -> bytes:
    """Run one batch and return the reply bytes.

    Groups run under a run control of their own whose ``draining`` mirrors the
    parent's ``drain`` flag, so ``stop(drain=True)`` ends their cycle loops.
    """
    try:
        call = pickle.loads(message)
        for class_id, blob in call.class_blobs:
            if class_id not in _CLASSES:
                _CLASSES[class_id] = pickle.loads(blob)
        components, args, kwargs = pickle.loads(call.payload)
    except BaseException as error:  # noqa: B902 - a stage that cannot be rebuilt here must not kill the worker
        return _reply([], [], error, traceback.format_exc(), 0, unloadable=True)
    if drain is None or not any(isinstance(c, Container) for c in components):
        return _run_components(current, components, args, kwargs, state)
    control = RunControl()
    control.draining = bool(drain.value)
    over = threading.Event()
    watcher = threading.Thread(target=_mirror_drain, args=(control, drain, over), daemon=True,
                               name="dynapipeline-drain-watch")
    watcher.start()
    token = current_control.set(control)
    try:
        return _run_components(current, components, args, kwargs, state)
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


def _run_components(current: Any, components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    state: dict[str, Any]) -> bytes:
    results: list[Any] = []
    timings: list[Any] = []
    for position, component in enumerate(components):
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
            return _reply(results, timings, error, traceback.format_exc(), position)
        timings.append(timings_of(component))
        try:
            results.append(_dump_value(result))
        except Exception as bad:
            error = TypeError(f"stage {component.name!r} returned a result that cannot be "
                              f"pickled ({type(result).__name__}: {bad})")
            return _reply(results, timings, error, "", position)
    current.value = IDLE
    return pickle.dumps(Reply(results, timings, b"", "", "", -1), protocol=pickle.HIGHEST_PROTOCOL)


def _dump_value(value: Any) -> bytes:
    """Pickle one result: the standard pickler when it can (several times faster), else cloudpickle."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # lambdas, local classes, ...: cloudpickle sends them by value
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _reply(values: list[bytes], timings: list[Any], error: BaseException, tb: str, failed_at: int,
           unloadable: bool = False) -> bytes:
    reply = Reply(values, timings, _error_bytes(error), tb, f"{type(error).__qualname__}: {error}", failed_at,
                  unloadable)
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)


def main(conn: Any, current: Any, drain: Any = None) -> None:
    """The worker's loop: signal ready, then run batches until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    state: dict[str, Any] = {}
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if message == b"":
            break
        current.value = TAKEN
        conn.send_bytes(run_batch(conn, current, message, state, drain))
    loop = state.get("loop")
    if loop is not None:
        loop.close()
