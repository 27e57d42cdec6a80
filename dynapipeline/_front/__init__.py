"""The front layer: the factory, the event-loop runner and the command line."""

from dynapipeline._front.factory import PipelineFactory, PipeLineType
from dynapipeline._front.loop import loop_name, run

__all__ = ["PipeLineType", "PipelineFactory", "loop_name", "run"]
