"""The closable queue between a stream's steps: closing ends the items without a marker in the queue."""

from __future__ import annotations

import asyncio

import pytest

from dynapipeline._model.queues import ClosableQueue, QueueShutDown


async def test_get_returns_what_is_left_then_raises_once_closed() -> None:
    queue: ClosableQueue[int] = ClosableQueue(3)
    queue.put_nowait(1)
    queue.put_nowait(2)
    queue.shutdown()
    assert [await queue.get(), queue.get_nowait()] == [1, 2]
    with pytest.raises(QueueShutDown):
        await queue.get()
    with pytest.raises((asyncio.QueueEmpty, QueueShutDown)):  # QueueShutDown on 3.13, QueueEmpty before
        queue.get_nowait()


async def test_closing_wakes_every_waiting_getter() -> None:
    queue: ClosableQueue[int] = ClosableQueue(1)
    getters = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait
    queue.put_nowait(7)
    queue.shutdown()
    results = await asyncio.gather(*getters, return_exceptions=True)
    assert results[0] == 7
    assert [type(r) for r in results[1:]] == [QueueShutDown, QueueShutDown]


async def test_a_cancelled_getter_passes_its_item_on() -> None:
    queue: ClosableQueue[int] = ClosableQueue(1)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(1)  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it takes the item: the second gets it
    assert await asyncio.wait_for(second, 30) == 1
    assert first.cancelled()
