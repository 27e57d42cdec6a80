"""dynapipeline.run(): asyncio.run on uvloop when available, chosen by argument or DYNAPIPELINE_LOOP."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Any

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


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


async def wakeup_fd_inside() -> int:
    return _wakeup_fd()


def test_run_watches_signals_while_it_runs_and_gives_the_wakeup_fd_back():
    # Subprocess tests in test_signals show what it is for: a Ctrl-C handled by a worker thread.
    mine, other = socket.socketpair()
    mine.setblocking(False)
    before = signal.set_wakeup_fd(mine.fileno())
    try:
        inside = dynapipeline.run(wakeup_fd_inside())
        assert inside not in (-1, mine.fileno())  # the loop is woken by any signal during the run
        assert _wakeup_fd() == mine.fileno()
    finally:
        signal.set_wakeup_fd(before)
        mine.close()
        other.close()


def test_run_off_the_main_thread_leaves_signals_alone():
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(dynapipeline.run(loop_module())))
    thread.start()
    thread.join(30)
    assert len(results) == 1 and results[0] in ("asyncio.unix_events", "uvloop")
