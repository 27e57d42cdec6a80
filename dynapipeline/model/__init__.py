"""The model layer: components, contexts, handlers, strategy interfaces."""

from dynapipeline.model.component import Component, ComponentStats, Stage
from dynapipeline.model.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline.model.group import Container, StageGroup
from dynapipeline.model.handlers import Handler
from dynapipeline.model.pipeline import AdvancedPipeline, Pipeline, SimplePipeline
from dynapipeline.model.strategy import CycleStrategy, ExecutionStrategy, runners_of

__all__ = [
    "AdvancedPipeline",
    "AsyncLockableContext",
    "Component",
    "ComponentStats",
    "Container",
    "Context",
    "CycleStrategy",
    "ExecutionStrategy",
    "Handler",
    "Pipeline",
    "ProtectedContext",
    "SimplePipeline",
    "Stage",
    "StageGroup",
    "runners_of",
]
