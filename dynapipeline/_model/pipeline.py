"""Pipelines: groups under one context, with run/stop, and the SIMPLE and ADVANCED kinds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from dynapipeline._engine import RunControl, current_control, wait_through_cancel
from dynapipeline._model.checks import kind_of
from dynapipeline._model.component import Component, Stage, private_of
from dynapipeline._model.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline._model.group import Container, StageGroup
from dynapipeline._model.lifecycle import current_scope, run_in_scope
from dynapipeline._model.stream import Stream
from dynapipeline.errors import ConfigurationError, PipelineRunningError

__all__ = ["AdvancedPipeline", "Pipeline", "SimplePipeline", "role_of"]


class Pipeline(Container):
    """Stage groups (and streams) run by a cycle and an execution strategy, sharing one context.

    ``run()`` may not overlap with itself. ``stop()`` cancels a run now;
    ``stop(drain=True)`` lets every loop finish its current cycle and start no
    other. After either, ``run()`` returns ``None`` without raising.
    """

    if TYPE_CHECKING:
        groups: Sequence[StageGroup | Stream]
    else:
        groups: list[Any]

    _members_field: ClassVar[str] = "groups"
    _members_noun: ClassVar[str] = "groups"
    _member_type: ClassVar[type[Component] | tuple[type[Component], ...]] = (StageGroup, Stream)
    # While running: (the run's task, its RunControl, its loop, the thread it runs on).
    _active: tuple[asyncio.Task[Any] | None, Any, asyncio.AbstractEventLoop, int] | None = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        strategy = self.__dict__["execution_strategy"]
        if type(strategy).ships_members:
            for index, member in enumerate(private_of(self)["_members"]):
                if isinstance(member, Stream):
                    raise ConfigurationError(
                        f"{self._label()}: field 'groups[{index}]' is Stream {member.name!r}, which cannot be "
                        f"shipped by {type(strategy).__name__}; give the pipeline another execution strategy "
                        "and put the process strategy on the stream's steps"
                    )
        if self.context is None:
            self.context = self._default_context()
        elif isinstance(self.context, Mapping) and not isinstance(self.context, Context):
            self.context = Context(self.context)
        elif not isinstance(self.context, Context):
            raise ConfigurationError(
                f"{self._label()}: field 'context' must be a Context or a mapping, got {kind_of(self.context)}"
            )
        context = self.context
        # No validation to run on `context` (typed Any): set it directly, skipping pydantic's
        # __setattr__ on every stage of a big pipeline.
        for component in self._components()[1:]:
            component.__dict__["context"] = context
            component.__pydantic_fields_set__.add("context")

    def _default_context(self) -> Context:
        return Context()

    def _bind_runner(self) -> None:
        super()._bind_runner()
        self._active = None  # a copy taken during a run is not running

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline once (its cycle strategy decides how often groups run)."""
        if current_scope.get() is None:  # stages set up once per run, torn down after its pools (``lifecycle``)
            return await run_in_scope(self._run(args, kwargs))
        return await self._run(args, kwargs)

    async def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._active is not None:
            raise PipelineRunningError(f"Pipeline {self.name!r} is already running")
        loop = asyncio.get_running_loop()
        control = RunControl()
        # Claimed before any await, so an overlapping run() sees it; released only after
        # the clean-up and the context unlock, so the next run cannot interleave with them.
        self._active = (None, control, loop, threading.get_ident())
        try:
            self._on_start()
            token = current_control.set(control)
            try:
                # The run is its own task so that stop() can cancel exactly it.
                task = loop.create_task(self._runner.run(args, kwargs))
            finally:
                current_control.reset(token)
            self._active = (task, control, loop, threading.get_ident())
            if control.stopped and not control.draining:
                task.cancel()  # stop() came from another thread before the task existed
            try:
                result = await task
                return None if control.stopped else result
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if control.stopped and (me is None or me.cancelling() == 0):
                    return None
                raise
            finally:
                # Pools that live for the run are shut down even when it failed or stopped.
                await _finish(control)
        finally:
            try:
                self._on_finish()
            finally:
                self._active = None

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
        control.draining = False  # a stop supersedes a drain asked for before: what a stop ends, it ends as one
        if task is None:
            return  # not started yet: it sees `stopped` and its result is dropped
        if threading.get_ident() == thread_id:
            task.cancel()
        else:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the run ended and its loop closed meanwhile: nothing left to stop

    @property
    def running(self) -> bool:
        return self._active is not None

    def _on_start(self) -> None:
        """Hook for pipeline kinds (ADVANCED locks its context here)."""

    def _on_finish(self) -> None:
        """Hook that always runs after a run, whatever its outcome."""


async def _finish(control: RunControl) -> None:
    """Run the end-of-run clean-ups to completion, even if we are cancelled meanwhile."""
    cleanup = asyncio.ensure_future(control.finish())
    try:
        await wait_through_cancel([cleanup])
    except asyncio.CancelledError:
        cleanup.exception()  # retrieved: our cancellation is what propagates
        raise
    cleanup.result()


class SimplePipeline(Pipeline):
    """Uses an AsyncLockableContext; strategies that leave the event loop are rejected."""

    def _default_context(self) -> Context:
        return AsyncLockableContext()

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        for component in self._components():
            if type(component) is Stream:
                for step in component._steps:
                    if step.strategy is not None and type(step.strategy).offloads:
                        raise ConfigurationError(
                            f"{self._label()}: Stream {component.name!r} step {step.stage.name!r} runs on "
                            f"{type(step.strategy).__name__}, off the event loop; use an ADVANCED pipeline "
                            "for threads and processes"
                        )
                continue
            # A field lookup in __dict__: getattr would go through pydantic's __getattr__ for every stage.
            strategy = component.__dict__.get("execution_strategy")
            if strategy is not None and type(strategy).offloads:
                where = "" if component is self else f"{component._label()} "
                raise ConfigurationError(
                    f"{self._label()}: {where}field 'execution_strategy' is {type(strategy).__name__}, "
                    "which runs stages off the event loop; use an ADVANCED pipeline for threads and processes"
                )


class AdvancedPipeline(Pipeline):
    """Uses a ProtectedContext, locked for the duration of each run."""

    def _default_context(self) -> Context:
        return ProtectedContext()

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if not isinstance(self.context, ProtectedContext):
            raise ConfigurationError(
                f"{self._label()}: field 'context' must be a ProtectedContext, got {kind_of(self.context)}"
            )

    def _on_start(self) -> None:
        self._protected_context().lock(f"pipeline {self.name!r} while it runs")

    def _on_finish(self) -> None:
        self._protected_context().unlock()

    def _protected_context(self) -> ProtectedContext:
        context = self.context
        assert isinstance(context, ProtectedContext)  # checked at construction
        return context


def role_of(component: Any) -> str:
    """What a component is, in one word: ``pipeline``, ``group``, ``stream``, ``stage`` (else ``component``).

    The name traces (their slice category) and OpenTelemetry spans (an attribute) use.
    """
    if isinstance(component, Stage):
        return "stage"
    if isinstance(component, Pipeline):
        return "pipeline"
    if isinstance(component, StageGroup):
        return "group"
    if isinstance(component, Stream):
        return "stream"
    return "component"
