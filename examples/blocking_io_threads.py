"""Blocking stages (``time.sleep`` standing in for blocking I/O): concurrent on the loop vs threads.

A plain ``def execute`` that blocks holds the event loop, so the concurrent
strategy runs such stages one after another; MultithreadExecutionStrategy runs
them in worker threads at the same time.

Run: ``python examples/blocking_io_threads.py [SECONDS] [STAGES]`` (default 0.5 s × 4).
"""

from __future__ import annotations

import sys
import time

import dynapipeline
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import ConcurrentExecutionStrategy, MultithreadExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class BlockingRead(Stage):
    """Blocks for ``seconds`` like a synchronous network or disk call."""

    seconds: float

    def execute(self) -> str:
        time.sleep(self.seconds)
        return self.name


async def timed(strategy: object, seconds: float, count: int) -> float:
    group = StageGroup(name="reads", stages=[BlockingRead(name=f"read-{i}", seconds=seconds) for i in range(count)],
                       cycle_strategy=OnceCycleStrategy(), execution_strategy=strategy)
    pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "io", [group], OnceCycleStrategy(),
                                                 ConcurrentExecutionStrategy())
    t0 = time.perf_counter()
    (names,) = await pipeline.run()
    assert names == [f"read-{i}" for i in range(count)]
    return time.perf_counter() - t0


async def main(seconds: float, count: int) -> None:
    t_conc = await timed(ConcurrentExecutionStrategy(), seconds, count)
    t_threads = await timed(MultithreadExecutionStrategy(count), seconds, count)
    print(f"{count} blocking stages of {seconds:g} s")
    print(f"concurrent (on the event loop): {t_conc:.3f} s")
    print(f"threads: {t_threads:.3f} s (speed-up {t_conc / t_threads:.2f}x)")


if __name__ == "__main__":
    args = sys.argv[1:]
    dynapipeline.run(main(float(args[0]) if args else 0.5, int(args[1]) if len(args) > 1 else 4))
