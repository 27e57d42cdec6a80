"""Large items through a stream step on 2 processes, beside one process, the peers and a memory copy.

Groups (``pytest benchmarks/test_data_bench.py --benchmark-only --benchmark-max-time=0.5``):

- ``data-bytes``: 40 items of 20 MB ``bytes``, a function that reads every byte
  and returns an int: ``zlib.adler32``. Measured on the project's machine
  (one core, 20 MB of random bytes): ``zlib.crc32`` 2.0 GB/s, ``zlib.adler32``
  1.8 GB/s, ``bytes.count`` of one byte 2.5 GB/s, of two 1.15 GB/s,
  ``hashlib.sha1``/``sha256`` 1.15 GB/s, ``blake2b`` 0.96 GB/s: adler32 is the
  stdlib function nearest to 1.5 GB/s from above, a stage whose work is of the order
  of its data's size (so a transport that copies the data costs as much as the work).
  On a faster machine adler32 runs over each item as many times as make about
  1.5 GB/s there (``bench_data.touch_passes``: 2 where it alone ran at 3.1 GB/s).
- ``data-array``: 40 float64 numpy arrays of 20 MB, ``a * 2.0`` (an array as large
  comes back, so the data crosses twice).

Each group has five sides: one process (a ``for`` loop), our ``Stream`` step on
``MultiprocessExecutionStrategy(2)``, ``multiprocessing.Pool(2).imap`` and
``mpire.WorkerPool(2).imap`` (``chunksize=1``: an item is large enough on its own),
and the memory copy limit (each item copied once in this process). Pools are warm
(started before timing). The items are 4 distinct objects referenced in turn; every
side consumes the outputs one by one and drops them. Each benchmark's
``extra_info["MB/s"]`` is its rate at the median round; the run ends with a table of
the rates and the ratios (``bench_support.report_rates``). The same sides, smaller,
make the large-item table of ``dynapipeline bench`` (``dynapipeline._cli.bench_data``).

numpy or a peer missing from the environment: that case is skipped (they are in the
``dev`` extra).
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
from bench_support import record_rate

from dynapipeline import Step, Stream
from dynapipeline._cli.bench_data import (
    Double,
    Touch,
    copy_once,
    double,
    make_items,
    touch,
    touch_passes,
    transport_note,
)
from dynapipeline._transports.process.children import default_start_method

ITEMS = 40
ITEM_BYTES = 20_000_000
WORKERS = 2
ROUNDS = 3  # rounds of the sides that take seconds each (the pools); the others run as pytest-benchmark decides


@pytest.fixture(scope="module")
def pool() -> Any:
    with multiprocessing.get_context(default_start_method()).Pool(WORKERS) as pool:
        pool.map(len, [b""] * WORKERS)  # warm
        yield pool


@pytest.fixture(scope="module")
def mpire_pool() -> Any:
    mpire = pytest.importorskip("mpire")
    with mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True) as pool:
        pool.map(len, [b""] * WORKERS)  # warm
        yield pool


def _count(request: pytest.FixtureRequest) -> int:
    # Under --benchmark-disable (the suite's run in `make test`) each case runs once, to show it works: 4 items do.
    return 4 if request.config.getoption("benchmark_disable") else ITEMS


@pytest.fixture(scope="module")
def byte_items(request: pytest.FixtureRequest) -> list[bytes]:
    return make_items("bytes", ITEM_BYTES, _count(request))


@pytest.fixture(scope="module")
def array_items(request: pytest.FixtureRequest) -> list[Any]:
    pytest.importorskip("numpy")
    return make_items("array", ITEM_BYTES, _count(request))


def _measure(benchmark: Any, side: str, items: list[Any], run: Callable[[], Any], slow: bool) -> None:
    """Time ``run`` (over all the items) and record its MB/s at the median round."""
    if slow:
        benchmark.pedantic(run, rounds=ROUNDS)
    else:
        benchmark(run)
    nbytes = sum(memoryview(item).nbytes for item in items)
    if benchmark.stats is not None:  # None under --benchmark-disable
        rate = nbytes / 1e6 / benchmark.stats.stats.median
        benchmark.extra_info["MB/s"] = round(rate, 1)
        record_rate(benchmark.group, side, rate)
    benchmark.extra_info.update(items=len(items), item_bytes=nbytes // len(items))


def _sides(kind: str) -> tuple[Callable[[Any], Any], Any]:
    if kind == "array":
        return double, Double(name="double")
    passes = touch_passes()  # adler32 as many times over the item as make about 1.5 GB/s on one core here
    return functools.partial(touch, passes=passes), Touch(name="touch", passes=passes)


def _items(kind: str, request: pytest.FixtureRequest) -> list[Any]:
    return list(request.getfixturevalue("byte_items" if kind == "bytes" else "array_items"))


KINDS = pytest.mark.parametrize("kind", ["bytes", "array"])


@KINDS
def test_data_one_process(benchmark: Any, request: pytest.FixtureRequest, kind: str) -> None:
    items = _items(kind, request)
    fn, _ = _sides(kind)
    benchmark.group = f"data-{kind}"

    def run() -> None:
        for item in items:
            fn(item)

    _measure(benchmark, "one process", items, run, slow=False)


@KINDS
def test_data_dynapipeline(benchmark: Any, request: pytest.FixtureRequest, loop: Any, procs: Any, kind: str) -> None:
    items = _items(kind, request)
    _, stage = _sides(kind)
    stream = Stream(name="bench", steps=[Step(stage, procs)], maxsize=8)
    benchmark.group = f"data-{kind}"
    benchmark.extra_info["transport"] = transport_note(procs)

    async def consume() -> int:
        n = 0
        async with stream.iterate(items) as outputs:
            async for _ in outputs:
                n += 1
        return n

    loop.run_until_complete(consume())  # the stage shipped to the workers before timing
    _measure(benchmark, "dynapipeline", items, lambda: loop.run_until_complete(consume()), slow=True)


# The peers pickle each item through a pipe: on a busy machine their 3 rounds of 800 MB (arrays at ~20 MB/s) pass
# the suite's 120 s bound.
PEER_TIMEOUT = pytest.mark.timeout(900)


@KINDS
@PEER_TIMEOUT
def test_data_pool_imap(benchmark: Any, request: pytest.FixtureRequest, pool: Any, kind: str) -> None:
    items = _items(kind, request)
    fn, _ = _sides(kind)
    benchmark.group = f"data-{kind}"

    def run() -> None:
        for _ in pool.imap(fn, items, chunksize=1):
            pass

    _measure(benchmark, "Pool.imap", items, run, slow=True)


@KINDS
@PEER_TIMEOUT
def test_data_mpire(benchmark: Any, request: pytest.FixtureRequest, mpire_pool: Any, kind: str) -> None:
    items = _items(kind, request)
    fn, _ = _sides(kind)
    benchmark.group = f"data-{kind}"

    def run() -> None:
        for _ in mpire_pool.imap(fn, items, chunk_size=1):
            pass

    _measure(benchmark, "mpire", items, run, slow=True)


@KINDS
def test_data_copy_limit(benchmark: Any, request: pytest.FixtureRequest, kind: str) -> None:
    items = _items(kind, request)
    benchmark.group = f"data-{kind}"

    def run() -> None:
        for item in items:
            copy_once(item)

    _measure(benchmark, "copy", items, run, slow=False)
