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

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["CHUNK", "ChunkQueue", "QueueShutDown"]

CHUNK = 64  # the most items one chunk holds: a getter holds at most that many items it has not run yet


class QueueShutDown(Exception):
    """Raised by ``get()`` on a closed queue that has no item left."""


class ChunkQueue:
    """At most ``maxsize`` items, kept as chunks of up to ``cap`` items; closable (``shutdown``)."""

    __slots__ = ("cap", "chunks", "closed", "count", "getters", "maxsize", "putters")

    def __init__(self, maxsize: int, cap: int = CHUNK) -> None:
        self.maxsize = maxsize
        # At most half of maxsize: a worker holding a whole chunk then holds at most half as much again as
        # its queue (a step of large items on the loop: 4 + 2 of them at maxsize=4, not 4 + 4).
        self.cap = max(1, min(cap, maxsize // 2))
        self.chunks: deque[list[Any]] = deque()
        self.count = 0  # items held, in all chunks
        self.closed = False
        self.getters: deque[asyncio.Future[None]] = deque()
        self.putters: deque[asyncio.Future[None]] = deque()

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
        if chunks and len(tail := chunks[-1]) < self.cap:
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

    def add(self, entries: list[Any]) -> None:
        """Add ``entries`` (the queue owns the list from now on) as chunks of their own; the caller saw room."""
        cap = self.cap
        self.count += len(entries)
        if len(entries) <= cap:
            self.chunks.append(entries)
        else:
            self.chunks.extend([entries[at:at + cap] for at in range(0, len(entries), cap)])
        getters = self.getters
        if getters:
            for _ in range(min(len(entries), len(getters))):
                _wake(getters)

    async def put_many(self, entries: list[Any]) -> None:
        """``add`` as room allows: what fits goes in at once, the rest as room is made (never over ``maxsize``)."""
        at = 0
        while at < len(entries):
            room = self.maxsize - self.count
            if room <= 0:
                await self.wait_room()
                continue
            part = entries if not at and len(entries) <= room else entries[at:at + room]
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

    def get_nowait(self, limit: int) -> list[Any]:
        """Up to ``limit`` items, in order (at least one); ``QueueEmpty`` when there is none, closed or not."""
        if not self.count:
            raise asyncio.QueueEmpty
        chunks = self.chunks
        head = chunks[0]
        if len(head) > limit:
            taken = head[:limit]
            del head[:limit]
            head = taken
        else:
            chunks.popleft()
            while len(head) < limit and chunks:
                nxt = chunks[0]
                room = limit - len(head)
                if len(nxt) <= room:
                    head += chunks.popleft()
                else:
                    head += nxt[:room]
                    del nxt[:room]
        self.count -= len(head)
        putters = self.putters
        if putters:
            for _ in range(min(len(head), len(putters))):
                _wake(putters)
        return head

    async def get(self, limit: int) -> list[Any]:
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
