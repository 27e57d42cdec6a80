"""``component.report()``: what ran, how often, how long, where, and the slowest stage runs.

Every number comes from what the engine records on each run anyway (no tracer
needed): counts, errors and total/max are exact over all runs since the stats
were last reset; p50 and p95 are over the last ``RING`` (64) runs of each
component, which the engine keeps in a fixed ring buffer so that memory stays
flat in an infinite loop (exact while a component ran at most 64 times).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dynapipeline._model.component import Component, Stage, runner_of
from dynapipeline._table import format_table

__all__ = ["ComponentReport", "Report", "SlowRun", "build_report"]

_SLOWEST = 5


@dataclass(frozen=True)
class ComponentReport:
    """One component's line of a report. Times are in seconds.

    ``total`` is the time its runs took where they ran (its work); for a component
    run in a thread or a process, ``wait`` is the time its runs waited for a worker
    and ``ship`` the time spent moving it and its result (pickling, transfer,
    unpickling); both are 0 on the event loop. ``where``: ``("loop",)``, or the
    places it ran off the loop (``"thread"``, ``"process <pid>"``); ``pids`` the
    worker processes. ``p50``/``p95``/``max`` are durations of single runs.
    """

    name: str
    kind: str
    depth: int
    path: tuple[str, ...]
    where: tuple[str, ...]
    pids: tuple[int, ...]
    runs: int
    errors: int
    total: float
    mean: float
    p50: float
    p95: float
    max: float
    wait: float
    ship: float

    @property
    def work(self) -> float:
        """The time the runs themselves took (``total``), beside ``wait`` and ``ship``."""
        return self.total


@dataclass(frozen=True)
class SlowRun:
    """One of the slowest stage runs: which stage (``path`` from the report's root), its cycle, its seconds.

    ``cycle`` is which run of that stage it was (1 = its first since its stats were
    reset): the cycle number of its group when the group ran once.
    """

    name: str
    path: tuple[str, ...]
    kind: str
    cycle: int
    seconds: float


class Report:
    """A component and everything below it, one ``ComponentReport`` each, and the 5 slowest stage runs.

    ``str(report)`` is an aligned table (``print(pipeline.report())``); ``to_dict()`` gives plain
    data for programs (seconds, JSON-serialisable).
    """

    def __init__(self, components: list[ComponentReport], slowest: list[SlowRun]) -> None:
        self.components = components
        self.slowest = slowest

    def __getitem__(self, name: str) -> ComponentReport:
        """The first component named ``name`` (depth first)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": [{**asdict(c), "work": c.work} for c in self.components],
            "slowest": [asdict(s) for s in self.slowest],
        }

    def __str__(self) -> str:
        head = ("component", "kind", "runs", "total s", "mean ms", "p50 ms", "p95 ms", "max ms", "errors",
                "wait s", "ship s", "where")
        rows = [(
            "  " * c.depth + c.name, c.kind, str(c.runs), f"{c.total:.6f}", _ms(c.mean), _ms(c.p50), _ms(c.p95),
            _ms(c.max), str(c.errors), f"{c.wait:.6f}", f"{c.ship:.6f}", _where(c),
        ) for c in self.components]
        text = format_table(head, rows, right=range(2, 11))  # names, kinds and places left, numbers right
        if self.slowest:
            lines = ["slowest stage runs:"]
            lines += [f"  {' / '.join(s.path)}  cycle {s.cycle}  {_ms(s.seconds)} ms" for s in self.slowest]
            text += "\n" + "\n".join(lines)
        return text

    def __repr__(self) -> str:
        return f"<Report of {len(self.components)} components>"


def build_report(root: Component) -> Report:
    """The report of ``root`` and everything below it (its ``_walk``)."""
    components = []
    candidates: list[SlowRun] = []
    path: list[str] = []
    for depth, component in root._walk(0):
        del path[depth:]
        path.append(component.name)
        runner = runner_of(component)
        line = _line(component, runner, depth, tuple(path))
        components.append(line)
        if isinstance(component, Stage):
            candidates += (SlowRun(line.name, line.path, line.kind, cycle, seconds)
                           for seconds, cycle in runner.slowest())
    candidates.sort(key=lambda run: run.seconds, reverse=True)
    return Report(components, candidates[:_SLOWEST])


def _line(component: Component, runner: Any, depth: int, path: tuple[str, ...]) -> ComponentReport:
    durations = sorted(runner.durations())
    places = tuple(runner.places) if runner.places else ("loop",)
    count = runner.count
    return ComponentReport(
        name=component.name, kind=type(component).__name__, depth=depth, path=path, where=places,
        pids=tuple(int(p.split()[1]) for p in places if p.startswith("process ")),
        runs=count, errors=runner.errors, total=runner.total, mean=runner.total / count if count else 0.0,
        p50=_percentile(durations, 0.50), p95=_percentile(durations, 0.95), max=runner.max if count else 0.0,
        wait=runner.wait_total, ship=runner.ship_total,
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank: the smallest duration at least ``q`` of the durations are not above (0.0 if none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _where(c: ComponentReport) -> str:
    others = [p for p in c.where if not p.startswith("process ")]
    if c.pids:
        others.append("process " + ",".join(str(pid) for pid in c.pids))
    return " ".join(others)
