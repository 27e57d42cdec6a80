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

__all__ = ["LOOPS", "MODE", "LoopRunner", "close_loops", "loop_runner", "rate_table", "record_rate"]

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


# MB/s per group and side, as the data benchmarks record them; printed as one table at the end of the run.
_rates: dict[str, dict[str, float]] = {}
OURS = "dynapipeline"
BASE = "one process"


def record_rate(group: str, side: str, mb_per_s: float) -> None:
    _rates.setdefault(group, {})[side] = mb_per_s


def rate_table() -> list[str]:
    """Per group, each side's MB/s, its ratio to one process and ours ÷ it (empty when nothing was recorded)."""
    lines = []
    for group, rates in _rates.items():
        lines.append(f"{group}: MB/s (median round), ÷ one process, ours ÷ side")
        base, ours = rates.get(BASE), rates.get(OURS)
        for side, rate in rates.items():
            vs_one = f"{rate / base:6.2f}×" if base else ""
            ours_vs = f"{ours / rate:6.2f}×" if ours and side != OURS else ""
            lines.append(f"  {side:<14}{rate:>9,.0f}  {vs_one:>8}  {ours_vs:>8}")
    return lines
