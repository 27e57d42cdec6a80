"""Shipping components to worker processes: a cloudpickle Pickler with a per-class cache, and the check
that names the attribute path of whatever cannot be pickled.

- Classes that cloudpickle must send by value (defined in ``__main__``, in a
  function, or in a module the worker cannot import) get an id from the
  ``ClassRegistry``; their pickle is made once and each worker receives it once.
  Later changes to such a class object are not seen by workers that have it.
- A component travels as its pydantic state (fields, fields-set, extra, user
  private attributes) plus its timing; the worker rebuilds it and its runner.
- A context travels as a read-only snapshot of its data.
- The asyncio execution strategies and the cycle strategies travel by their
  settings (their engine objects are rebuilt in the worker).
"""

from __future__ import annotations

import io
import logging
import pickle
import secrets
import sys
import weakref
from types import FunctionType
from typing import Any

import cloudpickle

from dynapipeline._model.component import Component, Stage
from dynapipeline._model.contexts import Context
from dynapipeline._transports._remote.buffers import Arena, Packed, pack_with, small
from dynapipeline._transports._remote.rebuild import (
    INTERNAL_PRIVATE,
    cached_class,
    cached_stage,
    locked_context,
    rebuild_component,
)
from dynapipeline.errors import PicklingError

__all__ = ["ClassRegistry", "Pickler", "REGISTRY", "describe_unpicklable", "dumps_batch", "importable_by_name",
           "pack_batch"]

logger = logging.getLogger("dynapipeline")

try:
    from cloudpickle.cloudpickle import _should_pickle_by_reference as _by_reference
except ImportError:  # pragma: no cover - older/newer cloudpickle
    def _by_reference(obj: Any) -> bool:
        import sys
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        if module is None or module.__name__ == "__main__":
            return False
        found: Any = module
        for part in obj.__qualname__.split("."):
            found = getattr(found, part, None)
        return found is obj

PROTOCOL = pickle.HIGHEST_PROTOCOL
_IMPORTABLE: dict[str, bool] = {}


def importable_by_name(module_name: str) -> bool:
    """Whether a worker, started with this process's ``sys.path``, can import the module by its name.

    A module loaded from a file path (``importlib.util.spec_from_file_location``, pytest's
    importlib mode) is in ``sys.modules`` here but cannot be found by a worker, so
    pickling its classes and functions by reference would fail there. Such a module
    is registered with ``cloudpickle.register_pickle_by_value`` the first time one of
    its objects is shipped. The standard library has no check for "findable under
    this name", hence this one: it asks the path finder for the module's own spec.
    """
    known = _IMPORTABLE.get(module_name)
    if known is None:
        known = _IMPORTABLE[module_name] = _find_same_origin(module_name)
    return known


def _find_same_origin(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    if module is None or module_name == "__main__" or spec is None or not getattr(spec, "has_location", False):
        return True  # built-in, frozen, namespace or __main__: cloudpickle's own rules apply
    parent, _, _ = module_name.rpartition(".")
    path = getattr(sys.modules.get(parent), "__path__", None) if parent else None
    if parent and path is None:
        return False
    for finder in sys.meta_path:  # as the import system searches, minus sys.modules (editable installs too)
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            found = find_spec(module_name, path)
        except (ImportError, ValueError):
            return False
        if found is not None:
            return bool(found.origin == origin)
    return False


def _ship_module_by_value_if_needed(obj: Any) -> None:
    name = getattr(obj, "__module__", None)
    if type(name) is str and name in sys.modules and not importable_by_name(name):
        logger.debug("module %r cannot be imported by name in a worker: its objects travel by value", name)
        cloudpickle.register_pickle_by_value(sys.modules[name])


class ClassRegistry:
    """Ids and pickles of the classes shipped by value; one per process, shared by every pool."""

    def __init__(self) -> None:
        self._ids: weakref.WeakKeyDictionary[type, int] = weakref.WeakKeyDictionary()
        self._blobs: dict[int, tuple[bytes, tuple[int, ...]]] = {}
        # Ids start at a random base: a Dask worker keeps classes from several client processes by id.
        self._next = secrets.randbits(48) << 16

    def id_of(self, cls: type) -> int | None:
        """The id of ``cls`` once its pickle is ready (``None`` while it is being made: pickled inline)."""
        cid = self._ids.get(cls)
        if cid is not None:
            return cid if cid in self._blobs else None
        cid = self._next
        self._next += 1
        self._ids[cls] = cid
        buffer = io.BytesIO()
        pickler = Pickler(buffer, self, top=cls)
        try:
            pickler.dump(cls)
        except BaseException:
            del self._ids[cls]
            raise
        self._blobs[cid] = (buffer.getvalue(), tuple(sorted(pickler.used)))
        return cid

    def blobs_for(self, needed: set[int], known: set[int]) -> list[tuple[int, bytes]]:
        """The class pickles a worker that already has ``known`` needs for ``needed``, dependencies first."""
        if needed <= known:
            return []  # the common case once a worker has its first chunk (dependencies are in ``known`` too)
        out: list[tuple[int, bytes]] = []
        seen = set(known)

        def add(cid: int) -> None:
            if cid in seen:
                return
            seen.add(cid)
            blob, deps = self._blobs[cid]
            for dep in deps:
                add(dep)
            out.append((cid, blob))

        for cid in sorted(needed):
            add(cid)
        return out


REGISTRY = ClassRegistry()


def _without_parent_namespace(reduced: Any) -> Any:
    """Drop pydantic's ``__pydantic_parent_namespace__`` from a class pickled by value.

    Pydantic keeps the defining function's locals there (for forward references);
    a worker never re-validates the class, and those locals (a pool, a lock, the
    running task's context) are often unpicklable or large.
    """
    if type(reduced) is tuple and len(reduced) > 2 and type(reduced[2]) is tuple and reduced[2] \
            and type(reduced[2][0]) is dict and reduced[2][0].get("__pydantic_parent_namespace__") is not None:
        clsdict = dict(reduced[2][0])
        clsdict["__pydantic_parent_namespace__"] = None
        reduced = reduced[:2] + ((clsdict,) + reduced[2][1:],) + reduced[3:]
    return reduced


def _class_state(cls: type) -> dict[str, Any]:
    """The class attributes cloudpickle ships for a class pickled by value."""
    try:
        from cloudpickle.cloudpickle import _class_getstate

        clsdict = dict(_class_getstate(cls)[0])
    except Exception:  # pragma: no cover - cloudpickle internals changed
        clsdict = {k: v for k, v in vars(cls).items() if k not in ("_abc_impl", "__dict__", "__weakref__")}
    clsdict.pop("__pydantic_parent_namespace__", None)
    return clsdict


_KEYS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_next_key = 0


def _key_of(stage: Any) -> int:
    """A key unique to this stage object for the life of the process (workers cache rebuilt stages by it)."""
    global _next_key
    key = _KEYS.get(stage)
    if key is None:
        key = _KEYS[stage] = _next_key
        _next_key += 1
    return key


def reduce_component(component: Any) -> tuple[Any, tuple[Any, ...]]:
    """How a Stage or StageGroup travels: its pydantic state, user private attributes and timing."""
    private = component.__pydantic_private__
    timing = private["_runner"].timing()  # read the dict: pydantic's private __getattr__ is slow
    if len(private) == 1:
        private = {}
    else:
        private = {k: v for k, v in private.items() if k not in INTERNAL_PRIVATE}
    cls = type(component)
    if isinstance(component, Stage):
        return (cached_stage, (_key_of(component), cls, component.__dict__, component.__pydantic_fields_set__,
                               component.__pydantic_extra__, private, timing))
    return (rebuild_component, (cls, component.__dict__, component.__pydantic_fields_set__,
                                component.__pydantic_extra__, private, timing))


# Exact containers (neither cloudpickle nor this module changes how they pickle), and the functions this module's
# reductions name (importable by name): the C pickler asks ``reducer_override`` about each, and the usual answer
# goes through cloudpickle's look-ups of the function's module (several Python calls per batch, for nothing).
_AS_PICKLE_DOES = frozenset({tuple, list, dict, set, frozenset})
_REBUILDERS = frozenset({cached_class, cached_stage, locked_context, rebuild_component})


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no type information
    """cloudpickle, plus: classes by id (``REGISTRY``), components by state, contexts as snapshots."""

    def __init__(self, file: Any, registry: ClassRegistry, top: type | None = None, protocol: int = PROTOCOL,
                 buffer_callback: Any = None, used: set[int] | None = None) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
        self.registry = registry
        self.top = top
        self.used: set[int] = set() if used is None else used  # the ids of the classes pickled by id

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _AS_PICKLE_DOES or (kind is FunctionType and obj in _REBUILDERS):
            return NotImplemented  # nothing of ours or cloudpickle's applies: the C pickler's own way, at once
        if isinstance(obj, type):
            _ship_module_by_value_if_needed(obj)
            if obj is not self.top and obj.__module__ != "builtins" and not _by_reference(obj):
                cid = self.registry.id_of(obj)
                if cid is not None:
                    self.used.add(cid)
                    return (cached_class, (cid,))
            return _without_parent_namespace(super().reducer_override(obj))
        if isinstance(obj, Component):
            return reduce_component(obj)
        if isinstance(obj, Context):
            return (locked_context, (dict(obj._data),))
        if isinstance(obj, FunctionType):
            _ship_module_by_value_if_needed(obj)
        return super().reducer_override(obj)  # strategies define their own __reduce__


def dumps_batch(components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                registry: ClassRegistry = REGISTRY) -> tuple[bytes, set[int]]:
    """Pickle one batch; an unpicklable part raises PicklingError naming the component and attribute path."""
    packed, used = pack_batch(components, args, kwargs, None, None, registry)
    return packed.data, used


def pack_batch(components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any], threshold: int | None,
               arena: Arena | None, registry: ClassRegistry = REGISTRY) -> tuple[Packed, set[int]]:
    """``dumps_batch``, with its buffers of ``threshold`` bytes or more in ``arena``'s shared memory."""
    used: set[int] = set()
    try:
        if threshold is None or arena is None:
            buffer = io.BytesIO()
            Pickler(buffer, registry, used=used).dump((components, args, kwargs))
            return Packed(buffer.getvalue(), ()), used
        # The common batch has no large buffer: one pass that only looks at them (a large one ends it).
        data = small((components, args, kwargs), threshold, Pickler, registry=registry, used=used)
        if data is not None:
            return Packed(data, ()), used
        return pack_with((components, args, kwargs), threshold, arena, Pickler, probed=True, registry=registry,
                         used=used), used
    except Exception as error:
        raise PicklingError(describe_unpicklable(components, args, kwargs, error, registry)) from error


# --- finding what cannot be pickled -------------------------------------------------------------

def _fails(obj: Any, registry: ClassRegistry) -> BaseException | None:
    try:
        Pickler(io.BytesIO(), registry).dump(obj)
    except Exception as error:
        return error
    return None


def _kind(component: Any) -> str:
    return "stage" if isinstance(component, Stage) else type(component).__name__.lower().replace("stage", "")


def _children(obj: Any) -> list[tuple[str, Any]]:
    """The parts of ``obj`` worth naming in a path."""
    if isinstance(obj, Component):
        parts = [(f" field {k!r}", v) for k, v in obj.__dict__.items()]
        private = obj.__pydantic_private__ or {}
        parts += [(f" private {k!r}", v) for k, v in private.items() if k not in INTERNAL_PRIVATE]
        return parts
    if isinstance(obj, Context):
        return [(f" key {k!r}", v) for k, v in obj._data.items()]
    if isinstance(obj, dict):
        return [(f" key {k!r}", v) for k, v in obj.items()] + [(" key", k) for k in obj]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    code = getattr(obj, "__code__", None)
    if code is not None and getattr(obj, "__closure__", None):
        return [(f" closure variable {name!r}", cell.cell_contents)
                for name, cell in zip(code.co_freevars, obj.__closure__, strict=False)
                if _cell_ok(cell)]
    if isinstance(obj, type):
        if _by_reference(obj):
            return []
        return [(f" class attribute {k!r}", v) for k, v in _class_state(obj).items()]
    if hasattr(obj, "__dict__"):
        return [(f" attribute {k!r}", v) for k, v in vars(obj).items()]
    return []


def _cell_ok(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _narrow(obj: Any, path: str, registry: ClassRegistry, depth: int = 0) -> tuple[str, Any]:
    """Follow the failing part down as far as it stays the culprit."""
    if depth < 8:
        for label, child in _children(obj):
            if _fails(child, registry) is not None:
                return _narrow(child, path + label, registry, depth + 1)
    return path, obj


def describe_unpicklable(components: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                         error: BaseException, registry: ClassRegistry = REGISTRY) -> str:
    """A message naming the first unpicklable part, e.g. ``stage 'io' field 'lock': RLock``."""
    candidates: list[tuple[str, Any]] = []
    for component in components:
        for inner in component.iter_components() if hasattr(component, "iter_components") else [component]:
            if inner is component or not hasattr(inner, "iter_components"):
                candidates.append((f"{_kind(inner)} {inner.name!r}", inner))
    candidates += [(f"argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for where, obj in candidates:
        own = _children(obj) if isinstance(obj, Component) else [("", obj)]
        if isinstance(obj, Component) and hasattr(obj, "iter_components"):
            own = [(label, v) for label, v in own if not label.startswith((" field 'stages'", " field 'groups'"))]
        if isinstance(obj, Component):
            own.append((f" class {type(obj).__qualname__!r}", type(obj)))
        for label, child in own:
            cause = _fails(child, registry)
            if cause is not None:
                path, culprit = _narrow(child, where + label, registry)
                return (f"cannot send to a worker process: {path}: {type(culprit).__name__} "
                        f"({type(cause).__name__}: {cause})")
    return f"cannot send to a worker process: {type(error).__name__}: {error}"
