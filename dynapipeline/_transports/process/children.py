"""Starting and stopping worker processes: the start method, a worker and what it shares with the parent, the
one way a process is stopped, and the pools still open at interpreter exit (their workers are stopped then)."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import weakref
from typing import Any, Protocol

from dynapipeline._transports._remote.messages import LOG_SIZE, Recycling
from dynapipeline._transports.process import worker
from dynapipeline._transports.process.handle import Worker

__all__ = ["LIVE_POOLS", "close_quietly", "default_start_method", "start_context", "start_worker", "stop_process"]

logger = logging.getLogger("dynapipeline")

_WORKER_MODULE = worker.__name__
# Also preloaded: what a main script imports from us. A worker re-runs the main script (multiprocessing does, for
# its functions and classes), and the fork server does not preload it (its "__main__" preload is lost on the way,
# in CPython up to 3.12 at least): with these cached, that re-run costs ~70 ms less per worker start or replacement.
_PUBLIC_MODULES = ["dynapipeline", "dynapipeline.execution"]


class _Closable(Protocol):
    def close(self) -> None: ...


LIVE_POOLS: weakref.WeakSet[_Closable] = weakref.WeakSet()  # the pools still open: closed at interpreter exit


def default_start_method() -> str:
    """``forkserver`` when the platform has it, else ``spawn`` (never ``fork``)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def start_context(method: str) -> Any:
    """The multiprocessing context for ``method``; a fork server also preloads the worker module.

    Preloading imports pydantic, cloudpickle and the model once, in the fork server,
    so a worker starts in tens of ms instead of the ~0.3 s of a fresh interpreter.
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        missing = [name for name in [_WORKER_MODULE, *_PUBLIC_MODULES] if name not in preload]
        if missing:
            ctx.set_forkserver_preload(preload + missing)
    return ctx


def stop_process(proc: Any, grace: float = 0.0) -> int | None:
    """Stop a worker process and reap it; its exit code (None if it could not be reaped).

    Waits up to ``grace`` seconds for it to exit by itself (it was asked to, or it
    died), then terminates it (SIGTERM), then kills it (SIGKILL) after 0.5 s.
    """
    try:
        if grace > 0:
            proc.join(grace)
        if proc.is_alive():
            proc.terminate()
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
        proc.join(1.0)
    except (OSError, ValueError) as error:  # already closed or reaped elsewhere
        logger.debug("stopping worker pid %s: %r", getattr(proc, "pid", None), error)
        return None
    code: int | None = proc.exitcode
    return code


def close_quietly(conn: Any) -> None:
    """Close a pipe end that may already be closed or broken (nothing is waiting on it any more)."""
    try:
        conn.close()
    except OSError as error:
        logger.debug("closing a worker pipe: %r", error)


def _close_all() -> None:
    """At interpreter exit: stop the workers of every pool still open."""
    for pool in list(LIVE_POOLS):
        try:
            pool.close()
        except Exception as error:  # noqa: BLE001 - one pool's failure must not keep the others' workers alive
            logger.debug("closing a process pool at exit: %r", error)


atexit.register(_close_all)


def start_worker(ctx: Any, name: str, threshold: int | None, recycling: Recycling | None) -> Worker:
    """Start one worker process (``worker.main``): its pipe, its shared values and its two item logs."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    current = ctx.RawValue("l", -1)
    taken = ctx.RawValue("q", 0)
    drain = ctx.RawValue("b", 0)
    logs = (ctx.RawArray("B", LOG_SIZE), ctx.RawArray("B", LOG_SIZE))
    kwargs: dict[str, Any] = {"taken": taken}
    if recycling is not None:
        kwargs["recycling"] = recycling
    proc = ctx.Process(target=worker.main, args=(child_conn, current, drain, logs, threshold), daemon=True,
                       name=name, kwargs=kwargs)
    proc.start()
    child_conn.close()
    return Worker(proc, parent_conn, current, drain, logs, taken)
