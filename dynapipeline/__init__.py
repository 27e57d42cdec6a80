"""dynapipeline: an async-first data-pipeline engine with a compiled core.

``dynapipeline.compiled`` tells whether the Cython engine is in use.
"""

from dynapipeline.engine import COMPILED as compiled
from dynapipeline.front import PipelineFactory, PipeLineType, loop_name, run
from dynapipeline.model import (
    AdvancedPipeline,
    Handler,
    Pipeline,
    SimplePipeline,
    Stage,
    StageGroup,
)

__version__ = "0.2.0"

__all__ = [
    "AdvancedPipeline",
    "Handler",
    "PipeLineType",
    "Pipeline",
    "PipelineFactory",
    "SimplePipeline",
    "Stage",
    "StageGroup",
    "__version__",
    "compiled",
    "loop_name",
    "run",
]
