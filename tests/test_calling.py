"""Runs made elsewhere (a worker process, Dask) added to a stage's stats: counts, extremes, and the slowest."""

from __future__ import annotations

from typing import Any

from dynapipeline import Stage
from dynapipeline._engine import RING
from dynapipeline._model.component import runner_of
from dynapipeline._transports.calling import add_runs


class Noop(Stage):
    def execute(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_the_slowest_runs_of_a_chunk_keep_their_cycles_after_the_ring_forgot_them() -> None:
    runner = runner_of(Noop(name="s"))
    durations = [0.001] * 50
    durations[7], durations[30], durations[31], durations[44] = 0.5, 0.4, 0.4, 0.3
    add_runs(runner, durations, 0.0, 1.0, 0, "process 1")
    add_runs(runner, [0.002] * (RING + 10), 1.0, 2.0, 0, "process 1")  # the ring now holds only these
    assert runner.count == 50 + RING + 10
    assert (runner.min, runner.max) == (0.001, 0.5)
    # Slow runs late in the chunk count although many fast ones came first (four of fifty here).
    assert runner.slowest()[:4] == [(0.5, 8), (0.4, 32), (0.4, 31), (0.3, 45)]


def test_runs_that_tie_are_named_latest_first_as_runs_made_here_are() -> None:
    runner = runner_of(Noop(name="s"))
    add_runs(runner, [0.001] * 5, 0.0, 1.0, 0, "process 1")
    add_runs(runner, [0.001] * 3 + [0.2] * 12, 1.0, 2.0, 0, "process 1")  # runs 9-20 tie as the slowest
    add_runs(runner, [0.001] * (RING + 1), 2.0, 3.0, 0, "process 1")
    assert runner.slowest() == [(0.2, cycle) for cycle in (20, 19, 18, 17, 16)]

    local = runner_of(Noop(name="here"))
    for elapsed in [0.001] * 8 + [0.2] * 12:
        local.record(0.0, elapsed)
    assert local.slowest() == runner.slowest()
