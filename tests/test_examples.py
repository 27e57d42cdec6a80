"""The examples run as users would run them."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from helpers import check_trace_format

from dynapipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_readme_example_runs_unchanged_and_times_groups():
    out = subprocess.run([sys.executable, str(EXAMPLES / "readme_example.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "final counter: 7" in out
    seq = float(re.search(r"sequential group took ([\d.]+) s", out).group(1))
    conc = float(re.search(r"concurrent group took ([\d.]+) s", out).group(1))
    # Generous bounds: three 1-second stages one after another vs all at once.
    assert 2.9 <= seq < 6
    assert 0.9 <= conc < 2.5


def _run_example(name: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_sensor_monitoring_runs_by_itself_and_writes_its_trace(tmp_path: Path) -> None:
    path = tmp_path / "sensors.json"
    started = time.monotonic()
    out = _run_example("sensor_monitoring.py", str(path))
    assert time.monotonic() - started < 10
    assert "spectrum peaks per cycle: [[7, 7], [7, 7], [7, 7]]" in out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert re.search(r"process \d+", out) and rows["ping"].endswith("thread") and rows["threshold"].endswith("loop")
    events = check_trace_format(json.loads(path.read_text()))
    names = {e["name"] for e in events if e["ph"] == "X"}
    assert {"sensor monitoring", "sensors", "monitor", "watchdog", "analysis", "spectrum 0", "ping"} <= names


def test_sensor_monitoring_exposes_its_pipeline_without_running_it() -> None:
    spec = importlib.util.spec_from_file_location("sensor_monitoring_example", EXAMPLES / "sensor_monitoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.pipeline, Pipeline) and not module.pipeline.running
    assert module.analysis.worker_pids() == []  # importing starts no worker


def test_tracing_example_writes_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    started = time.monotonic()
    out = _run_example("tracing.py", str(path))
    assert time.monotonic() - started < 10
    assert f"11 slices written to {path}" in out
    check_trace_format(json.loads(path.read_text()))
