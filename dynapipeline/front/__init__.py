"""The front layer: the factory, the event-loop runner and the command line."""

from dynapipeline.front.factory import PipelineFactory, PipeLineType
from dynapipeline.front.loop import loop_name, run

__all__ = ["PipeLineType", "PipelineFactory", "loop_name", "run"]
