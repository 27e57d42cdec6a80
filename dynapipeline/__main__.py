"""Command line: ``dynapipeline info | bench | run | --version`` (also ``python -m dynapipeline ...``).

argparse, not click or typer: three subcommands with a handful of options do not
justify a dependency of the core package, and argparse gives ``--help`` per command.
"""

from __future__ import annotations

import argparse
import os
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


def _prog() -> str:
    """How the user ran us, for ``usage:``: the console script by its name, else ``python -m dynapipeline``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.startswith("dynapipeline"):  # the console script (dynapipeline, dynapipeline.exe)
        return name
    return "python -m dynapipeline"  # argv[0] is .../dynapipeline/__main__.py, or main() called from Python


def main(argv: list[str] | None = None) -> int:
    import dynapipeline

    parser = argparse.ArgumentParser(prog=_prog())
    parser.add_argument("--version", action="version", version=f"dynapipeline {dynapipeline.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, engine (compiled or pure), loop, Python").set_defaults(func=_info)
    from dynapipeline._front.bench import add_parser as add_bench

    add_bench(sub)
    from dynapipeline._front.run_command import add_parser as add_run

    add_run(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
