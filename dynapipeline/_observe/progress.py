"""``Progress``: live counts and rates of a running pipeline, group or stream.

::

    async with dynapipeline.Progress(pipeline, interval=0.5):
        await pipeline.run()

::

    a background task, every ``interval`` s:  the counts of the target and its members (a stream: of its steps)
                                               ─► rows ─┬─ a terminal (live): rich's Live table, redrawn in place
                                                        └─ otherwise: lines on the dynapipeline logger when it
                                                           shows INFO, else on ``file``

Invariants: nothing is hooked into the engine, so a run without a display
costs nothing, and a run with one costs one read of the counts per interval;
leaving the block (also on an error or a cancellation) cancels and awaits the
task and restores the terminal; an error while drawing is logged once and stops
the display, never the run.

See docs/observing.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

from dynapipeline._engine import wait_through_cancel
from dynapipeline._model.checks import check_seconds, kind_of
from dynapipeline._model.component import Component
from dynapipeline._model.group import Container
from dynapipeline._model.stream import Stream
from dynapipeline._table import format_table
from dynapipeline.errors import ConfigurationError

__all__ = ["Progress"]

logger = logging.getLogger("dynapipeline")

_STREAM_HEAD: tuple[str, ...] = ("step", "received", "done", "failed", "in flight", "queued", "done/s")
_TREE_HEAD: tuple[str, ...] = ("component", "kind", "cycles", "runs", "runs/s")


class Progress:
    """A live display of per-step (stream) or per-component (pipeline, group) counts and rates.

    ``target``: a ``Stream`` (one row per step: received, done, failed, in flight,
    queued, done per second), or a pipeline, a group or a stage (one row per
    component of the tree: cycles, runs, runs per second). Counts and rates are of
    what happened since the display started (a stream's count the current run's).
    A container's ``cycles`` is the fewest runs of any of its members (every cycle
    runs each member once); a stage's ``runs`` include failed runs.

    Where it goes: when ``file`` (default ``sys.stderr``) is a terminal, a table
    redrawn in place every ``interval`` seconds (``live=True`` forces this,
    ``live=False`` forbids it). Otherwise, every ``interval`` seconds, one line per
    row: on the ``dynapipeline`` logger at INFO when logging is configured to show
    it, else written to ``file`` (so the lines are never silently lost). A last
    snapshot is always shown when the block exits, however it exits.

    The live table uses ``rich`` (the ``progress`` extra) rather than tqdm: it
    redraws several rows with several columns at once, where tqdm draws one bar
    per line. Without rich installed a live display raises ImportError naming
    the extra; log lines need nothing.

    The display is an ``async with`` block: entering starts one task, leaving
    (also on an error or cancellation) cancels and awaits it, and restores the
    terminal. An error while drawing is logged once and stops the display, never
    the run.
    """

    def __init__(self, target: Any, interval: float = 0.5, *, live: bool | None = None,
                 file: TextIO | None = None) -> None:
        if not isinstance(target, Component):
            raise ConfigurationError(
                f"Progress: field 'target' must be a Pipeline, StageGroup, Stream or Stage, got {kind_of(target)}")
        check_seconds("Progress", "interval", interval)
        if live is not None and not isinstance(live, bool):
            raise ConfigurationError(f"Progress: field 'live' must be True, False or None, got {live!r}")
        self.target = target
        self.interval = float(interval)
        self.file: TextIO = file if file is not None else sys.stderr
        self.live = _is_terminal(self.file) if live is None else live
        self._task: asyncio.Task[None] | None = None
        self._display: Any = None  # rich's Live, when live
        self._start = 0.0
        self._base: dict[int, int] = {}
        self._broken = False  # drawing failed once: the display stays off

    async def __aenter__(self) -> Progress:
        if self._task is not None:
            raise RuntimeError("this Progress display is already running")
        if self.live:
            self._display = _open_live(self.file)
        self._start = time.monotonic()
        self._broken = False
        self._base = {id(c): c.stats.count for _, c in _tree(self.target)}
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="dynapipeline-progress")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                # Our own cancellation, if any, is held back until the task is gone, then raised.
                await wait_through_cancel([task])
            if not self._broken:
                try:
                    self._show(final=True)
                except Exception as error:  # the display must never replace the run's own outcome
                    logger.warning("progress display of %r stopped: %r", self.target.name, error)
        finally:
            display, self._display = self._display, None
            if display is not None:
                display.stop()

    def rows(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """The table now: its head and rows (what the display shows)."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        target = self.target
        if isinstance(target, Stream):
            rows: list[tuple[str, ...]] = [
                (name, str(p.received), str(p.done), str(p.failed), str(p.in_flight), str(p.queued),
                 f"{p.done / elapsed:.1f}") for name, p in target.progress.items()]
            return _STREAM_HEAD, rows
        tree_rows: list[tuple[str, ...]] = []
        for depth, component in _tree(target):
            runs = component.stats.count - self._base.get(id(component), 0)
            cycles = "-"
            if isinstance(component, Container):
                members = [m for d, m in _tree(component) if d == 1]
                if members:
                    cycles = str(min(m.stats.count - self._base.get(id(m), 0) for m in members))
            tree_rows.append(("  " * depth + component.name, type(component).__name__, cycles, str(runs),
                              f"{runs / elapsed:.1f}"))
        return _TREE_HEAD, tree_rows

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self._show(final=False)
            except Exception as error:
                self._broken = True
                logger.warning("progress display of %r stopped: %r", self.target.name, error)
                return

    def _show(self, final: bool) -> None:
        head, rows = self.rows()
        if self._display is not None:
            self._display.update(_rich_table(head, rows), refresh=True)
            return
        elapsed = time.monotonic() - self._start
        label = "done" if final else "progress"
        lines = [f"{label} {self.target.name!r} {elapsed:.1f}s " + " ".join(
            f"{key.replace(' ', '_')}={value.strip()}" if i else repr(value.strip())
            for i, (key, value) in enumerate(zip(head, row, strict=True))) for row in rows]
        if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
            for line in lines:
                logger.info("%s", line)
        else:
            self.file.write("".join(line + "\n" for line in lines))
            self.file.flush()

    def __str__(self) -> str:
        head, rows = self.rows()
        return format_table(head, rows, right=range(1, len(head)))


def _tree(target: Any) -> list[tuple[int, Any]]:
    walk = getattr(target, "_walk", None)
    return list(walk(0)) if walk is not None else [(0, target)]


def _is_terminal(file: Any) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed file
        return False


def _open_live(file: TextIO) -> Any:
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError as error:
        raise ImportError("a live progress display needs rich: pip install 'dynapipeline[progress]' "
                          "(or pass live=False for log lines)") from error
    # auto_refresh=False: we redraw from our own task, so rich starts no thread of its own.
    display = Live(console=Console(file=file), auto_refresh=False, transient=False)
    display.start()
    return display


def _rich_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    from rich.table import Table

    table = Table()
    for i, column in enumerate(head):
        table.add_column(column, justify="right" if i else "left")
    for row in rows:
        table.add_row(*row)
    return table
