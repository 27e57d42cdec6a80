"""Public home of the cycle strategies (``from dynapipeline.execution.cycle_strategies import ...``)."""

from dynapipeline._model.strategy import CycleStrategy
from dynapipeline._strategies.cycles import (
    InfiniteLoopStrategy,
    InfinitLoopStrategy,
    LoopCycleStrategy,
    OnceCycleStrategy,
)

__all__ = ["CycleStrategy", "InfiniteLoopStrategy", "InfinitLoopStrategy", "LoopCycleStrategy", "OnceCycleStrategy"]
