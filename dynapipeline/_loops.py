"""Event loops: which kind to use, how to make one, and ``dynapipeline.run()`` that runs a coroutine on one.

::

    run(main, loop=...)  -> loop_name(choice)      "auto" | "uvloop" | "asyncio" (argument, else DYNAPIPELINE_LOOP)
                         -> loop_factory(kind)     uvloop.new_event_loop or asyncio.new_event_loop
                         -> asyncio.Runner(loop_factory=...) under a signal wakeup fd  -> main's result

    a helper thread (thread strategy) -> loop_kind_of(caller's loop) -> loop_factory(kind): a loop of the caller's kind

Invariants: no global event-loop policy is ever changed; ``"uvloop"`` asked for
and not installed is a ConfigurationError, never a silent fallback; Ctrl-C
cancels ``main`` and raises KeyboardInterrupt whichever thread the OS delivers
it to. Imports nothing from the package but the errors, so every layer may use it.

See docs/index.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from dynapipeline.errors import ConfigurationError

__all__ = ["LOOP_KINDS", "loop_factory", "loop_kind_of", "loop_name", "run", "uvloop_available"]

logger = logging.getLogger("dynapipeline")
T = TypeVar("T")
LOOP_KINDS = ("asyncio", "uvloop")
_CHOICES = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    """Whether uvloop can be imported here."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new loops of ``kind`` (``"asyncio"`` or ``"uvloop"``)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigurationError("loop 'uvloop' was asked for but uvloop is not installed") from None
        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.new_event_loop
    raise ConfigurationError(f"field 'loop' must be one of {LOOP_KINDS}, got {kind!r}")


def loop_kind_of(loop: Any) -> str:
    """``"uvloop"`` for a uvloop loop, else ``"asyncio"`` (so helper threads run loops of the caller's kind)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def loop_name(loop: str | None = None) -> str:
    """The loop ``run()`` would use for this choice: ``"uvloop"`` or ``"asyncio"``."""
    choice = (loop or os.environ.get("DYNAPIPELINE_LOOP") or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ConfigurationError(f"dynapipeline.run: field 'loop' must be one of {_CHOICES}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    if not uvloop_available():
        if choice == "uvloop":
            raise ConfigurationError("dynapipeline.run: loop='uvloop' but uvloop is not installed")
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None, debug: bool | None = None) -> T:
    """Run a coroutine to completion on a new loop, uvloop when available.

    ``loop``: ``"auto"`` (default; uvloop if installed), ``"uvloop"`` (required) or
    ``"asyncio"``. ``DYNAPIPELINE_LOOP`` sets the default. No global policy changes.
    Ctrl-C cancels ``main`` and raises ``KeyboardInterrupt``, as with ``asyncio.run``,
    even when the signal reaches a worker thread rather than the main thread.
    """
    try:
        factory = loop_factory("uvloop") if loop_name(loop) == "uvloop" else None
    except BaseException:
        main.close()
        raise
    runner = asyncio.Runner(debug=debug, loop_factory=factory)
    with _woken_by_signals(runner), runner:
        return runner.run(main)


@contextmanager
def _woken_by_signals(runner: asyncio.Runner) -> Iterator[None]:
    """Wake the runner's loop whenever a signal arrives, whichever thread the OS hands it to.

    The kernel may deliver a process-wide SIGINT to any thread that does not block it
    (a stage's thread, the default executor's), for instance while the main thread is
    in ``pthread_create``. Python runs the handler (``asyncio.Runner``'s, which cancels
    the main task) only in the main thread and only when it next runs bytecode: an
    asyncio loop asleep in ``select()`` with no timer due would sleep on until some
    thread woke it. A wakeup fd watched by the loop ends that sleep. (uvloop sets its
    own while it runs, and puts this one back afterwards.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python signal handlers or may set the wakeup fd
        return
    loop = runner.get_loop()
    try:
        remove = _watch_signals(loop)
    except BaseException:
        runner.close()  # get_loop() made the loop: the caller's `with runner` is never entered
        raise
    try:
        yield
    finally:
        if remove is not None:
            remove(loop)


def _watch_signals(loop: asyncio.AbstractEventLoop) -> Callable[[asyncio.AbstractEventLoop], None] | None:
    """Point the signal wakeup fd at a socket the loop reads; what undoes it (None: the loop cannot watch fds)."""
    reader, writer = socket.socketpair()
    try:
        reader.setblocking(False)
        writer.setblocking(False)  # the C signal handler must never block on it

        def drain() -> None:
            # Reading is enough: being awake, the main thread runs the pending Python handler.
            try:
                while reader.recv(4096):
                    pass
            except OSError:
                pass  # drained (BlockingIOError), or closed meanwhile: nothing left to read

        try:
            loop.add_reader(reader.fileno(), drain)
        except NotImplementedError:  # a loop that cannot watch fds (neither asyncio's nor uvloop's on POSIX)
            reader.close()
            writer.close()
            return None
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except BaseException:
        reader.close()
        writer.close()
        raise

    def remove(loop: asyncio.AbstractEventLoop) -> None:
        try:
            ours = signal.set_wakeup_fd(previous)
        except (ValueError, OSError) as error:  # the previous fd was closed during the run
            logger.debug("dynapipeline.run: restoring the signal wakeup fd %s: %r", previous, error)
            ours = signal.set_wakeup_fd(-1)
        if ours != writer.fileno():
            # Someone replaced ours during the run (loop.add_signal_handler does): keep theirs.
            signal.set_wakeup_fd(ours)
        if not loop.is_closed():  # closed: its selector, our reader with it, is gone
            try:
                loop.remove_reader(reader.fileno())
            except (RuntimeError, ValueError, OSError) as error:
                logger.debug("dynapipeline.run: removing the signal wakeup reader: %r", error)
        reader.close()
        writer.close()

    return remove
