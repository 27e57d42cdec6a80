"""Timeouts and retries on a stage: ``timeout=``, ``retries=``, ``retry_delay=``, ``retry_backoff=``.

- A failed (or timed-out) attempt is retried after ``retry_delay * retry_backoff**k``
  seconds (here 0.05, 0.1, 0.2 ...); the run fails only when the retries are used up.
- An attempt that runs past ``timeout`` seconds is cancelled and raises
  ``StageTimeoutError`` (a ``TimeoutError``) naming the stage.
Run: ``python examples/timeouts_and_retries.py``.
"""

import asyncio

import dynapipeline
from dynapipeline import Stage
from dynapipeline.errors import StageTimeoutError


class Flaky(Stage):
    """Fails its first two attempts (a dropped connection), then succeeds."""

    attempts: int = 0

    async def execute(self):
        self.attempts += 1
        if self.attempts < 3:
            raise ConnectionError(f"attempt {self.attempts}: connection dropped")
        return f"ok after {self.attempts} attempts"


class Slow(Stage):
    """Takes 10 s: always longer than its timeout."""

    async def execute(self):
        await asyncio.sleep(10)


async def main():
    flaky = Flaky(name="flaky", retries=3, retry_delay=0.05, retry_backoff=2)
    print("flaky:", await flaky.run())

    too_few = Flaky(name="too few retries", retries=1)
    try:
        await too_few.run()
    except ConnectionError as error:
        print("too few retries:", error)

    slow = Slow(name="slow", timeout=0.1, retries=2, retry_delay=0.05)
    try:
        await slow.run()
    except StageTimeoutError as error:
        # Three attempts of 0.1 s each, 0.05 s apart: about 0.4 s in all.
        print(f"slow: {error}; gave up after {slow.execution_time:.1f} s")


if __name__ == "__main__":
    dynapipeline.run(main())
