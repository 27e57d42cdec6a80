"""``dynapipeline run PATH_OR_MODULE:ATTR``: load a pipeline or stream and run it.

::

    PATH_OR_MODULE:ATTR ─► load_target() ─► a component (or a function, called on the run's loop, returning one)
        ─► WRAPPERS (--trace: Tracer, --progress: Progress) ─► component.run() on run()'s loop ─► exit status
    1st Ctrl-C or SIGTERM ─► component.stop(): the run unwinds      2nd ─► the run is cancelled

- ``PATH_OR_MODULE`` is a file (``examples/x.py``; its folder goes first on
  ``sys.path``, as with ``python examples/x.py``) or a dotted module name (found
  from the current folder too, as with ``python -m``). A file is loaded under the
  name ``__dynapipeline_target__``, so its ``if __name__ == "__main__":`` block
  does not run.
- ``ATTR`` (dots allowed) is a component with ``run()`` (a ``Pipeline``,
  ``Stream``, ``StageGroup``...), or a function, sync or async, that returns one
  (called on the run's event loop, so it may create asyncio objects).
- Exit codes: 0 when the run ends; 1 when user code raises (its traceback is
  printed); 2 for bad input (one line on stderr); 130 after Ctrl-C, 143 after
  SIGTERM. The first Ctrl-C (or SIGTERM) calls the target's ``stop()`` and lets
  the run unwind (pools shut down, workers exit); a second one cancels the run.
  The shell convention 128 + signal number tells a calling script that the run
  was interrupted rather than finished.
- The run's result is not printed (pipelines may return large lists);
  ``--report`` prints ``report()`` afterwards (also after a Ctrl-C) and
  ``--progress`` shows :class:`~dynapipeline.Progress` while it runs;
  ``--trace FILE`` runs it inside :class:`~dynapipeline.Tracer` ``(FILE)``; a FILE that cannot
  be written (a folder, an empty path, a missing folder) exits 2 before anything runs.

Options that wrap the run are entries of ``WRAPPERS``: each takes the parsed
arguments and the target and returns an async context manager (or ``None``).

See docs/index.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from dynapipeline._loops import loop_name
from dynapipeline._loops import run as run_on_loop
from dynapipeline._model.component import Component
from dynapipeline._observe.progress import Progress
from dynapipeline._observe.tracer import Tracer, path_problem
from dynapipeline.errors import ConfigurationError

__all__ = ["FILE_MODULE", "LOOP_CHOICES", "WRAPPERS", "BadInput", "add_parser", "load_target", "run_command"]

FILE_MODULE = "__dynapipeline_target__"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
_EXIT_ON_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class BadInput(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _trace(args: argparse.Namespace, target: Any) -> AbstractAsyncContextManager[Any] | None:
    return Tracer(args.trace) if args.trace is not None else None


def _progress(args: argparse.Namespace, target: Any) -> AbstractAsyncContextManager[Any] | None:
    return Progress(target, interval=0.5) if args.progress else None


WRAPPERS: list[Callable[[argparse.Namespace, Any], AbstractAsyncContextManager[Any] | None]] = [_trace, _progress]
"""Async context managers entered around ``target.run()``, outermost first (``--trace``, ``--progress``)."""


def add_parser(sub: Any) -> None:
    """Add the ``run`` subcommand to ``dynapipeline``'s subparsers."""
    parser = sub.add_parser(
        "run", help="run a pipeline or stream from a file or module",
        description="Run PATH_OR_MODULE:ATTR, a component with run() (Pipeline, Stream, ...) or a function "
                    "(sync or async) returning one. Exit status: 0 done, 1 error in user code, 2 bad input, "
                    "130 after Ctrl-C (the first calls stop(), a second cancels).")
    parser.add_argument("target", metavar="PATH_OR_MODULE:ATTR",
                        help="e.g. examples/stop_on_event.py:build or mypackage.jobs:pipeline")
    parser.add_argument("--loop", default=None, metavar="{auto,asyncio,uvloop}",
                        help="event loop (default: $DYNAPIPELINE_LOOP, else auto: uvloop when installed)")
    parser.add_argument("--trace", metavar="FILE", default=None,
                        help="write a Chrome trace-event file of the run (open it at ui.perfetto.dev)")
    parser.add_argument("--report", action="store_true", help="print the target's report() after the run")
    parser.add_argument("--progress", action="store_true",
                        help="show counts and rates while it runs (a live table on a terminal, else lines on stderr)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """The ``run`` subcommand; returns the exit status.

    SIGINT and SIGTERM are the command's from the start to the process's exit:
    while the target loads or the loop shuts down one ends the command, while
    the run goes on the first calls ``stop()`` and a second cancels, and once the
    loop is closed after one, more are ignored while the process exits. So the
    status is 130 (143) however many come and whenever, never death by the signal.
    """
    outcome = _Outcome()
    previous = _hold_signals(outcome)
    try:
        status = _run_command(args, outcome)
    except KeyboardInterrupt:
        if outcome.signal is None:
            raise  # not from a signal: user code raised it
        status = 0
    finally:
        outcome.settled = True  # from here a signal only sets the status
        if outcome.signal is None:
            _restore_signals(previous)
        elif previous:
            # The process exits 130/143 now. Ignored rather than handled: the interpreter's shutdown puts
            # the default action (death by the signal, status -2) back for any Python handler.
            _restore_signals(dict.fromkeys(previous, signal.SIG_IGN))
    if outcome.signal is not None:
        print(f"dynapipeline run: stopped by {signal.Signals(outcome.signal).name}", file=sys.stderr)
        return _EXIT_ON_SIGNAL[outcome.signal]
    return status


def _run_command(args: argparse.Namespace, outcome: _Outcome) -> int:
    """The command's status when no signal came (``run_command`` turns a signal into 130 or 143)."""
    prog = "dynapipeline run"
    try:
        if args.loop is not None and args.loop not in LOOP_CHOICES:
            raise BadInput(f"option --loop must be one of {', '.join(LOOP_CHOICES)}, got {args.loop!r}")
        if args.trace is not None and (problem := path_problem(args.trace)) is not None:
            raise BadInput(f"option --trace: {problem}")
        loop = loop_name(args.loop)
        obj = load_target(args.target)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except ConfigurationError as error:  # --loop uvloop without uvloop, or a bad $DYNAPIPELINE_LOOP
        where = "" if args.loop is not None else "$DYNAPIPELINE_LOOP: "
        print(f"{prog}: error: {where}{error}", file=sys.stderr)
        return 2
    except Exception as error:  # the user's module raised while loading
        _print_user_error(error)
        return 1
    try:
        run_on_loop(_main(obj, args, outcome), loop=loop)
    except BadInput as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        if outcome.signal is None:
            raise
    except Exception as error:
        _print_user_error(error)
        if outcome.signal is None:
            return 1
        # An error while the run unwound after Ctrl-C: shown, but the exit says "interrupted".
    return 0


def _hold_signals(outcome: _Outcome) -> dict[int, Any]:
    """Take SIGINT and SIGTERM for the command (from the main thread only); the handlers they had before."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: Any) -> None:
        if outcome.signal is None:
            outcome.signal = signum
        if not outcome.settled:
            raise KeyboardInterrupt  # ends the loading or the loop's shutdown; the status names the signal

    return {signum: signal.signal(signum, on_signal) for signum in _EXIT_ON_SIGNAL}


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def load_target(spec: str) -> Any:
    """The object ``PATH_OR_MODULE:ATTR`` names (``BadInput`` when it cannot be found)."""
    where, colon, attr = spec.rpartition(":")
    if not colon or not where or not attr:
        raise BadInput(f"expected PATH_OR_MODULE:ATTR (e.g. examples/x.py:pipeline), got {spec!r}")
    module = _load_file(where) if _looks_like_path(where) else _load_module(where)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadInput(f"{where!r} has no attribute {attr!r}") from None
    if isinstance(obj, type):
        raise BadInput(f"{attr!r} in {where!r} is the class {obj.__name__}; name an instance "
                       "or a function that returns one")
    if not _runnable(obj) and not callable(obj):
        raise BadInput(f"{attr!r} in {where!r} is of type {type(obj).__name__}; expected a Pipeline, Stream or other "
                       "component with run(), or a function returning one")
    return obj


class _Outcome:
    """What the signal handlers saw: the first signal, if any; ``settled`` once the loop is closed."""

    signal: int | None = None
    settled = False


async def _main(obj: Any, args: argparse.Namespace, outcome: _Outcome) -> None:
    target = obj
    if not _runnable(obj):
        target = obj()
        if inspect.isawaitable(target):
            target = await target
        if not _runnable(target):
            raise BadInput(f"{args.target!r} returned an object of type {type(target).__name__}; "
                           "expected a Pipeline, Stream or other component with run()")
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stop = getattr(target, "stop", None)
        if outcome.signal is None and callable(stop):
            outcome.signal = signum
            print(f"\ndynapipeline run: {signal.Signals(signum).name}: stopping "
                  "(press Ctrl-C again to cancel)", file=sys.stderr, flush=True)
            stop()
        else:
            outcome.signal = outcome.signal or signum
            main.cancel()

    for signum in _EXIT_ON_SIGNAL:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for wrapper in WRAPPERS:
                manager = wrapper(args, target)
                if manager is not None:
                    await stack.enter_async_context(manager)
            try:
                await target.run()
            finally:
                if args.report:
                    _report(target)
    finally:
        for signum in _EXIT_ON_SIGNAL:
            loop.remove_signal_handler(signum)  # which restores the default handlers: take them back
        _hold_signals(outcome)


def _report(target: Any) -> None:
    print(target.report(), flush=True)  # every component has one (a stream's lists its steps)


def _runnable(obj: Any) -> bool:
    return isinstance(obj, Component) or (not isinstance(obj, type) and inspect.iscoroutinefunction(
        getattr(obj, "run", None)))


def _looks_like_path(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where or os.path.exists(where)


def _load_file(where: str) -> ModuleType:
    path = Path(where)
    if not path.is_file():
        raise BadInput(f"no such file: {where!r}")
    spec = importlib.util.spec_from_file_location(FILE_MODULE, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot load {where!r} as Python (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    # As `python path/x.py` does: the file's folder first, so its own imports resolve.
    sys.path.insert(0, str(path.resolve().parent))
    # In sys.modules so pydantic resolves the file's annotations; workers get its classes by value.
    sys.modules[FILE_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _load_module(where: str) -> ModuleType:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as error:
        # Only when the named module itself (or a parent package) is missing; a missing import
        # inside the user's module is an error in user code.
        if error.name is not None and (where == error.name or where.startswith(error.name + ".")):
            raise BadInput(f"no module named {where!r} (and no such file)") from None
        raise


def _print_user_error(error: BaseException) -> None:
    """The traceback from the first frame outside this command's own code."""
    tb: TracebackType | None = error.__traceback__
    while tb is not None and _is_ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb, file=sys.stderr)


def _is_ours(filename: str) -> bool:
    name = os.path.basename(filename)
    folder = os.path.dirname(filename)
    return (filename == __file__ or filename == os.path.join(os.path.dirname(__file__), "loop.py")
            or (name in ("runners.py", "base_events.py") and folder.endswith("asyncio"))
            or "<frozen importlib" in filename or filename.startswith("uvloop/"))
