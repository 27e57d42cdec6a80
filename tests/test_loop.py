"""dynapipeline.run(): asyncio.run on uvloop when available, chosen by argument or DYNAPIPELINE_LOOP."""

from __future__ import annotations

import asyncio

import pytest

import dynapipeline
from dynapipeline.errors import ConfigurationError


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_uses_uvloop_when_installed(monkeypatch):
    pytest.importorskip("uvloop")  # uvloop is a dependency on this platform; skip only where it cannot exist
    monkeypatch.delenv("DYNAPIPELINE_LOOP", raising=False)
    assert dynapipeline.run(loop_module()).startswith("uvloop")
    assert dynapipeline.run(loop_module(), loop="uvloop").startswith("uvloop")


def test_asyncio_choice_forbids_uvloop(monkeypatch):
    monkeypatch.delenv("DYNAPIPELINE_LOOP", raising=False)
    assert dynapipeline.run(loop_module(), loop="asyncio").startswith("asyncio")


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("DYNAPIPELINE_LOOP", "asyncio")
    assert dynapipeline.run(loop_module()).startswith("asyncio")
    assert dynapipeline.loop_name() == "asyncio"


def test_bad_choice_is_rejected_and_coroutine_closed():
    coro = loop_module()
    with pytest.raises(ConfigurationError, match="loop"):
        dynapipeline.run(coro, loop="trio")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


def test_run_leaves_the_global_policy_alone():
    before = type(asyncio.get_event_loop_policy())
    dynapipeline.run(loop_module())
    assert type(asyncio.get_event_loop_policy()) is before


async def test_this_leg_runs_on_the_loop_it_names(loop_kind):
    assert (await loop_module()).startswith(loop_kind)
