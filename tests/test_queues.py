"""The queue between a stream's steps: items in chunks, ``maxsize`` counting items, closing ends the items."""

from __future__ import annotations

import asyncio

import pytest

from dynapipeline._model.queues import ChunkQueue, QueueShutDown


async def test_get_returns_what_is_left_then_raises_once_closed() -> None:
    queue = ChunkQueue(3)
    queue.put_nowait(1)
    queue.put_nowait(2)
    queue.shutdown()
    assert await queue.get(1) == [1]
    assert queue.get_nowait(5) == [2]
    with pytest.raises(QueueShutDown):
        await queue.get(5)
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait(5)


async def test_items_gather_in_chunks_up_to_the_cap_and_leave_in_order() -> None:
    queue = ChunkQueue(100, cap=4)
    for i in range(10):
        queue.put_nowait(i)
    assert [len(chunk) for chunk in queue.chunks] == [4, 4, 2]
    assert queue.get_nowait(4) == [0, 1, 2, 3]
    assert queue.get_nowait(3) == [4, 5, 6]  # a chunk is split when the getter wants fewer
    assert queue.get_nowait(10) == [7, 8, 9]  # and taken across chunks when it wants more
    assert queue.qsize() == 0


async def test_a_put_after_a_get_starts_a_new_chunk() -> None:
    queue = ChunkQueue(100, cap=4)
    queue.put_nowait(0)
    taken = queue.get_nowait(4)
    queue.put_nowait(1)
    assert taken == [0]  # the chunk a getter took is its own
    assert queue.get_nowait(4) == [1]


async def test_maxsize_counts_items_not_chunks() -> None:
    queue = ChunkQueue(5, cap=2)
    for i in range(5):
        queue.put_nowait(i)
    assert queue.full()
    assert queue.qsize() == 5
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(5)
    putter = asyncio.ensure_future(queue.put(5))
    await asyncio.sleep(0)
    assert not putter.done()  # waits for room ...
    assert queue.get_nowait(1) == [0]
    await asyncio.wait_for(putter, 30)  # ... and goes in once an item left
    assert queue.qsize() == 5


async def test_a_getter_takes_the_first_item_without_waiting_for_a_chunk_to_fill() -> None:
    queue = ChunkQueue(100, cap=50)
    getter = asyncio.ensure_future(queue.get(50))
    await asyncio.sleep(0)
    queue.put_nowait("first")
    assert await asyncio.wait_for(getter, 30) == ["first"]


async def test_closing_wakes_every_waiting_getter() -> None:
    queue = ChunkQueue(1)
    getters = [asyncio.ensure_future(queue.get(1)) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait
    queue.put_nowait(7)
    queue.shutdown()
    results = await asyncio.gather(*getters, return_exceptions=True)
    assert results[0] == [7]
    assert [type(r) for r in results[1:]] == [QueueShutDown, QueueShutDown]


async def test_a_cancelled_getter_passes_its_item_on() -> None:
    queue = ChunkQueue(1)
    first = asyncio.ensure_future(queue.get(1))
    second = asyncio.ensure_future(queue.get(1))
    await asyncio.sleep(0)
    queue.put_nowait(1)  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it takes the item: the second gets it
    assert await asyncio.wait_for(second, 30) == [1]
    assert first.cancelled()


async def test_a_cancelled_putter_passes_the_room_on() -> None:
    queue = ChunkQueue(1)
    queue.put_nowait(0)
    first = asyncio.ensure_future(queue.put(1))
    second = asyncio.ensure_future(queue.put(2))
    await asyncio.sleep(0)
    queue.get_nowait(1)  # wakes the first putter ...
    first.cancel()  # ... which is cancelled before it puts: the second puts instead
    await asyncio.wait_for(second, 30)
    assert first.cancelled()
    assert queue.get_nowait(1) == [2]


async def test_clear_lets_go_of_the_items_and_counts_them() -> None:
    queue = ChunkQueue(3, cap=2)
    for i in range(3):
        queue.put_nowait(i)
    putter = asyncio.ensure_future(queue.put(3))
    await asyncio.sleep(0)
    assert queue.clear() == 3
    await asyncio.wait_for(putter, 30)  # the room it waited for is there
    assert queue.qsize() == 1
