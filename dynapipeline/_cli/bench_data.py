"""``dynapipeline bench``'s large-item table: MB/s of a stream step on 2 processes beside its peers.

::

    for each kind of item (bytes; float64 numpy arrays when numpy imports):
        the items: ``count`` references to a few distinct items of ``size`` bytes
        each side: an untimed run over 4 items (warm), then ``passes`` timed runs over all the items, sides taking turns
        ─► MB/s (median run) ─► ÷ one process, ours ÷ side

=================  =========================================================================
side               what it runs over the items
=================  =========================================================================
one process        a plain ``for`` loop calling the function
dynapipeline       a ``Stream`` step on ``MultiprocessExecutionStrategy(2)`` (warm pool)
Pool.imap          ``multiprocessing.Pool(2).imap`` (warm pool, ``chunksize=1``)
mpire              ``mpire.WorkerPool(2).imap`` (warm pool, ``chunk_size=1``), when installed
copy               copying each item once in this process: the memory's limit
=================  =========================================================================

The function: for bytes, ``zlib.adler32`` (it reads every byte and returns an
int: a stage whose work is of the order of its data's size), run as many times
over the item as make it about 1.5 GB/s on one core of this machine
(``touch_passes``: adler32 alone ran at 1.6-1.8 GB/s on the machine these
benchmarks were written on and at 3.1 GB/s on a later one, where the copies a
transport makes would weigh twice as much against the work); for arrays,
``a * 2.0`` (it returns an array as large, so the data crosses twice). Every
side consumes the outputs one by one and drops them, so no side holds all the
results at once. numpy is imported only when the array rows are measured. The
measurement is done in this process's engine mode only: what it measures is the
transfer, not the engine.

Invariant: the ratios compare sides timed in the same process, taking turns, over
the same item objects. See docs/performance.md#large-items.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import inspect
import math
import multiprocessing
import os
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from dynapipeline._loops import loop_factory
from dynapipeline._model.component import Stage
from dynapipeline._model.step import Step
from dynapipeline._model.stream import Stream
from dynapipeline._table import format_table
from dynapipeline._transports.process.children import default_start_method
from dynapipeline._transports.process.strategy import MultiprocessExecutionStrategy

__all__ = ["DATA", "DEFAULT_COUNT", "DEFAULT_SIZE", "QUICK_COUNT", "SIDES", "Double", "Touch", "copy_once", "double",
           "format_large", "make_items", "measure_large", "touch", "touch_passes", "transport_note"]

DATA = ("bytes", "array")
SIDES = ("one process", "dynapipeline", "Pool.imap", "mpire", "copy")
OURS = "dynapipeline"
WORKERS = 2
DEFAULT_SIZE = 20_000_000
DEFAULT_COUNT = 8
QUICK_COUNT = 4
DISTINCT = 4  # distinct item objects, referenced in turn: `count` items without `count` items' worth of memory
_STREAM_MAXSIZE = 8
STAGE_RATE = 1.5e9  # bytes/s of the bytes stage on one core: a stage touching every byte at about 1.5 GB/s


def touch(item: bytes, passes: int = 1) -> int:
    """Reads every byte ``passes`` times and returns a small result (a checksum)."""
    value = 1
    for _ in range(passes):
        value = zlib.adler32(item, value)
    return value


@functools.cache
def touch_passes() -> int:
    """How many passes make ``touch`` run at about ``STAGE_RATE`` on one core here (at least one)."""
    sample = os.urandom(DEFAULT_SIZE)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        zlib.adler32(sample)
        best = min(best, time.perf_counter() - started)
    return max(1, round(len(sample) / best / STAGE_RATE))


def double(item: Any) -> Any:
    """A new array as large as the item."""
    return item * 2.0


def copy_once(item: Any) -> Any:
    """One copy of the item: the least any transport that copies it costs."""
    return bytearray(item) if isinstance(item, bytes) else item.copy()


class Touch(Stage):
    """``touch`` as a stage."""

    passes: int = 1

    def execute(self, item: bytes) -> int:
        return touch(item, self.passes)


class Double(Stage):
    """``double`` as a stage."""

    def execute(self, item: Any) -> Any:
        return double(item)


def make_items(data: str, size: int, count: int) -> list[Any]:
    """``count`` items of about ``size`` bytes: ``DISTINCT`` objects of random content, referenced in turn."""
    if data == "bytes":
        distinct: list[Any] = [os.urandom(size) for _ in range(DISTINCT)]
    else:
        import numpy

        rng = numpy.random.default_rng(0)
        distinct = [rng.random(max(1, size // 8)) for _ in range(DISTINCT)]
    return [distinct[i % DISTINCT] for i in range(count)]


def transport_note(strategy: Any) -> str:
    """How the process transport sends large buffers, as this version's strategy says (its attribute, else its
    constructor's default): the same table runs on versions with and without the shared-memory option."""
    threshold = getattr(strategy, "shared_memory_threshold", ...)
    if threshold is ...:
        parameter = inspect.signature(type(strategy)).parameters.get("shared_memory_threshold")
        if parameter is None:
            return "items pickled through the workers' pipes (no shared-memory option in this version)"
        threshold = parameter.default
    if threshold is None:
        return "shared memory off (shared_memory_threshold=None)"
    return f"shared memory for buffers of {threshold:,} bytes or more"


def _one_process(fn: Callable[[Any], Any], items: list[Any]) -> None:
    for item in items:
        fn(item)


def _consume(outputs: Iterator[Any]) -> None:
    for _ in outputs:
        pass


class _Sides:
    """The warm pools and the function of each side, for one kind of item."""

    def __init__(self, runner: asyncio.Runner, strategy: MultiprocessExecutionStrategy, pool: Any,
                 mpire_pool: Any) -> None:
        self.runner = runner
        self.strategy = strategy
        self.pool = pool
        self.mpire_pool = mpire_pool

    def functions(self, data: str) -> dict[str, Callable[[list[Any]], None]]:
        fn: Callable[[Any], Any] = functools.partial(touch, passes=touch_passes()) if data == "bytes" else double
        stage = Touch(name="touch", passes=touch_passes()) if data == "bytes" else Double(name="double")
        stream = Stream(name="large", steps=[Step(stage, self.strategy)], maxsize=_STREAM_MAXSIZE)

        async def ours(items: list[Any]) -> None:
            async with stream.iterate(items) as outputs:
                async for _ in outputs:
                    pass

        sides: dict[str, Callable[[list[Any]], None]] = {
            "one process": lambda items: _one_process(fn, items),
            OURS: lambda items: self.runner.run(ours(items)),
            "Pool.imap": lambda items: _consume(self.pool.imap(fn, items, chunksize=1)),
        }
        if self.mpire_pool is not None:
            mpire_pool = self.mpire_pool
            sides["mpire"] = lambda items: _consume(mpire_pool.imap(fn, items, chunk_size=1))
        sides["copy"] = lambda items: _one_process(copy_once, items)
        return sides


@contextlib.contextmanager
def _pools(loop: str) -> Iterator[_Sides]:
    """Every side's pool, started and warm; all shut down on exit."""
    with contextlib.ExitStack() as stack:
        mpire_pool = None
        if importlib.util.find_spec("mpire") is not None:
            from mpire.pool import WorkerPool

            # Started first: its workers fork from this process while no other pool's threads run in it.
            mpire_pool = stack.enter_context(WorkerPool(n_jobs=WORKERS, keep_alive=True))
            mpire_pool.map(len, [b""] * WORKERS)
        pool = stack.enter_context(multiprocessing.get_context(default_start_method()).Pool(WORKERS))
        pool.map(len, [b""] * WORKERS)
        runner = stack.enter_context(asyncio.Runner(loop_factory=loop_factory(loop)))
        strategy = MultiprocessExecutionStrategy(WORKERS)
        stack.callback(strategy.close)
        runner.run(strategy.start())
        yield _Sides(runner, strategy, pool, mpire_pool)


def measure_large(size: int = DEFAULT_SIZE, count: int = DEFAULT_COUNT, passes: int = 1,
                  loop: str = "asyncio") -> dict[str, Any]:
    """MB/s of each side over ``count`` items of ``size`` bytes, per kind of item; the median of ``passes`` runs."""
    kinds = [d for d in DATA if d == "bytes" or importlib.util.find_spec("numpy") is not None]
    rows: list[dict[str, Any]] = []
    with _pools(loop) as pools:
        note = transport_note(pools.strategy)
        for data in kinds:
            items = make_items(data, size, count)
            nbytes = sum(memoryview(item).nbytes for item in items)
            sides = pools.functions(data)
            for fn in sides.values():
                # Warm, over at least as many items as a process side has in flight (2 per worker at most): the
                # stage shipped, the function loaded, the buffers a transport keeps for its items in flight made.
                fn(items[:2 * WORKERS])
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(passes):
                for side, fn in sides.items():
                    t0 = time.perf_counter()
                    fn(items)
                    times[side].append(time.perf_counter() - t0)
            rates = {side: nbytes / 1e6 / statistics.median(t) for side, t in times.items()}
            for side, rate in rates.items():
                rows.append({"data": data, "side": side, "mb_s": rate, "vs_one": rate / rates["one process"],
                             "ours_vs": rates[OURS] / rate})
            del items
    return {"size": size, "count": count, "passes": passes, "workers": WORKERS, "transport": note, "rows": rows,
            "touch_passes": touch_passes()}


_LABELS = {
    "one process": "one process (a for loop)",
    OURS: f"Stream step on MultiprocessExecutionStrategy({WORKERS})",
    "Pool.imap": f"multiprocessing.Pool({WORKERS}).imap",
    "mpire": f"mpire.WorkerPool({WORKERS}).imap",
    "copy": "memory copy limit (one copy per item)",
}


def _work(data: str, large: dict[str, Any]) -> str:
    passes = large.get("touch_passes", 1)
    return "a * 2.0" if data == "array" else "zlib.adler32" + (f" ×{passes}" if passes > 1 else "")


def format_large(large: dict[str, Any]) -> str:
    """The large-item table, with a line saying what it ran."""
    head = ("items", "work", "side", "MB/s", "÷ one process", "ours ÷ side")
    body = [
        (r["data"], _work(r["data"], large), _LABELS[r["side"]], f"{r['mb_s']:,.0f}", f"{r['vs_one']:.2f}×",
         "" if r["side"] == OURS else f"{r['ours_vs']:.2f}×")
        for r in large["rows"]
    ]
    size = large["size"]
    title = (f"Large items: {large['count']} × {size / 1e6:g} MB per run, {large['workers']} worker processes "
             f"(median of {large['passes']} run{'s' if large['passes'] > 1 else ''}); {large['transport']}")
    return title + "\n\n" + format_table(head, body, right=(3, 4, 5), rule=True)
