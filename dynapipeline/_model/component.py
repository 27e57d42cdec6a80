"""Components: the pydantic base shared by stages, groups and pipelines, and `Stage`."""

from __future__ import annotations

import inspect
import math
import operator
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from dynapipeline._engine import Runner
from dynapipeline._model.checks import as_float, is_int, kind_of
from dynapipeline._model.contexts import Context
from dynapipeline._model.fields import reject_unknown_fields
from dynapipeline._model.handlers import Handler
from dynapipeline._model.lifecycle import current_scope, is_async_hook, run_in_scope, with_setup
from dynapipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from dynapipeline._model.report import Report

__all__ = ["Component", "ComponentStats", "Flat", "Stage", "collecting", "private_of", "runner_of"]

private_of: Callable[[BaseModel], dict[str, Any]] = operator.attrgetter("__pydantic_private__")
"""A component's private attributes, read without pydantic's ``__getattr__`` (for hot paths)."""


def runner_of(component: BaseModel) -> Runner:
    """The engine runner that runs ``component`` and keeps its timing and stats (read as ``private_of`` does)."""
    runner: Runner = private_of(component)["_runner"]
    return runner


class ComponentStats(BaseModel):
    """Running statistics over every run of a component (failed runs included)."""

    count: int
    total: float
    min: float
    max: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class Component(BaseModel):
    """Base of Stage, StageGroup and Pipeline: a name, handlers, a context, timing.

    ``await component.run(*args, **kwargs)`` runs the handlers and ``execute`` and
    returns the result. Timing of the last run and running stats live in the
    engine's runner and are read through the properties below.
    """

    # defer_build: a schema is built on first instantiation, not at import; this halves
    # `import dynapipeline` and with it every worker process's start (0.36 s -> 0.24 s).
    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)

    if TYPE_CHECKING:
        # What users pass and read. At run time the fields take any value, so that a bad one
        # gets our ConfigurationError naming the component rather than a pydantic error.
        name: str
        handlers: Sequence[Handler] = Field(default_factory=list)
        # None until the component joins a pipeline, which gives every member its context.
        context: Context = Field(default=None, repr=False, exclude=True)  # type: ignore[assignment]
        # Subclasses define ``execute`` with any signature, ``async def`` or plain ``def``.
        execute: ClassVar[Callable[..., Any]]
    else:
        name: Any
        handlers: list[Any] = Field(default_factory=list)
        context: Any = Field(default=None, repr=False, exclude=True)

        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    _runner: Any = PrivateAttr(default=None)  # the engine's Runner

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        # pydantic would ignore a misspelled keyword (``retires=2``); a component never does.
        name = data.get("name") if isinstance(data, dict) else None
        reject_unknown_fields(cls, data, f"{cls.__name__} {name!r}")
        return data

    def model_post_init(self, __context: Any) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(
                f"{type(self).__name__}: field 'name' must be a non-empty string, got {self.name!r}"
            )
        for index, handler in enumerate(self.handlers):
            self._check_handler(handler, f"handlers[{index}]")
        self._bind_runner()

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run handlers and ``execute`` once; return the result.

        The outermost run opens the scope in which stages set up once (``lifecycle``) and tears them down at its end.
        """
        if current_scope.get() is not None:
            return await self._runner.run(args, kwargs)
        return await run_in_scope(self._runner.run(args, kwargs))

    def add_handler(self, handler: Handler) -> None:
        """Attach a handler after construction (runs after those attached before it)."""
        self._check_handler(handler, "handler")
        handlers = self.handlers
        assert isinstance(handlers, list)  # pydantic stores the field as a list
        handlers.append(handler)
        self._runner.set_handlers(self.handlers)

    @property
    def start_time(self) -> float | None:
        """Epoch seconds at which the last run started (None before the first run)."""
        return self._runner.start_time if self._runner.count else None

    @property
    def end_time(self) -> float | None:
        return self._runner.end_time if self._runner.count else None

    @property
    def execution_time(self) -> float | None:
        """Seconds the last run took, from a monotonic clock (None before the first run)."""
        return self._runner.execution_time if self._runner.count else None

    @property
    def stats(self) -> ComponentStats:
        r = self._runner
        return ComponentStats(count=r.count, total=r.total, min=r.min, max=r.max)

    def report(self) -> Report:
        """This component and everything below it: runs, errors, percentiles, wait/ship/work, where, slowest runs.

        ``print(component.report())`` prints a table; ``.to_dict()`` gives the numbers.
        """
        from dynapipeline._model.report import build_report  # the report module imports this one

        return build_report(self)

    def _walk(self, depth: int) -> Iterator[tuple[int, Component]]:
        """(depth, component) for this component and everything below it, depth first (containers add members)."""
        yield depth, self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with its own runner (fresh stats), built after ``update`` is applied."""
        clone = super().model_copy(update=update, deep=deep)
        clone._bind_runner()
        return clone

    def __copy__(self) -> Self:
        clone = super().__copy__()
        clone._bind_runner()
        return clone

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        clone = super().__deepcopy__(memo)
        clone._bind_runner()
        return clone

    def _bind_runner(self) -> None:
        # The runner holds the bound ``execute``: a copy must never share the original's.
        self._runner = Runner(self, self.name, self.call_target())
        if self.handlers:
            self._runner.set_handlers(self.handlers)

    def call_target(self) -> Callable[..., Any]:
        """What the runner calls for a run: ``execute``, or for a generator ``execute`` what collects its values."""
        return collecting(self.execute)

    def _label(self) -> str:
        """How messages name this component: ``StageGroup 'ingest'``."""
        return f"{type(self).__name__} {self.__dict__.get('name')!r}"

    def _check_handler(self, handler: Any, field: str) -> None:
        if not isinstance(handler, Handler):
            raise ConfigurationError(
                f"{self._label()}: field '{field}' must be a Handler, got {kind_of(handler)}"
            )

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class Stage(Component):
    """A unit of work: subclass it and implement ``async def execute`` (or a plain ``def``).

    ``timeout``: seconds; ``None``, ``<= 0`` or ``inf`` for no limit; an overrun raises
    ``StageTimeoutError``. A plain ``def execute`` on the event loop cannot be
    interrupted, so its overrun is reported when it returns (use the thread or
    process strategy to enforce the deadline). ``retries`` (an int >= 0): a failed or
    timed-out attempt is retried after ``retry_delay * retry_backoff**k`` seconds
    (``retry_delay`` finite and >= 0, ``retry_backoff`` finite and > 0); handlers
    wrap the whole run, so ``on_error`` sees only the final failure. NaN, bools and
    strings are rejected for all four (pydantic would turn ``True`` into 1).
    """

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if type(self).execute is Stage.execute:
            raise ConfigurationError(f"{self._label()}: must define 'execute'")

    @field_validator("timeout", "retries", "retry_delay", "retry_backoff", mode="before")
    @classmethod
    def _check_run_policy(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's own validation, which would turn True into 1 and "2" into 2.0.
        assert info.field_name is not None
        return _checked_policy(info.data.get("name"), info.field_name, value)

    def _bind_runner(self) -> None:
        super()._bind_runner()
        self._configure_runner()

    def setup(self) -> Any:
        """Called once in each place that runs this stage, before its first ``execute`` there (sync or async).

        Each worker process, each worker thread (on its own copy of the stage), each
        Dask worker, and once per run on the event loop. Keep what it makes in
        underscore attributes (``self._model = load()``): it stays in that place.
        If it raises, every item sent there fails with its error. See docs/threads-and-processes.md.
        """

    def teardown(self) -> Any:
        """Called once where ``setup`` succeeded, when that place closes cleanly (sync or async; best effort).

        At the end of the run on the loop and for worker threads; when a worker process
        exits cleanly (the pool's ``aclose()``, a recycled worker); never after a crash,
        and not on Dask workers.
        """

    def call_target(self) -> Callable[..., Any]:
        """``_plain_target()``, preceded once per place by ``setup`` when the stage has one (``lifecycle``)."""
        target = self._plain_target()
        hooks = self._lifecycle()
        if hooks is None:
            return target
        return with_setup(self, target, is_async_hook(hooks[0]))

    def _plain_target(self) -> Callable[..., Any]:
        """What runs one item: ``execute``, or for a generator ``execute`` what collects its values."""
        return collecting(self.execute)

    def _flattens(self) -> bool:
        """Whether a run's result may be a ``Flat`` (a generator ``execute``): a stream looks for one only then."""
        return generator_kind(self.execute) != 0

    def _lifecycle(self) -> tuple[Any, Any] | None:
        """(setup, teardown) bound to this stage when its class overrides either, else None (no cost per item)."""
        cls = type(self)
        has = _HAS_LIFECYCLE.get(cls)
        if has is None:
            has = _HAS_LIFECYCLE[cls] = cls.setup is not Stage.setup or cls.teardown is not Stage.teardown
        if not has:
            return None
        return (None if cls.setup is Stage.setup else self.setup,
                None if cls.teardown is Stage.teardown else self.teardown)

    def _configure_runner(self) -> None:
        fields = self.__dict__
        timeout = fields["timeout"]
        runner_of(self).configure(
            None if timeout is not None and math.isinf(timeout) else timeout,  # inf: no limit
            fields["retries"], fields["retry_delay"], fields["retry_backoff"])

    if not TYPE_CHECKING:

        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _RUN_POLICY:
            value = _checked_policy(self.name, name, value)
        super().__setattr__(name, value)
        if name in _RUN_POLICY:
            self._configure_runner()


# Stage class -> whether it overrides setup or teardown. A plain dict (as calling.needs_loop's): read per
# dispatch off the loop, where a weak dictionary's look-up would cost more than the rest of the check.
_HAS_LIFECYCLE: dict[type, bool] = {}
_RUN_POLICY = frozenset({"timeout", "retries", "retry_delay", "retry_backoff"})


def _checked_policy(name: Any, field: str, value: Any) -> Any:
    """``value`` if it is valid for the run-policy ``field`` of Stage ``name``; else ConfigurationError."""
    number = as_float(value)
    if field == "timeout":
        ok = value is None or (number is not None and not math.isnan(number))
        rule = "a number of seconds (None, <= 0 or inf: no limit), not NaN"
    elif field == "retries":
        # The engine counts attempts in a C integer.
        ok = is_int(value) and 0 <= value <= sys.maxsize
        rule = "an int >= 0"
    elif field == "retry_delay":
        ok = number is not None and math.isfinite(number) and number >= 0
        rule = "a finite number >= 0"
    else:
        ok = number is not None and math.isfinite(number) and number > 0
        rule = "a finite number > 0"
    if not ok:
        raise ConfigurationError(f"Stage {name!r}: field '{field}' must be {rule}, got {value!r}")
    return value


class Flat(list[Any]):
    """What a generator ``execute`` yielded in one run: a list whose elements a stream passes on one by one."""


# execute function -> 0 (plain), 1 (generator), 2 (async generator); weak: local classes come and go.
_GENERATORS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def collecting(execute: Callable[..., Any], kind: int | None = None) -> Callable[..., Any]:
    """``execute`` itself, or for a generator ``execute`` a function that runs it to the end into a ``Flat``.

    So that timing, timeout, retries and handlers cover the whole generator, and a
    stream step can flat-map (yielding nothing filters the item out). ``kind``, when
    the caller knows it: 0 plain, 1 generator, 2 async generator.
    """
    if kind is None:
        kind = generator_kind(execute)
    if kind == 0:
        return execute
    if kind == 1:
        def run_generator(*args: Any, **kwargs: Any) -> Flat:
            return Flat(execute(*args, **kwargs))

        return run_generator

    async def run_async_generator(*args: Any, **kwargs: Any) -> Flat:
        return Flat([value async for value in execute(*args, **kwargs)])

    return run_async_generator


def generator_kind(execute: Callable[..., Any]) -> int:
    """What ``collecting`` makes of ``execute``: 0 plain, 1 generator, 2 async generator (cached per function)."""
    function = getattr(execute, "__func__", execute)
    kind = _GENERATORS.get(function)
    if kind is None:
        kind = _GENERATORS[function] = 2 if inspect.isasyncgenfunction(function) else (
            1 if inspect.isgeneratorfunction(function) else 0)
    return kind
