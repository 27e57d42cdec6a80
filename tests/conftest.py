"""Shared fixtures. The mode × loop matrix is chosen per pytest run by environment:

- ``DYNAPIPELINE_NO_EXTENSIONS=1`` selects the pure engine (``DYNAPIPELINE_TEST_MODE``
  says which mode the leg expects, so a silent fallback fails the compiled leg);
- ``DYNAPIPELINE_LOOP=uvloop|asyncio`` selects the loop every async test runs on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import dynapipeline
from dynapipeline import loop_name
from dynapipeline._loops import loop_factory

LOOP = loop_name()


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {LOOP: loop_factory(LOOP)}


def pytest_report_header(config: Any) -> str:
    return f"dynapipeline engine: {'compiled' if dynapipeline.compiled else 'pure'}, loop: {LOOP}"


def pytest_sessionstart(session: Any) -> None:
    expected = os.environ.get("DYNAPIPELINE_TEST_MODE")
    if expected and (expected == "compiled") != dynapipeline.compiled:
        raise pytest.UsageError(
            f"this leg expects the {expected} engine but dynapipeline.compiled is {dynapipeline.compiled}"
        )


@pytest.fixture
def loop_kind() -> str:
    """The loop this leg runs on ("asyncio" or "uvloop")."""
    return LOOP


@pytest.fixture
async def procs() -> Any:
    """A 2-worker process strategy, closed after the test, which then checks that no worker is left."""
    from helpers import closing_pool

    from dynapipeline.execution import MultiprocessExecutionStrategy

    async with closing_pool(MultiprocessExecutionStrategy(2)) as strategy:
        yield strategy
