"""The public API's types: mypy rejects misuse, infers a flow's item type through every step, and the typed
programs run.

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


# The flow, one step a line: what mypy reveals at each (``# reveals: <type>``) or the error it reports.
FLOW = '''
import asyncio
from dataclasses import dataclass

from dynapipeline import flow
from dynapipeline.execution import MultiprocessExecutionStrategy, SemaphoreExecutionStrategy


@dataclass
class Record:
    ok: bool


def parse(line: str) -> Record:
    return Record(line != "")


async def enrich(record: Record) -> Record:
    return record


def save(batch: list[Record]) -> int:
    return len(batch)


def takes_str(text: str) -> str:
    return text


async def main(lines: list[str]) -> None:
    f1 = flow(lines)
    reveal_type(f1)  # reveals: Flow[builtins.str]
    f2 = f1.map(parse, on=MultiprocessExecutionStrategy(2))
    reveal_type(f2)  # reveals: Flow[flow_program.Record]
    f3 = f2.filter(lambda r: r.ok)
    reveal_type(f3)  # reveals: Flow[flow_program.Record]
    f4 = f3.map(enrich, on=SemaphoreExecutionStrategy(32), on_error="skip")
    reveal_type(f4)  # reveals: Flow[flow_program.Record]
    f5 = f4.batch(100, timeout=0.5)
    reveal_type(f5)  # reveals: Flow[builtins.list[flow_program.Record]]
    f6 = f5.map(save)
    reveal_type(f6)  # reveals: Flow[builtins.int]
    totals = await f6.run()
    reveal_type(totals)  # reveals: builtins.list[builtins.int]
    async for r in flow(lines).map(parse):
        reveal_type(r)  # reveals: flow_program.Record
    async with flow(lines).map(parse).iterate() as items:
        async for item in items:
            reveal_type(item)  # reveals: flow_program.Record
    reveal_type(flow(lines).map(parse).to_stream(name="etl"))  # reveals: dynapipeline._model.stream.Stream
    f6.map(takes_str)  # error: arg-type
    f2.filter(takes_str)  # error: arg-type
    f1.map(parse, on_error="ignore")  # error: call-overload
    totals_text: list[str] = await f6.run()  # error: assignment


asyncio.run(main(["a", ""]))
'''


def test_mypy_infers_a_flows_item_type_through_every_step_and_rejects_a_wrong_chain(tmp_path: Path) -> None:
    program = tmp_path / "flow_program.py"
    program.write_text(FLOW)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache"), "--no-error-summary", "--hide-error-context",
         "--show-error-codes", str(program)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    ).stdout
    lines = FLOW.splitlines()
    # Older mypy versions spell builtins as ``builtins.str``, newer ones as ``str``: compared without it.
    revealed = {int(m.group(1)): m.group(2).replace("builtins.", "")
                for m in re.finditer(r'flow_program\.py:(\d+): note: Revealed type is "(.*)"$', out, re.MULTILINE)}
    expected = {number: line.split("# reveals: ")[1].replace("builtins.", "")
                .replace("Flow[", "dynapipeline._model.flow.Flow[")
                for number, line in enumerate(lines, start=1) if "# reveals: " in line}
    assert revealed == expected, out
    errors = {(int(m.group(1)), m.group(2))
              for m in re.finditer(r"flow_program\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.MULTILINE)}
    assert errors == {(number, line.split("# error: ")[1].strip())
                      for number, line in enumerate(lines, start=1) if "# error: " in line}, out


@pytest.mark.timeout(60)
def test_the_typed_flow_program_runs() -> None:
    subprocess.run([sys.executable, str(HERE / "typing" / "flow_program.py")], check=True, cwd=ROOT,
                   capture_output=True, timeout=60)
