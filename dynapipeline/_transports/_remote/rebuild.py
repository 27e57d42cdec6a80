"""Rebuilding shipped objects in a worker process: the functions a parent pickles by reference.

The parent's pickler (``pickling``) reduces a component to one of these functions
and its pydantic state; the worker's unpickler calls it. Both sides import this
module, so it stays plain Python (never the compiled engine) and importable by name.
The timings a worker sends back (``timings_of``) are ``messages.Timing`` records.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic_core import PydanticUndefined

from dynapipeline._model.component import Component, runner_of
from dynapipeline._model.contexts import ProtectedContext
from dynapipeline._model.group import Container
from dynapipeline._model.lifecycle import note_shipped_key
from dynapipeline._transports._remote.messages import Timing

__all__ = [
    "INTERNAL_PRIVATE",
    "cached_class",
    "cached_stage",
    "locked_context",
    "rebuild_component",
    "register_class",
    "slim_cached",
    "timings_of",
]

# Private attributes the model rebuilds itself in model_post_init (never shipped).
INTERNAL_PRIVATE = frozenset({"_runner", "_members", "_plan", "_active"})

# Classes shipped by value, by the id the parent gave them (each arrives once per worker).
_CLASSES: dict[int, type] = {}
# Stages rebuilt earlier, by the parent's key: later batches only refresh their state. One cache
# per thread: a Dask worker runs tasks in several threads, and a cached stage is refreshed in place.
_local = threading.local()
_MAX_STAGES = 100_000


def register_class(class_id: int, blob: bytes, loads: Any) -> None:
    """Keep a class shipped by value under the parent's id (a repeat is ignored)."""
    if class_id not in _CLASSES:
        _CLASSES[class_id] = loads(blob)


def cached_class(class_id: int) -> type:
    """A class this worker received earlier, by its id."""
    return _CLASSES[class_id]


def locked_context(data: dict[str, Any]) -> ProtectedContext:
    """A read-only snapshot of the parent's context: reads work, writes raise ContextLockedError."""
    context = ProtectedContext(data)
    context.lock("the parent process (a worker sees a read-only snapshot)")
    return context


def rebuild_component(cls: type[Any], state: dict[str, Any], fields_set: set[str], extra: Any,
                      private: dict[str, Any], timing: tuple[Any, ...]) -> Any:
    """Recreate a shipped Stage/StageGroup without validation; model_post_init rebuilds its runner.

    An error raised meanwhile carries ``stage_name``: the innermost component being
    rebuilt, so that a group whose stage cannot be rebuilt names that stage.
    """
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", state)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", extra)
    for name, attr in cls.__private_attributes__.items():
        if name not in private:
            default = attr.get_default()
            if default is not PydanticUndefined:
                private[name] = default
    object.__setattr__(obj, "__pydantic_private__", private)
    try:
        obj.model_post_init(None)
    except BaseException as error:
        if not hasattr(error, "stage_name"):
            try:
                error.stage_name = state.get("name")  # type: ignore[attr-defined]
            except AttributeError:  # an exception with __slots__: the parent names the batch's component
                pass
        raise
    obj._runner.copy_timing(*timing)
    return obj


def cached_stage(key: int, cls: type[Any], state: dict[str, Any], fields_set: set[str], extra: Any,
                 private: dict[str, Any], timing: tuple[Any, ...]) -> Any:
    """A shipped Stage: the one this worker rebuilt before under ``key``, refreshed with the parent's state.

    Equivalent to a fresh rebuild (every field, private attribute and the timing
    come from the parent), without re-running model_post_init each time.
    """
    stages: dict[int, Any] | None = getattr(_local, "stages", None)
    if stages is None:
        stages = _local.stages = {}
    obj: Any = stages.get(key)
    if obj is None or type(obj) is not cls:
        obj = rebuild_component(cls, state, fields_set, extra, private, timing)
        if len(stages) >= _MAX_STAGES:
            stages.clear()
        stages[key] = obj
        if obj._lifecycle() is not None:
            note_shipped_key(obj, key)  # set up once per process under the parent's key, whatever copy runs
        return obj
    old = obj.__dict__
    runner = obj.__pydantic_private__["_runner"]
    private["_runner"] = runner
    object.__setattr__(obj, "__dict__", state)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", extra)
    object.__setattr__(obj, "__pydantic_private__", private)
    if state["name"] != old["name"]:
        runner.name = state["name"]
    if (state["timeout"] != old["timeout"] or state["retries"] != old["retries"]
            or state["retry_delay"] != old["retry_delay"] or state["retry_backoff"] != old["retry_backoff"]):
        runner.configure(state["timeout"], state["retries"], state["retry_delay"], state["retry_backoff"])
    if state["handlers"] or old["handlers"]:
        runner.set_handlers(state["handlers"])
    runner.copy_timing(*timing)
    return obj


_SLIM = ("name", "timeout", "retries", "retry_delay", "retry_backoff", "handlers")  # what cached_stage compares


def slim_cached(components: list[Any], keep: set[int]) -> None:
    """Let the cached stages among ``components`` (groups' members included) forget their fields.

    A cached stage is refreshed with the parent's whole state each time it is shipped,
    so between batches it needs only what ``cached_stage`` compares; the rest (a large
    array field: a view on the parent's shared memory) would otherwise live as long as
    the cache. ``keep``: ids of stages still in use (a stream step's). A stage with
    ``setup``/``teardown`` is left whole (its last batch's fields stay until the next one).
    """
    cached = {id(stage) for stage in getattr(_local, "stages", {}).values()}
    for component in components:
        members = component.iter_components() if hasattr(component, "iter_components") else (component,)
        for obj in members:
            if id(obj) not in cached or id(obj) in keep or obj._lifecycle() is not None:
                continue  # a stage with setup/teardown stays whole: its teardown may read any field
            old = obj.__dict__
            object.__setattr__(obj, "__dict__", {k: old[k] for k in _SLIM if k in old})
            object.__setattr__(obj, "__pydantic_private__", {"_runner": obj.__pydantic_private__["_runner"]})


def timings_of(component: Component) -> list[Timing]:
    """The ``Timing`` of a component and, for a group, of everything below it (depth first).

    Durations and slowest cover the runs made here (since the parent's timing was adopted): the
    parent folds them into its own copy (``Runner.adopt``).
    """
    components = component.iter_components() if isinstance(component, Container) else (component,)
    out = []
    for c in components:
        runner = runner_of(c)
        durations, slowest = runner.runs_since_base()
        timing: Timing = (runner.timing(), durations, slowest)
        out.append(timing)
    return out
