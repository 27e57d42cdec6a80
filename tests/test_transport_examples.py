"""The process and thread examples run as users would run them (small sizes) and print sensible figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_cpu_bound_processes_example():
    out = run("cpu_bound_processes.py", "20000")
    assert "primes below 20000: 2262" in out
    for label in ("including pool start", "warm pool"):
        speedup = float(re.search(rf"{label}: [\d.]+ s \(speed-up ([\d.]+)x\)", out).group(1))
        assert speedup > 0


def test_blocking_io_threads_example():
    out = run("blocking_io_threads.py", "0.2", "4")
    conc = float(re.search(r"concurrent \(on the event loop\): ([\d.]+) s", out).group(1))
    threads = float(re.search(r"threads: ([\d.]+) s", out).group(1))
    assert conc >= 0.75  # 4 × 0.2 s, one after another
    assert threads < conc


def test_dask_cluster_example():
    out = run("dask_cluster.py", "20000")
    assert "primes below 20000: 2262 (4 identical stages, 2 Dask workers)" in out
    for label in ("first run", "warm"):
        speedup = float(re.search(rf"dask, {label}: [\d.]+ s \(speed-up ([\d.]+)x\)", out).group(1))
        assert speedup > 0
