"""``dynapipeline info``: the version, the engine (compiled or pure), how large buffers are copied into shared
memory, how process workers run a stream step's items, the loop ``run()`` would use, the Python.

See docs/troubleshooting.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

__all__ = ["add_parser", "info"]


def info(_: argparse.Namespace) -> int:
    """Print what this installation runs with; exit status 0."""
    import dynapipeline
    from dynapipeline._transports._remote.copying import STREAMS
    from dynapipeline._transports.process.itemlog import COMPILED_LOG

    print(f"dynapipeline {dynapipeline.__version__}")
    print(f"engine: {'compiled' if dynapipeline.compiled else 'pure'}")
    print(f"shared-memory copy: {'streamed past the cache (compiled)' if STREAMS else 'memcpy (pure)'}")
    print(f"process items: {'compiled loop' if COMPILED_LOG else 'pure loop'}")
    print(f"loop: {dynapipeline.loop_name()}")
    print(f"python: {platform.python_version()} ({sys.implementation.name})")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``info`` to the command line's subcommands."""
    sub.add_parser("info", help="version, engine (compiled or pure), loop, Python").set_defaults(func=info)
