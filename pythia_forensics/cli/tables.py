"""Terminal tables that fit the terminal: numbers are never cut, text wraps, and when even
that is too wide the lowest-priority columns are left out (and the caption says which).

Every table the CLI prints goes through `fit_table` / `print_table`, so `COLUMNS=80` gives
readable output everywhere (rich alone would squeeze each column to `0.…`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

__all__ = ["Col", "fit_table", "print_table", "table_width"]

# A table's frame: one border before each column, one after the last, one space of padding
# either side of every cell (rich's default box and padding).
_PER_COLUMN = 3
_EDGE = 1
WRAP_MIN = 12  # a wrapping text column never gets narrower than this (or its longest word)


@dataclass(frozen=True)
class Col:
    """One column.

    Attributes:
        name: header.
        justify: "left" or "right" (numbers).
        drop: 0 = always shown; higher = left out first when the table is too wide.
        wrap: free text that may wrap onto several lines (never set it for numbers).
    """

    name: str
    justify: str = "left"
    drop: int = 0
    wrap: bool = False


def table_width(console=None) -> int:
    """The width to fit: $COLUMNS when set (also when piped), else the console's width."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    if console is None:
        from pythia_forensics.cli.common import console
    return console.width


def _cell_len(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in str(cell).split("\n")), default=0)


def _word_len(cell: str) -> int:
    return max((len(w) for w in Text.from_markup(str(cell)).plain.split()), default=0)


def _plan(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> tuple[list[int], dict[int, int]]:
    """(kept column indices, index -> width)."""
    natural = {i: max([len(c.name)] + [_cell_len(r[i]) for r in rows]) for i, c in enumerate(cols)}
    minimum = {i: (max(min(natural[i], WRAP_MIN), min(natural[i], max([len(c.name)] + [_word_len(r[i]) for r in rows])))
                   if c.wrap else natural[i]) for i, c in enumerate(cols)}
    kept = list(range(len(cols)))

    def need(idx, widths):
        return sum(widths[i] for i in idx) + _PER_COLUMN * len(idx) + _EDGE

    while need(kept, minimum) > width:
        droppable = [i for i in kept if cols[i].drop > 0]
        if not droppable:
            break
        kept.remove(max(droppable, key=lambda i: (cols[i].drop, i)))
    widths = {i: natural[i] for i in kept}
    spare = width - need(kept, minimum)
    wraps = [i for i in kept if cols[i].wrap]
    if need(kept, widths) > width and wraps:
        widths.update({i: minimum[i] for i in wraps})
        extra = {i: natural[i] - minimum[i] for i in wraps}
        total = sum(extra.values())
        for i in wraps:  # share what is left in proportion to what each would like
            widths[i] += int(max(spare, 0) * extra[i] / total) if total else 0
    return kept, widths


def fit_table(title: str, cols: Sequence[Col], rows: Sequence[Sequence[str]], *, width: int) -> Table:
    """A rich Table of `rows` (markup strings) that fits in `width` terminal cells.

    Args:
        title: table title (wraps by itself).
        cols: the columns, in display order.
        rows: one sequence of cell strings per row (rich markup allowed).
        width: terminal cells available.

    Returns:
        The Table; its caption names the columns left out, if any.
    """
    kept, widths = _plan(cols, rows, width)
    dropped = [cols[i].name for i in range(len(cols)) if i not in kept]
    caption = f"left out to fit {width} columns: {', '.join(dropped)}" if dropped else None
    table = Table(title=title, caption=caption)
    for i in kept:
        c = cols[i]
        table.add_column(c.name, justify=c.justify, no_wrap=not c.wrap, overflow="fold" if c.wrap else "ignore",
                         width=widths[i] if c.wrap else None, min_width=None if c.wrap else widths[i])
    for r in rows:
        table.add_row(*(str(r[i]) for i in kept))
    return table


def print_table(title: str, cols: Sequence[Col], rows: Sequence[Sequence[str]], *, console=None) -> None:
    """Print a table fitted to the terminal (`table_width`) on `console` (default: the CLI's)."""
    if console is None:
        from pythia_forensics.cli.common import console
    width = table_width(console)
    console.print(fit_table(title, cols, rows, width=width), width=width)
