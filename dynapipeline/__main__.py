"""Command line: ``python -m dynapipeline info | bench``."""

from __future__ import annotations

import argparse
import platform
import sys

__all__ = ["main"]


def _info(_: argparse.Namespace) -> int:
    import dynapipeline

    print(f"dynapipeline {dynapipeline.__version__}")
    print(f"engine: {'compiled' if dynapipeline.compiled else 'pure'}")
    print(f"loop: {dynapipeline.loop_name()}")
    print(f"python: {platform.python_version()} ({sys.implementation.name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynapipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, engine (compiled or pure), loop, Python").set_defaults(func=_info)
    from dynapipeline.front.bench import add_parser as add_bench

    add_bench(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
