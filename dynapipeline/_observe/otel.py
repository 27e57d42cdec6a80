"""``OpenTelemetryHandler``: one OpenTelemetry span per run of every component it is attached to.

Spans nest as the components do (pipeline → group → stage, stream → step stage):
the handler's ``around`` hook makes each span the *current* span while the
component runs, and a component's members run inside that (asyncio tasks and
worker threads start with a copy of the caller's ``contextvars``, so concurrent
siblings are all children of their group's span).

A handler applies only to the component it is attached to: attached to a
pipeline it makes one span per pipeline run and none for the groups and
stages. ``handler.instrument(pipeline)`` attaches it to the pipeline and to
every component below it.

Components run in worker processes (``MultiprocessExecutionStrategy``, a
process stream step) or on Dask run where no exporter is configured, so the
copy of the handler sent there does nothing. Their spans are made here instead,
once the run is back (``ran_elsewhere``): from the worker's own start and end
times, as children of the group or stream that awaited them, with the same
attributes plus ``dynapipeline.worker_pid`` (on Dask also
``dynapipeline.worker_address``), and the error as for a run here. A group shipped
to a worker gets one span; its members' runs inside that worker get none.

::

    a run here ─► handler.around() ─► span, current while the component runs ─► its members' spans nest under it
    a run in a worker process or on Dask ─► back with its start and end ─► ran_elsewhere() ─► span made here

Public as ``dynapipeline.otel``; without OpenTelemetry installed the import
raises an ImportError naming the ``otel`` extra.

See docs/observing.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

from pydantic import Field, PrivateAttr

from dynapipeline._model.component import Stage, runner_of
from dynapipeline._model.group import Container
from dynapipeline._model.handlers import Handler
from dynapipeline._model.pipeline import role_of

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError as error:  # pragma: no cover - exercised in a subprocess without opentelemetry
    raise ImportError(
        "dynapipeline.otel needs OpenTelemetry: pip install 'dynapipeline[otel]' "
        "(and an SDK, e.g. opentelemetry-sdk, to export spans)"
    ) from error

__all__ = ["OpenTelemetryHandler"]

# The execution strategy of the container whose members run now; a stage's span names it.
_running_under: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dynapipeline_otel_strategy", default=None
)
_INSTRUMENTATION = "dynapipeline"


class OpenTelemetryHandler(Handler):
    """A span per component run, nested pipeline → group → stage; errors recorded with status ERROR.

    ``tracer_provider``: where spans go (default: the global provider, as set by
    ``opentelemetry.trace.set_tracer_provider``). The span is named after the
    component and carries:

    - ``dynapipeline.component.name``, ``dynapipeline.component.kind`` (``pipeline``,
      ``group``, ``stage``, ``stream`` or ``component``), ``dynapipeline.component.class``;
    - containers: ``dynapipeline.execution_strategy`` and ``dynapipeline.cycle_strategy``
      (class names); a member: ``dynapipeline.execution_strategy`` of the container that ran it;
    - ``dynapipeline.run``: which run of this component it is (1-based, over the
      component's life). The engine keeps no cycle index, so for a stage of a group
      that runs once with ``LoopCycleStrategy`` this is the cycle number;
    - stages: ``dynapipeline.retries`` and ``dynapipeline.timeout`` as configured
      (retries wrap inside the span: one span per run, however many attempts);
    - off the main thread (``MultithreadExecutionStrategy``): ``thread.name`` and ``thread.id``;
    - a container run by processes: ``dynapipeline.worker_pids`` (the pool's workers);
    - on error: the exception as a span event, status ERROR with ``Type: message``, and
      ``dynapipeline.worker_pid`` when the error came from a worker process;
    - on cancellation (``stop()``, a sibling's error): ``dynapipeline.cancelled = true``,
      status left unset (a cancelled run did not fail).

    The handler is shared, not copied: copies of a component (``deepcopy``) keep it.
    """

    tracer_provider: Any = Field(default=None, exclude=True, repr=False)

    _tracer: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        provider = self.tracer_provider
        self._tracer = (provider.get_tracer(_INSTRUMENTATION) if provider is not None
                        else trace.get_tracer(_INSTRUMENTATION))

    def instrument(self, component: Any) -> Any:
        """Attach this handler to ``component`` and every component below it; return ``component``."""
        walk = getattr(component, "iter_components", None)  # containers and streams; a stage is alone
        for member in walk() if walk is not None else (component,):
            if not any(handler is self for handler in member.handlers):
                member.add_handler(self)
        return component

    async def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = self._tracer
        if tracer is None:  # the copy sent to a worker process: spans there would go nowhere
            return await execute(*args, **kwargs)
        attributes = _attributes(component)
        with tracer.start_as_current_span(component.name, attributes=attributes, record_exception=False,
                                          set_status_on_exception=False) as span:
            token = None
            if isinstance(component, Container):
                token = _running_under.set(type(component.execution_strategy).__name__)
            try:
                return await execute(*args, **kwargs)
            except asyncio.CancelledError:
                span.set_attribute("dynapipeline.cancelled", True)
                raise
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                pid = getattr(error, "worker_pid", None)
                if isinstance(pid, int):
                    span.set_attribute("dynapipeline.worker_pid", pid)
                raise
            finally:
                if token is not None:
                    _running_under.reset(token)
                    pids = getattr(component.execution_strategy, "worker_pids", None)
                    if callable(pids) and (found := pids()):
                        span.set_attribute("dynapipeline.worker_pids", list(found))

    def ran_elsewhere(self, component: Any, start: float, end: float, error: BaseException | None,
                      attributes: dict[str, Any]) -> None:
        """The span of a run made in a worker process or on Dask, from its own start and end (epoch seconds)."""
        tracer = self._tracer
        if tracer is None:
            return
        span = tracer.start_span(component.name, attributes={**_attributes(component), **attributes},
                                 start_time=_ns(start), record_exception=False, set_status_on_exception=False)
        if error is not None:
            span.record_exception(error, timestamp=_ns(end))
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end(end_time=_ns(end))

    def __getstate__(self) -> dict[Any, Any]:
        # Sent to a worker process: without its provider (whose exporters hold locks and sockets).
        state = dict(super().__getstate__())
        state["__dict__"] = {**state["__dict__"], "tracer_provider": None}
        state["__pydantic_private__"] = {**(state.get("__pydantic_private__") or {}), "_tracer": None}
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> OpenTelemetryHandler:
        return self  # holds no per-run state; its provider must not be copied


def _attributes(component: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "dynapipeline.component.name": component.name,
        "dynapipeline.component.kind": role_of(component),
        "dynapipeline.component.class": type(component).__name__,
        "dynapipeline.run": runner_of(component).count + 1,
    }
    if isinstance(component, Container):
        attributes["dynapipeline.execution_strategy"] = type(component.execution_strategy).__name__
        attributes["dynapipeline.cycle_strategy"] = type(component.cycle_strategy).__name__
    else:
        parent = _running_under.get()
        if parent is not None:
            attributes["dynapipeline.execution_strategy"] = parent
    if isinstance(component, Stage):
        attributes["dynapipeline.retries"] = component.retries
        if component.timeout is not None:
            attributes["dynapipeline.timeout"] = component.timeout
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        attributes["thread.name"] = thread.name
        attributes["thread.id"] = threading.get_ident()
    return attributes


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
