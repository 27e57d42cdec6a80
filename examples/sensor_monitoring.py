"""Sensor monitoring: concurrent sensors, a sequential monitor, a watchdog thread and CPU analysis in processes.

Each pipeline cycle runs four groups at once: the sensors read concurrently, the
monitor checks the latest readings one check after another, a watchdog pings a
device with a blocking call on a thread, and a spectrum analysis burns CPU in
worker processes. Three cycles, a few seconds in all.

Run it directly: it prints the report and writes a trace (open it at
https://ui.perfetto.dev) to the path given, else to a new file in the system's
temporary folder (its path printed)::

    python examples/sensor_monitoring.py [trace.json]

or hand its ``pipeline`` to the command line::

    dynapipeline run examples/sensor_monitoring.py:pipeline --trace t.json --report
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import tempfile
import time
from collections import deque
from typing import Any

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup, Tracer
from dynapipeline.execution import (
    ConcurrentExecutionStrategy,
    MultiprocessExecutionStrategy,
    MultithreadExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.execution.cycle_strategies import LoopCycleStrategy

# The latest readings (sensor name, value), shared by the sensors and the monitor on the event loop.
READINGS: deque[tuple[str, float]] = deque(maxlen=64)


class Sensor(Stage):
    """Reads a simulated value after a network latency."""

    base: float
    latency: float = 0.05

    async def execute(self, *args: Any, **kwargs: Any) -> float:
        await asyncio.sleep(self.latency * random.uniform(0.5, 1.5))
        value = self.base + random.gauss(0.0, 2.0)
        READINGS.append((self.name, value))
        return value


class Threshold(Stage):
    """Counts the latest readings above ``limit``."""

    limit: float

    async def execute(self, *args: Any, **kwargs: Any) -> int:
        await asyncio.sleep(0.02)  # e.g. writes the alert to a log service
        return sum(1 for _, value in list(READINGS)[-8:] if value > self.limit)


class Average(Stage):
    """The mean of the latest readings."""

    async def execute(self, *args: Any, **kwargs: Any) -> float:
        await asyncio.sleep(0.01)
        recent = [value for _, value in READINGS]
        return sum(recent) / len(recent) if recent else 0.0


class Watchdog(Stage):
    """Pings the device with a blocking call: a plain ``def``, so it runs on a thread."""

    def execute(self, *args: Any, **kwargs: Any) -> str:
        time.sleep(0.04)
        return "alive"


class Spectrum(Stage):
    """CPU-heavy: the strongest frequency of a noisy signal, by a naive discrete Fourier transform."""

    seed: int
    samples: int = 700

    def execute(self, *args: Any, **kwargs: Any) -> int:
        rng = random.Random(self.seed)
        n = self.samples
        signal = [math.sin(2 * math.pi * 7 * t / n) + rng.uniform(-0.5, 0.5) for t in range(n)]
        best, peak = 0, 0.0
        for k in range(1, n // 2):
            re = sum(x * math.cos(2 * math.pi * k * t / n) for t, x in enumerate(signal))
            im = sum(x * math.sin(2 * math.pi * k * t / n) for t, x in enumerate(signal))
            if re * re + im * im > peak:
                best, peak = k, re * re + im * im
        return best


analysis = MultiprocessExecutionStrategy(max_workers=2)

pipeline = PipelineFactory().create_pipeline(
    pipeline_type=PipeLineType.ADVANCED,  # threads and processes need an ADVANCED pipeline
    name="sensor monitoring",
    groups=[
        StageGroup(name="sensors", stages=[Sensor(name=f"sensor {i}", base=20.0 + i) for i in range(4)],
                   cycle_strategy=LoopCycleStrategy(4), execution_strategy=ConcurrentExecutionStrategy()),
        StageGroup(name="monitor", stages=[Threshold(name="threshold", limit=23.0), Average(name="average")],
                   cycle_strategy=LoopCycleStrategy(4), execution_strategy=SequentialExecutionStrategy()),
        StageGroup(name="watchdog", stages=[Watchdog(name="ping")], cycle_strategy=LoopCycleStrategy(3),
                   execution_strategy=MultithreadExecutionStrategy(max_workers=1)),
        StageGroup(name="analysis", stages=[Spectrum(name=f"spectrum {i}", seed=i) for i in range(2)],
                   cycle_strategy=LoopCycleStrategy(1), execution_strategy=analysis),
    ],
    cycle_strategy=LoopCycleStrategy(3),
    execution_strategy=ConcurrentExecutionStrategy(),  # the four groups run at the same time
)


async def main(trace_path: str) -> None:
    async with analysis:  # closes the worker processes when done
        async with Tracer(trace_path):
            cycles = await pipeline.run()
    peaks = [cycle[3][0] for cycle in cycles]  # per cycle: the results of the groups, in order
    print(f"spectrum peaks per cycle: {peaks}")
    print(pipeline.report())
    print(f"trace written to {trace_path} (open it at https://ui.perfetto.dev)")


def temporary_path() -> str:
    """A new file in the temporary folder: running the example leaves nothing in the folder it runs from."""
    handle, path = tempfile.mkstemp(prefix="sensor-trace-", suffix=".json")
    os.close(handle)
    return path


if __name__ == "__main__":
    dynapipeline.run(main(sys.argv[1] if len(sys.argv) > 1 else temporary_path()))
