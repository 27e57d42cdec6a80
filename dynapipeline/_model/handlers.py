"""Handlers: hooks that run before, around, after a component, or on its error."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from dynapipeline._model.fields import reject_unknown_fields

__all__ = ["Handler"]

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

    def hooks(self) -> tuple[Any, Any, Any, Any]:
        """Bound hooks this handler overrides, ``None`` for the rest (so the engine skips them)."""
        cls = type(self)
        return tuple(  # type: ignore[return-value]
            getattr(self, name) if getattr(cls, name) is not getattr(Handler, name) else None
            for name in _HOOKS
        )
