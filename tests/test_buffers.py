"""Pickles whose large buffers travel in shared memory, in one process: a ``LocalArena`` sends, a ``Mapped`` receives.

The receiver maps the arena's segments through a duplicate of their fds, as a worker or the
parent does with the fds passed over the pipe. The contract: numpy arrays and memoryviews
arrive as writable views on the sender's block, which the receiver releases only when its
last view is gone; large bytes arrive laid on their block (released once dropped: test_shared_bytes.py), a
bytearray is copied out once (the block is released at once);
small objects stay plain pickles.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import THRESHOLD, Link, in_shared_memory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dynapipeline._transports._remote import buffers
from dynapipeline._transports._remote.buffers import SHARED, unpack
from dynapipeline._transports._remote.shared_bytes import LAYS_BYTES


@pytest.fixture
def link() -> Iterator[Link]:
    pair = Link()
    try:
        yield pair
    finally:
        pair.close()


def same(a: Any, b: Any) -> bool:
    """Deep equality, numpy arrays compared bit for bit (NaNs included) with their dtype and shape."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and (a.dtype.hasobject and bool((a == b).all()) or a.tobytes() == b.tobytes()))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


# -- numpy arrays ---------------------------------------------------------------------------------
DTYPES = [np.bool_, np.int8, np.uint16, np.int64, np.float32, np.float64, np.complex128,
          np.dtype([("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S5")])]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name or str(d))
@pytest.mark.parametrize("order", ["C", "F"])
def test_an_array_arrives_equal_as_a_writable_view_on_the_senders_block(link: Link, dtype: Any, order: str) -> None:
    sent = np.asarray(np.arange(60 * 70).reshape(60, 70) % 7, order=order).astype(dtype, order=order)
    packed, got = link.round_trip(sent)
    [block] = packed.blocks
    assert packed.data[:1] == SHARED and block.size == sent.nbytes
    assert same(sent, got) and got.flags.writeable
    assert got.flags.f_contiguous == (order == "F") and got.flags.c_contiguous == (order == "C")
    assert in_shared_memory(got)  # its memory is the mapping's, not a copy
    # Written by the receiver, seen by the sender's mapping (transposed: F order's bytes as a flat C array).
    (got if order == "C" else got.T).view(np.uint8).reshape(-1)[:] = 0xAB
    assert link.sender_bytes(block) == b"\xab" * sent.nbytes


def test_a_non_contiguous_array_arrives_contiguous_with_its_values(link: Link) -> None:
    base = np.arange(200 * 300, dtype=np.float64).reshape(200, 300)
    for sent in (base[:, ::3], base[::2, ::-1], base.T[5:, :]):
        packed, got = link.round_trip(sent)
        assert len(packed.blocks) == 1 and packed.blocks[0].size == sent.nbytes
        assert same(np.ascontiguousarray(sent), np.ascontiguousarray(got))
        assert (got.flags.c_contiguous or got.flags.f_contiguous) and got.flags.writeable
        assert in_shared_memory(got)


def test_zero_dimensional_arrays_small_in_band_large_in_a_block(link: Link) -> None:
    packed, got = link.round_trip(np.array(2.5))
    assert packed.blocks == () and got.shape == () and got == 2.5
    sent = np.array(b"x" * 5000)  # dtype S5000: one 5000-byte element
    packed, got = link.round_trip(sent)
    assert len(packed.blocks) == 1 and got.shape == () and got.dtype == sent.dtype and got == sent
    assert in_shared_memory(got)


def test_object_arrays_fall_back_to_in_band(link: Link) -> None:
    sent = np.array([{"k": i} for i in range(500)], dtype=object)  # its pickle is larger than the threshold
    packed, got = link.round_trip(sent)
    assert packed.blocks == () and packed.data[:1] != SHARED and same(sent, got)


def test_a_read_only_array_arrives_read_only_as_pickle_gives_it(link: Link) -> None:
    """As pickle protocol 5 gives it (``READONLY_BUFFER``): what the sender could not change, nor can the receiver."""
    sent = np.arange(1000, dtype=np.float64)
    sent.flags.writeable = False
    packed, got = link.round_trip(sent)
    assert same(sent, got) and len(packed.blocks) == 1
    assert not got.flags.writeable
    assert pickle.loads(pickle.dumps(sent, protocol=5)).flags.writeable is False  # the same as without us


# -- bytes, bytearray, memoryview, PickleBuffer ---------------------------------------------------
def test_a_bytearray_is_copied_out_and_its_block_released_at_once(link: Link) -> None:
    sent = bytearray(b"\x02" * 5000)
    packed, got = link.round_trip(sent)
    assert len(packed.blocks) == 1 and type(got) is bytearray and got == sent
    assert link.released() == list(packed.blocks)  # nothing of ours holds the block: copied out
    assert link.arena.used == 0


def test_bytes_arrive_on_their_block_which_is_released_once_they_are_dropped(link: Link) -> None:
    """Laid on the block without a copy (``shared_bytes``; a copy where that layout is not CPython's)."""
    sent = b"\x01" * 5000
    packed, got = link.round_trip(sent)
    assert len(packed.blocks) == 1 and type(got) is bytes and got == sent
    if LAYS_BYTES:
        assert link.released() == [] and link.arena.used > 5000  # the object is the block's memory
        del got
    assert link.released() == list(packed.blocks)
    assert link.arena.used == 0


def test_where_bytes_cannot_be_laid_they_are_copied_out_and_their_block_released_at_once(
        link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynapipeline._transports._remote import buffers

    monkeypatch.setattr(buffers, "LAYS_BYTES", False)
    sent = bytes(range(256)) * 20
    packed, got = link.round_trip({"a": sent})
    assert got == {"a": sent} and type(got["a"]) is bytes
    assert link.released() == list(packed.blocks) and link.arena.used == 0


def test_memoryviews_keep_their_format_shape_and_read_only_flag(link: Link) -> None:
    table = np.arange(40 * 50, dtype=np.int32).reshape(40, 50)
    for sent in (memoryview(table), memoryview(bytearray(b"\x03" * 5000)), memoryview(b"\x04" * 5000),
                 memoryview(table).toreadonly(), memoryview(np.arange(3000, dtype=np.float64))):
        packed, got = link.round_trip(sent)
        assert len(packed.blocks) == 1
        assert type(got) is memoryview and got.format == sent.format and got.shape == sent.shape
        assert got.readonly == sent.readonly and got.tobytes() == sent.tobytes()
        assert in_shared_memory(got)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_non_contiguous_memoryview_arrives_contiguous_and_keeps_its_read_only_flag(link: Link,
                                                                                   readonly: bool) -> None:
    whole = memoryview(np.arange(3000, dtype=np.int16))
    sent = (whole.toreadonly() if readonly else whole)[::2]
    packed, got = link.round_trip(sent)
    assert len(packed.blocks) == 1 and got.format == "h" and got.shape == (1500,) and got.contiguous
    assert got.tolist() == sent.tolist()
    assert got.readonly == readonly


def test_a_pickle_buffer_arrives_as_a_byte_view_on_its_block(link: Link) -> None:
    """What pickle gives for a bare ``PickleBuffer`` is the receiver's buffer itself: a view of bytes, never the
    block's exporter (a ctypes array, which could not even be pickled back)."""
    for sent, readonly in ((pickle.PickleBuffer(b"\x05" * 5000), True),
                           (pickle.PickleBuffer(bytearray(b"\x06" * 5000)), False),
                           (pickle.PickleBuffer(np.ones((50, 25), dtype=np.float32)), False)):
        packed, got = link.round_trip(sent)
        assert len(packed.blocks) == 1
        assert type(got) is memoryview and got.format == "B" and got.ndim == 1
        assert got.nbytes == 5000 and bytes(got) == bytes(sent.raw()) and got.readonly == readonly
        assert in_shared_memory(got)


# -- containers -----------------------------------------------------------------------------------
def test_nested_containers_keep_every_buffer_and_their_kinds(link: Link) -> None:
    sent = {
        "arrays": [np.arange(2000, dtype=np.int64), (np.ones((30, 40), dtype=np.complex64, order="F"),)],
        "raw": {"bytes": b"\x07" * 3000, "bytearray": bytearray(b"\x08" * 2000), "small": b"tiny"},
        "view": memoryview(np.arange(600, dtype=np.float32).reshape(20, 30)),
        "plain": [1, "two", 3.0, None],
    }
    packed, got = link.round_trip(sent)
    assert len(packed.blocks) == 5
    view = got.pop("view")
    expected_view = sent.pop("view")
    assert same(sent, got)
    assert view.format == expected_view.format and view.shape == expected_view.shape
    assert view.tobytes() == expected_view.tobytes()


def test_the_same_array_twice_travels_once_and_arrives_as_one_object(link: Link) -> None:
    array = np.arange(3000, dtype=np.float64)
    packed, got = link.round_trip([array, {"again": array}, (array,)])
    assert len(packed.blocks) == 1
    assert got[0] is got[1]["again"] is got[2][0] and same(array, got[0])


def test_small_objects_are_plain_pickles_without_blocks(link: Link) -> None:
    for sent in (1, "text", b"x" * (THRESHOLD - 1), np.arange(10), [b"x" * 100] * 50, {"a": np.zeros(100)}):
        packed = link.send(sent)
        assert packed.blocks == () and packed.data[:1] != SHARED
        assert same(sent, pickle.loads(packed.data))
    assert link.arena.segments == {}  # nothing was allocated, not even a segment


def test_without_a_threshold_everything_is_a_plain_pickle(link: Link) -> None:
    sent = {"array": np.arange(100_000), "bytes": b"x" * 100_000, "view": memoryview(bytearray(100_000))}
    packed = link.send(sent, threshold=None)
    assert packed.blocks == () and packed.data[:1] != SHARED and link.arena.segments == {}
    got = unpack(packed.data, None)
    assert same(sent["array"], got["array"]) and got["bytes"] == sent["bytes"]


def test_a_shared_pickle_without_mappings_is_refused(link: Link) -> None:
    packed = link.send(np.arange(1000))
    with pytest.raises(pickle.UnpicklingError, match="no shared memory"):
        unpack(packed.data, None)


# -- block lifetime -------------------------------------------------------------------------------
def test_a_block_is_released_only_when_its_last_view_is_gone(link: Link) -> None:
    packed, got = link.round_trip(np.arange(4000, dtype=np.int32))
    assert link.arena.used >= 16000
    part = got[100:200]
    alias = memoryview(got)
    del got
    gc.collect()
    assert link.released() == [] and part[0] == 100
    del part
    assert link.released() == []
    alias.release()
    del alias
    assert link.released() == list(packed.blocks)
    assert link.arena.used == 0


def test_a_released_block_is_reused_and_live_views_are_left_alone(link: Link) -> None:
    first_packed, kept = link.round_trip(np.full(5000, 1, dtype=np.int64))
    packed, dropped = link.round_trip(np.full(5000, 2, dtype=np.int64))
    del dropped
    assert link.released() == list(packed.blocks)
    again, fresh = link.round_trip(np.full(5000, 3, dtype=np.int64))
    assert again.blocks == packed.blocks  # the freed range is taken again, not the kept one
    assert (kept == 1).all() and (fresh == 3).all()
    del kept, fresh
    assert sorted(link.released()) == sorted(first_packed.blocks + again.blocks)
    assert link.arena.used == 0


# -- property -------------------------------------------------------------------------------------
_arrays = hnp.arrays(
    dtype=st.sampled_from([np.dtype(d) for d in ("bool", "int8", "uint32", "int64", "float32", "complex128")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
)
_leaves = st.one_of(
    st.integers(), st.text(max_size=10), st.none(),
    st.binary(max_size=64), st.binary(min_size=THRESHOLD, max_size=3 * THRESHOLD),
    st.binary(min_size=THRESHOLD, max_size=2 * THRESHOLD).map(bytearray),
    _arrays,
)
_structures = st.recursive(
    _leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.tuples(children, children),
                               st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_structures)
def test_any_structure_of_small_and_large_buffers_round_trips_and_frees_its_blocks(obj: Any) -> None:
    pair = Link()
    try:
        packed, got = pair.round_trip(obj)
        assert same(obj, got)
        assert (packed.data[:1] == SHARED) == bool(packed.blocks)
        del got
        gc.collect()
        assert sorted(pair.released()) == sorted(set(packed.blocks))
        assert pair.arena.used == 0
    finally:
        pair.close()


@pytest.mark.parametrize("large", [[bytes([i]) * (THRESHOLD // 2) for i in range(8)], memoryview(b"m" * THRESHOLD * 4)],
                         ids=["large-in-band", "memoryview"])
def test_an_object_that_needs_the_hooks_is_pickled_once_more_not_twice(link: Link, large: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast pass (``small``) found it large: the next pass is the one with the hooks, not the fast one again.
    passes: list[str] = []
    dump = buffers._Packer.dump

    def counted(self: Any, cls: type, obj: Any, options: dict[str, Any]) -> bytes:
        passes.append(cls.__name__)
        return dump(self, cls, obj, options)

    monkeypatch.setattr(buffers._Packer, "dump", counted)
    _, got = link.round_trip(["first", large])
    assert passes == ["SharedPickler"]
    assert got == ["first", large]
