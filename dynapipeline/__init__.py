"""dynapipeline: an async-first data-pipeline engine with a compiled core.

``dynapipeline.compiled`` tells whether the Cython engine is in use.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from dynapipeline._engine import COMPILED as compiled
from dynapipeline._loops import loop_name, run
from dynapipeline._model.component import Stage
from dynapipeline._model.factory import PipelineFactory, PipeLineType
from dynapipeline._model.flow import Flow, flow
from dynapipeline._model.group import StageGroup
from dynapipeline._model.handlers import Handler
from dynapipeline._model.pipeline import AdvancedPipeline, Pipeline, SimplePipeline
from dynapipeline._model.report import ComponentReport, Report, SlowRun
from dynapipeline._model.step import Step
from dynapipeline._model.stream import ItemError, StepProgress, Stream
from dynapipeline._observe.progress import Progress
from dynapipeline._observe.tracer import Tracer

try:
    # The version is written once, in pyproject.toml; the installed metadata carries it.
    __version__: str = _version("dynapipeline")
except _PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AdvancedPipeline",
    "ComponentReport",
    "Flow",
    "Handler",
    "ItemError",
    "PipeLineType",
    "Pipeline",
    "PipelineFactory",
    "Progress",
    "Report",
    "SimplePipeline",
    "SlowRun",
    "Stage",
    "StageGroup",
    "Step",
    "StepProgress",
    "Stream",
    "Tracer",
    "__version__",
    "compiled",
    "flow",
    "loop_name",
    "run",
]
