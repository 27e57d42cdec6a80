"""A stream step's chunk in a worker: each item runs, then its outcome goes to the shared item log at once.

The item log (``_remote.messages``) is one buffer the worker shares with the
parent: a row of clock readings and a pickle per item, then the count of items
committed, written last. When a later item kills the worker, the parent still has
the outcomes of those that finished and never runs them again.

After the chunk, ``summed`` sums up the items' runs for the reply (``ItemRuns``),
so that the parent need not read the rows back when all went well, and
``pickled_values`` gives the reply's one pickle of the results: when the compiled
loop encoded every result itself, their pickles in the log joined (``join_values``),
rather than each result pickled a second time.

A plain stage's loop and the sum have a compiled side, ``itemlog_c`` (built with
the engine, optional as it is, and used on Linux only, where its clock is
``time.perf_counter``'s); the pure loop below is the reference it is tested against.
"""

from __future__ import annotations

import ctypes
import pickle
import struct
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from dynapipeline._engine import COMPILED, EPOCH_OFFSET
from dynapipeline._transports._remote import buffers
from dynapipeline._transports._remote.batch import dump_value, failure_of, loop_of
from dynapipeline._transports._remote.buffers import SHARED
from dynapipeline._transports._remote.messages import LOG_DATA, LOG_SIZE, LOG_SLOTS, LOG_TABLE, LoggedItem
from dynapipeline._transports.calling import ItemRuns, needs_loop, run_component, sum_runs

__all__ = ["COMPILED_LOG", "ItemLog"]

_ROW = struct.Struct("=4d")  # an item log row (_remote.messages); native doubles, as the parent reads them
_Large = buffers.Large


def _compiled() -> Any:
    """The compiled module, or None when it is not wanted or not built."""
    if TYPE_CHECKING or not COMPILED or sys.platform != "linux":
        return None
    try:
        from dynapipeline._transports.process import itemlog_c  # type: ignore[attr-defined]
    except ImportError:
        return None
    return itemlog_c


_built = _compiled()
COMPILED_LOG = _built is not None  # plain stages' chunks run in the compiled loop (tests, ``dynapipeline info``)


class ItemLog:
    """Runs a chunk's items, writing each one's outcome to the worker's shared item log (``_remote.messages``)."""

    def __init__(self, buffer: Any, name: str, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.threshold: int | None = state.get("threshold") if state is not None else None
        self.shared = False  # a result has buffers in shared memory: the reply's ``values`` are left empty
        if buffer is None:  # not a pool's worker: a private log, the same layout
            buffer = (ctypes.c_ubyte * LOG_SIZE)()
        self.view = memoryview(buffer).cast("B")
        self.committed = ctypes.c_int64.from_buffer(buffer, 0)
        self.failures = ctypes.c_int64.from_buffer(buffer, 8)
        self.name = name
        self.count = 0
        self.used = 0
        self.last: LoggedItem | None = None  # the item that did not fit: it travels in the reply, ends the chunk
        self.values: list[Any] = []  # the results, None where an item failed (the reply's ``values``)
        self.encoded = False  # the compiled loop encoded every result itself: ``pickled_values`` joins their pickles
        self.committed.value = 0
        self.failures.value = 0

    def run_plain(self, current: Any, plain: Any, items: list[Any], stop: Any = None) -> int:
        """Call ``plain`` on each item (a plain ``def`` stage: no runner needed); how many ran.

        ``stop``: asked before each item but the first; True ends the chunk there (``recycling.Budget``).
        """
        if _built is not None and isinstance(current, ctypes.c_long):
            return int(_built.run_plain(self, ctypes.addressof(current), plain, items, stop))
        return self.run_plain_py(current, plain, items, stop)

    def run_plain_py(self, current: Any, plain: Any, items: list[Any], stop: Any = None) -> int:
        """``run_plain`` in pure Python (the compiled loop's reference)."""
        clock = time.perf_counter  # the engine's clock
        dumps = pickle.dumps
        protocol = pickle.HIGHEST_PROTOCOL
        pack_row = _ROW.pack_into
        view = self.view
        committed = self.committed
        room = LOG_SIZE - LOG_DATA
        used = 0
        count = 0
        keep = self.values.append
        threshold = self.threshold
        probe = None if threshold is None else buffers.probe(threshold)
        for item in items:
            if stop is not None and count and stop():
                break
            current.value = count
            t0 = clock()
            try:
                value = plain(item)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                count, used = self.general(count, used, self.failed, t0, clock(), error, traceback.format_exc())
                if self.last is not None:
                    return count + 1
                continue
            t1 = clock()
            keep(value)
            try:
                # The plain pickle at C speed; a large buffer (the probe raises) or a large pickle goes the
                # general way below, to shared memory.
                data = dumps(value, protocol, buffer_callback=probe)
                if probe is not None and len(data) >= probe.threshold:
                    raise _Large
            except Exception:  # noqa: BLE001 - large, or only cloudpickle can: the general way
                self.values.pop()
                count, used = self.general(count, used, self.value, t0, t1, value)  # shared memory, cloudpickle
                if self.last is not None:
                    return count + 1
                continue
            size = len(data)
            if count >= LOG_SLOTS or used + size > room:
                self.last = LoggedItem(t0, t1, clock(), False, data)
                return count + 1
            pack_row(view, LOG_TABLE + count * 32, t0, t1, clock(), size)
            at = LOG_DATA + used
            view[at:at + size] = data
            used += size
            count += 1
            committed.value = count  # last: the item is whole in the log from here on
        self.count, self.used = count, used
        return count

    def run_stage(self, current: Any, stage: Any, items: list[Any], state: dict[str, Any], stop: Any = None) -> int:
        """Run each item through the stage's runner (handlers, timeout, retries); how many ran (``stop``: as above)."""
        loop = loop_of(state) if needs_loop(stage) else None
        runner = stage.__pydantic_private__["_runner"]
        no_kwargs: dict[str, Any] = {}
        for position, item in enumerate(items):
            if stop is not None and position and stop():
                return position
            current.value = position
            try:
                value = run_component(stage, (item,), no_kwargs, loop)
            except BaseException as error:  # noqa: B902 - everything goes back to the parent
                self.failed(runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, error,
                            traceback.format_exc())
            else:
                self.value(runner.start_time - EPOCH_OFFSET, runner.end_time - EPOCH_OFFSET, value)
            if self.last is not None:
                return position + 1  # no room left in the log: the parent sends the rest again
        return len(items)

    def general(self, count: int, used: int, log: Any, *args: Any) -> tuple[int, int]:
        """Log one item the general way (``log``: ``failed`` or ``value``) from a loop's count and bytes used; theirs
        after it."""
        self.count, self.used = count, used
        log(*args)
        return self.count, self.used

    def value(self, t0: float, t1: float, value: Any) -> None:
        try:
            data = dump_value(value, self.state)
            if data[:1] == SHARED:
                self.shared = True
        except Exception as bad:
            self.values.append(None)
            unpicklable = TypeError(f"stage {self.name!r} returned a result that cannot be pickled "
                                    f"({type(value).__name__}: {bad})")
            self.add(t0, t1, True, pickle.dumps(failure_of(unpicklable, ""), protocol=pickle.HIGHEST_PROTOCOL))
            return
        self.values.append(value)
        self.add(t0, t1, False, data)

    def failed(self, t0: float, t1: float, error: BaseException, tb: str) -> None:
        self.values.append(None)
        self.add(t0, t1, True, pickle.dumps(failure_of(error, tb), protocol=pickle.HIGHEST_PROTOCOL))

    def add(self, t0: float, t1: float, failed: bool, data: bytes) -> None:
        """Log one item's outcome (its pickle, ``failed``: a ``Failure``) and commit it."""
        pickled = time.perf_counter()
        count = self.count
        size = len(data)
        used = self.used
        if count >= LOG_SLOTS or used + size > LOG_SIZE - LOG_DATA:
            self.last = LoggedItem(t0, t1, pickled, failed, data)
            return
        _ROW.pack_into(self.view, LOG_TABLE + count * 32, t0, t1, pickled, -size if failed else size)
        at = LOG_DATA + used
        self.view[at:at + size] = data
        self.used = used + size
        self.count = count + 1
        if failed:
            self.failures.value += 1
        self.committed.value = count + 1  # last: the item is whole in the log from here on

    def pickled_values(self) -> bytes:
        """The pickle of ``values`` (the reply's): made of the log's own pickles when the compiled loop encoded each."""
        if self.encoded and _built is not None and len(self.values) == self.count:
            return _built.join_values(self, self.count)  # type: ignore[no-any-return]
        return pickle.dumps(self.values, protocol=pickle.HIGHEST_PROTOCOL)

    def summed(self) -> ItemRuns | None:
        """The logged items' runs summed up; None when none ran or one is in ``last`` (the parent reads the rows)."""
        count = self.count
        if self.last is not None or not count:
            return None
        if _built is not None:
            return _built.sum_log(self, count)  # type: ignore[no-any-return]
        rows: list[float] = self.view[LOG_TABLE:LOG_TABLE + 32 * count].cast("d").tolist()  # type: ignore[assignment]
        return sum_runs(rows[0::4], rows[1::4], rows[2::4])
