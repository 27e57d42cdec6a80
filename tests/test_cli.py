"""The command line: ``info``, ``bench`` (tiny sizes: behaviour, not speed), ``--version``, how it names itself."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dynapipeline
from dynapipeline.__main__ import main
from dynapipeline._front.bench import BUILD, CASES, KINDS, format_table

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
                 "--runs", "2", "--json", "-"]) == 0
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
    out = _cli("bench", "--quick", "--loops", "asyncio", "--sizes", "10", "--repeats", "1").stdout
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("strategy"))
    for column in ("strategy", "loop", "mode", "µs/stage", "raw µs/stage", "ratio"):
        assert column in header
    modes = {line.split()[4] for line in lines if line.split()[:1] and line.split()[0] in CASES}
    # The pure engine always exists; the compiled one when the extension was built.
    assert "pure" in modes
    assert MODE in modes


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
