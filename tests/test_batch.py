"""The batch runner (``_remote.batch``), called in this process: a ``Call`` in, a ``Reply`` of named parts out.

Worker processes and Dask tasks run the same code; their tests cover the trip.
"""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import Fail, Nap, Unloadable

from dynapipeline._transports._remote.batch import run_call, run_components
from dynapipeline._transports._remote.messages import IDLE, TAKEN, Call, Clock, Failure, RunStats
from dynapipeline._transports._remote.pickling import dumps_batch
from dynapipeline._transports._remote.replies import remote_error
from dynapipeline.errors import RemoteError


@pytest.fixture
def state() -> Any:
    kept: dict[str, Any] = {}
    yield kept
    if "loop" in kept:
        kept["loop"].close()


def test_a_batch_comes_back_as_named_values_timings_and_clock(state: dict[str, Any]) -> None:
    reply = run_components([Nap(name="nap")], (), {}, state)
    assert reply.failure is None and reply.failed_at == -1 and not reply.unloadable
    assert [pickle.loads(value) for value in reply.values] == [os.getpid()]
    ((own,),) = reply.timings
    own_stats, durations, _slowest = own
    stats = RunStats._make(own_stats)
    assert (stats.runs, stats.errors, len(durations)) == (1, 0, 1)
    assert stats.end_time >= stats.start_time
    clock = reply.clock
    assert isinstance(clock, Clock) and clock.received <= clock.rebuilt <= clock.replying
    ((started, ended, pickled),) = clock.runs
    assert pickled <= clock.replying and ended - started >= -1e-6


def test_a_failure_travels_as_a_failure_and_is_rebuilt_with_its_traceback(state: dict[str, Any]) -> None:
    reply = run_components([Nap(name="ok"), Fail(name="bad"), Nap(name="never")], (), {}, state)
    assert reply.failed_at == 1 and len(reply.values) == 1 and len(reply.timings) == 2
    failed_stats, _durations, _slowest = reply.timings[1][0]
    assert RunStats._make(failed_stats).errors == 1
    failure = reply.failure
    assert isinstance(failure, Failure)
    assert failure.text == "ValueError: bad" and "ValueError: bad" in failure.traceback
    error, cause = remote_error(failure, "bad")
    assert type(error) is ValueError and error.args == ("bad",)
    assert isinstance(cause, RemoteError) and "ValueError: bad" in str(cause)


def test_a_call_runs_its_payload_and_tells_the_position_it_runs(state: dict[str, Any]) -> None:
    payload, _ = dumps_batch([Nap(name="a"), Nap(name="b")], (), {})
    position = SimpleNamespace(value=TAKEN)
    reply = run_call(Call(class_blobs=[], payload=payload), state, position)
    assert len(reply.values) == 2 and reply.failure is None
    assert reply.clock is not None and len(reply.clock.runs) == 2
    assert position.value == IDLE


def test_a_call_that_cannot_be_rebuilt_runs_nothing_and_says_why(state: dict[str, Any]) -> None:
    reply = run_call(Call(class_blobs=[], payload=pickle.dumps(Unloadable())), state)
    assert reply.unloadable and reply.failed_at == 0 and reply.values == [] and reply.clock is None
    assert reply.failure is not None
    error, _ = remote_error(reply.failure, "stage")
    assert type(error) is LookupError and "cannot be rebuilt" in str(error)
