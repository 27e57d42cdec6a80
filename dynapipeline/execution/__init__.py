"""Public home of the execution strategies (``from dynapipeline.execution import ...``)."""

from dynapipeline.model.strategy import ExecutionStrategy
from dynapipeline.strategies.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)

__all__ = [
    "ConcurrentExecutionStrategy",
    "ExecutionStrategy",
    "SemaphoreExecutionStrategy",
    "SequentialExecutionStrategy",
]
