"""Pipelines: groups under one context, with run/stop, and the SIMPLE and ADVANCED kinds."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

from dynapipeline.engine import RunControl, current_control
from dynapipeline.errors import ConfigurationError, PipelineRunningError
from dynapipeline.model.component import Component
from dynapipeline.model.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline.model.group import Container, StageGroup

__all__ = ["AdvancedPipeline", "Pipeline", "SimplePipeline"]


class Pipeline(Container):
    """Stage groups run by a cycle and an execution strategy, sharing one context.

    ``run()`` may not overlap with itself. ``stop()`` cancels a run now;
    ``stop(drain=True)`` lets every loop finish its current cycle and start no
    other. After either, ``run()`` returns ``None`` without raising.
    """

    groups: list[Any]

    _members_field: ClassVar[str] = "groups"
    _member_type: ClassVar[type[Component]] = StageGroup
    _active: Any = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.context is None:
            self.context = self._default_context()
        elif not isinstance(self.context, Context):
            self.context = Context(self.context) if isinstance(self.context, dict) else self.context
        for component in self.iter_components():
            if component is not self:
                component.context = self.context

    def _default_context(self) -> Context:
        return Context()

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline once (its cycle strategy decides how often groups run)."""
        if self._active is not None:
            raise PipelineRunningError(f"Pipeline {self.name!r} is already running")
        loop = asyncio.get_running_loop()
        control = RunControl()
        token = current_control.set(control)
        try:
            # The run is its own task so that stop() can cancel exactly it.
            task = loop.create_task(self._runner.run(args, kwargs))
        finally:
            current_control.reset(token)
        self._active = (task, control, loop, threading.get_ident())
        self._on_start()
        try:
            result = await task
            return None if control.stopped else result
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if control.stopped and (me is None or me.cancelling() == 0):
                return None
            raise
        finally:
            self._active = None
            try:
                # Pools that live for the run are shut down even when it failed or stopped.
                await asyncio.shield(control.finish())
            finally:
                self._on_finish()

    def stop(self, drain: bool = False) -> None:
        """End the current run (no-op when idle); safe to call from any thread."""
        active = self._active
        if active is None:
            return
        task, control, loop, thread_id = active
        if drain:
            control.draining = True
            control.stopped = True
            return
        control.stopped = True
        if threading.get_ident() == thread_id:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)

    @property
    def running(self) -> bool:
        return self._active is not None

    def _on_start(self) -> None:
        """Hook for pipeline kinds (ADVANCED locks its context here)."""

    def _on_finish(self) -> None:
        """Hook that always runs after a run, whatever its outcome."""


class SimplePipeline(Pipeline):
    """Uses an AsyncLockableContext; strategies that leave the event loop are rejected."""

    def _default_context(self) -> Context:
        return AsyncLockableContext()

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        for component in self.iter_components():
            strategy = getattr(component, "execution_strategy", None)
            if strategy is not None and type(strategy).offloads:
                raise ConfigurationError(
                    f"SimplePipeline {self.name!r}: {type(component).__name__} {component.name!r} "
                    f"field 'execution_strategy' is {type(strategy).__name__}, which runs stages off "
                    "the event loop; use an ADVANCED pipeline for threads and processes"
                )


class AdvancedPipeline(Pipeline):
    """Uses a ProtectedContext, locked for the duration of each run."""

    def _default_context(self) -> Context:
        return ProtectedContext()

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if not isinstance(self.context, ProtectedContext):
            raise ConfigurationError(
                f"AdvancedPipeline {self.name!r}: field 'context' must be a ProtectedContext, "
                f"got {type(self.context).__name__}"
            )

    def _on_start(self) -> None:
        self.context.lock(f"pipeline {self.name!r} while it runs")

    def _on_finish(self) -> None:
        self.context.unlock()
