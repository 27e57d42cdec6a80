"""Picks the engine: the compiled ``core_c`` unless ``DYNAPIPELINE_NO_EXTENSIONS`` is set or it was not built."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from types import ModuleType

__all__ = [
    "COMPILED",
    "Bounded",
    "Concurrent",
    "Forever",
    "Loop",
    "Once",
    "RunControl",
    "Runner",
    "Sequential",
    "Slots",
    "current_control",
    "run_tasks",
    "wait_through_cancel",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _pick() -> tuple[ModuleType, bool]:
    if not _flag("DYNAPIPELINE_NO_EXTENSIONS"):
        # core_c.py links to the source; only the built extension counts as compiled.
        spec = importlib.util.find_spec(__name__ + ".core_c")
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return importlib.import_module(__name__ + ".core_c"), True
    return importlib.import_module(__name__ + ".core_py"), False


_core, COMPILED = _pick()

Bounded = _core.Bounded
Concurrent = _core.Concurrent
Forever = _core.Forever
Loop = _core.Loop
Once = _core.Once
RunControl = _core.RunControl
Runner = _core.Runner
Sequential = _core.Sequential
Slots = _core.Slots
current_control = _core.current_control
run_tasks = _core.run_tasks
wait_through_cancel = _core.wait_through_cancel
