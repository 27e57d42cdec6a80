"""Handlers: hooks that run before, around, after a component, or on its error."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from dynapipeline._model.fields import reject_unknown_fields

__all__ = ["Handler", "report_elsewhere", "reports_elsewhere"]

_HOOKS = ("before", "around", "after", "on_error")


class Handler(BaseModel):
    """Subclass and override any of the four hooks; each may be sync or async.

    - ``before(component, *args, **kwargs)``
    - ``around(component, execute, *args, **kwargs)``: must call ``execute(*args, **kwargs)``
      (and await it) and return the result
    - ``after(component, result, *args, **kwargs)``
    - ``on_error(component, error, *args, **kwargs)``: runs, then the error propagates

    Settings are pydantic fields: ``class LogHandler(Handler): level: str = "INFO"``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)

    _hook_names: ClassVar[tuple[str, ...]] = _HOOKS

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        # pydantic would ignore a misspelled setting (``levle="DEBUG"``); a handler never does.
        reject_unknown_fields(cls, data, cls.__name__)
        return data

    def before(self, component: Any, *args: Any, **kwargs: Any) -> Any:
        return None

    def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        return execute(*args, **kwargs)

    def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
        return None

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> Any:
        return None

    def ran_elsewhere(self, component: Any, start: float, end: float, error: BaseException | None,
                      attributes: dict[str, Any]) -> None:
        """Called in this process, after the fact, for a run of ``component`` made in a worker process or on Dask.

        The four hooks above run where the component runs (a worker has its own copy
        of the handler); this one lets a handler of the parent's copy record such a
        run too. ``start``/``end``: epoch seconds measured in the worker; ``error``: what
        the run raised, or None; ``attributes``: where it ran (``dynapipeline.worker_pid``,
        ``dynapipeline.worker_address`` on Dask) and ``dynapipeline.run``. It is called from
        the code that awaited the run (the context of its group or stream).
        """
        return None

    def hooks(self) -> tuple[Any, Any, Any, Any]:
        """Bound hooks this handler overrides, ``None`` for the rest (so the engine skips them)."""
        cls = type(self)
        return tuple(  # type: ignore[return-value]
            getattr(self, name) if getattr(cls, name) is not getattr(Handler, name) else None
            for name in _HOOKS
        )


def report_elsewhere(component: Any, start: float, end: float, error: BaseException | None,
                     attributes: dict[str, Any]) -> None:
    """Hand a run of ``component`` made in another process to its handlers' ``ran_elsewhere``."""
    for handler in component.handlers:
        if _records_elsewhere(handler):
            handler.ran_elsewhere(component, start, end, error, attributes)


def reports_elsewhere(component: Any) -> bool:
    """Whether a handler of ``component`` records runs made elsewhere (``ran_elsewhere``)."""
    return any(map(_records_elsewhere, component.handlers))


def _records_elsewhere(handler: Handler) -> bool:
    return type(handler).ran_elsewhere is not Handler.ran_elsewhere
