"""The progress display: log lines with the counts off a terminal, a live table, and no task left behind."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from dynapipeline import PipeLineType, Progress, Stage, Stream
from dynapipeline.errors import ConfigurationError
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, LoopCycleStrategy, OnceCycleStrategy
from tests.helpers import Echo, Fail, group, pipeline


class Slow(Stage):
    async def execute(self, x: int) -> int:
        await asyncio.sleep(0.005)
        return x


def _pipeline(stages: list[Stage], cycles: Any) -> Any:
    """A SIMPLE pipeline of one group of ``stages`` run with ``cycles``."""
    return pipeline([group(stages, cycle=cycles)], kind=PipeLineType.SIMPLE)


def _progress_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "dynapipeline-progress"]


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+)=(\S+)", line))


async def test_log_lines_carry_the_counts_and_the_last_one_the_totals() -> None:
    out = io.StringIO()
    p = _pipeline([Echo(name="a"), Echo(name="b")], LoopCycleStrategy(5))
    async with Progress(p, interval=0.01, file=out) as progress:
        assert progress.live is False  # a StringIO is not a terminal
        await p.run()
    final = [line for line in out.getvalue().splitlines() if line.startswith("done 'p'")]
    by_name = {line.split()[3]: _fields(line) for line in final}
    assert by_name["'p'"] == {"kind": "SimplePipeline", "cycles": "1", "runs": "1", "runs/s": by_name["'p'"]["runs/s"]}
    assert by_name["'g'"]["cycles"] == "5" and by_name["'g'"]["runs"] == "1"
    assert by_name["'a'"]["runs"] == "5" and by_name["'b'"]["runs"] == "5" and by_name["'a'"]["cycles"] == "-"
    assert not _progress_tasks()


async def test_lines_come_periodically_during_a_long_run() -> None:
    out = io.StringIO()
    p = _pipeline([Echo(name="a", delay=0.002)], InfiniteLoopStrategy())
    async with Progress(p, interval=0.01, file=out):
        task = asyncio.ensure_future(p.run())
        while out.getvalue().count("progress 'p'") < 6:  # one line per component per interval
            await asyncio.sleep(0.01)
        p.stop()
        await task
    runs = [int(_fields(line)["runs"]) for line in out.getvalue().splitlines()
            if line.startswith("progress 'p'") and " 'a' " in line]
    assert len(runs) >= 2 and runs == sorted(runs) and runs[-1] > 0


async def test_counts_start_when_the_display_starts() -> None:
    p = _pipeline([Echo(name="a")], LoopCycleStrategy(3))
    await p.run()
    out = io.StringIO()
    async with Progress(p, interval=10, file=out):
        await p.run()
    [a] = [line for line in out.getvalue().splitlines() if " 'a' " in line]
    assert _fields(a)["runs"] == "3"


async def test_stream_rows_are_the_steps_counts() -> None:
    class Odd(Stage):
        async def execute(self, x: int) -> int:
            if x % 2:
                raise ValueError(x)
            return x

    out = io.StringIO()
    stream = Stream(name="s", steps=[Slow(name="slow"), Odd(name="odd")], on_error="skip")
    async with Progress(stream, interval=0.01, file=out):
        assert await stream.run(range(10)) == [0, 2, 4, 6, 8]
    final = {line.split()[3]: _fields(line) for line in out.getvalue().splitlines() if line.startswith("done 's'")}
    assert {k: v for k, v in final["'slow'"].items() if k != "done/s"} == {
        "received": "10", "done": "10", "failed": "0", "in_flight": "0", "queued": "0"}
    assert final["'odd'"]["done"] == "5" and final["'odd'"]["failed"] == "5"


async def test_a_failing_run_still_stops_the_display() -> None:
    out = io.StringIO()
    p = _pipeline([Echo(name="a", delay=0.01), Fail(name="bad", delay=0.03)], OnceCycleStrategy())
    with pytest.raises(ValueError, match="bad"):
        async with Progress(p, interval=0.01, file=out):
            await p.run()
    assert not _progress_tasks()
    assert "done 'p'" in out.getvalue()


async def test_cancelling_the_block_stops_the_display() -> None:
    p = _pipeline([Echo(name="a", delay=0.01)], InfiniteLoopStrategy())

    async def watched() -> None:
        async with Progress(p, interval=0.01, file=io.StringIO()):
            await p.run()

    task = asyncio.ensure_future(watched())
    await asyncio.sleep(0.05)
    assert _progress_tasks()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _progress_tasks() and not p.running


async def test_lines_go_to_the_logger_when_logging_shows_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dynapipeline")
    out = io.StringIO()
    p = _pipeline([Echo(name="a")], LoopCycleStrategy(2))
    async with Progress(p, interval=10, file=out):
        await p.run()
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "dynapipeline"]
    assert any(" 'a' " in line and "runs=2" in line for line in lines)


async def test_a_broken_output_stops_the_display_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    p = _pipeline([Echo(name="a", delay=0.005)], LoopCycleStrategy(6))
    async with Progress(p, interval=0.005, file=Broken()):
        assert len((await p.run())[0]) == 6
    [warning] = [r.getMessage() for r in caplog.records if "progress display of 'p'" in r.getMessage()]
    assert "disk full" in warning
    assert not _progress_tasks()


async def test_live_table_is_drawn_with_rich_and_starts_no_thread() -> None:
    out = io.StringIO()
    threads = threading.active_count()
    p = _pipeline([Echo(name="a", delay=0.005)], LoopCycleStrategy(4))
    async with Progress(p, interval=0.005, live=True, file=out):
        assert threading.active_count() == threads
        await p.run()
    text = out.getvalue()
    assert "component" in text and "runs/s" in text
    last_a = [line for line in text.splitlines() if " a " in line][-1]
    assert re.search(r"\b4\b", last_a), last_a
    assert not _progress_tasks()


def test_str_is_the_current_table() -> None:
    progress = Progress(_pipeline([Echo(name="a")], OnceCycleStrategy()))
    assert str(progress).splitlines()[0].split() == ["component", "kind", "cycles", "runs", "runs/s"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"target": "p"}, "target"),
    ({"target": Echo, "interval": 1}, "target"),
    ({"interval": 0}, "interval"),
    ({"interval": float("nan")}, "interval"),
    ({"interval": True}, "interval"),
    ({"live": "yes"}, "live"),
])
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"target": Echo(name="a"), **kwargs}
    with pytest.raises(ConfigurationError, match=f"Progress: field '{field}'"):
        Progress(**arguments)


def test_without_rich_a_live_display_names_the_extra_and_log_lines_still_work() -> None:
    code = textwrap.dedent("""
        import asyncio, io, sys
        sys.modules["rich"] = None  # as if it were not installed
        import dynapipeline
        from dynapipeline import Stage

        class A(Stage):
            async def execute(self):
                return 1

        async def main():
            out = io.StringIO()
            async with dynapipeline.Progress(A(name="a"), file=out, live=False):
                pass
            print("lines:", out.getvalue().strip())
            try:
                async with dynapipeline.Progress(A(name="a"), live=True):
                    pass
            except ImportError as error:
                print(error)

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert "lines: done 'a'" in out
    assert "pip install 'dynapipeline[progress]'" in out
