"""A worker's item log: the compiled loop logs exactly what the pure one does, and sums up the same runs."""

from __future__ import annotations

import ctypes
import os
import pickle
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynapipeline._transports._remote.messages import LOG_DATA, LOG_SIZE, LOG_SLOTS, LOG_TABLE
from dynapipeline._transports.calling import sum_runs
from dynapipeline._transports.process import itemlog
from dynapipeline._transports.process.itemlog import ItemLog

compiled = pytest.mark.skipif(not itemlog.COMPILED_LOG, reason="the compiled item log is built with the engine")
ROOM = LOG_SIZE - LOG_DATA


def boom_on_minus(x: Any) -> Any:
    if x == -1:
        raise ValueError("minus one")
    return x


def _run(compiled_loop: bool, items: list[Any], stop: Any = None,
         state: dict[str, Any] | None = None) -> tuple[int, ItemLog, int]:
    log = ItemLog(None, "s", state)
    current = ctypes.c_long(-1)
    if compiled_loop:
        ran = log.run_plain(current, boom_on_minus, items, stop)
    else:
        ran = log.run_plain_py(current, boom_on_minus, items, stop)
    return ran, log, current.value


def _logged(log: ItemLog) -> list[Any]:
    """Each committed item's outcome as the parent reads it: (failed, result or error text, its pickle if a result)."""
    count = log.committed.value
    rows = log.view[LOG_TABLE:LOG_TABLE + 32 * count].cast("d").tolist()
    out, at = [], LOG_DATA
    for size in map(int, rows[3::4]):
        data = bytes(log.view[at:at + abs(size)])
        at += abs(size)
        value = pickle.loads(data)
        out.append((True, value.text, None) if size < 0 else (False, value, data))
    return out


def _stopper(after: int | None) -> Any:
    """A recycled worker's ``stop``: True from its ``after``-th question on (None: no budget)."""
    if after is None:
        return None
    asked = [0]

    def stop() -> bool:
        asked[0] += 1
        return asked[0] >= after

    return stop


def _same(items: list[Any], stop_after: int | None = None, state: dict[str, Any] | None = None) -> None:
    """Both loops, given the same chunk, log the same outcomes, keep the same values and say the same."""
    results = []
    for compiled_loop in (False, True):
        ran, log, position = _run(compiled_loop, items, _stopper(stop_after), state)
        last = None if log.last is None else (log.last.failed, log.last.data)
        results.append((ran, position, log.committed.value, log.failures.value, _logged(log), log.values, last,
                        log.shared))
    assert results[0] == results[1]


@compiled
def test_the_compiled_loop_logs_what_the_pure_loop_logs_item_by_item() -> None:
    assert itemlog._built is not None
    _same([0, 1, 255, 256, 2**31, -2**63, 2**64, 1.5, float("inf"), None, True, "text", b"bytes", (1, "a"),
           -1, [1, 2], {"k": 3}, -1, 7])


@compiled
def test_the_compiled_loop_ends_a_chunk_where_the_pure_loop_does() -> None:
    _same(list(range(LOG_SLOTS + 5)))  # no row left: the last item travels in the reply
    _same(["x" * (ROOM // 5)] * 7)  # no room left for a pickle
    _same(list(range(10)), stop_after=4)  # a recycled worker's budget
    _same([-1] * 3 + list(range(3)))  # errors first


@compiled
def test_the_compiled_loop_sends_large_results_the_general_way() -> None:
    # Above the threshold a result goes the general way (shared memory in a worker; in-band here, no arena).
    _same([b"a" * 64, b"b" * 5000, 3], state={"threshold": 4096, "arena": None})


@compiled
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                 st.integers(min_value=-2**64, max_value=2**64)))
def test_encode_writes_the_bytes_pickle_writes(value: Any) -> None:
    assert itemlog._built is not None
    encoded = itemlog._built.encode(value)
    if type(value) is int and not -2**63 <= value < 2**63:
        assert encoded is None  # pickle's own way
    else:
        assert encoded == pickle.dumps(value, 5)


@compiled
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False),
                          st.integers(min_value=-2**63, max_value=2**63 - 1)), min_size=1, max_size=300))
def test_a_chunk_of_encoded_results_has_its_reply_pickle_joined_from_the_log(values: list[Any]) -> None:
    ran, log, _ = _run(True, values)
    assert ran == len(values) and log.encoded
    data = log.pickled_values()
    assert data != pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)  # joined, not pickled again
    assert pickle.loads(data) == log.values == values
    assert [type(v) for v in pickle.loads(data)] == [type(v) for v in values]


@compiled
@pytest.mark.parametrize("items", [[1, "text", 2], [1, -1, 2], list(range(LOG_SLOTS + 5)), [2**64, 1]],
                         ids=["a str", "an error", "no room", "a big int"])
def test_a_chunk_with_a_result_the_loop_did_not_encode_is_pickled_whole(items: list[Any]) -> None:
    ran, log, _ = _run(True, items)
    assert not log.encoded
    assert log.pickled_values() == pickle.dumps(log.values, protocol=pickle.HIGHEST_PROTOCOL)


def test_the_pure_loop_never_joins_the_reply_pickle() -> None:
    ran, log, _ = _run(False, [1, 2, 3])
    assert not log.encoded
    assert log.pickled_values() == pickle.dumps([1, 2, 3], protocol=pickle.HIGHEST_PROTOCOL)


@compiled
def test_encode_leaves_every_other_type_to_pickle() -> None:
    assert itemlog._built is not None
    for value in ("1", b"1", (1,), [1.0], 1j, type("Int", (int,), {})(3)):
        assert itemlog._built.encode(value) is None


@compiled
def test_the_compiled_clock_is_perf_counter() -> None:
    assert itemlog._built is not None
    before = time.perf_counter()
    reading = itemlog._built.clock()
    after = time.perf_counter()
    assert before <= reading <= after


_DURATIONS = st.lists(st.sampled_from([0.0, 1e-6, 2e-6, 0.5, 3.25]), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(_DURATIONS, st.floats(min_value=0.0, max_value=1e6))
def test_a_log_sums_up_its_runs_as_sum_runs_does(durations: list[float], origin: float) -> None:
    log = ItemLog(None, "s")
    starts = [origin + 4.0 * i for i in range(len(durations))]
    ends = [start + elapsed for start, elapsed in zip(starts, durations, strict=True)]
    pickled = [end + 0.25 for end in ends]
    for i, row in enumerate(zip(starts, ends, pickled, strict=True)):
        struct.pack_into("=4d", log.view, LOG_TABLE + 32 * i, *row, 1.0)
    log.count = len(durations)
    expected = sum_runs(starts, ends, pickled)
    summed = log.summed()
    assert summed is not None
    exact = ("ran", "start", "end", "lo", "hi", "recent", "slowest")
    assert [getattr(summed, f) for f in exact] == [getattr(expected, f) for f in exact]
    # Sums of differences (small numbers): equal to within rounding, however large the clock's readings.
    for field in ("total", "started_to_pickled", "ended_to_pickled"):
        assert getattr(summed, field) == pytest.approx(getattr(expected, field), rel=1e-12, abs=1e-12)
    assert summed.ended_to_pickled == pytest.approx(0.25 * len(durations), abs=1e-6)


def test_a_log_with_an_item_in_its_last_is_not_summed_up() -> None:
    ran, log, _ = _run(itemlog.COMPILED_LOG, list(range(LOG_SLOTS + 1)))
    assert ran == LOG_SLOTS + 1 and log.last is not None
    assert log.summed() is None  # the parent reads the rows, and the last item from the reply


def test_the_compiled_loop_is_used_with_the_compiled_engine_and_never_without_extensions() -> None:
    if os.environ.get("DYNAPIPELINE_TEST_MODE") == "compiled" and sys.platform == "linux":
        assert itemlog.COMPILED_LOG
    env = {**os.environ, "DYNAPIPELINE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", "from dynapipeline._transports.process import itemlog; "
                          "print(itemlog.COMPILED_LOG)"], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False"]
