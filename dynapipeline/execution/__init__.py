"""Public home of the execution strategies (``from dynapipeline.execution import ...``)."""

from dynapipeline._model.strategy import ExecutionStrategy
from dynapipeline._strategies.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline._transports.dask.strategy import DaskExecutionStrategy
from dynapipeline._transports.process.strategy import MultiprocessExecutionStrategy
from dynapipeline._transports.threads import MultithreadExecutionStrategy

__all__ = [
    "ConcurrentExecutionStrategy",
    "DaskExecutionStrategy",
    "ExecutionStrategy",
    "MultiprocessExecutionStrategy",
    "MultithreadExecutionStrategy",
    "SemaphoreExecutionStrategy",
    "SequentialExecutionStrategy",
]
