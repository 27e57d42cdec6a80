"""``Tracer``: record every run inside a ``with`` block and write a trace Perfetto and chrome://tracing open."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from dynapipeline._engine import TraceSink, current_trace, set_tracing
from dynapipeline._front.trace_events import trace_events
from dynapipeline.errors import ConfigurationError, kind_of

__all__ = ["Tracer"]

_lock = threading.Lock()
_active = 0  # tracers active in this process: the engine's trace hook is on while there is one


class Tracer:
    """Records every pipeline, group, stream and stage run inside ``with`` / ``async with`` it.

    ``path`` (optional): where to write the Chrome trace-event JSON when the block
    exits, even when it exits with an error; open it at https://ui.perfetto.dev or in
    ``chrome://tracing``. ``tracer.events`` holds the same events as a list.

    The tracer is active for the code inside the block and what it starts: tasks
    created there, worker threads and worker processes (their runs travel back with
    their results). Code running concurrently outside the block is not recorded.
    Nested tracers: the innermost one records. A tracer may be used again after its
    block exits; each block starts a new recording. While no tracer is active
    anywhere, the engine's cost is one flag test per run.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"Tracer: field 'path' must be a file path or None, got {kind_of(path)}")
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ConfigurationError(f"Tracer: field 'path': folder {folder!r} does not exist")
        self.path = path
        self._sink: TraceSink | None = None
        self._token: Any = None
        self._started = 0.0
        self._events: list[dict[str, Any]] | None = None

    def __enter__(self) -> Tracer:
        global _active
        if self._token is not None:
            raise RuntimeError("this Tracer is already active; use another instance to trace in parallel")
        self._sink = TraceSink()
        self._sink.thread()  # names the thread the block runs on
        self._events = None
        self._started = time.perf_counter()
        self._token = current_trace.set(self._sink)
        with _lock:
            _active += 1
            set_tracing(True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self.path is not None:
            self.save(self.path)

    async def __aenter__(self) -> Tracer:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self._stop()
        if self.path is not None:
            # Formatting and writing a large trace takes a while: keep the event loop free meanwhile.
            await asyncio.to_thread(self.save, self.path)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The trace events recorded (formatted once, when first read after the block)."""
        if self._events is None:
            if self._sink is None:
                return []
            if self._token is not None:
                raise RuntimeError("the Tracer is still active: read its events after its block")
            self._events = trace_events(self._sink, self._started)
        return self._events

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace as Chrome trace-event JSON (``{"traceEvents": [...]}``)."""
        document = {"traceEvents": self.events, "displayTimeUnit": "ms",
                    "otherData": {"clock": "time.perf_counter (system-wide monotonic)", "producer": "dynapipeline"}}
        with open(path, "w", encoding="utf-8") as file:
            json.dump(document, file, separators=(",", ":"))

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
        return f"Tracer({self.path!r})"
