"""The command line: ``info``, ``bench`` (tiny sizes: behaviour, not speed), ``--version``, how it names itself."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import psutil
import pytest

import dynapipeline
from dynapipeline.__main__ import main
from dynapipeline._cli.bench import BUILD, CASES, KINDS, format_table
from dynapipeline._cli.bench_data import Touch, format_large, touch, touch_passes, transport_note

MODE = "compiled" if dynapipeline.compiled else "pure"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynapipeline", *args], capture_output=True, text=True,
                          check=True, env=dict(os.environ), timeout=120)


def test_info_names_version_engine_loop_and_python() -> None:
    out = _cli("info").stdout
    assert f"dynapipeline {dynapipeline.__version__}" in out
    assert f"engine: {MODE}" in out
    assert f"loop: {dynapipeline.loop_name()}" in out
    assert "python: 3." in out


def test_bench_json_rows_for_every_case(capsys: pytest.CaptureFixture[str], loop_kind: str) -> None:
    assert main(["bench", "--mode", MODE, "--loops", loop_kind, "--sizes", "20", "--repeats", "1",
                 "--runs", "2", "--large-items", "0", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [r for r in report["rows"] if r["case"] != BUILD]
    assert {(r["case"], r["stage"]) for r in rows} == {(c, k) for c in CASES for k in KINDS}
    # One build row per size, not per loop, and without a raw twin.
    [build] = [r for r in report["rows"] if r["case"] == BUILD]
    assert (build["n"], build["loop"], build["mode"]) == (20, "-", MODE)
    assert build["engine_us"] > 0 and math.isnan(build["raw_us"])
    for r in rows:
        assert (r["n"], r["loop"], r["mode"], r["repeats"], r["runs"]) == (20, loop_kind, MODE, 1, 2)
        assert r["engine_us"] > 0 and r["raw_us"] > 0 and r["ratio"] > 0
    assert report["machine"]["python"] and report["machine"]["dynapipeline"] == dynapipeline.__version__


def test_bench_table_measures_the_other_mode_in_a_subprocess() -> None:
    out = _cli("bench", "--quick", "--loops", "asyncio", "--sizes", "10", "--repeats", "1", "--large-items", "0").stdout
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("strategy"))
    for column in ("strategy", "loop", "mode", "µs/stage", "raw µs/stage", "ratio"):
        assert column in header
    modes = {line.split()[4] for line in lines if line.split()[:1] and line.split()[0] in CASES}
    # The pure engine always exists; the compiled one when the extension was built.
    assert "pure" in modes
    assert MODE in modes


def test_bench_large_item_table_has_every_side_for_bytes_and_arrays(capsys: pytest.CaptureFixture[str],
                                                                    loop_kind: str) -> None:
    pytest.importorskip("numpy")
    assert main(["bench", "--mode", MODE, "--loops", loop_kind, "--sizes", "10", "--repeats", "1",
                 "--large-mb", "0.01", "--large-items", "3"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("Large items: 3 × 0.01 MB per run, 2 worker processes"):].splitlines()
    header = next(line for line in table if line.startswith("items"))
    for column in ("work", "side", "MB/s", "÷ one process", "ours ÷ side"):
        assert column in header
    sides = ["one process (a for loop)", "Stream step on MultiprocessExecutionStrategy(2)",
             "multiprocessing.Pool(2).imap", "memory copy limit (one copy per item)"]
    if importlib.util.find_spec("mpire") is not None:
        sides.append("mpire.WorkerPool(2).imap")
    for data in ("bytes", "array"):
        rows = [line for line in table if line.split()[:1] == [data]]
        assert len(rows) == len(sides)
        for side in sides:
            [row] = [line for line in rows if side in line]
            assert row.rstrip().endswith("×")


def test_bench_large_item_json_gives_mb_per_second_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--mode", MODE, "--loops", "asyncio", "--sizes", "10", "--repeats", "1",
                 "--large-mb", "0.01", "--large-items", "2", "--json", "-"]) == 0
    large = json.loads(capsys.readouterr().out)["large"]
    assert (large["size"], large["count"], large["workers"]) == (10_000, 2, 2)
    by_side = {r["side"]: r for r in large["rows"] if r["data"] == "bytes"}
    assert {"one process", "dynapipeline", "Pool.imap", "copy"} <= set(by_side)
    ours = by_side["dynapipeline"]["mb_s"]
    for r in by_side.values():
        assert r["mb_s"] > 0
        assert math.isclose(r["vs_one"], r["mb_s"] / by_side["one process"]["mb_s"])
        assert math.isclose(r["ours_vs"], ours / r["mb_s"])


def test_large_item_table_says_how_the_process_transport_sends_buffers() -> None:
    class Pickled:
        pass

    class Attribute:
        shared_memory_threshold: int | None = 1 << 20

    class Default:
        def __init__(self, max_workers: int | None = None, *, shared_memory_threshold: int | None = 4096) -> None:
            pass

    assert "no shared-memory option" in transport_note(Pickled())
    assert transport_note(Attribute()) == "shared memory for buffers of 1,048,576 bytes or more"
    Attribute.shared_memory_threshold = None
    assert transport_note(Attribute()).startswith("shared memory off")
    assert transport_note(Default()) == "shared memory for buffers of 4,096 bytes or more"


def test_the_bytes_stage_reads_every_byte_as_many_times_as_make_about_1_5_gb_per_second_and_says_so() -> None:
    item = os.urandom(4096)
    assert touch(item) == zlib.adler32(item)
    assert touch(item, 3) == zlib.adler32(item, zlib.adler32(item, zlib.adler32(item)))
    assert Touch(name="touch", passes=2).execute(item) == touch(item, 2)
    assert touch_passes() >= 1 and touch_passes() == touch_passes()  # measured once per process
    row = {"data": "bytes", "side": "one process", "mb_s": 1.0, "vs_one": 1.0, "ours_vs": 1.0}
    large = {"size": 10, "count": 1, "passes": 1, "workers": 2, "transport": "t", "rows": [row]}
    assert "zlib.adler32 ×2" in format_large({**large, "touch_passes": 2})
    assert "zlib.adler32 ×" not in format_large({**large, "touch_passes": 1})


def test_format_table_aligns_columns() -> None:
    rows = [{"case": "sequential", "stage": "noop", "n": 10_000, "loop": "asyncio", "mode": "compiled",
             "engine_us": 0.5, "raw_us": 0.25, "ratio": 2.0}]
    table = format_table(rows).splitlines()
    assert len(table) == 3 and "10,000" in table[2] and table[2].rstrip().endswith("2.00×")


def test_bench_rejects_unknown_loop() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--loops", "trio"])


def test_version_flag_prints_the_package_version() -> None:
    assert _cli("--version").stdout == f"dynapipeline {dynapipeline.__version__}\n"


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib.metadata import version

    assert dynapipeline.__version__ == version("dynapipeline")


def test_help_names_python_dash_m_when_run_with_dash_m() -> None:
    assert _cli("--help").stdout.startswith("usage: python -m dynapipeline ")


def test_console_script_names_itself_in_help_and_prints_the_version() -> None:
    script = Path(sys.executable).parent / "dynapipeline"
    assert script.exists(), "the dynapipeline console script is installed beside the interpreter"
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, env=dict(os.environ),
                            timeout=120)
    assert run([str(script), "--help"]).stdout.startswith("usage: dynapipeline [")
    assert run([str(script), "info", "--help"]).stdout.startswith("usage: dynapipeline info ")
    assert run([str(script), "--version"]).stdout == f"dynapipeline {dynapipeline.__version__}\n"


# -- dynapipeline run -------------------------------------------------------------------------------

TARGETS = '''
import asyncio, os, sys
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import InfiniteLoopStrategy, LoopCycleStrategy, OnceCycleStrategy


class Tick(Stage):
    async def execute(self, *items):
        await asyncio.sleep(0.001)


class Boom(Stage):
    async def execute(self):
        raise RuntimeError("user boom")


class Ready(Stage):
    async def execute(self):
        if not os.environ.get("READY_SAID"):
            os.environ["READY_SAID"] = "1"
            print("READY", flush=True)
        await asyncio.sleep(0.01)


class Pid(Stage):
    def execute(self):
        return os.getpid()


class Stubborn(Stage):
    async def execute(self):
        print("READY", flush=True)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            print("IGNORING STOP", flush=True)
            await asyncio.sleep(60)  # only a second cancellation ends this


def pipeline_of(*groups, kind=PipeLineType.SIMPLE):
    return PipelineFactory().create_pipeline(kind, "p", list(groups), OnceCycleStrategy(),
                                             SequentialExecutionStrategy())


def group_of(*stages, cycles=None, execution=None):
    return StageGroup(name="g", stages=list(stages), cycle_strategy=cycles or LoopCycleStrategy(3),
                      execution_strategy=execution or SequentialExecutionStrategy())


pipeline = pipeline_of(group_of(Tick(name="tick")))
boom = pipeline_of(group_of(Boom(name="boom")))
stream = Stream(name="s", steps=[Tick(name="tick")], source=range(5))
number = 3


def forever():
    return pipeline_of(group_of(Ready(name="ready"), cycles=InfiniteLoopStrategy()))


async def which_loop():
    print("loop:", type(asyncio.get_running_loop()).__module__.split(".")[0], flush=True)
    return pipeline


def with_workers():
    processes = MultiprocessExecutionStrategy(1)

    class Report(Stage):
        async def execute(self):
            print("WORKERS", *processes.worker_pids(), flush=True)
            print("READY", flush=True)
            await asyncio.sleep(60)

    return pipeline_of(group_of(Pid(name="pid"), cycles=OnceCycleStrategy(), execution=processes),
                       group_of(Report(name="report"), cycles=OnceCycleStrategy()), kind=PipeLineType.ADVANCED)


def stubborn():
    return pipeline_of(group_of(Stubborn(name="stubborn"), cycles=OnceCycleStrategy()))


def wrong():
    return 42
'''


@pytest.fixture
def targets(tmp_path: Path) -> Path:
    path = tmp_path / "targets.py"
    path.write_text(TARGETS)
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynapipeline", "run", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120, cwd=cwd)


@pytest.mark.parametrize(("target", "extra", "message"), [
    ("missing.py:pipeline", (), "no such file: 'missing.py'"),
    ("{file}:nothing", (), "has no attribute 'nothing'"),
    ("{file}:number", (), "'number' in '{file}' is of type int; expected a Pipeline, Stream"),
    ("{file}:Tick", (), "is the class Tick; name an instance or a function that returns one"),
    ("{file}:wrong", (), "returned an object of type int; expected a Pipeline, Stream"),
    ("{file}", (), "expected PATH_OR_MODULE:ATTR"),
    ("no_such_module_here:pipeline", (), "no module named 'no_such_module_here'"),
    ("{file}:pipeline", ("--loop", "trio"), "option --loop must be one of auto, asyncio, uvloop, got 'trio'"),
    ("{file}:pipeline", ("--trace", "/no/such/folder/t.json"), "option --trace: folder '/no/such/folder' does not"),
    # which_loop prints when it is called on the run's loop: nothing runs before the check.
    ("{file}:which_loop", ("--trace", "{folder}"), "option --trace: '{folder}' is a folder, not a file"),
    ("{file}:which_loop", ("--trace", ""), "option --trace: the path is empty"),
    ("{file}:which_loop", ("--trace", "/proc/t.json"), "option --trace: '/proc/t.json' cannot be written: "),
])
def test_run_bad_input_exits_2_with_one_line(targets: Path, target: str, extra: tuple[str, ...],
                                             message: str) -> None:
    names = {"file": targets, "folder": targets.parent}
    result = _run(target.format(**names), *(arg.format(**names) for arg in extra))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("dynapipeline run: error: ")
    assert message.format(**names) in line


def test_run_user_error_exits_1_with_the_users_traceback(targets: Path) -> None:
    result = _run(f"{targets}:boom")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: user boom"
    assert f'File "{targets}", line' in result.stderr and 'raise RuntimeError("user boom")' in result.stderr
    assert "run_command.py" not in result.stderr  # the command's own frames are left out


def test_run_error_while_loading_the_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import json\nvalue = json.loads('{')\n")
    result = _run(f"{path}:value")
    assert result.returncode == 1
    assert f'File "{path}", line 2' in result.stderr and "JSONDecodeError" in result.stderr.splitlines()[-1]


def test_run_with_report_prints_the_report(targets: Path) -> None:
    result = _run(f"{targets}:pipeline", "--report")
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("slowest stage runs:")[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()}
    assert rows["p"][1:3] == ["SimplePipeline", "1"]
    assert rows["tick"][1:3] == ["Tick", "3"]


def test_run_a_module_by_name_from_the_current_folder(targets: Path) -> None:
    result = _run("targets:stream", "--report", cwd=targets.parent)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.split("slowest stage runs:")[0].splitlines()}
    assert rows["s"][1:3] == ["Stream", "1"]


def test_run_with_progress_writes_lines_off_a_terminal(targets: Path) -> None:
    result = _run(f"{targets}:pipeline", "--progress")
    assert result.returncode == 0, result.stderr
    assert "done 'p'" in result.stderr and "'tick' kind=Tick cycles=- runs=3" in result.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_run_on_the_chosen_loop_with_an_async_factory(targets: Path, loop: str) -> None:
    result = _run(f"{targets}:which_loop", "--loop", loop)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"loop: {loop}\n"


def test_run_help_names_the_target_and_options() -> None:
    out = _cli("run", "--help").stdout
    for text in ("PATH_OR_MODULE:ATTR", "--loop", "--report", "--progress", "130"):
        assert text in out


def _start(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "dynapipeline", "run", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert process.stdout is not None
    lines = []
    while True:
        line = process.stdout.readline()
        assert line, f"exited before READY: {lines} {process.stderr.read() if process.stderr else ''}"
        lines.append(line)
        if line == "READY\n":
            process.lines = lines  # type: ignore[attr-defined]
            return process


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_signal_stops_an_infinite_loop_cleanly(targets: Path, sig: int, code: int) -> None:
    process = _start(f"{targets}:forever", "--report")
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    ready = next(line for line in out.splitlines() if line.split()[:1] == ["ready"])
    assert int(ready.split()[2]) >= 1  # the report came after the stop


def test_run_ctrl_c_leaves_no_worker_process(targets: Path) -> None:
    process = _start(f"{targets}:with_workers")
    [workers] = [line for line in process.lines if line.startswith("WORKERS")]  # type: ignore[attr-defined]
    pids = [int(pid) for pid in workers.split()[1:]]
    assert pids
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    _assert_ended(children)


def test_run_second_ctrl_c_cancels_a_run_that_ignores_stop(targets: Path) -> None:
    process = _start(f"{targets}:stubborn")
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None and process.stdout.readline() == "IGNORING STOP\n"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by SIGINT" in err


@pytest.mark.parametrize("gap", [0.0, 0.01, 0.05, 0.2])
def test_run_two_quick_ctrl_c_exit_130(targets: Path, gap: float) -> None:
    """Whenever the second Ctrl-C lands (during the stop, the loop's teardown or the exit), the status is 130."""
    process = _start(f"{targets}:forever")
    process.send_signal(signal.SIGINT)
    time.sleep(gap)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err


def test_run_ctrl_c_while_the_target_loads_exits_130(tmp_path: Path) -> None:
    slow = tmp_path / "slow_import.py"
    slow.write_text("import time\nprint('READY', flush=True)\ntime.sleep(60)\npipeline = None\n")
    process = _start(f"{slow}:pipeline")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err


def test_run_two_quick_ctrl_c_leave_no_worker_process(targets: Path) -> None:
    process = _start(f"{targets}:with_workers")
    children = psutil.Process(process.pid).children(recursive=True)
    assert children
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    _assert_ended(children)


def test_run_sensor_example_with_trace_and_report(tmp_path: Path) -> None:
    """The sensor example's trace: every stage run a slice, inside its group's; concurrent ones overlap;
    process runs on their worker's pid."""
    from helpers import check_trace_format

    path = tmp_path / "t.json"
    example = Path(__file__).resolve().parent.parent / "examples" / "sensor_monitoring.py"
    result = _run(f"{example}:pipeline", "--trace", str(path), "--report")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.split("slowest stage runs:")[0].splitlines()
    kind_at = header.index("kind")  # names may contain spaces: the kind column starts where its title does
    rows = {line[:kind_at].strip(): line[kind_at:].split() for line in lines}
    depth = {line[:kind_at].strip(): len(line) - len(line.lstrip()) for line in lines}
    events = check_trace_format(json.loads(path.read_text()))
    slices = [e for e in events if e["ph"] == "X"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for e in slices:
        by_name.setdefault(e["name"], []).append(e)
    # Every stage run has a slice: as many as the report counts runs of it.
    stages = [name for name, row in rows.items() if row[0] not in ("SimplePipeline", "AdvancedPipeline",
                                                                   "StageGroup")]
    assert len(stages) >= 4
    for name in stages:
        assert len(by_name.get(name, [])) == int(rows[name][1]), name
    # Process-run stages carry their worker's pid (the report's "process <pid>" column).
    [parent] = [e["pid"] for e in events if e["name"] == "process_name" and e["args"]["name"] == "dynapipeline"]
    in_processes = [name for name, row in rows.items() if row[-2] == "process"]
    assert in_processes
    for name in in_processes:
        pids = {int(pid) for pid in rows[name][-1].split(",")}  # a stage may run in several workers over cycles
        assert {e["pid"] for e in by_name[name]} <= pids and parent not in pids, name
    # Slices of concurrent stages overlap: the concurrent sensors' first runs.
    sensors = sorted((e for e in slices if e["name"].startswith("sensor ")), key=lambda e: e["ts"])[:2]
    assert len(sensors) == 2 and sensors[1]["ts"] < sensors[0]["ts"] + sensors[0]["dur"]
    # Every stage slice lies inside one of its group's slices (its group: the row above it, one level up).
    members: dict[str, str] = {}
    group = ""
    for name in rows:
        if rows[name][0] == "StageGroup":
            group = name
        elif name in stages and depth[name] > depth.get(group, 0):
            members[name] = group
    assert set(members) == set(stages)
    slack = 1e-3
    for name, group in members.items():
        for s in by_name[name]:
            assert any(g["ts"] - slack <= s["ts"] and s["ts"] + s["dur"] <= g["ts"] + g["dur"] + slack
                       for g in by_name[group]), (name, group)


def _assert_ended(children: list[psutil.Process]) -> None:
    """Every one of ``children`` ends (or is a zombie) within a deadline: a busy machine is slow to end them."""
    def running() -> list[psutil.Process]:
        return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 30
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running() == []
