"""The examples run as users would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_chained_groups_example_passes_results_on_and_keeps_the_failed_fetch():
    out = subprocess.run([sys.executable, str(EXAMPLES / "chained_groups.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "fetched: [[4, 8], ConnectionError('south did not answer for 2024-06-01'), [2, 6]]" in out
    assert "transformed: [[4, 8, 2, 6], [2.0, 4.0, 1.0, 3.0]]" in out
    assert "summary: 2024-06-01: 4 readings, scaled total 10.0" in out
