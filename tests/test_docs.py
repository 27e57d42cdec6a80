"""Every ```python block of README.md and docs/*.md runs as a script, and prints what the docs say it prints.

A block that cannot run alone (it uses a ``pipeline`` or a cluster address defined elsewhere) is
marked on purpose: the line before its fence is ``<!-- fragment -->``. Fragments are counted per
file in ``FRAGMENTS``, so a new one is a visible decision, never an accident. Shell and text
blocks are not run. The site itself is built by ``mkdocs build --strict`` in ``make test``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"

# The blocks marked as fragments, per file: change this only with the marker.
FRAGMENTS = {
    "docs/dask.md": 1,  # a cluster's address and an awaited client
    "docs/flow.md": 1,  # a line mypy rejects, shown with its error
    "docs/groups.md": 1,  # the factory call's shape, with `groups` defined elsewhere
    "docs/observing.md": 3,  # Tracer, Progress and OpenTelemetryHandler around a `pipeline` defined elsewhere
}

# What each runnable block prints (regular expressions, one per line of stdout, in order), by file and
# position among that file's python blocks (1-based, fragments included).
EXPECTED = {
    ("README.md", 1): [r"saved 999 records in 10 batches, skipped 1", r"parse 7"],
    ("README.md", 2): [
        re.escape("[['a0 done', 'a1 done', 'a2 done'], ['b0 done', 'b1 done', 'b2 done']]"),
        r"6",
        # Generous bounds: three 0.2-second stages one after another vs all at once, on a busy machine.
        r"0\.[6-9] s, 0\.[2-5] s|1\.\d s, 0\.[2-9] s",
        r"component +kind +runs .*",
        r"demo +SimplePipeline +1 .*",
        r"  one by one +StageGroup +1 .*",
        *[rf"    a{i} +Fetch +1 .*" for i in range(3)],
        r"  all at once +StageGroup +1 .*",
        *[rf"    b{i} +Fetch +1 .*" for i in range(3)],
        r"slowest stage runs:",
        *[r"  demo / .* +cycle 1 +[\d.]+ ms"] * 5,
    ],
    ("docs/dask.md", 2): [re.escape("[0, 1, 4, 9]")],
    ("docs/errors.md", 1): [r"slow 0\.05 True"],
    ("docs/flow.md", 1): [re.escape(str([100] * 9)), re.escape("Record(ident=0, value=0.0, site='')"),
                          r"1000 1000"],
    ("docs/flow.md", 2): [re.escape("['a', 'bb', 'ccc', 'd']"), re.escape("['BB', 'CCC']"),
                          re.escape("[['a', 'bb', 'ccc'], ['d']]"), re.escape("[3, 1]"),
                          re.escape("['split', 'len']")],
    ("docs/flow.md", 3): [re.escape("[10, 20, 40]"), re.escape("[(2, 'int')]"), r"1 3"],
    ("docs/groups.md", 1): [re.escape("[[[1, 2], [3, 4]]]"), r"4 1"],
    ("docs/groups.md", 2): [],
    ("docs/groups.md", 3): [],
    ("docs/groups.md", 5): [r"None True"],
    ("docs/groups.md", 6): ["before f", "before f", "after f 42", "after f 42"],
    ("docs/groups.md", 7): [re.escape("[[1, 3], [2, 6]]")],
    ("docs/groups.md", 8): [re.escape("[[4, 8], ConnectionError('south did not answer')]")],
    ("docs/index.md", 1): [r"19 bytes 1", r".*did you mean 'retries'\?.*"],
    ("docs/index.md", 2): [r"uvloop", r"asyncio\.unix_events", r"True"],
    ("docs/migrating.md", 1): [
        r"Executing SIMPLE Pipeline:",
        *[rf"Executing stage: Stage {i} with {i}" for i in range(1, 4)],
        *[r"Executing stage: Stage [4-6] with [4-6]"] * 3,
        r"execution time for Sequential stage group :[3-5]\.\d+",
        r"execution time for Concurrent stage group: [1-2]\.\d+",
        r"execution time for pipeline: [4-6]\.\d+",
    ],
    ("docs/observing.md", 1): [
        r"component +kind +runs .*",
        r"etl +AdvancedPipeline +1 .*",
        r"  download +StageGroup +1 .*",
        *[rf"    file {i} +Download +1 .*" for i in range(3)],
        r"slowest stage runs:",
        *[r"  etl / download / file \d +cycle 1 +[\d.]+ ms"] * 3,
        re.escape("['components', 'slowest']"),
    ],
    ("docs/observing.md", 5): [re.escape("['fetch', 'orders', 'users']")],
    ("docs/performance.md", 1): [r"True \d+\.\d+\.\d+.*"],
    ("docs/streams.md", 1): [
        r"999 17 parse",
        r"StepProgress\(received=1000, done=999, failed=1, in_flight=0, queued=0, cancelled=0\)",
    ],
    ("docs/streams.md", 2): [re.escape("['A B C', 'D E']")],
    ("docs/streams.md", 3): [re.escape("[10, 1, 10, 1]"),
                             re.escape("['parse', 'double', 'ratio', 'digits', 'pow', 'lambda']"),
                             re.escape("[(1, 'ratio')]")],
    ("docs/streams.md", 4): [
        re.escape("[1.0, ZeroDivisionError('division by zero'), 0.25]"),
        re.escape("[\"in stream 'inv', step 'invert', item 1\"]"),
    ],
    ("docs/streams.md", 5): [r"0"],
    ("docs/streams.md", 6): [r"20 True", r"True"],
    ("docs/threads-and-processes.md", 1): [re.escape("['get 0', 'get 1'] [0, 1, 4, 9]"), "True"],
    ("docs/threads-and-processes.md", 2): [re.escape("[0, 1, 4, 9, 16] 50"), "True"],
    ("docs/threads-and-processes.md", 3): [re.escape("[1, 2, -1, -2]"), "True", re.escape("[True, False]")],
}


@dataclass(frozen=True)
class Block:
    path: str
    number: int  # 1-based among the file's python blocks
    line: int  # of the opening fence
    code: str
    fragment: bool

    @property
    def key(self) -> tuple[str, int]:
        return (self.path, self.number)


def python_blocks(path: Path) -> list[Block]:
    """The file's ```python blocks, each marked as a fragment when the line before its fence says so."""
    lines = path.read_text().splitlines()
    name = path.relative_to(ROOT).as_posix()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            end = lines.index("```", index + 1)
            fragment = index > 0 and lines[index - 1].strip() == FRAGMENT
            blocks.append(Block(name, len(blocks) + 1, index + 1, "\n".join(lines[index + 1 : end]) + "\n", fragment))
            index = end
        index += 1
    return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]
RUNNABLE = [block for block in BLOCKS if not block.fragment]


def test_the_docs_have_python_blocks_and_every_runnable_one_has_its_expected_output() -> None:
    assert {path.name for path in DOCS} >= {"README.md", "index.md", "streams.md", "groups.md", "reference.md"}
    assert len(RUNNABLE) >= 20
    assert sorted(block.key for block in RUNNABLE) == sorted(EXPECTED)


def test_fragments_are_marked_on_purpose_and_counted() -> None:
    counted: dict[str, int] = {}
    for block in BLOCKS:
        if block.fragment:
            counted[block.path] = counted.get(block.path, 0) + 1
    assert counted == FRAGMENTS
    for path in DOCS:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.strip() == FRAGMENT:
                # A marker that marks nothing (a blank line or prose before the fence) would go unnoticed.
                following = lines[index + 1].strip() if index + 1 < len(lines) else ""
                assert following == "```python", f"{path.name}:{index + 1}: {FRAGMENT} not right before a python block"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: f"{block.path}#{block.number}")
def test_block_runs_and_prints_what_the_docs_say(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code)
    # Generous: a block that starts a Dask LocalCluster or a process pool on a busy machine.
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110,
                            cwd=tmp_path)
    where = f"{block.path}:{block.line}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    printed = result.stdout.splitlines()
    expected = EXPECTED[block.key]
    assert len(printed) == len(expected), f"{where} printed:\n{result.stdout}"
    for line, pattern in zip(printed, expected, strict=True):
        assert re.fullmatch(pattern, line), f"{where}: {line!r} does not match {pattern!r}"


def test_readme_is_a_front_page_whose_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/|examples/)?[\w./-]+\.(?:md|py))(?:#[\w-]+)?\)", readme)
    assert "docs/streams.md" in links and "docs/groups.md" in links
    for link in links:
        assert (ROOT / link).is_file(), link
