"""The suite's own "nothing left running" checks wait with a deadline: a busy machine is slow to end processes."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from helpers import assert_gone, assert_no_workers, assert_no_workers_async


def _linger(seconds: float) -> None:
    time.sleep(seconds)


def _child(seconds: float) -> multiprocessing.Process:
    # spawn: no fork of a test process that may run threads and loops.
    process = multiprocessing.get_context("spawn").Process(target=_linger, args=(seconds,))
    process.start()
    return process


def test_assert_no_workers_waits_for_a_child_still_exiting() -> None:
    process = _child(0.5)
    assert_no_workers([process.pid or 0])
    assert process.exitcode == 0


async def test_assert_no_workers_async_waits_for_a_child_still_exiting() -> None:
    process = _child(0.5)
    await assert_no_workers_async([process.pid or 0])
    assert process.exitcode == 0


def test_assert_gone_waits_for_the_pids() -> None:
    process = _child(0.5)
    assert_gone(process.pid or 0)
    process.join()


def test_assert_no_workers_fails_for_a_child_that_stays() -> None:
    process = _child(60)
    try:
        import helpers

        grace, helpers.GRACE = helpers.GRACE, 0.5
        try:
            with pytest.raises(AssertionError):
                assert_no_workers([])
        finally:
            helpers.GRACE = grace
    finally:
        process.kill()
        process.join()
