"""What runs inside a worker process: the receive-run-reply loop and the helpers that rebuild shipped objects.

A plain Python module on purpose (never the compiled engine): the functions a
parent pickles by reference (``cached_class``, ``rebuild_component``,
``locked_context``) must be importable by name in the child.

Protocol over the worker's pipe (``multiprocessing.connection``):

- the worker first sends ``b"R"`` (ready);
- the parent sends ``pickle((class_blobs, payload))``: ``class_blobs`` is a list of
  ``(class_id, cloudpickle bytes)`` the worker has not seen yet, ``payload`` the
  cloudpickle of ``(components, args, kwargs)``; ``None`` asks the worker to exit;
- the worker replies ``cloudpickle((ok, results, timings, error_bytes, traceback, text, failed_at))``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import traceback
from typing import Any

import cloudpickle
from pydantic_core import PydanticUndefined

from dynapipeline.engine import RunControl, current_control
from dynapipeline.model.contexts import ProtectedContext
from dynapipeline.model.group import Container
from dynapipeline.transports.calling import needs_loop, run_component

__all__ = ["cached_class", "cached_stage", "locked_context", "main", "rebuild_component", "timings_of"]

# Classes shipped by value, by the id the parent gave them (each arrives once per worker).
_CLASSES: dict[int, type] = {}
# Stages rebuilt earlier, by the parent's key: later batches only refresh their state.
_STAGES: dict[int, Any] = {}
_MAX_STAGES = 100_000
# Private attributes the model rebuilds itself in model_post_init (never shipped).
INTERNAL_PRIVATE = frozenset({"_runner", "_members", "_plan", "_active"})
READY = b"R"


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
    obj.model_post_init(None)
    obj._runner.copy_timing(*timing)
    return obj


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


def _watch_parent() -> None:
    """Exit at once when the parent process dies (even mid-stage), so no worker is orphaned."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(70)

    threading.Thread(target=watch, name="dynapipeline-parent-watch", daemon=True).start()


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
    blobs, payload = pickle.loads(message)
    for class_id, blob in blobs:
        _CLASSES[class_id] = pickle.loads(blob)
    components, args, kwargs = pickle.loads(payload)
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
            tb = traceback.format_exc()
            return cloudpickle.dumps((False, results, timings, _error_bytes(error), tb,
                                      f"{type(error).__qualname__}: {error}", position))
        results.append(result)
        timings.append(timings_of(component))
    current.value = -1
    try:
        return cloudpickle.dumps((True, results, timings, b"", "", "", -1))
    except Exception as failure:
        error: BaseException = failure
        bad_at = 0
        for position, result in enumerate(results):
            try:
                cloudpickle.dumps(result)
            except Exception as bad:
                bad_at = position
                error = TypeError(f"stage {components[position].name!r} returned a result that cannot be "
                                  f"pickled ({type(result).__name__}: {bad})")
                break
        return cloudpickle.dumps((False, results[:bad_at], timings[:bad_at + 1], _error_bytes(error), "",
                                  str(error), bad_at))


def main(conn: Any, current: Any, drain: Any = None) -> None:
    """The worker's loop: signal ready, then run batches until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _watch_parent()
    state: dict[str, Any] = {}
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if message == b"":
            break
        conn.send_bytes(run_batch(conn, current, message, state, drain))
    loop = state.get("loop")
    if loop is not None:
        loop.close()
