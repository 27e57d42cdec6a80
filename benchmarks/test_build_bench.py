"""Building a StageGroup over n prebuilt no-op stages and a SIMPLE pipeline over it.

The ``build`` row of ``python -m dynapipeline bench`` (``make_builder``); divide the
time by n for µs per stage.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench_support import MODE

from dynapipeline._cli.bench import SIZES, make_builder


@pytest.mark.parametrize("n", SIZES)
def test_build(benchmark: Any, n: int) -> None:
    build = make_builder(n)
    benchmark.group = f"build n={n} {MODE}"
    benchmark.extra_info.update(case="build", n=n, mode=MODE)
    pipeline = benchmark(build)
    assert len(list(pipeline.iter_components())) == n + 2
