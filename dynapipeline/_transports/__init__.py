"""The transports layer: strategies that run components off the event loop's thread."""

from dynapipeline._transports.dask.strategy import DaskExecutionStrategy
from dynapipeline._transports.process.strategy import MultiprocessExecutionStrategy
from dynapipeline._transports.threads import MultithreadExecutionStrategy

__all__ = ["DaskExecutionStrategy", "MultiprocessExecutionStrategy", "MultithreadExecutionStrategy"]
