"""Shared by the benchmark modules: the engine mode, the loops, one persistent loop per kind.

The engine mode (compiled or pure) is fixed when dynapipeline is imported; run the
suite twice to compare (``make bench-suite`` does: the second run sets
``DYNAPIPELINE_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import dynapipeline
from dynapipeline._loops import loop_factory, uvloop_available

__all__ = ["LOOPS", "MODE", "LoopRunner", "close_loops", "loop_runner"]

MODE = "compiled" if dynapipeline.compiled else "pure"


LOOPS = ("asyncio", "uvloop") if uvloop_available() else ("asyncio",)


class LoopRunner:
    """Runs coroutine functions to completion on one long-lived loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = loop_factory(name)()

    def run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return self.loop.run_until_complete(fn())

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


_runners: dict[str, LoopRunner] = {}


def loop_runner(name: str) -> LoopRunner:
    """The session's persistent loop of this kind (created on first use)."""
    if name not in _runners:
        _runners[name] = LoopRunner(name)
    return _runners[name]


def close_loops() -> None:
    for runner in _runners.values():
        runner.close()
    _runners.clear()
