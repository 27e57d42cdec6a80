"""The examples run as users would run them (the code blocks of README.md and docs/: tests/test_docs.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import check_trace_format

from dynapipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_readme_example_runs_unchanged_and_times_groups():
    """The 0.1 README's example (docs/migrating.md), which README.md's group example follows."""
    out = subprocess.run([sys.executable, str(EXAMPLES / "readme_example.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "final counter: 7" in out
    seq = float(re.search(r"sequential group took ([\d.]+) s", out).group(1))
    conc = float(re.search(r"concurrent group took ([\d.]+) s", out).group(1))
    # Generous bounds: three 1-second stages one after another vs all at once.
    assert 2.9 <= seq < 6
    assert 0.9 <= conc < 2.5


def test_chained_groups_example_passes_results_on_and_keeps_the_failed_fetch():
    out = subprocess.run([sys.executable, str(EXAMPLES / "chained_groups.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "fetched: [[4, 8], ConnectionError('south did not answer for 2024-06-01'), [2, 6]]" in out
    assert "transformed: [[4, 8, 2, 6], [2.0, 4.0, 1.0, 3.0]]" in out
    assert "summary: 2024-06-01: 4 readings, scaled total 10.0" in out


def _example(name: str) -> subprocess.CompletedProcess[str]:
    # Each example runs in about a second; 10 s is the most any may take.
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, check=True,
                          timeout=10)


def test_rate_limit_keeps_at_most_three_calls_in_flight():
    out = _example("rate_limit.py").stdout
    assert "12 calls, at most 3 at once, 10 per second" in out
    assert float(re.search(r"in ([\d.]+) s", out).group(1)) >= 1.05  # 11 intervals of 0.1 s between 12 starts
    assert "results in call order: 'call 0' ... 'call 11'" in out


def test_stop_on_event_ends_the_loop_when_the_event_is_set():
    assert _example("stop_on_event.py").stdout == "stopped after 5 readings; the loop returned None\n"


def test_stop_cuts_a_stage_and_drain_finishes_the_cycle():
    cut, drained = _example("stop_and_drain.py").stdout.splitlines()
    loads, saves = (int(n) for n in re.search(r"(\d+) loads, (\d+) saves", cut).groups())
    assert cut.startswith("stop(drain=False): run() returned None;") and "cut: ['" in cut
    assert loads + saves >= 1
    loads, saves = (int(n) for n in re.search(r"(\d+) loads, (\d+) saves", drained).groups())
    assert drained.startswith("stop(drain=True): run() returned None;") and drained.endswith("cut: nothing")
    assert loads == saves >= 1


def test_timeouts_and_retries():
    out = _example("timeouts_and_retries.py").stdout.splitlines()
    assert out[0] == "flaky: ok after 3 attempts"
    assert out[1] == "too few retries: attempt 2: connection dropped"
    assert out[2].startswith("slow: stage 'slow' timed out after 0.1 s; gave up after")


def test_handlers_log_time_and_retry():
    result = _example("handlers.py")
    assert result.stdout.splitlines() == ["19 bytes from https://example.org", "broken: connection reset (try 2)"]
    log = result.stderr.splitlines()
    assert log[0] == "INFO download: start"
    assert log[1] == "WARNING download: ConnectionError('connection reset (try 1)'), retrying"
    assert re.fullmatch(r"INFO download: took 0\.\d+ s", log[2])
    assert log[3] == "INFO download: returned '19 bytes from https://example.org'"
    assert log[-1] == "ERROR broken: failed with ConnectionError('connection reset (try 2)')"


def test_progress_prints_counts_per_step():
    result = _example("progress.py")
    assert result.stdout == "294 parsed, 6 skipped\n"
    final = [line for line in result.stderr.splitlines() if line.startswith("done 'ingest'")]
    assert len(final) == 2
    assert "'fetch' received=300 done=300 failed=0 in_flight=0 queued=0" in final[0]
    assert "'parse' received=300 done=294 failed=6 in_flight=0 queued=0" in final[1]


def test_otel_prints_nested_spans():
    spans = _json_objects(_example("otel.py").stdout)
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {"nightly", "fetch", "users", "orders"}
    assert by_name["nightly"]["parent_id"] is None
    assert by_name["fetch"]["parent_id"] == by_name["nightly"]["context"]["span_id"]
    for stage in ("users", "orders"):
        assert by_name[stage]["parent_id"] == by_name["fetch"]["context"]["span_id"]


def _json_objects(text: str) -> list[dict]:
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        obj, index = decoder.raw_decode(text, index)
        objects.append(obj)
    return objects


def test_stream_etl_saves_every_good_record_and_skips_the_malformed():
    out = _example("stream_etl.py").stdout
    assert "99,990 records saved in 200 batches, 10 skipped" in out
    assert "parse   received=100,000 done=99,990 failed=10" in out
    assert "first skipped: item 9999 at step 'parse': ValueError(" in out


def _run_example(name: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_sensor_monitoring_runs_by_itself_and_writes_its_trace(tmp_path: Path) -> None:
    path = tmp_path / "sensors.json"
    started = time.monotonic()
    out = _run_example("sensor_monitoring.py", str(path))
    assert time.monotonic() - started < 30  # generous: the machine may be busy
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


@pytest.mark.parametrize("name", ["tracing.py", "sensor_monitoring.py"])
def test_examples_without_a_path_write_their_trace_to_a_temporary_file(tmp_path: Path, name: str) -> None:
    """Run from any folder (the examples' own, a clone's), they leave no file behind in it."""
    here, temporary = tmp_path / "here", tmp_path / "tmp"
    here.mkdir()
    temporary.mkdir()
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, check=True,
                         timeout=60, cwd=here, env={**os.environ, "TMPDIR": str(temporary)}).stdout
    assert list(here.iterdir()) == []
    [trace] = temporary.iterdir()
    assert str(trace) in out
    check_trace_format(json.loads(trace.read_text()))


def test_tracing_example_writes_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    started = time.monotonic()
    out = _run_example("tracing.py", str(path))
    assert time.monotonic() - started < 30  # generous: the machine may be busy
    assert f"11 slices written to {path}" in out
    check_trace_format(json.loads(path.read_text()))


def test_large_items_example_hashes_blocks_and_scales_arrays_through_shared_memory():
    out = subprocess.run([sys.executable, str(EXAMPLES / "large_items.py")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "16 blocks of 8 MB hashed on 2 processes" in out
    assert "16 arrays of 8 MB scaled; results are writable: True" in out  # numpy is in the dev extra


def test_pool_and_mpire_scripts_agree_with_their_flows():
    out = _example("from_pool_and_mpire.py").stdout.splitlines()
    assert out[0] == "Pool.imap script and its flow: 900 records saved in 9 batches"
    if importlib.util.find_spec("mpire") is None:  # optional: the flow part needs no mpire
        assert out[1:] == ["mpire is not installed: its script is skipped"]
    else:
        assert out[1:] == ["mpire script and its flow: 900 records saved in 9 batches"]
