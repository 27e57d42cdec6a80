"""The strategies layer: asyncio execution strategies and cycle strategies, thin over the engine."""

from dynapipeline._strategies.cycles import (
    InfiniteLoopStrategy,
    InfinitLoopStrategy,
    LoopCycleStrategy,
    OnceCycleStrategy,
)
from dynapipeline._strategies.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)

__all__ = [
    "ConcurrentExecutionStrategy",
    "InfiniteLoopStrategy",
    "InfinitLoopStrategy",
    "LoopCycleStrategy",
    "OnceCycleStrategy",
    "SemaphoreExecutionStrategy",
    "SequentialExecutionStrategy",
]
