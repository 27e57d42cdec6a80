"""Large items on processes: each travels once through shared memory, not through a pipe.

Run: python examples/large_items.py

- 16 blocks of 8 MB ``bytes`` are hashed on 2 worker processes. Each block (at or
  above ``shared_memory_threshold``, 1 MiB by default) is written once into shared
  memory; the worker rebuilds its ``bytes`` from there (one copy: bytes own their memory).
- With numpy installed, 16 float64 arrays of 8 MB are scaled on the same workers:
  each arrives in the worker as a view on shared memory (no copy), and its result
  comes back the same way, a view the caller owns.
- The parent holds about as much as the same stream on the event loop would: a large
  item travels alone, one per worker, and the step keeps no other copy of it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from dynapipeline import Stage, Step, Stream
from dynapipeline.execution import MultiprocessExecutionStrategy

BLOCK = 8 << 20


class Digest(Stage):
    """A block's SHA-256 (runs in a worker process)."""

    def execute(self, block: bytes) -> str:
        return hashlib.sha256(block).hexdigest()


class Scale(Stage):
    """An array times 2 (runs in a worker process, on a view of shared memory)."""

    def execute(self, array: Any) -> Any:
        return array * 2.0


async def main() -> None:
    blocks = [bytes([i]) * BLOCK for i in range(16)]
    async with MultiprocessExecutionStrategy(max_workers=2) as processes:
        digests = await Stream(name="hash", steps=[Step(Digest(name="digest"), processes)], maxsize=4).run(blocks)
        assert digests[3] == hashlib.sha256(blocks[3]).hexdigest()
        print(f"{len(digests)} blocks of 8 MB hashed on 2 processes")
        try:
            import numpy as np
        except ImportError:
            print("numpy is not installed: no arrays")
            return
        arrays = [np.full(BLOCK // 8, float(i)) for i in range(16)]
        scaled = await Stream(name="scale", steps=[Step(Scale(name="scale"), processes)], maxsize=4).run(arrays)
        assert all(float(a[0]) == 2.0 * i for i, a in enumerate(scaled))
        print(f"{len(scaled)} arrays of 8 MB scaled; results are writable: {scaled[0].flags.writeable}")


if __name__ == "__main__":
    asyncio.run(main())
