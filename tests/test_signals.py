"""Ctrl-C (SIGINT) and SIGTERM to a process running busy process and thread stages leave no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent('''
    import os, sys, time
    import dynapipeline
    from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
    from dynapipeline.execution import (ConcurrentExecutionStrategy, MultiprocessExecutionStrategy,
                                        MultithreadExecutionStrategy)
    from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, OnceCycleStrategy

    class Spin(Stage):
        def execute(self):
            print("PROC", flush=True)
            while True:
                pass

    class Block(Stage):
        def execute(self):
            print("THREAD", flush=True)
            time.sleep(60)

    async def main():
        procs = MultiprocessExecutionStrategy(2)
        await procs.start()
        print("PIDS", *procs.worker_pids(), flush=True)
        busy = StageGroup(name="busy", stages=[Spin(name="s1"), Spin(name="s2")],
                          cycle_strategy=InfinitLoopStrategy(), execution_strategy=procs)
        blocking = StageGroup(name="blocking", stages=[Block(name="b1"), Block(name="b2")],
                              cycle_strategy=InfinitLoopStrategy(), execution_strategy=MultithreadExecutionStrategy(2))
        pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [busy, blocking],
                                                     OnceCycleStrategy(), ConcurrentExecutionStrategy())
        await pipeline.run()

    if __name__ == "__main__":
        dynapipeline.run(main())
''')


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_no_workers(tmp_path: Path, child_env: dict[str, str], sig: int) -> None:
    script = tmp_path / "busy_pipeline.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env)
    try:
        pids: list[int] = []
        seen_proc = seen_thread = 0
        deadline = time.monotonic() + 30
        while (seen_proc < 2 or seen_thread < 2) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("PIDS"):
                pids = [int(p) for p in line.split()[1:]]
                continue
            # Workers and threads share stdout: lines may interleave, so count markers, not lines.
            seen_proc += line.count("PROC")
            seen_thread += line.count("THREAD")
        assert len(pids) == 2 and seen_proc == 2 and seen_thread == 2, proc.stderr.read() if proc.poll() else ""
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert set(pids) <= set(family)
        begun = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        # Well under the blocked threads' 60 s: the stop did not wait for them (generous for a busy machine).
        assert time.monotonic() - begun < 30
        end = time.monotonic() + 30
        while not all(_gone(p) for p in family) and time.monotonic() < end:
            time.sleep(0.05)
        assert [p for p in family if not _gone(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HOG_SCRIPT = textwrap.dedent('''
    import os
    import dynapipeline
    from dynapipeline import Stage
    from dynapipeline.execution import MultiprocessExecutionStrategy

    class Hog(Stage):
        def execute(self):
            print("HOG", flush=True)
            return sum(range(10**12))  # one long C call: holds the GIL, no Python thread runs meanwhile

    async def main():
        procs = MultiprocessExecutionStrategy(2)
        await procs.start()
        await procs.execute([Hog(name="a"), Hog(name="b")])

    if __name__ == "__main__":
        dynapipeline.run(main())
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guarantee without a GIL is Linux's prctl")
def test_sigkilled_parent_takes_gil_holding_workers_fork_server_and_tracker_with_it(
        tmp_path: Path, child_env: dict[str, str]) -> None:
    script = tmp_path / "hog_pipeline.py"
    script.write_text(HOG_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env)
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.count("HOG")
        assert seen == 2, proc.stderr.read() if proc.poll() else ""
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 4  # two workers, the fork server, the resource tracker
        proc.kill()
        proc.wait(timeout=10)
        end = time.monotonic() + 30
        while not all(_gone(p) for p in family) and time.monotonic() < end:
            time.sleep(0.05)
        assert [p for p in family if not _gone(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in family if "family" in locals() else []:
            try:
                os.kill(pid, signal.SIGKILL)  # never leave a spinning worker behind on failure
            except ProcessLookupError:
                pass


# Linux hands a process-directed signal to any thread that does not block it (e.g. while the main
# thread is in pthread_create, which blocks all signals). Python then runs the handler in the main
# thread only when it next runs bytecode: a loop asleep in select() with no timer must be woken.
OTHER_THREAD_SCRIPT = textwrap.dedent('''
    import asyncio, signal, sys, threading, time
    import dynapipeline
    from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
    from dynapipeline.execution import ConcurrentExecutionStrategy, MultithreadExecutionStrategy
    from dynapipeline.execution.cycle_strategies import InfinitLoopStrategy, OnceCycleStrategy

    class Block(Stage):
        def execute(self):
            time.sleep(0.5)  # the loop is idle in select() by now
            if sys.argv[1] == "pool" and self.name == "b1":
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            time.sleep(60)

    async def main():
        if sys.argv[1] == "executor":
            # A thread of the loop's default executor, idle by the time the signal comes.
            ident = await asyncio.get_running_loop().run_in_executor(None, threading.get_ident)
            threading.Timer(0.5, signal.pthread_kill, (ident, signal.SIGINT)).start()
        blocking = StageGroup(name="blocking", stages=[Block(name="b1"), Block(name="b2")],
                              cycle_strategy=InfinitLoopStrategy(), execution_strategy=MultithreadExecutionStrategy(2))
        pipeline = PipelineFactory().create_pipeline(PipeLineType.ADVANCED, "p", [blocking],
                                                     OnceCycleStrategy(), ConcurrentExecutionStrategy())
        await pipeline.run()

    if __name__ == "__main__":
        dynapipeline.run(main())
''')


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
@pytest.mark.parametrize("receiver", ["pool", "executor"])
def test_sigint_handled_by_another_thread_still_stops_the_run(tmp_path: Path, child_env: dict[str, str],
                                                               receiver: str) -> None:
    script = tmp_path / "other_thread.py"
    script.write_text(OTHER_THREAD_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), receiver], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env)
    try:
        begun = time.monotonic()
        proc.wait(timeout=45)
        # Well under the threads' 60 s sleep: the signal did not wait for a thread to wake the loop.
        assert time.monotonic() - begun < 30
        err = proc.stderr.read()
        assert proc.returncode == -signal.SIGINT, err
        assert "KeyboardInterrupt" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
