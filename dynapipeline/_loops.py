"""Event loop factories: the one place that knows how to make an asyncio or a uvloop loop.

Imports nothing from the package but the errors, so every layer may use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dynapipeline.errors import ConfigurationError

__all__ = ["LOOP_KINDS", "loop_factory", "loop_kind_of", "uvloop_available"]

LOOP_KINDS = ("asyncio", "uvloop")


def uvloop_available() -> bool:
    """Whether uvloop can be imported here."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new loops of ``kind`` (``"asyncio"`` or ``"uvloop"``)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigurationError("loop 'uvloop' was asked for but uvloop is not installed") from None
        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.new_event_loop
    raise ConfigurationError(f"field 'loop' must be one of {LOOP_KINDS}, got {kind!r}")


def loop_kind_of(loop: Any) -> str:
    """``"uvloop"`` for a uvloop loop, else ``"asyncio"`` (so helper threads run loops of the caller's kind)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
