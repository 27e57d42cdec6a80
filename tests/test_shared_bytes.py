"""Large ``bytes`` received without a copy: a real ``bytes`` laid on its shared-memory block.

The contract: on CPython (default build) such an object is a ``bytes`` in every way; its block
stays the receiver's for as long as anything holds the object (a stage keeping it across items,
a caller keeping results after the pool closed) and goes back to its owner once nothing does;
a worker killed while holding one leaks nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import weakref
import zlib
from typing import Any

import pytest
from helpers import MIB, Link, leaves_nothing

from dynapipeline import Stage, Step, Stream
from dynapipeline._transports._remote import shared_bytes
from dynapipeline._transports._remote.shared_bytes import HEADER, LAYS_BYTES, bytes_on, held, let_go
from dynapipeline.errors import WorkerCrashedError
from dynapipeline.execution import MultiprocessExecutionStrategy


def laid(data: bytes) -> tuple[bytes, Any]:
    """``data`` laid on a ctypes buffer of its own, as a receiver lays it on a block; and that buffer."""
    buffer = (ctypes.c_char * (HEADER + len(data) + 1))()
    ctypes.memmove(ctypes.addressof(buffer) + HEADER, data, len(data))
    return bytes_on(buffer), buffer


def test_the_layout_check_passes_on_a_default_cpython_build() -> None:
    """So that the copy fallback is never taken by mistake here (the rest of this module relies on it)."""
    default_build = sys.implementation.name == "cpython" and not hasattr(sys, "gettotalrefcount") \
        and getattr(sys, "_is_gil_enabled", lambda: True)()
    assert LAYS_BYTES is default_build is True


def test_a_laid_bytes_is_a_real_bytes() -> None:
    data = os.urandom(100_000)
    got, buffer = laid(data)
    assert type(got) is bytes and got == data and len(got) == len(data) and got is not data
    assert hash(got) == hash(data) and {data: 1}[got] == 1
    assert got[10:20] == data[10:20] and got[::-7] == data[::-7] and got.hex() == data.hex()
    assert zlib.adler32(got) == zlib.adler32(data) and bytes(got) is got
    assert pickle.loads(pickle.dumps(got, protocol=5)) == data
    assert memoryview(got).readonly and memoryview(got).tobytes() == data
    # Its data is the buffer's memory: no copy was made.
    assert ctypes.string_at(ctypes.addressof(buffer) + HEADER, 16) == data[:16]


def test_let_go_keeps_held_bytes_and_drops_the_others() -> None:
    let_go()
    before = held()
    kept, _ = laid(b"k" * 5000)
    dropped, buffer = laid(b"d" * 5000)
    exporter = weakref.ref(buffer)
    assert held() == before + 2
    del dropped, buffer
    let_go()
    assert exporter() is None and held() == before + 1  # the dropped one's exporter is gone: its block is free
    assert kept == b"k" * 5000
    del kept
    let_go()
    assert held() == before


def test_a_garbage_collection_lets_go_without_a_message() -> None:
    got, buffer = laid(b"g" * 5000)
    exporter = weakref.ref(buffer)
    del got, buffer
    gc.collect()  # the gc.callbacks hook sweeps
    assert exporter() is None


def test_a_sweep_inside_a_laying_is_skipped_not_deadlocked() -> None:
    """A collection may run inside ``bytes_on`` while it holds the lock: its sweep must not wait for it."""
    with shared_bytes._lock:
        let_go()  # returns at once
        gc.collect()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_counts_its_references_apart_and_the_parent_keeps_its_block() -> None:
    """The header is in shared memory: without the fork hook, the child's reference counting was the parent's."""
    link = Link()
    try:
        packed, got = link.round_trip(b"\x05" * 5000)
        holders = [got] * 3
        count = sys.getrefcount(got)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drops what it inherited, as an exiting child does, and reports what it saw
            try:
                ok = got == b"\x05" * 5000 and sys.getrefcount(got) == count
                holders.clear()
                os.write(write, b"1" if ok and sys.getrefcount(got) == count - 3 else b"0")
            finally:
                os._exit(0)
        os.close(write)
        seen = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        assert seen == b"1"  # the child saw the object, with its own counts
        assert sys.getrefcount(got) == count and len(holders) == 3  # the parent's counts are untouched
        let_go()
        assert link.released() == [] and got == b"\x05" * 5000  # still lent: the parent holds it
        del got, holders
        let_go()
        assert link.released() == list(packed.blocks)
    finally:
        link.close()


def test_an_interpreter_exiting_with_laid_bytes_held_everywhere_exits_cleanly(tmp_path: Any) -> None:
    """Module teardown touches the headers of what globals, cycles and caches hold: the mappings must outlive it."""
    script = textwrap.dedent("""
        import asyncio, functools, sys
        import dynapipeline.execution  # binds the package in this module: its teardown comes later
        from dynapipeline import Stage, Step, Stream
        from dynapipeline.execution import MultiprocessExecutionStrategy

        class Same(Stage):
            def execute(self, item: bytes) -> bytes:
                return item

        class Cycle:
            def __init__(self, data):
                self.data, self.me = data, self

        RESULTS = []

        async def main():
            strategy = MultiprocessExecutionStrategy(2)
            items = [bytes([i]) * (1 << 20) for i in range(6)]
            RESULTS.extend(await Stream(name="s", steps=[Step(Same(name="same"), strategy)]).run(items))
            if sys.argv[1] == "close":
                await strategy.aclose()
            Cycle(RESULTS[1])
            functools.lru_cache(None)(lambda: RESULTS[2])()
            print("held", flush=True)

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    (tmp_path / "keeps.py").write_text(script)  # a file: the workers import the stage's module, as in a script
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for how in ("close", "keep"):
        done = subprocess.run([sys.executable, str(tmp_path / "keeps.py"), how], capture_output=True, text=True,
                              timeout=90, env={**os.environ, "PYTHONPATH": root})
        assert done.returncode == 0 and done.stdout == "held\n", (how, done.returncode, done.stderr)
        assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, (how, done.stderr)


# -- through worker processes ---------------------------------------------------------------------

_kept: list[bytes] = []  # in each worker: the first two items it received


class Keep(Stage):
    """Keeps its first two items; returns each item's fill byte, whether every kept item is still intact, and how
    many laid bytes its worker holds."""

    def execute(self, item: bytes) -> tuple[int, bool, int]:
        if len(_kept) < 2:
            _kept.append(item)
        intact = all(kept == kept[:1] * len(kept) for kept in _kept)
        return item[0], intact, held()


class KillAfterKeeping(Stage):
    """Keeps every item; SIGKILLs its worker on the item filled with ``bad``."""

    bad: int = 0

    def execute(self, item: bytes) -> int:
        _kept.append(item)
        if item[0] == self.bad:
            os.kill(os.getpid(), signal.SIGKILL)
        return item[0]


class Same(Stage):
    def execute(self, item: bytes) -> bytes:
        return item


def filled(count: int) -> list[bytes]:
    return [bytes([i]) * MIB for i in range(count)]


async def test_bytes_a_stage_keeps_stay_intact_while_later_items_reuse_the_memory() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy):
        s = Stream(name="s", steps=[Step(Keep(name="keep"), strategy)], maxsize=4)
        out = await asyncio.wait_for(s.run(filled(24)), 60)
        assert [fill for fill, _, _ in out] == list(range(24))
        assert all(intact for _, intact, _ in out)  # no kept item's block was reused under it
        assert all(count >= 1 for _, _, count in out)  # each item was laid in the worker, not copied
        # The parent's arena still lends the kept blocks (2 per worker), and only those.
        assert strategy.pool is not None and 0 < strategy.pool.arena.used <= 4 * (MIB + 128)


async def test_a_worker_killed_while_holding_received_bytes_fails_that_item_alone_and_leaks_nothing() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy) as pids:
        s = Stream(name="s", steps=[Step(KillAfterKeeping(name="kill", bad=5), strategy)], on_error="skip")
        out = await asyncio.wait_for(s.run(filled(12)), 60)
        assert out == [i for i in range(12) if i != 5]
        [failed] = s.errors
        assert failed.index == 5 and type(failed.error) is WorkerCrashedError
        pids.append(failed.error.pid)


async def test_bytes_results_arrive_laid_and_let_their_blocks_go_when_dropped() -> None:
    strategy = MultiprocessExecutionStrategy(2)
    let_go()
    before = held()
    async with leaves_nothing(strategy):
        out = await asyncio.wait_for(Stream(name="s", steps=[Step(Same(name="same"), strategy)]).run(filled(6)), 60)
        assert out == filled(6) and held() == before + 6
        del out
        gc.collect()
        assert held() == before
