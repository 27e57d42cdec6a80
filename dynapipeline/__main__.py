"""Command line: ``dynapipeline info | bench | run | --version`` (also ``python -m dynapipeline ...``).

Each subcommand is a module of ``dynapipeline/_cli/`` with an ``add_parser(sub)``;
``main()`` assembles them. argparse, not click or typer: three subcommands with a
handful of options do not justify a dependency of the core package, and argparse
gives ``--help`` per command.

See docs/index.md.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def _prog() -> str:
    """How the user ran us, for ``usage:``: the console script by its name, else ``python -m dynapipeline``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.startswith("dynapipeline"):  # the console script (dynapipeline, dynapipeline.exe)
        return name
    return "python -m dynapipeline"  # argv[0] is .../dynapipeline/__main__.py, or main() called from Python


def main(argv: list[str] | None = None) -> int:
    import dynapipeline
    from dynapipeline._cli import bench, info, run

    parser = argparse.ArgumentParser(prog=_prog())
    parser.add_argument("--version", action="version", version=f"dynapipeline {dynapipeline.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (info, bench, run):  # the order of --help
        command.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
