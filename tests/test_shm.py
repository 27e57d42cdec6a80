"""Shared memory of the process transport: an arena's allocator and segments, the mappings of another's, fd passing.

Segments are anonymous memfds (nothing in ``/dev/shm``); closing an arena closes every fd it
opened, and a receiver's mapping keeps its memory readable after the sender let go.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Iterator

import pytest
from helpers import memfds

from dynapipeline._transports._remote.buffers import Block
from dynapipeline._transports.process.shm import (
    ALIGN,
    MAPPED,
    LocalArena,
    Mapped,
    segment_fds,
    send_segments,
    take_segments,
)

SEGMENT = 1 << 20


@pytest.fixture
def arena() -> Iterator[LocalArena]:
    before = len(memfds())
    made = LocalArena(min_segment=SEGMENT)
    try:
        yield made
    finally:
        made.close()
    assert len(memfds()) == before


def test_blocks_start_aligned_and_used_counts_their_rounded_sizes(arena: LocalArena) -> None:
    blocks = [arena.alloc(size)[0] for size in (1, 63, 64, 65, 1000, 0)]
    assert all(block.offset % ALIGN == 0 for block in blocks)
    assert [block.size for block in blocks] == [1, 63, 64, 65, 1000, 0]
    assert arena.used == 64 + 64 + 64 + 128 + 1024 + 64  # an empty block still takes one slot
    assert len({block.offset for block in blocks}) == len(blocks)


def test_a_view_covers_exactly_its_block(arena: LocalArena) -> None:
    first, view = arena.alloc(100)
    second, other = arena.alloc(100)
    assert len(view) == 100 and not view.readonly
    view[:] = b"\x01" * 100
    other[:] = b"\x02" * 100
    segment = arena.segments[first.segment]
    assert segment.mm[first.offset:first.offset + 100] == b"\x01" * 100
    assert segment.mm[second.offset:second.offset + 100] == b"\x02" * 100
    view.release()
    other.release()


def test_a_freed_block_is_reused_first_fit(arena: LocalArena) -> None:
    a, b, c = (arena.alloc(1000)[0] for _ in range(3))
    arena.free([b])
    assert arena.used == 2 * 1024
    again, _ = arena.alloc(900)
    assert (again.segment, again.offset) == (b.segment, b.offset)
    bigger, _ = arena.alloc(2000)  # does not fit b's range: after c
    assert bigger.offset > c.offset
    assert len(arena.segments) == 1


def test_freed_neighbours_merge_into_one_range(arena: LocalArena) -> None:
    blocks = [arena.alloc(SEGMENT // 4)[0] for _ in range(4)]
    assert len(arena.segments) == 1 and arena.used == SEGMENT
    [segment] = arena.segments.values()
    assert segment.free_ranges == []
    arena.free([blocks[1]])
    arena.free([blocks[3]])
    arena.free([blocks[2]])  # joins both neighbours
    assert segment.free_ranges == [[SEGMENT // 4, SEGMENT]]
    arena.free([blocks[0]])
    assert segment.free_ranges == [[0, SEGMENT]] and arena.used == 0
    whole, _ = arena.alloc(SEGMENT)  # fits only because the ranges merged
    assert (whole.segment, whole.offset) == (segment.serial, 0) and len(arena.segments) == 1


def test_a_block_larger_than_a_segment_gets_a_new_segment_of_its_size(arena: LocalArena) -> None:
    small, _ = arena.alloc(100)
    big, view = arena.alloc(3 * SEGMENT + 1)
    assert big.segment != small.segment and big.offset == 0 and len(view) == 3 * SEGMENT + 1
    assert arena.segments[big.segment].size == 4 * SEGMENT  # the next power of two
    arena.free([big])
    again, _ = arena.alloc(2 * SEGMENT)  # the freed segment is kept for reuse
    assert again.segment == big.segment and len(arena.segments) == 2
    view.release()


def test_free_ignores_blocks_of_other_owners_and_unknown_segments(arena: LocalArena) -> None:
    block, _ = arena.alloc(100)
    arena.free([block._replace(owner=block.owner + 1), Block(arena.pid, 10**9, 0, 100)])
    assert arena.used == ALIGN * 2
    arena.free([block])
    assert arena.used == 0


def test_close_closes_every_segment_fd_and_refuses_more_blocks() -> None:
    before = len(memfds())
    arena = LocalArena(min_segment=SEGMENT)
    arena.alloc(100)
    arena.alloc(2 * SEGMENT)
    assert len(memfds()) > before
    arena.close()
    assert len(memfds()) == before and arena.segments == {}
    with pytest.raises(RuntimeError, match="closed"):
        arena.alloc(1)


def test_close_with_a_live_view_keeps_that_view_readable() -> None:
    before = len(memfds())
    arena = LocalArena(min_segment=SEGMENT)
    _, view = arena.alloc(10)
    view[:] = b"0123456789"
    arena.close()  # the mapping (and the fd it holds) stays while the view lives
    assert bytes(view) == b"0123456789"
    view.release()
    assert len(memfds()) == before


def test_a_receivers_mapping_outlives_the_senders_arena() -> None:
    before = len(memfds())
    arena = LocalArena(min_segment=SEGMENT)
    mapped = Mapped()
    block, view = arena.alloc(5)
    view[:] = b"hello"
    view.release()
    [(serial, fd)] = segment_fds(arena, [block], set())
    mapped.add(arena.pid, serial, os.dup(fd))
    exporter = mapped.attach(block)
    arena.close()
    mapped.forget(arena.pid)  # the sender is gone: its mappings go, the live exporter keeps its own
    assert bytes(exporter) == b"hello"
    assert mapped.released(arena.pid) == []
    del exporter
    assert len(memfds()) == before


def test_an_attached_block_is_released_once_its_exporter_dies() -> None:
    with_arena = LocalArena(min_segment=SEGMENT)
    mapped = Mapped()
    try:
        first, _ = with_arena.alloc(100)
        second, _ = with_arena.alloc(100)
        mapped.add(with_arena.pid, first.segment, os.dup(with_arena.segments[first.segment].fd))
        one, two = mapped.attach(first), mapped.attach(second)
        assert mapped.released(with_arena.pid) == []
        del two
        assert mapped.released(with_arena.pid) == [second]
        assert mapped.released(with_arena.pid) == []  # told once
        del one
        assert mapped.released(with_arena.pid) == [first]
    finally:
        mapped.clear()
        with_arena.close()


def test_segment_fds_names_each_segment_once_per_receiver(arena: LocalArena) -> None:
    a, _ = arena.alloc(100)
    b, _ = arena.alloc(2 * SEGMENT)
    known: set[int] = set()
    assert [serial for serial, _ in segment_fds(arena, [a, b, a], known)] == [a.segment, b.segment]
    assert known == {a.segment, b.segment}
    assert segment_fds(arena, [a, b], known) == []
    assert [serial for serial, _ in segment_fds(arena, [b], set())] == [b.segment]  # another receiver


def test_segments_pass_over_the_pipe_and_map_on_the_other_side(arena: LocalArena) -> None:
    here, there = multiprocessing.Pipe()
    here_sock = socket.socket(fileno=os.dup(here.fileno()))
    there_sock = socket.socket(fileno=os.dup(there.fileno()))
    owner = arena.pid
    try:
        block, view = arena.alloc(11)
        view[:] = b"through fds"
        view.release()
        send_segments(here, here_sock, owner, segment_fds(arena, [block], set()))
        take_segments(there_sock, there.recv_bytes())
        exporter = MAPPED.attach(block)
        assert bytes(exporter) == b"through fds"
        del exporter
        assert MAPPED.released(owner) == [block]
    finally:
        MAPPED.forget(owner)  # the fixture then checks that no memfd is left open
        for closable in (here_sock, there_sock, here, there):
            closable.close()


def test_nothing_appears_in_dev_shm(arena: LocalArena) -> None:
    before = set(os.listdir("/dev/shm"))
    arena.alloc(100)
    arena.alloc(3 * SEGMENT)
    assert set(os.listdir("/dev/shm")) - before == set()
