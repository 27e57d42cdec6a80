"""Setup and teardown once per place that runs a stage (``Stage.setup``/``teardown``, ``Step(fn, setup=, teardown=)``).

A *place* is where a stage's items run; each has a ``Scope`` that remembers which
stages it set up, in what order, and which setups failed:

==========================  ====================================  =========================================
place                       scope                                 teardown
==========================  ====================================  =========================================
the event loop              one per outermost run (``run()``,     when that run ends, however it ends
                            ``iterate()``), in a contextvar
a worker thread             the run's scope (contextvars reach    at the run's end, on the event loop
                            the threads), keyed by thread         (the threads may be gone by then)
a worker process / Dask     one for the process's life            when the worker exits cleanly
                            (no run scope reaches it)             (``close_process_scope``); never on Dask
==========================  ====================================  =========================================

Decisions:

- What ``setup`` sets on ``self`` stays in the place. On the loop, ``self`` is the
  user's own stage. Each worker thread sets up (and runs ``execute`` on) its own
  shallow copy of the stage, so threads never share what ``setup`` made. In a
  process, the stage is set up under the key the parent gave it (not the Python
  object: a group stage may be rebuilt per batch, a Dask worker keeps one copy
  per thread), once per process; the private attributes and fields ``setup``
  set are put back on whichever copy runs an item (and before its teardown);
  such a stage is never slimmed after a shared-memory batch. Nothing travels
  back. A worker keeps what it set up until it exits (a stream step's stage
  that the worker's cache evicted included: it may be sent again).
- ``setup`` runs inside the first item's run there: its time counts in that run
  and the stage's ``timeout`` covers it. A cancelled setup is forgotten (the next
  item tries again).
- A setup that raises an ``Exception`` is remembered: that item and every later
  one there fail with a fresh copy of its error (same type, notes, traceback of
  the setup, a note ``in setup of stage 'x'``); no teardown follows.
- A teardown that raises is logged as a warning on the ``dynapipeline`` logger
  (with its traceback) and the other teardowns still run: the run's own result
  or error is what the caller gets.
- Stages without ``setup``/``teardown`` are not wrapped at all (``Stage.call_target``).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Scope", "close_process_scope", "current_scope", "is_async_hook", "note_shipped_key", "run_in_scope",
           "with_setup"]

logger = logging.getLogger("dynapipeline")

current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("dynapipeline_setup_scope",
                                                                            default=None)
_SHIPPED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # a rebuilt stage -> the parent's key
_MISSING = object()
_WAIT = 0.002  # seconds between looks at a setup another task or thread is running


def is_async_hook(hook: Any) -> bool:
    """True for an ``async def`` (or a callable object whose ``__call__`` is one)."""
    if hook is None:
        return False
    if inspect.iscoroutinefunction(hook):
        return True
    return not inspect.isroutine(hook) and inspect.iscoroutinefunction(type(hook).__call__)


def note_shipped_key(stage: Any, key: int) -> None:
    """Remember the key the parent gave a stage rebuilt in a worker (its process scope's key)."""
    _SHIPPED[stage] = key


class _Entry:
    """One stage in one place: pending, ready (``call``, ``teardown``) or failed (``error``)."""

    __slots__ = ("stage", "instance", "call", "teardown", "error", "notes", "done", "ready", "kept")

    def __init__(self, stage: Any) -> None:
        self.stage = stage  # held: the key may be its id
        self.instance: Any = None
        self.call: Any = None  # what runs an item there; None: the wrapper's own target
        self.teardown: Any = None
        self.error: BaseException | None = None
        self.notes: list[str] = []
        self.done = threading.Event()  # set once ready, failed or dropped
        self.ready = False
        self.kept: tuple[dict[str, Any], dict[str, Any]] | None = None  # process scope: what setup set

    def fail(self, error: Exception, name: str) -> None:
        error.add_note(f"in setup of stage {name!r}")
        self.error = error
        self.notes = list(getattr(error, "__notes__", ()))

    def raise_error(self) -> None:
        """Raise a fresh copy of the setup's error (notes added to one item's error stay on that item's)."""
        error = self.error
        assert error is not None
        try:
            # Not copy.copy: with tblib's exception pickling installed (Dask does) a copy shares its __dict__.
            cls = type(error)
            fresh = cls.__new__(cls, *error.args)
            try:
                fresh.__init__(*error.args)  # type: ignore[misc]  # OSError's errno and filename, say
            except Exception:  # noqa: BLE001 - an __init__ of other arguments: args and __dict__ are copied
                pass
            fresh.__dict__.update(error.__dict__)
            if isinstance(error, OSError) and isinstance(fresh, OSError):
                _copy_filenames(error, fresh)
            fresh.__notes__ = list(self.notes)
            fresh.__cause__, fresh.__context__ = error.__cause__, error.__context__
            fresh.__suppress_context__ = error.__suppress_context__
        except Exception:  # noqa: BLE001 - an exception that cannot be copied: the same one
            fresh = error
        raise fresh.with_traceback(error.__traceback__)

    def restore(self, stage: Any) -> None:
        """Put what setup set back on ``stage`` (a copy the parent shipped again, or another thread's copy)."""
        assert self.kept is not None
        private, fields = self.kept
        mine = stage.__pydantic_private__
        for name, value in private.items():
            if mine.get(name, _MISSING) is not value:
                mine[name] = value
        if fields:
            stage.__dict__.update(fields)


def _copy_filenames(error: OSError, fresh: OSError) -> None:
    """An OSError's file names, which live outside its args and ``__dict__``."""
    if error.filename is not None:
        fresh.filename = error.filename
    if error.filename2 is not None:
        fresh.filename2 = error.filename2


class Scope:
    """The stages set up in one place; ``thread``: the event loop's thread (None: a process-wide scope)."""

    def __init__(self, thread: int | None) -> None:
        self.thread = thread
        self.entries: dict[Any, _Entry] = {}
        self.order: list[_Entry] = []  # set up, in order: torn down in reverse
        self.lock = threading.Lock()
        # What ends with the scope before its teardowns (a thread pool held for the run): stop the
        # workers first, then tear down what they used.
        self.cleanups: list[Callable[[], Any]] = []

    def key_of(self, stage: Any) -> Any:
        if self.thread is None:
            shipped = _SHIPPED.get(stage)
            return id(stage) if shipped is None else (shipped, type(stage))
        ident = threading.get_ident()
        return id(stage) if ident == self.thread else (id(stage), ident)

    def begin(self, key: Any, stage: Any) -> tuple[_Entry, bool]:
        """The entry for ``key`` and whether the caller must set it up (it was not there)."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                return entry, False
            entry = self.entries[key] = _Entry(stage)
            return entry, True

    def prepare(self, entry: _Entry, stage: Any) -> tuple[Any, Any]:
        """The instance to set up here and its hooks (setup, teardown)."""
        if self.thread is not None and threading.get_ident() != self.thread:
            instance = copy.copy(stage)  # a worker thread's own stage
            entry.call = instance._plain_target()
        else:
            instance = stage
        entry.instance = instance
        hooks: tuple[Any, Any] = instance._lifecycle()
        return hooks

    def snapshot(self, stage: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if self.thread is not None:
            return None
        return dict(stage.__pydantic_private__), dict(stage.__dict__)

    def settle(self, entry: _Entry, teardown: Any, before: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
        """The setup of ``entry`` succeeded."""
        if before is not None:
            stage = entry.instance
            private = {k: v for k, v in stage.__pydantic_private__.items() if before[0].get(k, _MISSING) is not v}
            fields = {k: v for k, v in stage.__dict__.items() if before[1].get(k, _MISSING) is not v}
            if private or fields:
                entry.kept = (private, fields)
        entry.teardown = teardown
        entry.ready = True
        with self.lock:
            self.order.append(entry)
        entry.done.set()

    def drop(self, key: Any, entry: _Entry) -> None:
        """Forget a setup that was cancelled (or interrupted): the next item sets up again."""
        with self.lock:
            if self.entries.get(key) is entry:
                del self.entries[key]
        entry.done.set()

    def _teardowns(self) -> list[_Entry]:
        with self.lock:
            order, self.order = self.order, []
            self.entries.clear()
        order.reverse()
        torn = [entry for entry in order if entry.teardown is not None]
        for entry in torn:
            if entry.kept is not None:
                entry.restore(entry.instance)  # a group stage's copy may have been refreshed or slimmed since
        return torn

    def add_cleanup(self, cleanup: Callable[[], Any]) -> None:
        """Call ``cleanup`` (awaiting what it returns) when the scope closes, before the teardowns."""
        self.cleanups.append(cleanup)

    async def aclose(self) -> None:
        """Run the cleanups, then the teardowns (awaiting async ones), last set up first; errors are logged."""
        cleanups, self.cleanups = self.cleanups, []
        for cleanup in cleanups:
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.warning("cleanup at the end of a run failed", exc_info=True)
        for entry in self._teardowns():
            try:
                result = entry.teardown()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log_teardown(entry)

    def close(self, loop: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
        """``aclose`` with no running loop: an async teardown runs on ``loop()`` (or a loop of its own)."""
        for entry in self._teardowns():
            try:
                result = entry.teardown()
                if inspect.isawaitable(result):
                    if loop is not None:
                        loop().run_until_complete(result)
                    else:
                        asyncio.run(_awaited(result))
            except Exception:
                _log_teardown(entry)


async def _awaited(result: Any) -> Any:
    return await result


def _log_teardown(entry: _Entry) -> None:
    name = entry.instance.__dict__.get("name") if entry.instance is not None else None
    logger.warning("teardown of stage %r failed", name, exc_info=True)


# -- the process-wide scope (worker processes, Dask workers) ----------------------------------------------------------

_process: Scope | None = None


def _process_scope() -> Scope:
    global _process
    scope = _process
    if scope is None:
        scope = _process = Scope(None)
    return scope


def _forget_after_fork() -> None:
    global _process
    _process = None  # a forked child does not own its parent's setups


os.register_at_fork(after_in_child=_forget_after_fork)


def close_process_scope(loop: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Tear down what this process set up (a worker exiting cleanly); ``loop``: for async teardowns."""
    global _process
    scope, _process = _process, None
    if scope is not None:
        scope.close(loop)


# -- the run scope on the event loop --------------------------------------------------------------------------------

async def run_in_scope(coro: Any) -> Any:
    """Await ``coro`` in a new run scope, then tear down what it set up (however it ended)."""
    scope = Scope(threading.get_ident())
    token = current_scope.set(scope)
    closed = False
    try:
        return await coro
    except GeneratorExit:
        # Closed before its end without a cancellation (by the garbage collector, maybe in another context):
        # nothing may be awaited now, so its teardowns are skipped (best effort, as after a crash).
        closed = True
        raise
    finally:
        try:
            current_scope.reset(token)
        except ValueError:  # closed from another context (see above): the run's own context is gone with it
            logger.debug("a run's setup scope was closed from another context")
        if not closed:
            await scope.aclose()


# -- the call target of a stage with setup ----------------------------------------------------------------------------

def _place(stage: Any) -> tuple[Scope, Any]:
    scope = current_scope.get()
    if scope is None:
        scope = _process_scope()
    return scope, scope.key_of(stage)


def with_setup(stage: Any, target: Callable[..., Any], async_setup: bool) -> Callable[..., Any]:
    """``target`` (the stage's call target) preceded, once per place, by the stage's setup."""
    if async_setup or inspect.iscoroutinefunction(target):
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            scope, key = _place(stage)
            entry = scope.entries.get(key)
            if entry is None or not entry.ready:
                entry = await _aenter(scope, key, stage)
            if entry.kept is not None:
                entry.restore(stage)
            result = (entry.call or target)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return run_async

    def run(*args: Any, **kwargs: Any) -> Any:
        scope, key = _place(stage)
        entry = scope.entries.get(key)
        if entry is None or not entry.ready:
            entry = _enter(scope, key, stage)
        if entry.kept is not None:
            entry.restore(stage)
        return (entry.call or target)(*args, **kwargs)

    return run


def _enter(scope: Scope, key: Any, stage: Any) -> _Entry:
    """The ready entry of ``stage`` here, set up now if needed (raises the setup's error)."""
    while True:
        entry, mine = scope.begin(key, stage)
        if not mine:
            entry.done.wait()  # another thread sets it up
            if entry.ready or entry.error is not None:
                break
            continue  # it was dropped: try again
        setup, teardown = scope.prepare(entry, stage)
        before = scope.snapshot(entry.instance)
        try:
            if setup is not None:
                setup()
        except Exception as error:
            entry.fail(error, stage.name)
            entry.done.set()
        except BaseException:
            scope.drop(key, entry)
            raise
        else:
            scope.settle(entry, teardown, before)
        break
    if entry.error is not None:
        entry.raise_error()
    return entry


async def _aenter(scope: Scope, key: Any, stage: Any) -> _Entry:
    """``_enter`` for an async setup (or an async ``execute``): waits without blocking the loop."""
    while True:
        entry, mine = scope.begin(key, stage)
        if not mine:
            while not entry.done.is_set():
                await asyncio.sleep(_WAIT)  # another task (or a Dask thread) sets it up
            if entry.ready or entry.error is not None:
                break
            continue
        setup, teardown = scope.prepare(entry, stage)
        before = scope.snapshot(entry.instance)
        try:
            if setup is not None:
                result = setup()
                if inspect.isawaitable(result):
                    await result
        except Exception as error:
            entry.fail(error, stage.name)
            entry.done.set()
        except BaseException:
            scope.drop(key, entry)
            raise
        else:
            scope.settle(entry, teardown, before)
        break
    if entry.error is not None:
        entry.raise_error()
    return entry
