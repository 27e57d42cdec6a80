"""Rate limits: a token bucket on starts, shared by whatever holds it, from any event loop in any thread.

``TokenBucket(rate, burst)`` lets ``burst`` starts go at once, then one every
``1 / rate`` seconds. A start reserves its moment under a ``threading.Lock``
(a generic cell rate algorithm: the bucket keeps the theoretical time of the next
start) and then sleeps until that moment on the caller's own loop, so loops in
several threads can share one bucket, waiters are served in the order they
asked, and nothing wakes them but their own timer. A waiter cancelled while it
sleeps gives its moment back when it was the last one reserved; one cancelled
behind others leaves its moment unused (the bucket errs towards fewer starts,
never more).

Who holds a bucket: ``SemaphoreExecutionStrategy(k, rate=...)`` (every group and
every stream step using the instance) and ``Step(..., rate=...)`` (that step's
items). ``paced`` and ``PacedItems`` put a stream step's starts through its
buckets: chosen once per step, so an unpaced step has no cost per item.

See docs/streams.md and docs/groups.md.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dynapipeline._model.checks import check_int, check_rate
from dynapipeline._model.strategy import ItemRunner

__all__ = ["PacedItems", "TokenBucket", "pacer", "paced"]

_clock = time.monotonic


class TokenBucket:
    """At most ``burst`` starts at once, then ``rate`` starts per second; thread-safe.

    A copy (``copy.deepcopy``, a pickle sent to another process) is a new, full
    bucket of the same rate: buckets are not shared across processes.
    """

    __slots__ = ("_lock", "_next", "_tau", "burst", "interval", "rate")

    def __init__(self, rate: float, burst: int = 1, *, owner: str = "TokenBucket") -> None:
        self.rate = check_rate(owner, rate)
        self.burst: int = check_int(owner, "burst", burst, least=1, most=sys.maxsize)
        self.interval = 1.0 / self.rate
        self._tau = (self.burst - 1) * self.interval  # how far ahead of the clock the next start may be reserved
        self._next = float("-inf")  # the theoretical time of the next start
        self._lock = threading.Lock()

    def reserve(self) -> tuple[float, float, float]:
        """Reserve the next start: (its moment, the bucket's next time before, after)."""
        now = _clock()
        with self._lock:
            before = self._next if self._next > now else now
            after = self._next = before + self.interval
        return max(now, before - self._tau), before, after

    async def take(self) -> None:
        """Wait (on the running loop) until a start is allowed, and count it."""
        start, before, after = self.reserve()
        if start <= _clock():
            return
        try:
            while (left := start - _clock()) > 0:
                await asyncio.sleep(left)  # a loop's timer may fire a little early: sleep the rest
        except BaseException:
            with self._lock:
                if self._next == after:  # nobody reserved after us: give our moment back
                    self._next = before
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        return (TokenBucket, (self.rate, self.burst))

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenBucket:
        return TokenBucket(self.rate, self.burst)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst})"


def pacer(*buckets: TokenBucket | None) -> Callable[[], Awaitable[None]] | None:
    """What a start awaits to take a token from each of ``buckets`` (None: there is none)."""
    held = [bucket for bucket in buckets if bucket is not None]
    if not held:
        return None
    if len(held) == 1:
        return held[0].take

    async def take_each() -> None:
        for bucket in held:
            await bucket.take()

    return take_each


def paced(pace: Callable[[], Awaitable[None]], run: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``run`` (a runner's ``run(args, kwargs)``) started only once ``pace()`` allows it."""

    async def paced_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        await pace()
        return await run(args, kwargs)

    return paced_run


class PacedItems(ItemRunner):
    """An ``ItemRunner`` whose calls take one item each, each started once ``pace()`` allows it.

    A rated step off the loop (threads, processes, Dask) sends its items one per
    call, so that each item's start is paced; ``width``, ``grows`` and
    ``releases`` are the inner runner's.
    """

    def __init__(self, inner: ItemRunner, pace: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.pace = pace
        self.chunk = 1
        if inner.grows:
            inner.width = None  # it narrows to make its chunks larger: one item a call gains nothing from that

    @property
    def width(self) -> int | None:
        return self.inner.width

    @width.setter
    def width(self, value: int | None) -> None:
        self.inner.width = value

    @property
    def grows(self) -> bool:
        return self.inner.grows

    @grows.setter
    def grows(self, value: bool) -> None:
        self.inner.grows = value

    @property
    def releases(self) -> bool:
        return self.inner.releases

    @releases.setter
    def releases(self, value: bool) -> None:
        self.inner.releases = value

    async def open(self) -> None:
        await self.inner.open()

    async def call(self, values: list[Any]) -> list[tuple[bool, Any]]:
        await self.pace()
        return await self.inner.call(values)

    async def aclose(self) -> None:
        await self.inner.aclose()
