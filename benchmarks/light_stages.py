"""Stages for the recycling benchmarks, in a module that is cheap to import.

A replaced worker imports the module of each stage it receives again (stages of an importable module travel by
reference). A benchmark module imports pytest and the CLI's bench cases (~70 ms here), which would be timed on
every replacement; a user's stage module costs what its own imports cost.
"""

from __future__ import annotations

import time

from dynapipeline import Stage

CPU_SECONDS = 0.010


class Burn(Stage):
    """About ``CPU_SECONDS`` of pure-Python work per item; returns the item."""

    def execute(self, item: int) -> int:
        end = time.process_time() + CPU_SECONDS
        n = 0
        while time.process_time() < end:
            n += 1
        return item


class Tiny(Stage):
    def execute(self, item: int) -> int:
        return item + 1
