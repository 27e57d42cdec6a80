"""The queue between a stream's steps: items in chunks, ``maxsize`` counting items, closing ends the items."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from dynapipeline._model.queues import ChunkQueue, QueueShutDown, Span


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


def _span(chunk: object) -> tuple[int, list[object]]:
    assert type(chunk) is Span, chunk
    return chunk.start, chunk.values


async def test_a_span_leaves_as_a_span_joined_with_the_spans_whose_indices_go_on() -> None:
    queue = ChunkQueue(100, cap=4)
    queue.add(Span(0, [10, 11, 12]))
    queue.add(Span(3, [13, 14]))
    queue.add(Span(9, [19]))  # its indices do not go on from 4
    taken = queue.get_nowait(10)
    assert _span(taken) == (0, [10, 11, 12, 13, 14])
    assert list(taken) == [(0, 10), (1, 11), (2, 12), (3, 13), (4, 14)]  # it iterates as pairs
    assert _span(queue.get_nowait(10)) == (9, [19])
    assert queue.qsize() == 0


async def test_a_span_is_cut_at_the_limit_and_never_joined_with_pairs() -> None:
    queue = ChunkQueue(100, cap=4)
    queue.add(Span(0, list(range(6))))
    queue.put_nowait((6, "x"))  # after a span, a pair starts a chunk of its own
    queue.put_nowait((7, "y"))
    assert _span(queue.get_nowait(4)) == (0, [0, 1, 2, 3])
    assert _span(queue.get_nowait(10)) == (4, [4, 5])
    assert queue.get_nowait(10) == [(6, "x"), (7, "y")]
    assert queue.qsize() == 0


async def test_pairs_are_never_joined_with_a_span_after_them() -> None:
    queue = ChunkQueue(100, cap=4)
    queue.put_nowait((0, "a"))
    queue.add(Span(1, ["b", "c"]))
    assert queue.get_nowait(10) == [(0, "a")]
    assert _span(queue.get_nowait(10)) == (1, ["b", "c"])


async def test_put_many_adds_a_span_as_room_allows() -> None:
    queue = ChunkQueue(3, cap=2)
    putter = asyncio.ensure_future(queue.put_many(Span(10, list("abcde"))))
    await asyncio.sleep(0)
    assert queue.qsize() == 3 and not putter.done()  # maxsize still counts items
    assert _span(queue.get_nowait(3)) == (10, list("abc"))
    await asyncio.wait_for(putter, 30)
    assert _span(queue.get_nowait(3)) == (13, list("de"))


async def test_a_get_says_how_many_items_its_getter_wants() -> None:
    queue = ChunkQueue(100, cap=4)
    assert queue.want == 4
    queue.put_nowait(1)
    queue.get_nowait(50)
    assert queue.want == 50  # the feeder adds spans that large


class _Item:
    """Something a weak reference can watch."""


@pytest.mark.parametrize("kind", ["span", "pairs"])
async def test_what_a_getter_took_is_not_kept_alive_by_the_chunk_it_was_cut_from(kind: str) -> None:
    """Its sender still refers to a chunk it put (until it sends the next one): the cut is made in place."""
    items = [_Item() for _ in range(3)]
    watch = weakref.ref(items[0])
    queue = ChunkQueue(100, cap=4)
    sent: list[object] | Span = Span(0, items) if kind == "span" else list(enumerate(items))
    queue.add(sent)  # the sender's ``sent`` stays
    del items
    taken = queue.get_nowait(1)
    assert len(taken) == 1 and queue.qsize() == 2
    del taken  # the getter lets go of it (a step does once a large item is shipped)
    gc.collect()
    assert watch() is None
    rest = queue.get_nowait(10)
    assert [index for index, _ in rest] == [1, 2]


async def test_a_long_span_goes_in_as_chunks_as_large_as_getters_take() -> None:
    queue = ChunkQueue(1000, cap=4)
    queue.add(Span(0, list(range(10))))
    assert [len(chunk) for chunk in queue.chunks] == [4, 4, 2]  # before any get: the cap
    assert _span(queue.get_nowait(6)) == (0, list(range(6)))  # spans that go on are joined
    queue.get_nowait(10)
    queue.add(Span(10, list(range(10, 23))))
    assert [len(chunk) for chunk in queue.chunks] == [10, 3]  # what the last get asked for
