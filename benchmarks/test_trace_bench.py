"""The cost of tracing a stream: a traced 3-step no-op ``Stream`` of 100,000 items beside the same untraced.

Group ``trace-stream`` (``pytest benchmarks/test_trace_bench.py --benchmark-only``): the
``stream`` case of ``python -m dynapipeline bench`` run bare and inside ``Tracer(file)``
(the file written, the time to write it at exit included).

The tracing figures of docs/performance.md come from running this file as a script::

    .venv/bin/python benchmarks/test_trace_bench.py [--items N] [--repeat K]

It prints the median traced ÷ untraced ratio (the two sides alternate, K pairs), the
same for ``Tracer(path, items=1000)``, the time ``Tracer`` takes to finish the file
when its block exits, the file's size, and the peak RSS of a fresh process running
the stream once untraced and once traced.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import dynapipeline
from dynapipeline import Tracer
from dynapipeline._cli.bench import make_case

ITEMS = 100_000


@pytest.fixture(scope="module")
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def traced_run(case: Any, path: Path, loop: Any, items: int | None = None) -> tuple[Any, float]:
    """One traced run of ``case``; its result and the seconds the tracer's exit took (finishing the file)."""
    tracer = Tracer(path) if items is None else Tracer(path, items=items)
    tracer.__enter__()
    try:
        out = loop.run_until_complete(case.engine())
    finally:
        started = time.perf_counter()
        tracer.__exit__(None, None, None)
    return out, time.perf_counter() - started


@pytest.mark.benchmark(group="trace-stream")
@pytest.mark.parametrize("side", ["untraced", "traced", "traced items=1000"])
def test_trace_stream(benchmark: Any, loop: Any, side: str, tmp_path: Path) -> None:
    case = make_case("stream", "noop", ITEMS)
    if side == "untraced":
        out = benchmark(lambda: loop.run_until_complete(case.engine()))
    else:
        items = 1000 if side.endswith("1000") else None
        out = benchmark(lambda: traced_run(case, tmp_path / "bench.json", loop, items)[0])
        assert (tmp_path / "bench.json").stat().st_size > 0
    assert len(out) == ITEMS


def _peak_rss(traced: bool, items: int) -> int:
    """Peak RSS (bytes) of a fresh process that runs the stream once, traced to a file or not."""
    code = ("import asyncio, resource, sys, tempfile, os\n"
            "from dynapipeline import Tracer\n"
            "from dynapipeline._cli.bench import make_case\n"
            f"case = make_case('stream', 'noop', {items})\n"
            "loop = asyncio.new_event_loop()\n"
            f"if {traced}:\n"
            "    with tempfile.TemporaryDirectory() as folder, Tracer(os.path.join(folder, 't.json')):\n"
            "        loop.run_until_complete(case.engine())\n"
            "else:\n"
            "    loop.run_until_complete(case.engine())\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # First, while this process is small: a child's peak RSS counts its parent's from before the exec.
    rss = {side: _peak_rss(side, args.items) for side in (False, True)}
    case = make_case("stream", "noop", args.items)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(case.engine())  # warm
    bare: list[float] = []
    traced: list[float] = []
    exits: list[float] = []
    ratios: list[float] = []
    sampled: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        for _ in range(args.repeat):
            started = time.perf_counter()
            loop.run_until_complete(case.engine())
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            _, exit_seconds = traced_run(case, path, loop)
            traced.append(time.perf_counter() - started)
            exits.append(exit_seconds)
            ratios.append(traced[-1] / bare[-1])
            size = path.stat().st_size
            started = time.perf_counter()
            traced_run(case, path, loop, items=1000)
            sampled.append((time.perf_counter() - started) / bare[-1])
    loop.close()
    print(f"engine {'compiled' if dynapipeline.compiled else 'pure'}, {args.items} items, "
          f"3 no-op steps, {args.repeat} pairs, own peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    print(f"untraced: median {statistics.median(bare):.3f} s")
    print(f"traced:   median {statistics.median(traced):.3f} s (file {size / 1e6:.1f} MB)")
    print(f"traced / untraced: median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, "
          f"max {max(ratios):.2f}x)")
    print(f"traced with items=1000 / untraced: median {statistics.median(sampled):.2f}x")
    print(f"tracer exit (finishing the file): median {statistics.median(exits):.3f} s, max {max(exits):.3f} s")
    print(f"peak RSS of a fresh process: untraced {rss[False] / 1e6:.0f} MB, traced {rss[True] / 1e6:.0f} MB "
          f"(+{(rss[True] - rss[False]) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
