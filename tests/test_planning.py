"""Batch planning for remote work (processes and Dask): contiguous batches sized from past run times."""

from __future__ import annotations

from dynapipeline._transports._remote.planning import plan_batches


def test_batches_follow_past_costs():
    class Dummy:
        def __init__(self, count: int, total: float) -> None:
            self.count, self.total, self.owner = count, total, None

    tiny = tuple(Dummy(1, 1e-6) for _ in range(10))
    assert plan_batches(tiny, 2) == [list(range(10))]
    heavy = tuple(Dummy(1, 0.5) for _ in range(2))
    assert plan_batches(heavy, 2) == [[0], [1]]
    uneven = (Dummy(1, 1.66), Dummy(1, 1.69))
    assert plan_batches(uneven, 2) == [[0], [1]]
    unknown = tuple(Dummy(0, 0.0) for _ in range(100))
    batches = plan_batches(unknown, 2)
    assert len(batches) == 8 and sorted(i for b in batches for i in b) == list(range(100))
