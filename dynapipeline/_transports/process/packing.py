"""A chunk of a process step's items, pickled for a worker: one pickle, large buffers in the pool's shared memory.

An item that cannot be pickled fails alone (``PicklingError`` naming the step and the item's type); the
other items of its chunk go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dynapipeline._transports._remote.buffers import Packed, pack
from dynapipeline.errors import PicklingError

if TYPE_CHECKING:
    from dynapipeline._transports.process.pool import ProcessPool

__all__ = ["pack_in", "pack_items"]

logger = logging.getLogger("dynapipeline")


def pack_items(values: list[Any], batch: Sequence[int], results: list[Any], name: str,
               pool: ProcessPool | None) -> Packed | None:
    """The pickled items of ``batch`` (positions in ``values``); None when one cannot be pickled.

    Each item that cannot be pickled gets its ``(False, PicklingError)`` in ``results``: pickle the rest.
    """
    try:
        # A batch as long as the call is the whole call (batches keep the call's order): no copy needed.
        return pack_in(pool, values if len(batch) == len(values) else [values[i] for i in batch])
    except Exception:
        logger.debug("stream step %r: a chunk cannot be pickled; finding the item", name)
    for i in batch:
        try:
            pack([values[i]], None, None)  # in the pipe: finding the culprit needs no shared memory
        except Exception as error:
            failure = PicklingError(f"stream step {name!r}: an item of type {type(values[i]).__name__} "
                                    f"cannot be pickled to a worker process ({type(error).__name__}: {error})")
            failure.__cause__ = error
            results[i] = (False, failure)
    return None


def pack_in(pool: ProcessPool | None, items: list[Any]) -> Packed:
    """The items pickled (the standard pickler when it can, else cloudpickle), large buffers in ``pool``'s arena."""
    if pool is None:
        return pack(items, None, None)
    return pack(items, pool.threshold, pool.arena)
