"""``dynapipeline.run``: asyncio.run that uses uvloop when it is installed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from dynapipeline._loops import loop_factory, uvloop_available
from dynapipeline.errors import ConfigurationError

__all__ = ["loop_name", "run"]

T = TypeVar("T")
_CHOICES = ("auto", "uvloop", "asyncio")


def loop_name(loop: str | None = None) -> str:
    """The loop ``run()`` would use for this choice: ``"uvloop"`` or ``"asyncio"``."""
    choice = (loop or os.environ.get("DYNAPIPELINE_LOOP") or "auto").strip().lower()
    if choice not in _CHOICES:
        raise ConfigurationError(f"dynapipeline.run: field 'loop' must be one of {_CHOICES}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    if not uvloop_available():
        if choice == "uvloop":
            raise ConfigurationError("dynapipeline.run: loop='uvloop' but uvloop is not installed")
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None, debug: bool | None = None) -> T:
    """Run a coroutine to completion on a new loop, uvloop when available.

    ``loop``: ``"auto"`` (default; uvloop if installed), ``"uvloop"`` (required) or
    ``"asyncio"``. ``DYNAPIPELINE_LOOP`` sets the default. No global policy changes.
    """
    try:
        factory = loop_factory("uvloop") if loop_name(loop) == "uvloop" else None
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
