"""The model layer: components, contexts, handlers, strategy interfaces."""

from dynapipeline._model.component import Component, ComponentStats, Stage
from dynapipeline._model.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline._model.group import Container, StageGroup
from dynapipeline._model.handlers import Handler
from dynapipeline._model.pipeline import AdvancedPipeline, Pipeline, SimplePipeline, role_of
from dynapipeline._model.strategy import CycleStrategy, ExecutionStrategy, runners_of

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
    "role_of",
    "runners_of",
]
