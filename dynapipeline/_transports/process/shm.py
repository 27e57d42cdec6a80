"""Shared memory between the parent and its worker processes: each side's arena, the other side's mappings.

::

    sender                                                  receiver
    Arena.alloc ─► Block (segment, offset, size) ── pipe ──► Mapped.attach ─► exporter (ctypes array on the mapping)
      ▲  segment fds: sent once per receiver, before the first    │  the receiver's objects (numpy views) hold it
      │  message that uses them (``send_segments``, SCM_RIGHTS)  ▼
    Arena.free ◄── pipe: ``released`` blocks, with the next message ◄── its last holder is gone (a weakref callback)

Invariants:

- Segments are anonymous (``memfd_create``, else a ``shm_open`` name unlinked at
  once): nothing is ever listed in ``/dev/shm``, and the kernel frees a segment when
  the last process that maps it or holds its fd is gone. So a SIGKILL of a worker,
  of the parent or of both leaks nothing, with no resource tracker involved.
- A block is written once by its owner, then belongs to the receiver until the
  receiver releases it; the owner reuses it only then (or when the receiver died).
- An arena keeps its segments for reuse while its owner lives (a pool: until it
  closes); it grows by a new segment when no free range fits.

See docs/threads-and-processes.md.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import socket
import threading
import weakref
from collections import deque
from typing import Any

from dynapipeline._transports._remote.buffers import Block
from dynapipeline._transports._remote.messages import SEGMENTS, Segments
from dynapipeline._transports._remote.shared_bytes import let_go

__all__ = ["ALIGN", "MAPPED", "MIN_SEGMENT", "LocalArena", "Mapped", "segment_fds", "send_segments", "take_segments"]

logger = logging.getLogger("dynapipeline")

ALIGN = 64  # numpy's and SIMD's alignment for the start of every block
MIN_SEGMENT = 64 << 20  # pages are only allocated when touched: a large segment costs nothing until used
_serials = iter(range(1, 1 << 62))


def _anonymous_fd(size: int) -> int:
    """A file descriptor of ``size`` bytes of shared memory that no path names."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("dynapipeline", os.MFD_CLOEXEC)
    else:  # pragma: no cover - macOS: a POSIX name, unlinked before anyone else can see it
        import _posixshmem  # type: ignore[import-not-found]

        name = f"/dp-{os.getpid()}-{next(_serials)}"
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        _posixshmem.shm_unlink(name)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class _Segment:
    """One shared-memory segment of an arena, and its free ranges (first fit, merged on free)."""

    __slots__ = ("serial", "fd", "mm", "size", "free_ranges", "used")

    def __init__(self, size: int) -> None:
        self.serial = next(_serials)
        self.fd = _anonymous_fd(size)
        self.mm = mmap.mmap(self.fd, size)
        self.size = size
        self.free_ranges: list[list[int]] = [[0, size]]  # [start, end), sorted, never adjacent
        self.used = 0

    def alloc(self, size: int) -> int | None:
        need = -(-size // ALIGN) * ALIGN or ALIGN
        for index, (start, end) in enumerate(self.free_ranges):
            if end - start >= need:
                if end - start == need:
                    del self.free_ranges[index]
                else:
                    self.free_ranges[index][0] = start + need
                self.used += need
                return start
        return None

    def release(self, offset: int, size: int) -> None:
        need = -(-size // ALIGN) * ALIGN or ALIGN
        end = offset + need
        ranges = self.free_ranges
        index = 0
        while index < len(ranges) and ranges[index][0] < offset:
            index += 1
        ranges.insert(index, [offset, end])
        if index + 1 < len(ranges) and ranges[index + 1][0] == end:
            ranges[index][1] = ranges[index + 1][1]
            del ranges[index + 1]
        if index > 0 and ranges[index - 1][1] == offset:
            ranges[index - 1][1] = ranges[index][1]
            del ranges[index]
        self.used -= need

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a view of it is still alive here: the mapping goes with its last view
            logger.debug("shared-memory segment %s: still viewed in this process at close", self.serial)
        os.close(self.fd)


class LocalArena:
    """This process's shared memory for what it sends: segments, blocks in them, their reuse.

    Thread-safe (a pool is used from one loop, but releases arrive from any thread).
    """

    def __init__(self, min_segment: int = MIN_SEGMENT) -> None:
        self.pid = os.getpid()
        self.min_segment = min_segment
        self.segments: dict[int, _Segment] = {}
        self.closed = False
        self._lock = threading.Lock()

    def alloc(self, size: int) -> tuple[Block, memoryview]:
        with self._lock:
            if self.closed:
                raise RuntimeError("shared memory arena closed")
            for segment in self.segments.values():
                offset = segment.alloc(size)
                if offset is not None:
                    break
            else:
                segment = _Segment(max(self.min_segment, 1 << max(size - 1, 1).bit_length()))
                self.segments[segment.serial] = segment
                offset = segment.alloc(size)
                assert offset is not None
            view = memoryview(segment.mm)[offset:offset + size]
        return Block(self.pid, segment.serial, offset, size), view

    def free(self, blocks: list[Block]) -> None:
        with self._lock:
            for block in blocks:
                segment = self.segments.get(block.segment)
                if segment is not None and block.owner == self.pid:
                    segment.release(block.offset, block.size)

    @property
    def used(self) -> int:
        """Bytes in blocks not released yet."""
        return sum(s.used for s in self.segments.values())

    def close(self) -> None:
        """Unmap and close every segment (a receiver that maps one keeps it alive until it is gone too)."""
        with self._lock:
            self.closed = True
            segments, self.segments = list(self.segments.values()), {}
        for segment in segments:
            segment.close()


_NOTHING: list[Block] = []  # what ``released`` returns when nothing was released (never appended to)


class Mapped:
    """The segments of other processes that this process maps, and which of their blocks it has released.

    ``attach(block)`` gives a ctypes array on the block's memory: whatever is rebuilt on
    it (a numpy array, a memoryview, any view of those) holds it, so when its weakref
    dies the block is free again, and ``released(owner)`` says so to its owner.
    """

    def __init__(self) -> None:
        self.maps: dict[tuple[int, int], mmap.mmap] = {}
        # Per owner, the blocks released since last asked. A deque: the weakref callbacks append from
        # whatever thread drops the last view, while the loop's thread takes them (both thread-safe).
        self._released: dict[int, deque[Block]] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}

    def add(self, owner: int, serial: int, fd: int) -> None:
        """Map a segment whose fd arrived from ``owner`` (the fd is closed: the mapping keeps the memory)."""
        try:
            self.maps[(owner, serial)] = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._released.setdefault(owner, deque())

    def attach(self, block: Block) -> Any:
        mm = self.maps[(block.owner, block.segment)]
        exporter = (ctypes.c_char * block.size).from_buffer(mm, block.offset)
        key = id(exporter)
        released = self._released
        refs = self._refs

        def gone(_: Any, block: Block = block, key: int = key) -> None:
            refs.pop(key, None)
            queue = released.get(block.owner)
            if queue is not None:  # else its owner is gone: nobody to tell
                queue.append(block)

        refs[key] = weakref.ref(exporter, gone)
        return exporter

    def released(self, owner: int) -> list[Block]:
        """The blocks of ``owner`` released since last asked (they go back with the next message to it)."""
        let_go()  # received bytes nobody holds any more: their blocks too
        queue = self._released.get(owner)
        if not queue:
            return _NOTHING
        out: list[Block] = []
        while queue:
            out.append(queue.popleft())
        return out

    def forget(self, owner: int) -> None:
        """``owner`` is gone: drop its mappings (views still alive here keep theirs) and what was to be told to it."""
        self._released.pop(owner, None)
        for key in [k for k in self.maps if k[0] == owner]:
            del self.maps[key]

    def clear(self) -> None:
        """Forget every owner (``forget`` each)."""
        self._released.clear()
        self.maps.clear()


MAPPED = Mapped()  # this process's mappings of other processes' segments (keyed by owner pid: one is enough)


def segment_fds(arena: LocalArena, blocks: list[Block], known: set[int]) -> list[tuple[int, int]]:
    """(serial, fd) of the segments ``blocks`` use that a receiver, which has ``known``, lacks; recorded as known."""
    out: list[tuple[int, int]] = []
    for block in blocks:
        serial = block.segment
        if serial not in known:
            segment = arena.segments.get(serial)
            if segment is not None:
                known.add(serial)
                out.append((serial, segment.fd))
    return out


def send_segments(conn: Any, sock: socket.socket, owner: int, fds: list[tuple[int, int]]) -> None:
    """Announce segments on the pipe (a ``Segments`` message), then pass their fds over its Unix socket."""
    conn.send_bytes(SEGMENTS + pickle.dumps(Segments(owner=owner, serials=[serial for serial, _ in fds]),
                                            protocol=pickle.HIGHEST_PROTOCOL))
    socket.send_fds(sock, [b"F"], [fd for _, fd in fds])


def take_segments(sock: socket.socket, message: bytes) -> None:
    """Map the segments a ``Segments`` message announces; their fds are next on the socket."""
    segments: Segments = pickle.loads(message[1:])
    count = len(segments.serials)
    _, fds, _, _ = socket.recv_fds(sock, 1, count)
    if len(fds) != count:
        for fd in fds:
            os.close(fd)
        raise OSError(f"expected {count} shared-memory segment(s), received {len(fds)}")
    for serial, fd in zip(segments.serials, fds, strict=True):
        MAPPED.add(segments.owner, serial, fd)
