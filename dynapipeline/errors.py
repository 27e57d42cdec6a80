"""One error hierarchy for the whole library.

This module imports nothing from the package, so every layer (the engine
included) may raise these errors without importing upward.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ConfigurationError",
    "ContextLockedError",
    "DynaPipelineError",
    "PicklingError",
    "PipelineRunningError",
    "RemoteError",
    "StageTimeoutError",
    "WorkerCrashedError",
]


class DynaPipelineError(Exception):
    """Base class of every error raised by dynapipeline itself."""


class ConfigurationError(DynaPipelineError):
    """A component or strategy was built with bad input; the message names the component and field."""


class ContextLockedError(DynaPipelineError):
    """A write to a context that is locked (an ADVANCED pipeline's context during a run)."""


class PipelineRunningError(DynaPipelineError):
    """`run()` was called on a pipeline that is already running."""


class StageTimeoutError(DynaPipelineError, TimeoutError):
    """A stage ran longer than its `timeout`; `stage` names it."""

    def __init__(self, stage: str, timeout: float) -> None:
        super().__init__(f"stage {stage!r} timed out after {timeout:g} s")
        self.stage = stage
        self.timeout = timeout

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return (type(self), (self.stage, self.timeout))


class PicklingError(ConfigurationError):
    """A component cannot be shipped to a worker process; the message names the attribute path."""


class WorkerCrashedError(DynaPipelineError):
    """A worker process died (signal, `os._exit`, OOM kill) while running a stage."""

    def __init__(self, stage: str, pid: int | None, exitcode: int | None) -> None:
        how = "unknown exit" if exitcode is None else (
            f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
        )
        super().__init__(f"worker pid {pid} crashed ({how}) while running stage {stage!r}")
        self.stage = stage
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[type, tuple[str, int | None, int | None]]:
        return (type(self), (self.stage, self.pid, self.exitcode))


class ClusterError(DynaPipelineError, ConnectionError):
    """A Dask cluster cannot be used: its client is closed, or its scheduler cannot be reached in time."""


class RemoteError(DynaPipelineError):
    """Carries a worker's formatted traceback; chained as `__cause__` of the re-raised error."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n" + self.traceback_text

