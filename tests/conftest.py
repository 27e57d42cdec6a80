"""Shared fixtures. The mode × loop matrix is chosen per pytest run by environment:

- ``DYNAPIPELINE_NO_EXTENSIONS=1`` selects the pure engine (``DYNAPIPELINE_TEST_MODE``
  says which mode the leg expects, so a silent fallback fails the compiled leg);
- ``DYNAPIPELINE_LOOP=uvloop|asyncio`` selects the loop every async test runs on.

A test that outlives the timeout (pyproject's ``timeout``, method ``thread``) ends
the run: the stacks of every pending asyncio task, then of every thread, are
printed, and the process exits with status 1.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import pytest_timeout

import dynapipeline
from dynapipeline import loop_name
from dynapipeline._loops import loop_factory

LOOP = loop_name()
_TIMER = pytest.StashKey[threading.Timer]()


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {LOOP: loop_factory(LOOP)}


def pytest_report_header(config: Any) -> str:
    return f"dynapipeline engine: {'compiled' if dynapipeline.compiled else 'pure'}, loop: {LOOP}"


def pytest_sessionstart(session: Any) -> None:
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A shell without job control starts a background command with SIGINT ignored, and every
        # child inherits that: the scripts the signal tests start would ignore their Ctrl-C and hang.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    expected = os.environ.get("DYNAPIPELINE_TEST_MODE")
    if expected and (expected == "compiled") != dynapipeline.compiled:
        raise pytest.UsageError(
            f"this leg expects the {expected} engine but dynapipeline.compiled is {dynapipeline.compiled}"
        )


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's thread method, with the pending asyncio tasks' stacks printed first."""
    if settings.method != "thread":
        return None

    def on_timeout() -> None:
        _dump_tasks(item)
        pytest_timeout.timeout_timer(item, settings)  # every thread's stack, then os._exit(1)

    timer = threading.Timer(settings.timeout, on_timeout)
    timer.name = "pytest-timeout"
    timer.daemon = True
    timer.start()
    item.stash[_TIMER] = timer
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    timer = item.stash.get(_TIMER, None)
    if timer is None:
        return None
    timer.cancel()
    timer.join()
    del item.stash[_TIMER]
    return True


def _dump_tasks(item: pytest.Item) -> None:
    """Print where every pending asyncio task of any loop waits: a hang inside a loop shows only an idle loop."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    terminal = item.config.get_terminal_writer()
    terminal.sep("+", title=f"Timeout of {item.nodeid}: pending asyncio tasks")
    # From the objects, not asyncio.all_tasks(): that needs the loop, and the hung loop may be in any thread.
    tasks = [task for task in gc.get_objects()
             if isinstance(task, asyncio.Task) and not task.done() and not task.get_loop().is_closed()]
    for task in tasks:
        terminal.sep("~", title=f"Pending task {task.get_name()}")
        terminal.write(f"{task!r}\n")
        stack = io.StringIO()
        try:
            task.print_stack(file=stack)
        except Exception as error:  # a task's frames changing under us: say so, keep dumping the others
            stack.write(f"(stack unavailable: {error!r})\n")
        terminal.write(stack.getvalue())
    terminal.flush()


@pytest.fixture
def loop_kind() -> str:
    """The loop this leg runs on ("asyncio" or "uvloop")."""
    return LOOP


@pytest.fixture
async def procs() -> Any:
    """A 2-worker process strategy, closed after the test, which then checks that nothing is left: no worker, no
    shared memory mapped here, no new name in ``/dev/shm`` (``helpers.leaves_nothing``)."""
    from helpers import leaves_nothing

    from dynapipeline.execution import MultiprocessExecutionStrategy

    strategy = MultiprocessExecutionStrategy(2)
    async with leaves_nothing(strategy):
        yield strategy


@pytest.fixture
def child_env() -> Any:
    """The environment for a child Python process the test may kill: its temporary files go to a folder of
    this test's own, removed afterwards. (A process killed by a signal runs no finalizer: multiprocessing's
    ``pymp-*`` folder, where its fork server listens, would stay in the system's temporary folder.)"""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="dp-")  # short: a Unix socket's path in it must fit in 108 bytes
    try:
        yield {**os.environ, "TMPDIR": folder, "PYTHONUNBUFFERED": "1"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A LocalCluster of 2 worker processes (1 thread each) for a test module; none of its processes outlives it."""
    import dask
    import psutil
    from distributed import LocalCluster

    # allowed-failures=0: a task whose worker dies fails at once (KilledWorker) instead of running again.
    # Connect timeouts of 120 s (default 30 s): under the whole suite's load on 2 cores, starting the cluster
    # or a client of it once timed out in a fixture's setup while the same test alone took seconds.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.comm.timeouts.connect": "120s"}):
        local = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    me = psutil.Process()
    try:
        yield local
    finally:
        children = me.children(recursive=True)
        started = [c for c in children if "distributed" in " ".join(_cmdline(c))]
        local.close()
        _, alive = psutil.wait_procs(started, timeout=10)
        assert alive == [], f"Dask processes left running: {alive}"


def _cmdline(proc: Any) -> list[str]:
    import psutil

    try:
        return list(proc.cmdline())
    except psutil.Error:
        return []


@pytest.fixture
async def client(cluster: Any) -> Any:
    """An asynchronous client of the module's cluster, once both its workers are up."""
    from distributed import Client
    from helpers import healed

    async with Client(cluster.scheduler_address, asynchronous=True, set_as_default=False, timeout=120) as c:
        await healed(cluster, c)
        yield c
