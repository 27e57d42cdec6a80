"""``Tracer``: record every run inside a ``with`` block and write a trace Perfetto and chrome://tracing open.

::

    with Tracer(path):   current_trace = TraceSink ─► the engine, at the end of every run:
                            ├─ a stream item's run ─► ItemTracks ─► written to ``path`` as the run goes
                            └─ any other run ───────► kept ─► trace_events() when the block exits ─► ``path``
    worker threads, processes, Dask tasks: their runs travel back with their results ─► the same sink

Invariants: while no tracer is active anywhere, the engine's cost is one flag
test per run; the innermost active tracer records; a path that cannot be
written is refused when the tracer is made; a failure to write the trace never
replaces the block's own error (it is added to it as a note).

See docs/observing.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
from typing import IO, Any

from dynapipeline._engine import ItemTracks, TraceSink, current_trace, set_tracing
from dynapipeline._model.checks import kind_of
from dynapipeline._observe.trace_events import item_metadata, item_tracks, trace_events
from dynapipeline.errors import ConfigurationError

__all__ = ["Tracer", "path_problem"]

_log = logging.getLogger("dynapipeline")
_lock = threading.Lock()
_active = 0  # tracers active in this process: the engine's trace hook is on while there is one
_CLOCK = "time.perf_counter (system-wide monotonic)"


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a trace cannot be written at ``path`` (``None`` when it can), found by opening it for appending.

    A file the check creates is removed again; an existing file is left as it is.
    """
    text = os.fspath(path)
    if text == "":
        return "the path is empty"
    if os.path.isdir(text):
        return f"{text!r} is a folder, not a file"
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        return f"folder {folder!r} does not exist"
    existed = os.path.lexists(text)
    if existed and not os.path.isfile(text):
        return None  # a device or a pipe (opening one may block until a reader comes): writing will tell
    try:
        with open(text, "a", encoding="utf-8"):
            pass
    except OSError as error:
        return f"{text!r} cannot be written: {error.strerror or error}"
    if not existed:
        try:
            os.remove(text)
        except OSError:  # written to by now, or removed by someone else: either way not ours to worry about
            _log.debug("Tracer: could not remove the file created to check %r", text, exc_info=True)
    return None


class Tracer:
    """Records every pipeline, group, stream and stage run inside ``with`` / ``async with`` it.

    ``path`` (optional): where to write the Chrome trace-event JSON; open it at
    https://ui.perfetto.dev or in ``chrome://tracing``. It is checked when the tracer
    is made (a folder, an empty path or a file that cannot be written raise
    ``ConfigurationError``). The runs streams make for their items are written to it
    as the run goes (so a long stream's trace is not held in memory), the rest when
    the block exits, even when it exits with an error. ``tracer.events`` holds the
    events as a list (read back from the file when there is one). Should writing the
    file fail, the block's own error is never replaced: the failure is added to it as
    a note (and logged); a block that ended well raises the ``OSError``.

    ``items`` (optional): sampling for huge streams. Only the first ``items`` runs of
    each stage made for stream items are recorded (``left_out`` counts the others);
    pipelines, groups, streams, steps and runs outside streams are always recorded.

    The tracer is active for the code inside the block and what it starts: tasks
    created there, worker threads and worker processes (their runs travel back with
    their results). Code running concurrently outside the block is not recorded.
    Nested tracers: the innermost one records. A tracer may be used again after its
    block exits; each block starts a new recording (and rewrites the file). While no
    tracer is active anywhere, the engine's cost is one flag test per run.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, items: int | None = None) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"Tracer: field 'path' must be a file path or None, got {kind_of(path)}")
        if path is not None:
            problem = path_problem(path)
            if problem is not None:
                raise ConfigurationError(f"Tracer: field 'path': {problem}")
        if items is not None and (type(items) is not int or items < 0):
            raise ConfigurationError(f"Tracer: field 'items' must be a whole number >= 0 or None, got {items!r}")
        self.path = path
        self.items = items
        self._sink: TraceSink | None = None
        self._token: Any = None
        self._started = 0.0
        self._events: list[dict[str, Any]] | None = None
        self._out: IO[str] | None = None  # the file (or, without a path, the text in memory) being written
        self._tracks: ItemTracks | None = None
        self._kept: list[tuple[Any, ...]] = []  # runs other than items': formatted when the block exits
        self._written = 0  # events written so far
        self._error: BaseException | None = None  # the first failure to write, raised or noted at exit
        self._finished = False
        self._writing = threading.Lock()

    def __enter__(self) -> Tracer:
        global _active
        if self._token is not None:
            raise RuntimeError("this Tracer is already active; use another instance to trace in parallel")
        self._close_out()  # a previous block's, if it was never finished
        if self.path is None:
            out: IO[str] = io.StringIO()
        else:
            try:
                out = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by _finish
            except OSError as error:  # the file or its folder went away since the tracer was made
                raise ConfigurationError(f"Tracer: field 'path': {os.fspath(self.path)!r} cannot be written: "
                                         f"{error.strerror or error}") from error
        self._out = out
        self._events = None
        self._kept = []
        self._written = 0
        self._error = None
        self._finished = False
        self._started = time.perf_counter()
        self._tracks = item_tracks(self._started)
        self._sink = TraceSink(-1 if self.items is None else self.items, self._take)
        self._sink.thread()  # names the thread the block runs on
        self._write('{"traceEvents":[')
        self._token = current_trace.set(self._sink)
        with _lock:
            _active += 1
            set_tracing(True)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._stop()
        if self.path is not None:
            self._finish_or_note(exc)

    async def __aenter__(self) -> Tracer:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._stop()
        if self.path is not None:
            # Little is left to write by now, but a file system can be slow: keep the event loop free meanwhile.
            await asyncio.to_thread(self._finish_or_note, exc)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The trace events recorded (read once, when first asked for after the block)."""
        if self._events is None:
            if self._sink is None:
                return []
            if self._token is not None:
                raise RuntimeError("the Tracer is still active: read its events after its block")
            self._finish()
            if self._error is not None:
                raise RuntimeError(f"Tracer: the trace could not be written to {self.path!r}") from self._error
            if self.path is None:
                assert isinstance(self._out, io.StringIO)
                document = json.loads(self._out.getvalue())
                self._out = None
            else:
                with open(self.path, encoding="utf-8") as file:
                    document = json.load(file)
            self._events = document["traceEvents"]
        return self._events

    @property
    def left_out(self) -> int:
        """How many runs for stream items the ``items`` sampling left out (in the last block)."""
        return self._sink.left_out if self._sink is not None else 0

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace as Chrome trace-event JSON (``{"traceEvents": [...]}``) to another file."""
        document = {"traceEvents": self.events, "displayTimeUnit": "ms", "otherData": self._other_data()}
        with open(path, "w", encoding="utf-8") as file:
            json.dump(document, file, separators=(",", ":"))

    # -- writing ---------------------------------------------------------------------------------
    def _take(self, sink: TraceSink) -> None:
        """Called by the sink every ``full_at`` runs (on whatever thread ran the stage): write the items' runs."""
        if not self._writing.acquire(blocking=False):
            return  # another thread is writing: it or a later call takes these runs
        try:
            self._drain(sink)
        finally:
            self._writing.release()

    def _drain(self, sink: TraceSink) -> None:
        """Write the items' runs collected so far, keep the others; never raises (the engine calls it)."""
        runs = sink.runs
        n = len(runs)
        chunk = runs[:n]
        del runs[:n]  # appends made meanwhile (other threads) are past n: kept for the next call
        items = []
        for run in chunk:
            if run[6] is None:
                self._kept.append(run)
            else:
                items.append(run)
        if items and self._error is None and self._tracks is not None:
            try:
                self._write_events(self._tracks.format(items))
            except Exception as error:  # noqa: BLE001 - the run must go on; the error is raised or noted at exit
                self._error = error

    def _write(self, text: str) -> None:
        out = self._out
        if out is not None and self._error is None:
            try:
                out.write(text)
            except Exception as error:  # noqa: BLE001 - raised or noted at exit
                self._error = error

    def _write_events(self, events: list[str]) -> None:
        if events:
            self._write(("," if self._written else "") + ",".join(events))
            self._written += len(events)

    def _finish(self) -> None:
        """Write what is left and close the document (once per block); failures land in ``_error``."""
        with self._writing:
            if self._finished or self._sink is None:
                return
            self._finished = True
            sink = self._sink
            try:
                self._drain(sink)
                events = trace_events(sink, self._started, self._kept)
                if self._tracks is not None:
                    events += item_metadata(self._tracks, sink.threads)
                self._write_events([json.dumps(event, separators=(",", ":")) for event in events])
                self._write(f'],"displayTimeUnit":"ms","otherData":{json.dumps(self._other_data())}}}')
            except Exception as error:  # noqa: BLE001 - raised or noted by the caller
                self._error = self._error or error
            self._kept = []
            self._tracks = None
            for held in (sink.runs, sink.spans, sink.flows, sink.remote):
                held.clear()  # written: what a kept tracer holds is its counts (and, without a path, the text)
            if self.path is not None:
                self._close_out()

    def _close_out(self) -> None:
        out = self._out
        if out is not None and not isinstance(out, io.StringIO):
            self._out = None
            try:
                out.close()
            except Exception as error:  # noqa: BLE001 - a full disk shows when the buffer is flushed
                self._error = self._error or error

    def _finish_or_note(self, exc: BaseException | None) -> None:
        """Finish the file; a failure is raised, or added to ``exc`` (the block's own error) as a note."""
        self._finish()
        error = self._error
        if error is None:
            return
        message = f"Tracer: the trace could not be written to {os.fspath(self.path or '')!r}: {error}"
        if exc is not None:
            _log.warning("%s (the run's own error goes on)", message)
            exc.add_note(message)
            return
        raise OSError(message) from error

    def _other_data(self) -> dict[str, Any]:
        other: dict[str, Any] = {"clock": _CLOCK, "producer": "dynapipeline"}
        if self.items is not None:
            other["items per stage"] = self.items
            other["item runs left out"] = self.left_out
        return other

    def _stop(self) -> None:
        global _active
        token, self._token = self._token, None
        if token is None:
            return
        try:
            current_trace.reset(token)
        except ValueError:  # exited in another context than it entered (a `with` split across tasks)
            current_trace.set(None)
        with _lock:
            _active -= 1
            set_tracing(_active > 0)

    def __repr__(self) -> str:
        return f"Tracer({self.path!r})" if self.items is None else f"Tracer({self.path!r}, items={self.items})"
