"""Copies a large buffer into shared memory: with non-temporal stores where the compiled copy is built.

A plain ``memcpy`` of a large buffer goes through the cache: each destination
line is read before it is written, and what the workers were reading is evicted.
glibc switches to non-temporal stores only above a threshold it derives from the
cache size the CPU reports, and a virtual machine may report a huge one (300 MiB
here, where 20 MB took 3 ms instead of 1.4). The standard library has no other
copy, so ``copy_c`` (built with the engine, optional as it is) streams the lines
past the cache, four pages at a time, for copies of 1 MiB or more.

``copy_into(dest, src)``: ``src`` (any contiguous bytes-format buffer) into
``dest`` (a writable one of the same size). The pure copy, a ``memoryview``
slice assignment, is used when extensions are off (``DYNAPIPELINE_NO_EXTENSIONS``,
as for the engine) or the compiled copy was not built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynapipeline._engine import COMPILED

__all__ = ["STREAMS", "copy_into"]


def _copy_py(dest: Any, src: Any) -> None:
    """``copy_into`` in pure Python: a slice assignment (memcpy, through the cache)."""
    view = memoryview(dest)
    if view.nbytes != memoryview(src).nbytes:
        raise ValueError(f"copy_into: the destination has {view.nbytes} bytes, the source {memoryview(src).nbytes}")
    view[:] = src


def _compiled() -> Any:
    """The compiled module, or None when it is not wanted or not built."""
    if TYPE_CHECKING or not COMPILED:
        return None
    try:
        from dynapipeline._transports._remote import copy_c  # type: ignore[attr-defined]
    except ImportError:
        return None
    return copy_c


_built = _compiled()
# Large copies bypass the cache (for tests and ``dynapipeline info``): the compiled copy, built with SSE2.
STREAMS = _built is not None and bool(_built.STREAMING)
copy_into = _copy_py if _built is None else _built.copy_into
