"""The transports layer: strategies that run components off the event loop's thread."""

from dynapipeline._transports.to_dask import DaskExecutionStrategy
from dynapipeline._transports.to_process import MultiprocessExecutionStrategy
from dynapipeline._transports.to_thread import MultithreadExecutionStrategy

__all__ = ["DaskExecutionStrategy", "MultiprocessExecutionStrategy", "MultithreadExecutionStrategy"]
