"""Public home of the cycle strategies (``from dynapipeline.execution.cycle_strategies import ...``)."""

from dynapipeline.model.strategy import CycleStrategy
from dynapipeline.strategies.cycles import (
    InfiniteLoopStrategy,
    InfinitLoopStrategy,
    LoopCycleStrategy,
    OnceCycleStrategy,
)

__all__ = ["CycleStrategy", "InfiniteLoopStrategy", "InfinitLoopStrategy", "LoopCycleStrategy", "OnceCycleStrategy"]
