"""Contexts: the shared mapping, its asyncio lock, and the protected (lockable) kind."""

from __future__ import annotations

import asyncio

import pytest

from dynapipeline.contexts import AsyncLockableContext, Context, ProtectedContext
from dynapipeline.errors import ConfigurationError, ContextLockedError


async def test_async_lockable_context_serialises_read_modify_write():
    ctx = AsyncLockableContext({"n": 0})

    async def bump():
        async with ctx as c:
            value = c["n"]
            await asyncio.sleep(0)  # without the lock, another task would read the same value
            c["n"] = value + 1

    await asyncio.gather(*(bump() for _ in range(50)))
    assert ctx["n"] == 50


def test_async_lockable_context_works_across_event_loops():
    ctx = AsyncLockableContext({"n": 0})

    async def contended():
        async def bump():
            async with ctx:
                await asyncio.sleep(0)
                ctx["n"] += 1

        await asyncio.gather(bump(), bump())

    asyncio.run(contended())
    asyncio.run(contended())
    assert ctx["n"] == 4


def test_context_is_a_mapping():
    ctx = ProtectedContext({"a": 1})
    ctx["b"] = 2
    assert dict(ctx) == {"a": 1, "b": 2} and len(ctx) == 2 and "a" in ctx
    del ctx["a"]
    assert list(ctx) == ["b"]


def test_protected_context_rejects_writes_while_locked_and_names_the_key():
    ctx = ProtectedContext({"a": 1})
    ctx.lock("pipeline 'p'")
    assert ctx.locked and ctx["a"] == 1
    with pytest.raises(ContextLockedError, match="'a'.*pipeline 'p'"):
        ctx["a"] = 2
    with pytest.raises(ContextLockedError):
        del ctx["a"]
    ctx.unlock()
    ctx["a"] = 3
    assert ctx["a"] == 3


def test_snapshot_is_a_locked_copy():
    ctx = AsyncLockableContext({"a": [1]})
    snap = ctx.snapshot()
    assert snap["a"] == [1]
    with pytest.raises(ContextLockedError):
        snap["a"] = 2
    ctx["a"] = 5
    assert snap["a"] == [1]


@pytest.mark.parametrize("cls", [Context, AsyncLockableContext, ProtectedContext])
@pytest.mark.parametrize("data", ["abc", 5, [1, 2], [("a", 1)], ""])
def test_context_data_must_be_a_mapping(cls, data):
    with pytest.raises(ConfigurationError, match=f"{cls.__name__}: field 'data' must be a mapping"):
        cls(data)
