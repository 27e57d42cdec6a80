"""Aligned text tables, for ``report()`` and the bench command.

The standard library has no table formatter, and the optional display libraries
are not dependencies of the core package: these dozen lines are the whole need.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int],
                 rule: bool = False) -> str:
    """Columns two spaces apart, those in ``right`` aligned right; ``rule`` draws dashes under the head."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(head, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [line(head)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in rows)
    return "\n".join(lines)
