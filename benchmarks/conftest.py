"""Benchmark fixtures. Every benchmark group holds an engine run and its raw-asyncio
twin, measured in the same session on the same persistent loop (bench_support.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from bench_support import LOOPS, MODE, close_loops, rate_table

from dynapipeline.execution import MultiprocessExecutionStrategy


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A module's own event loop, for the benchmarks that drive one by hand (processes, streams, Dask)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def procs(loop: asyncio.AbstractEventLoop) -> Iterator[MultiprocessExecutionStrategy]:
    """A warm 2-worker process pool, started before any timing."""
    strategy = MultiprocessExecutionStrategy(2)
    loop.run_until_complete(strategy.start())
    yield strategy
    strategy.close()


@pytest.fixture(scope="session", autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    close_loops()


def pytest_report_header(config: Any) -> str:
    return f"dynapipeline benchmarks: engine {MODE}, loops {', '.join(LOOPS)}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The data benchmarks' rates and ratios, so that they read directly."""
    lines = rate_table()
    if lines:
        terminalreporter.section("MB/s and ratios")
        for line in lines:
            terminalreporter.write_line(line)
