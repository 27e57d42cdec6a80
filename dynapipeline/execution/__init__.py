"""Public home of the execution strategies (``from dynapipeline.execution import ...``)."""

from dynapipeline.model.strategy import ExecutionStrategy
from dynapipeline.strategies.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline.transports import MultiprocessExecutionStrategy, MultithreadExecutionStrategy

__all__ = [
    "ConcurrentExecutionStrategy",
    "ExecutionStrategy",
    "MultiprocessExecutionStrategy",
    "MultithreadExecutionStrategy",
    "SemaphoreExecutionStrategy",
    "SequentialExecutionStrategy",
]
