"""A stream's step: a stage or a plain callable, where its items run, and its own policies (``Step``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

from dynapipeline._model.checks import check_int, check_seconds
from dynapipeline._model.component import Stage
from dynapipeline._model.functions import function_stage
from dynapipeline._model.pacing import TokenBucket
from dynapipeline._model.strategy import ExecutionStrategy
from dynapipeline.errors import ConfigurationError

__all__ = ["OnError", "Step"]

OnError = Literal["raise", "skip", "return"]


class Step:
    """One step of a stream: a stage or a plain callable, where its items run, and optional batching.

    ``Step(fn)`` takes a plain function, an ``async def``, a generator or async
    generator function (a flat-map: each value yielded flows on), a lambda, a
    ``functools.partial`` or a callable object; the step is named ``name=`` or
    after the function (``parse``; a lambda is ``lambda``; a stream makes automatic
    names unique: ``parse_2``). ``timeout``, ``retries``, ``retry_delay`` and
    ``retry_backoff`` are what a ``Stage`` would carry; a ``Stage`` keeps them as its
    own fields, so with a ``Stage`` they (and ``name``) are refused here. ``setup`` and
    ``teardown``: zero-argument callables (sync or async) run once per place that runs
    the step, as ``Stage.setup``/``teardown`` are (refused with a ``Stage``: it has its own).

    ``strategy=None`` runs one item at a time on the event loop. ``batch=n`` hands
    the stage a list of up to ``n`` consecutive items (fewer at the end, or when
    ``batch_timeout`` seconds passed since the batch's first item arrived); what the
    stage returns flows on as one item (a generator ``execute`` flattens it). Batches
    are cut one at a time whatever the strategy's width, so each worker gets whole
    runs of consecutive items.

    ``on_error`` and ``ordered`` override the stream's own for this step (None: the
    stream's). A step's ``ordered`` concerns its own outputs: it emits them in the
    order it took its items, whatever earlier steps did; the stream's outputs are
    in source order when every step is ordered.

    ``rate=n`` starts at most ``n`` of the step's items per second (``burst=b``:
    ``b`` may start at once after a pause; 1 by default), whatever the strategy; a
    batch is one start. The step's bucket is shared by the runs of this ``Step``
    (a copy of it has its own). On threads, processes or Dask a rated step sends its
    items one per call (no chunks), so that each start is paced. A strategy's own
    rate (``SemaphoreExecutionStrategy(k, rate=...)``) applies too, shared with
    whatever else uses that strategy. A rate never adds workers.
    """

    __slots__ = ("batch", "batch_timeout", "bucket", "on_error", "ordered", "stage", "strategy")

    def __init__(self, stage: Stage | Callable[..., Any], strategy: ExecutionStrategy | None = None, *,
                 name: str | None = None, batch: int | None = None, batch_timeout: float | None = None,
                 on_error: OnError | None = None, ordered: bool | None = None, timeout: float | None = None,
                 retries: int | None = None, retry_delay: float | None = None,
                 retry_backoff: float | None = None, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None, rate: float | None = None,
                 burst: int | None = None) -> None:
        policy = {field: value for field, value in (("timeout", timeout), ("retries", retries),
                                                    ("retry_delay", retry_delay), ("retry_backoff", retry_backoff),
                                                    ("setup", setup), ("teardown", teardown))
                  if value is not None}
        if isinstance(stage, type) and issubclass(stage, Stage):
            raise ConfigurationError(f"Step: field 'stage' must be a Stage instance, got the class {stage.__name__} "
                                     f"(pass an instance: {stage.__name__}(name=...))")
        if isinstance(stage, Stage):
            given = (["name"] if name is not None else []) + list(policy)
            if given and given[0] in ("setup", "teardown"):
                raise ConfigurationError(
                    f"Step {stage.name!r}: field {given[0]!r} is for a function step: a Stage defines its own "
                    f"method ({type(stage).__name__}.{given[0]}(self))")
            if given:
                fields = "name=..." if given[0] == "name" else f"name=..., {given[0]}=..."
                raise ConfigurationError(
                    f"Step {stage.name!r}: field {given[0]!r} is the Stage's own: set it on the Stage "
                    f"({type(stage).__name__}({fields})), not on the Step")
        elif isinstance(stage, Step):
            raise ConfigurationError(f"Step {stage.stage.name!r}: field 'stage' must be a Stage or a callable, "
                                     "got a Step")
        else:
            stage = function_stage(stage, name, policy)
        label = f"Step {stage.name!r}"
        if strategy is not None and not isinstance(strategy, ExecutionStrategy):
            raise ConfigurationError(f"{label}: field 'strategy' must be an execution strategy or None, "
                                     f"got {type(strategy).__name__}")
        check_int(label, "batch", batch, least=1, optional=True)
        if batch_timeout is not None:
            check_seconds(label, "batch_timeout", batch_timeout, optional=True)
            if batch is None:
                raise ConfigurationError(f"{label}: field 'batch_timeout' needs 'batch'")
        if on_error is not None and on_error not in ("raise", "skip", "return"):
            raise ConfigurationError(f"{label}: field 'on_error' must be 'raise', 'skip', 'return' or None "
                                     f"(the stream's), got {on_error!r}")
        if ordered is not None and not isinstance(ordered, bool):
            raise ConfigurationError(f"{label}: field 'ordered' must be a bool or None (the stream's), "
                                     f"got {ordered!r}")
        if burst is not None and rate is None:
            raise ConfigurationError(f"{label}: field 'burst' needs 'rate'")
        self.bucket = None if rate is None else TokenBucket(rate, 1 if burst is None else burst, owner=label)
        self.stage: Stage = stage
        self.strategy = strategy
        self.batch = batch
        self.batch_timeout = None if batch_timeout is None else float(batch_timeout)
        self.on_error: OnError | None = on_error
        self.ordered = ordered

    @property
    def rate(self) -> float | None:
        """The step's own starts per second, or None."""
        return None if self.bucket is None else self.bucket.rate

    @property
    def burst(self) -> int | None:
        """Starts the step's rate lets go at once after a pause, or None (no rate)."""
        return None if self.bucket is None else self.bucket.burst

    def __repr__(self) -> str:
        return (f"Step({self.stage.name!r}, {self.strategy!r}, batch={self.batch}, "
                f"batch_timeout={self.batch_timeout}, on_error={self.on_error!r}, ordered={self.ordered}"
                + ("" if self.bucket is None else f", rate={self.bucket.rate:g}, burst={self.bucket.burst}") + ")")

    def _renamed(self, name: str) -> Step:
        """This step with its function stage under another name (a stream making automatic names unique)."""
        step = copy.copy(self)
        step.stage = self.stage.model_copy(update={"name": name})
        return step
