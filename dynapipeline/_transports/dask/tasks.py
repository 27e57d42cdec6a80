"""The Dask worker's side: the functions a Dask task runs, importable by name on every worker.

::

    parent: client.submit(run_components_task, class blobs, payload, ...)
        ─► Dask worker thread: Call ─► _remote.batch.run_call / run_components ─► Reply(s)
        ─► (pid, [Reply, ...]) returned to Dask, which ships it back to the parent

Invariants:

- Plain Python (never the compiled engine), running the same batch runner as a
  worker process (``_remote.batch``): a task gets the class pickles it needs
  (``register_class`` ignores the ones this worker already has) and one payload
  made by ``pickling.dumps_batch``, and returns ``Reply`` objects; Dask does the
  pickling of the task's result.
- A task never raises for what a stage does: errors travel in the replies, so an
  exception from a task is Dask's own (a lost worker, a cancelled task).
- Each Dask worker thread keeps its own event loop for ``async def`` stages.

See docs/dask.md.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import traceback
from typing import Any

from dynapipeline._engine import RunControl, current_control
from dynapipeline._transports._remote.batch import (
    loop_of,
    register_classes,
    run_call,
    run_components,
    unloadable_reply,
)
from dynapipeline._transports._remote.messages import Call, Reply

__all__ = ["STARTED", "run_components_task", "run_items_task"]

logger = logging.getLogger("dynapipeline")
_DRAIN_WAIT = 0.1  # seconds a worker waits on the run's drain event between looks at whether its batch is over
STARTED = "dynapipeline-running"  # the task's metadata entry a probe sets while it runs its item
_local = threading.local()


def _state() -> dict[str, Any]:
    """This worker thread's state for the batch runner (its event loop, created on first need)."""
    state: dict[str, Any] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = {}
    return state


def run_components_task(class_blobs: list[tuple[int, bytes]], payload: bytes, keep_going: bool,
                        drain: str | None = None) -> tuple[int, list[Reply]]:
    """Run one batch of components; (this pid, its ``Reply``s).

    One reply for the batch, ending at the first error (as in a worker process);
    with ``keep_going`` one reply per component, so every member runs whatever
    its siblings do. ``drain`` names the Dask ``Event`` the parent sets when
    the run drains: groups then end their cycle loops.
    """
    flag = None if drain is None else _DrainFlag(drain)
    try:
        if not keep_going:
            return os.getpid(), [run_call(Call(class_blobs, payload), _state(), drain=flag)]
        try:
            register_classes(class_blobs)
            components, args, kwargs = pickle.loads(payload)
        except BaseException as error:  # noqa: B902 - the parent splits the batch to find the culprit
            return os.getpid(), [_unloadable(error)]
        state = _state()
        if flag is None:
            return os.getpid(), [run_components([c], args, kwargs, state) for c in components]
        control = flag.control = RunControl()
        control.draining = bool(flag.value)
        token = current_control.set(control)
        try:
            return os.getpid(), [run_components([c], args, kwargs, state) for c in components]
        finally:
            current_control.reset(token)
            if control.cleanups:  # what lives for "the run" (a thread strategy's pool) ends with the batch
                loop_of(state).run_until_complete(control.finish())
    finally:
        if flag is not None:
            flag.close()


class _DrainFlag:
    """The parent's drain as ``run_call`` reads it (``value``): a thread waits on the run's Dask ``Event``."""

    def __init__(self, name: str) -> None:
        import distributed

        self.value = 0
        self.control: Any = None  # set when the caller drives a RunControl itself
        self._over = threading.Event()
        event = distributed.Event(name, client=distributed.get_client())  # type: ignore[no-untyped-call]
        if event.is_set():  # type: ignore[no-untyped-call]
            self.value = 1
        self._thread = threading.Thread(target=self._watch, args=(event,), daemon=True,
                                        name="dynapipeline-dask-drain")
        self._thread.start()

    def _watch(self, event: Any) -> None:
        while not self._over.is_set() and not self.value:
            try:
                if event.wait(timeout=_DRAIN_WAIT):
                    self.value = 1
                    if self.control is not None:
                        self.control.draining = True
            except Exception as error:  # noqa: BLE001 - the groups then run their cycles to the end
                logger.debug("waiting for a drain on Dask: %r", error)
                return

    def close(self) -> None:
        # Not joined: the watcher ends by itself within one wait (_DRAIN_WAIT), and joining would add
        # that wait to every group task.
        self._over.set()


def run_items_task(class_blobs: list[tuple[int, bytes]], payload: bytes,
                   probe: str | None = None) -> tuple[int, list[Reply]]:
    """Run a stream step's stage once per item (its own retries and timeout apply); (this pid, a ``Reply`` per item).

    A ``probe`` (a one-item task; the stream step's token) tells the scheduler
    when it starts and ends its item, so that the parent can tell the item that
    kills a worker from one that was queued there or whose result was lost.
    """
    if probe is None:
        return _run_items(class_blobs, payload)
    _mark_running(probe, True)
    try:
        return _run_items(class_blobs, payload)
    finally:
        _mark_running(probe, False)


def _run_items(class_blobs: list[tuple[int, bytes]], payload: bytes) -> tuple[int, list[Reply]]:
    try:
        register_classes(class_blobs)
        (stage,), values, _ = pickle.loads(payload)  # made by dumps_batch([stage], values, {})
    except BaseException as error:  # noqa: B902 - every item fails with the stage's own error
        return os.getpid(), [_unloadable(error)]
    state = _state()
    return os.getpid(), [run_components([stage], (value,), {}, state) for value in values]


def _mark_running(token: str, running: bool) -> None:
    """Set the task's mark on the scheduler; a round trip, so it is there before the item runs or the task ends."""
    import distributed

    try:
        key = distributed.get_worker().get_current_task()
        # Under the step's token, not the task's key: Dask forgets a cancelled task's own metadata.
        distributed.get_client().set_metadata([STARTED, token, key], running)  # type: ignore[no-untyped-call]
    except Exception as error:  # noqa: BLE001 - unmarked, a lost probe is sent again: the item still runs
        logger.debug("marking a probe task as running: %r", error)


def _unloadable(error: BaseException) -> Reply:
    return unloadable_reply(error, traceback.format_exc())
