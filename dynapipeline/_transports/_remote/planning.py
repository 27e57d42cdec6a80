"""Planning remote work in the parent: batches of components, a timed stage's deadline, crash retries.

Invariants:

- A timed stage travels alone, so a deadline concerns one stage (or one item).
- Batches are contiguous and sized from the components' past run times, so
  tiny work goes in one message and heavy work is spread over the workers.

See docs/performance.md.
"""

from __future__ import annotations

import math
from typing import Any

from dynapipeline._model.component import Stage
from dynapipeline._transports.calling import time_limit

__all__ = ["deadline", "plan_batches", "plan_singles"]

_GRACE = 0.1              # seconds added to a timed stage's deadline in the parent
_PER_STAGE_COST = 20e-6   # estimated IPC + rebuild cost of one component (seconds)
_SMALL_BATCH = 1e-3       # estimated work below this goes to one worker in one message
_CHUNKS_PER_WORKER = 4


def deadline(owner: Any) -> float | None:
    """Seconds the parent allows a timed stage shipped alone (all attempts, plus a grace), or None."""
    if not isinstance(owner, Stage):
        return None
    limit = time_limit(owner)
    return None if limit is None else limit + _GRACE


def _cost(runner: Any) -> float | None:
    count = runner.count
    return runner.total / count if count else None


def plan_singles(runners: tuple[Any, ...], workers: int) -> list[list[int]]:
    """One component per batch: a crash or timeout then costs only that component's result."""
    return [[index] for index in range(len(runners))]


def plan_batches(runners: tuple[Any, ...], workers: int) -> list[list[int]]:
    """Split components into contiguous batches: one per timed stage, the rest by estimated cost."""
    batches: list[list[int]] = []
    rest: list[int] = []
    for index, runner in enumerate(runners):
        if deadline(runner.owner) is not None:
            batches.append([index])
        else:
            rest.append(index)
    if not rest:
        return batches
    costs = [_cost(runners[i]) for i in rest]
    if all(c is not None for c in costs):
        weights = [c + _PER_STAGE_COST for c in costs if c is not None]
        total = sum(weights)
        if total < _SMALL_BATCH:
            return batches + [rest]
        count = min(len(rest), workers * _CHUNKS_PER_WORKER, max(1, math.ceil(total / (_SMALL_BATCH / 2))))
    else:
        weights = [1.0] * len(rest)
        total = float(len(rest))
        count = min(len(rest), workers * _CHUNKS_PER_WORKER)
    target = total / count
    current: list[int] = []
    acc = 0.0
    made = 0
    for index, weight in zip(rest, weights, strict=True):
        # Cut before this component when its midpoint falls past the next boundary.
        if current and made < count - 1 and acc + weight / 2 > target * (made + 1):
            batches.append(current)
            current = []
            made += 1
        current.append(index)
        acc += weight
    if current:
        batches.append(current)
    return batches
