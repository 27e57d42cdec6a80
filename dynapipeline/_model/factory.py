"""PipelineFactory: builds SIMPLE, ADVANCED or CUSTOM pipelines with the call 0.1 had.

::

    create_pipeline(SIMPLE,   name, groups, cycles, execution, context_data) ─► SimplePipeline, AsyncLockableContext
    create_pipeline(ADVANCED, name, groups, cycles, execution, context_data) ─► AdvancedPipeline, ProtectedContext
    create_pipeline(CUSTOM,   name, groups, cycles, execution, context=...)  ─► Pipeline, the caller's Context

It lives beside the pipelines it builds and uses nothing but the model; a bad
``pipeline_type`` or ``context_data`` is a ConfigurationError naming the field.

See docs/groups.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from dynapipeline._model.checks import kind_of
from dynapipeline._model.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline._model.group import StageGroup
from dynapipeline._model.pipeline import AdvancedPipeline, Pipeline, SimplePipeline
from dynapipeline._model.strategy import CycleStrategy, ExecutionStrategy
from dynapipeline._model.stream import Stream
from dynapipeline.errors import ConfigurationError

__all__ = ["PipeLineType", "PipelineFactory"]


class PipeLineType(Enum):
    SIMPLE = "simple"
    ADVANCED = "advanced"
    CUSTOM = "custom"


class PipelineFactory:
    """``create_pipeline(pipeline_type, name, groups, cycle_strategy, execution_strategy, context_data=None)``.

    SIMPLE wraps ``context_data`` in an AsyncLockableContext, ADVANCED in a
    ProtectedContext; CUSTOM takes the caller's ``context`` (any Context, or a
    dict wrapped in a plain Context) and builds a plain ``Pipeline``.
    """

    def create_pipeline(
        self,
        pipeline_type: PipeLineType,
        name: str,
        groups: Sequence[StageGroup | Stream],
        cycle_strategy: CycleStrategy,
        execution_strategy: ExecutionStrategy,
        context_data: Mapping[str, Any] | None = None,
        context: Context | None = None,
        **fields: Any,
    ) -> Pipeline:
        if context_data is not None and not isinstance(context_data, Mapping):
            raise ConfigurationError(
                f"PipelineFactory: pipeline {name!r} field 'context_data' must be a mapping (a dict) or None, "
                f"got {kind_of(context_data)}"
            )
        common = dict(name=name, groups=groups, cycle_strategy=cycle_strategy,
                      execution_strategy=execution_strategy, **fields)
        if pipeline_type is PipeLineType.SIMPLE:
            return SimplePipeline(context=AsyncLockableContext(context_data), **common)
        if pipeline_type is PipeLineType.ADVANCED:
            return AdvancedPipeline(context=ProtectedContext(context_data), **common)
        if pipeline_type is PipeLineType.CUSTOM:
            if context is None:
                context = Context(context_data)
            return Pipeline(context=context, **common)
        raise ConfigurationError(
            f"PipelineFactory: field 'pipeline_type' must be a PipeLineType, got {pipeline_type!r}"
        )
