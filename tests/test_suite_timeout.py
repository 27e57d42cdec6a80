"""The suite's per-test timeout: a hang anywhere fails the run with every thread's stack and every pending task's.

Each case runs pytest in a subprocess with this suite's configuration and
conftest on one test that hangs, with a short ``--timeout``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
HANGS = {
    # Inside the event loop: the loop idles in its selector while the test's task waits forever.
    "loop": '''
        import asyncio

        async def test_hangs() -> None:
            async def wait_for_nothing() -> None:
                await asyncio.Event().wait()

            await asyncio.gather(wait_for_nothing())
    ''',
    # In plain code: the main thread waits for a thread that waits forever.
    "thread": '''
        import threading

        def test_hangs() -> None:
            never = threading.Event()
            waiter = threading.Thread(target=never.wait, name="waits-for-nothing", daemon=True)
            waiter.start()
            waiter.join()
    ''',
}


@pytest.mark.parametrize("where", sorted(HANGS))
def test_a_hang_fails_the_run_with_every_threads_and_tasks_stack(tmp_path: Path, where: str) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path)
    shutil.copy(TESTS / "helpers.py", tmp_path)
    (tmp_path / "test_hang.py").write_text(textwrap.dedent(HANGS[where]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(TESTS.parent / "pyproject.toml"),
         "--rootdir", str(tmp_path), "--timeout", "2", "test_hang.py"],
        cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Timeout" in out, out
    assert "Stack of MainThread" in out and "test_hangs" in out, out  # the main thread's stack, down to the test
    if where == "thread":
        assert "Stack of waits-for-nothing" in out, out
    else:
        assert "Pending task" in out and "wait_for_nothing" in out, out  # where each task waits
