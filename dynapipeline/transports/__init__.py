"""The transports layer: strategies that run components off the event loop's thread."""

from dynapipeline.transports.to_process import MultiprocessExecutionStrategy
from dynapipeline.transports.to_thread import MultithreadExecutionStrategy

__all__ = ["MultiprocessExecutionStrategy", "MultithreadExecutionStrategy"]
