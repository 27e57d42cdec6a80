"""Picks the engine: the compiled ``core_c`` unless ``DYNAPIPELINE_NO_EXTENSIONS`` is set or it was not built.

There is one source, ``core_py.py``. The build compiles it a second time as the extension
module ``core_c`` (with the C types of ``core_c.pxd``); no ``core_c.py`` exists. Type checkers
always see the pure source.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from typing import TYPE_CHECKING

__all__ = [
    "COMPILED",
    "EPOCH_OFFSET",
    "RING",
    "Bounded",
    "BoundedGather",
    "Chained",
    "Concurrent",
    "ConcurrentGather",
    "Forever",
    "ItemTracks",
    "Loop",
    "Once",
    "RunControl",
    "Runner",
    "Sequential",
    "Slots",
    "TraceSink",
    "current_control",
    "current_item",
    "current_trace",
    "run_tasks",
    "set_tracing",
    "tracing",
    "wait_through_cancel",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _use_extension() -> bool:
    """True when the compiled engine is wanted and built (only a built extension counts as compiled)."""
    if _flag("DYNAPIPELINE_NO_EXTENSIONS"):
        return False
    spec = importlib.util.find_spec(__name__ + ".core_c")
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


# `_core` is the module in use, for introspection (tests/test_build.py checks its name and file).
if TYPE_CHECKING or not _use_extension():
    from . import core_py as _core

    COMPILED = False
else:
    from . import core_c as _core

    COMPILED = True

EPOCH_OFFSET = _core.EPOCH_OFFSET
RING = _core.RING
Bounded = _core.Bounded
BoundedGather = _core.BoundedGather
Chained = _core.Chained
Concurrent = _core.Concurrent
ConcurrentGather = _core.ConcurrentGather
Forever = _core.Forever
Loop = _core.Loop
Once = _core.Once
RunControl = _core.RunControl
Runner = _core.Runner
Sequential = _core.Sequential
Slots = _core.Slots
TraceSink = _core.TraceSink
ItemTracks = _core.ItemTracks  # the formatter of stream items' trace events
current_control = _core.current_control
current_item = _core.current_item
current_trace = _core.current_trace
run_tasks = _core.run_tasks
set_tracing = _core.set_tracing
tracing = _core.tracing
wait_through_cancel = _core.wait_through_cancel
