"""The parent's memory when large items go through a stream step on processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ITEM_BYTES = 50 << 20
ITEMS = 12
MAXSIZE = 4

# Run in a fresh interpreter each time, so that the peak RSS it reads belongs to this one run only.
# The items are filled (b"\x01" * n, not bytes(n), whose calloc'd pages stay untouched and so out of RSS),
# so that an item held by the parent counts the same whichever way the step runs.
RUN = f'''
import json, resource, sys
import dynapipeline
from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy


class Length(Stage):
    def execute(self, item):
        return len(item)


def peak_bytes():
    # Linux: this process's own high-water mark. ru_maxrss also counts the one of the process it was forked
    # from before its exec (pytest's own, hundreds of MiB late in a long session), which hid the run's growth.
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def items():
    for _ in range({ITEMS}):
        yield b"\\x01" * {ITEM_BYTES}


async def main(where):
    strategy = MultiprocessExecutionStrategy(2) if where == "process" else None
    stream = Stream(name="memory", steps=[Step(Length(name="length"), strategy)], maxsize={MAXSIZE})
    # Warm: the pool started, the stage shipped, the run's machinery imported, before the baseline.
    await stream.run([b"warm"] * 8)
    before = peak_bytes()
    out = await stream.run(items())
    grown = peak_bytes() - before
    if strategy is not None:
        strategy.close()
    assert out == [{ITEM_BYTES}] * {ITEMS}, out
    print(json.dumps({{"grown": grown}}))


if __name__ == "__main__":
    dynapipeline.run(main(sys.argv[1]))
'''


def _peak_growth(where: str) -> int:
    """Bytes the parent's peak RSS grew by over the run, in a fresh interpreter (``where``: loop or process)."""
    done = subprocess.run([sys.executable, "-c", RUN, where], capture_output=True, text=True, env=dict(os.environ),
                          timeout=100)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout.splitlines()[-1])["grown"])


def test_a_process_step_holds_at_most_one_item_more_than_the_same_step_on_the_loop() -> None:
    """A stream of 12 items of 50 MiB (``maxsize=4``, a step returning ``len(item)``) run twice, each in a fresh
    interpreter, measuring the parent's peak RSS growth over the run (``VmHWM`` on Linux, ``ru_maxrss`` on macOS).

    Once with the step on the event loop: its growth is what the stream itself holds (4 items queued, the one
    in the step, the one the source made next: about 6 items). Once with the step on
    ``MultiprocessExecutionStrategy(2)``: sending the items to the workers may add one item's worth on top of
    that (plus 15 % for the allocator). A parent that keeps a copy of each item in flight beside the item
    (a pickle for the pipe, or its block of shared memory while it still holds the item), or that has
    several large items in flight per worker, goes past it: before shared memory the process run grew by
    645 MiB against 292 MiB on the loop.
    """
    loop = _peak_growth("loop")
    process = _peak_growth("process")
    limit = 1.15 * loop + ITEM_BYTES
    assert process <= limit, (f"process run grew the parent's peak RSS by {process / 2**20:.0f} MiB, the loop run "
                              f"by {loop / 2**20:.0f} MiB: limit {limit / 2**20:.0f} MiB")
