"""How a group's batch is pickled for a worker: one pass when nothing in it is large, the fast path's output."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any

import pytest
from helpers import REDUCED, THRESHOLD, Counted, Link

from dynapipeline import Stage
from dynapipeline._transports._remote import pickling
from dynapipeline._transports._remote.pickling import ClassRegistry, pack_batch

Pair = namedtuple("Pair", "a b")


class Holds(Stage):
    what: Any = None
    more: Any = None

    def execute(self) -> Any:
        return self.what


@pytest.fixture
def link() -> Any:
    pair = Link()
    try:
        yield pair
    finally:
        pair.close()


def _passes(components: list[Any], link: Link) -> int:
    REDUCED.clear()
    packed, _ = pack_batch(components, (), {}, THRESHOLD, link.arena)
    link.arena.free(list(packed.blocks))
    return len(REDUCED)


@pytest.mark.parametrize("large", [None, b"x" * (THRESHOLD * 4), bytearray(THRESHOLD * 4),
                                   memoryview(b"y" * (THRESHOLD * 4))],
                         ids=["small", "bytes", "bytearray", "memoryview"])
def test_a_batch_is_pickled_once_when_small_and_at_most_twice_with_a_large_buffer(large: Any, link: Link) -> None:
    passes = _passes([Holds(name="h", what=Counted(), more=large)], link)
    assert passes == (1 if large is None else 2)


def _local_things() -> tuple[type, Any]:
    class Local(Stage):
        table: dict[str, Any] = {}

        def execute(self) -> Any:
            return self.table

    return Local, lambda x: x + 1


def test_the_fast_path_pickles_byte_for_byte_as_the_full_reducer(monkeypatch: pytest.MonkeyPatch) -> None:
    local, function = _local_things()
    stage = local(name="s", table={"t": (1, [2, {3}], frozenset({4})), "p": Pair(local, [function]),
                                   "o": OrderedDict(a=local), "classes": [local, Holds, dict]})
    args = ((1, 2), [local], {"k": Pair(1, 2)})
    holds = Holds(name="h", what=[function])  # once: a stage's key (which workers cache it by) is its own

    def pickled() -> tuple[bytes, set[int]]:
        registry = ClassRegistry()  # ids start at a random base: compare within one registry
        registry._next = 1 << 16
        packed, used = pack_batch([stage, holds], args, {"kw": (local,)}, None, None,
                                  registry)
        return packed.data, used

    fast = pickled()
    monkeypatch.setattr(pickling, "_AS_PICKLE_DOES", frozenset())
    monkeypatch.setattr(pickling, "_REBUILDERS", frozenset())
    assert pickled() == fast
    assert fast[1]  # the local class went by id: the set of ids the worker needs is filled on the fast path too
