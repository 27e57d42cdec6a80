"""The public API's types: mypy rejects misuse, and the typed user program runs.

``make test`` runs ``mypy --strict dynapipeline tests/typing``, which shows that correct
code type-checks; this test shows the check is not vacuous (mypy rejects wrong code).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent

# Each line marked `# error: <code>` must be reported with that code, and nothing else.
WRONG = '''
from dynapipeline import PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline.execution import ConcurrentExecutionStrategy, SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


class Double(Stage):
    async def execute(self, x: int) -> int:
        return 2 * x


stage = Double(name="d")
Double(name=1)  # error: arg-type
Double(name="d", timeout="1")  # error: arg-type
Double(name="d", tiemout=1.0)  # error: call-arg
StageGroup(name="g", stages=[stage], cycle_strategy=OnceCycleStrategy(),
           execution_strategy=OnceCycleStrategy())  # error: arg-type
PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "p", [stage],  # error: list-item
                                  OnceCycleStrategy(), SequentialExecutionStrategy())
PipelineFactory().create_pipeline(PipeLineType.SIMPLE, "p", [], OnceCycleStrategy(),
                                  SequentialExecutionStrategy(), context_data="abc")  # error: arg-type
SequentialExecutionStrategy(chain="yes")  # error: arg-type
ConcurrentExecutionStrategy(chain=True)  # error: call-arg
ConcurrentExecutionStrategy(True)  # error: call-arg
'''


def test_mypy_rejects_misuse_of_the_public_api(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_program.py"
    wrong.write_text(WRONG)
    expected = {
        (number, line.split("# error: ")[1].strip())
        for number, line in enumerate(WRONG.splitlines(), start=1) if "# error: " in line
    }
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache"), "--no-error-summary", "--hide-error-context",
         "--show-error-codes", str(wrong)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    ).stdout
    reported = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"wrong_program\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.MULTILINE)
    }
    assert reported == expected, out


@pytest.mark.timeout(60)
def test_the_typed_user_program_runs() -> None:
    subprocess.run([sys.executable, str(HERE / "typing" / "user_program.py")], check=True, cwd=ROOT,
                   capture_output=True, timeout=60)
