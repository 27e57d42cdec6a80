"""Contexts: the one mapping shared by a pipeline, its groups and its stages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from dynapipeline._model.checks import kind_of
from dynapipeline.errors import ConfigurationError, ContextLockedError

__all__ = ["AsyncLockableContext", "Context", "ProtectedContext"]


class Context(MutableMapping[str, Any]):
    """A plain dict-like context; ``async with ctx as c`` yields the context itself."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigurationError(
                f"{type(self).__name__}: field 'data' must be a mapping (a dict) or None, got {kind_of(data)}"
            )
        self._data: dict[str, Any] = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def snapshot(self) -> ProtectedContext:
        """A locked copy of the data, safe to ship to a worker (reads work, writes raise)."""
        copy = ProtectedContext(dict(self._data))
        copy.lock("a worker's snapshot")
        return copy


class AsyncLockableContext(Context):
    """A context whose ``async with`` holds an asyncio lock, guarding read-modify-write."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data)
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _current_lock(self) -> asyncio.Lock:
        # asyncio.Lock binds to the first loop it waits on; keep one per loop so the
        # same context works across asyncio.run() calls.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    async def __aenter__(self) -> AsyncLockableContext:
        await self._current_lock().acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._lock is not None
        self._lock.release()

    @property
    def locked(self) -> bool:
        return self._lock is not None and self._lock.locked()

    def __getstate__(self) -> dict[str, Any]:
        return {"_data": self._data, "_lock": None, "_lock_loop": None}


class ProtectedContext(Context):
    """A context that can be locked: while locked, every write raises ContextLockedError."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data)
        self._locked_by: str | None = None

    @property
    def locked(self) -> bool:
        return self._locked_by is not None

    def lock(self, owner: str = "its owner") -> None:
        self._locked_by = owner

    def unlock(self) -> None:
        self._locked_by = None

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_writable(key)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        self._check_writable(key)
        del self._data[key]

    def _check_writable(self, key: str) -> None:
        if self._locked_by is not None:
            raise ContextLockedError(
                f"context key {key!r} is read-only: the context is locked by {self._locked_by}"
            )
