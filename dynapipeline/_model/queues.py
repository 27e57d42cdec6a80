"""The queue between two steps of a stream: it holds items in chunks, and closes when its senders are done.

::

    senders ──put(entry)──► [ ChunkQueue: [e e e e] [e e] ... ≤ maxsize items ] ──get(limit)──► receivers
       │                      └ a put joins the last chunk while it has fewer than ``cap`` items
       └── the last one to finish calls shutdown()      └── get() returns what is left, then raises QueueShutDown

Invariants:

- ``maxsize`` counts items, not chunks: ``put`` waits while the queue holds
  ``maxsize`` items, and ``qsize()`` is a count of items.
- An item is in a chunk the moment it is put: a getter never waits for a chunk to
  fill. ``get(limit)`` returns at once (as a list) the items there are, up to
  ``limit``; it waits only when the queue is empty. A chunk a getter took is its
  own: later puts start a new one.
- As with anyio's memory streams, the queue closes when its last sender is done:
  whoever closes it puts nothing after (puts are not checked). After ``shutdown()``,
  blocked and later ``get()`` calls return the items left, then raise ``QueueShutDown``.
- Order: items leave in the order they were put.
- A chunk is a list of ``(index, value)`` pairs (at most ``cap``), or a ``Span``:
  values with consecutive indices, none failed, kept without a pair per item
  (what a sync source gives, and what a step whose items all succeeded at once
  emits), in chunks as large as getters take (``want``). A span iterates as
  pairs, so a getter that walks its chunk needs no other code; ``get`` never
  mixes the two kinds in one chunk, and cuts a chunk in place (``_take``).

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Any, overload

__all__ = ["CHUNK", "ChunkQueue", "QueueShutDown", "Span"]

CHUNK = 64  # the most pairs one chunk holds: a getter on the loop holds at most that many items not run yet


class QueueShutDown(Exception):
    """Raised by ``get()`` on a closed queue that has no item left."""


class Span:
    """Values with consecutive indices from ``start``, none of them failed: a chunk without a pair per item.

    It iterates as ``(index, value)`` pairs, like a chunk of pairs; ``pairs()`` makes it one.
    """

    __slots__ = ("start", "values")

    def __init__(self, start: int, values: list[Any]) -> None:
        self.start = start
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return enumerate(self.values, self.start)

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.values!r})"

    def pairs(self) -> list[tuple[int, Any]]:
        return list(enumerate(self.values, self.start))

    def cut(self, at: int, count: int) -> Span:
        """The ``count`` values from position ``at``."""
        return Span(self.start + at, self.values[at:at + count])


Chunk = list[Any] | Span  # what get() returns, and add() takes


class ChunkQueue:
    """At most ``maxsize`` items, kept as chunks of up to ``cap`` items; closable (``shutdown``)."""

    __slots__ = ("cap", "chunks", "closed", "count", "getters", "maxsize", "putters", "want")

    def __init__(self, maxsize: int, cap: int = CHUNK) -> None:
        self.maxsize = maxsize
        # At most half of maxsize: a worker on the loop holding a whole chunk then holds at most half as much
        # again as its queue (a step of large items on the loop: 4 + 2 of them at maxsize=4, not 4 + 4).
        self.cap = max(1, min(cap, maxsize // 2))
        self.chunks: deque[Chunk] = deque()
        self.count = 0  # items held, in all chunks
        self.closed = False
        self.getters: deque[asyncio.Future[None]] = deque()
        self.putters: deque[asyncio.Future[None]] = deque()
        self.want = self.cap  # the most items the last get asked for: a sender may add chunks that large

    def qsize(self) -> int:
        """Items held (not chunks)."""
        return self.count

    def empty(self) -> bool:
        return not self.count

    def full(self) -> bool:
        return self.count >= self.maxsize

    def put_nowait(self, entry: Any) -> None:
        """Add ``entry`` to the last chunk (a new one if it is full or taken); ``QueueFull`` if ``maxsize`` are held."""
        if self.count >= self.maxsize:
            raise asyncio.QueueFull
        self.count += 1
        chunks = self.chunks
        if chunks and len(tail := chunks[-1]) < self.cap and type(tail) is list:
            tail.append(entry)
        else:
            chunks.append([entry])
        if self.getters:
            _wake(self.getters)

    async def put(self, entry: Any) -> None:
        """``put_nowait``, waiting for room first."""
        if self.count >= self.maxsize:
            await self.wait_room()
        self.put_nowait(entry)

    def add(self, entries: Chunk) -> None:
        """Add ``entries`` (the queue owns them from now on) as chunks of their own; the caller saw room.

        Pairs go in chunks of ``cap``, a span in chunks as large as getters take (``want``),
        so that a getter that takes fewer items than a chunk holds seldom cuts one.
        """
        size = max(self.cap, self.want) if isinstance(entries, Span) else self.cap
        self.count += len(entries)
        if len(entries) <= size:
            self.chunks.append(entries)
        else:
            self.chunks.extend([_cut(entries, at, size) for at in range(0, len(entries), size)])
        getters = self.getters
        if getters:
            for _ in range(min(len(entries), len(getters))):
                _wake(getters)

    async def put_many(self, entries: Chunk) -> None:
        """``add`` as room allows: what fits goes in at once, the rest as room is made (never over ``maxsize``)."""
        at = 0
        while at < len(entries):
            room = self.maxsize - self.count
            if room <= 0:
                await self.wait_room()
                continue
            part = entries if not at and len(entries) <= room else _cut(entries, at, room)
            self.add(part)
            at += len(part)

    async def wait_room(self) -> None:
        """Wait until the queue holds fewer than ``maxsize`` items."""
        while self.count >= self.maxsize:
            putter = asyncio.get_running_loop().create_future()
            self.putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                _forget(self.putters, putter)
                if self.count < self.maxsize and not putter.cancelled():
                    _wake(self.putters)  # woken for room we will not use: pass the turn on
                raise

    def get_nowait(self, limit: int) -> Chunk:
        """Up to ``limit`` items, in order (at least one); ``QueueEmpty`` when there is none, closed or not.

        A span at the head comes out as a span (joined with the spans that follow it,
        when their indices go on); pairs as a list of pairs.
        """
        if not self.count:
            raise asyncio.QueueEmpty
        self.want = limit
        chunks = self.chunks
        head = chunks[0]
        if len(head) > limit:
            head = _take(head, limit)
        else:
            chunks.popleft()
            head = self._join_spans(head, limit) if isinstance(head, Span) else self._join_pairs(head, limit)
        self.count -= len(head)
        putters = self.putters
        if putters:
            for _ in range(min(len(head), len(putters))):
                _wake(putters)
        return head

    def _join_pairs(self, head: list[Any], limit: int) -> list[Any]:
        """``head`` and the chunks of pairs after it, up to ``limit`` pairs in all."""
        chunks = self.chunks
        while len(head) < limit and chunks and not isinstance(nxt := chunks[0], Span):
            room = limit - len(head)
            if len(nxt) <= room:
                head += nxt
                chunks.popleft()
            else:
                head += _take(nxt, room)
        return head

    def _join_spans(self, head: Span, limit: int) -> Span:
        """``head`` and the spans after it whose indices go on from it, up to ``limit`` values in all."""
        chunks = self.chunks
        while len(head) < limit and chunks and isinstance(nxt := chunks[0], Span) \
                and nxt.start == head.start + len(head.values):
            room = limit - len(head)
            if len(nxt) <= room:
                head.values += nxt.values
                chunks.popleft()
            else:
                head.values += _take(nxt, room).values
        return head

    async def get(self, limit: int) -> Chunk:
        """``get_nowait``, waiting for an item first; once the queue is closed and empty, ``QueueShutDown``."""
        while not self.count:
            if self.closed:
                raise QueueShutDown
            getter = asyncio.get_running_loop().create_future()
            self.getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                _forget(self.getters, getter)
                if self.count and not getter.cancelled():
                    _wake(self.getters)  # woken for an item we will not take: pass the turn on
                raise
        return self.get_nowait(limit)

    def shutdown(self) -> None:
        """Close the queue: getters take what is left, then get ``QueueShutDown``."""
        self.closed = True
        getters = self.getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)

    def clear(self) -> int:
        """Let go of every item held; how many there were."""
        count = self.count
        self.chunks.clear()
        self.count = 0
        putters = self.putters
        while putters:
            _wake(putters)
        return count


@overload
def _take(chunk: Span, count: int) -> Span: ...
@overload
def _take(chunk: list[Any], count: int) -> list[Any]: ...
def _take(chunk: Chunk, count: int) -> Chunk:
    """The first ``count`` items of ``chunk``, taken out of it: the rest stays in the same object.

    In place, so that whoever still refers to the chunk (its sender, until it sends
    the next one) keeps nothing a getter took alive, and cutting a long chunk costs
    no copy of its rest.
    """
    if isinstance(chunk, Span):
        taken = Span(chunk.start, chunk.values[:count])
        del chunk.values[:count]
        chunk.start += count
        return taken
    pairs = chunk[:count]
    del chunk[:count]
    return pairs


def _cut(chunk: Chunk, at: int, count: int) -> Chunk:
    """The ``count`` items of ``chunk`` from position ``at``, of the same kind."""
    return chunk.cut(at, count) if isinstance(chunk, Span) else chunk[at:at + count]


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the first waiter still waiting (dropping those that were cancelled)."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _forget(waiters: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    try:
        waiters.remove(waiter)
    except ValueError:
        pass  # a put, a get or shutdown() took it off the list already
