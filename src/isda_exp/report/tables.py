"""Which tables the report sets and the groups each holds: the one registry of the paper's tables.

`TABLES` maps a table number to its layout (table12, table35); None is the long list of every
group (listing). The layouts build grids, `render` sets them as Markdown or LaTeX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import listing
from . import tables_1_2 as table12
from . import tables_3_5 as table35
from .compare import by_method_key, compare
from .groups import Row
from .render import Grid, check_format, render, smoke_banner


@dataclass(frozen=True)
class Layout:
    """One table: the augmentations and method labels of its cells, which groups it holds, and
    how it is set (grid for Markdown/LaTeX, text for CSV; both get the comparisons by row key)."""

    augs: tuple[str, ...]
    methods: tuple[str, ...]
    select: Callable[[list[Row]], list[Row]]
    grid: Callable[[list[Row], dict], Grid]
    csv: Callable[[list[Row], dict], str]


def _cells_of(augs: tuple[str, ...], methods: tuple[str, ...]) -> Callable[[list[Row]], list[Row]]:
    return lambda rows: [r for r in rows if r.aug in augs and r.method in methods]


def _per_method(table: int) -> Layout:
    """Table 3 or 5: one row per method (table35)."""
    return Layout(("baseline",), table35.labels(table), lambda rows: table35.select(table, rows),
                  lambda rows, _: table35.grid(table, rows), lambda rows, _: table35.to_csv(table, rows))


TABLES = {
    1: Layout(table12.TABLE1_AUGS, table12.METHODS, _cells_of(table12.TABLE1_AUGS, table12.METHODS),
              table12.table1_grid, listing.groups_csv),
    2: Layout(table12.TABLE2_AUGS, table12.METHODS, _cells_of(table12.TABLE2_AUGS, table12.METHODS),
              table12.table2_grid, listing.groups_csv),
    3: _per_method(3),
    5: _per_method(5),
}
EVERY_GROUP = Layout((), (), list, listing.groups_grid, listing.groups_csv)


def layout(table: int | None) -> Layout:
    """The layout of the paper's Table `table`, or of the list of every group for None."""
    if table is None:
        return EVERY_GROUP
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; use {', '.join(map(str, sorted(TABLES)[:-1]))} "
                         f"or {sorted(TABLES)[-1]}")
    return TABLES[table]


def table_rows(rows: list[Row], table: int | None) -> list[Row]:
    """The groups belonging to the paper's Table `table`, all groups for None."""
    return layout(table).select(rows)


def format_table(rows: list[Row], fmt: str = "md", table: int | None = None) -> str:
    """Render group rows as Markdown, LaTeX (booktabs) or CSV; ``table`` picks the paper's layout."""
    check_format(fmt)
    chosen = layout(table)
    comparisons = by_method_key(compare(rows))
    rows = chosen.select(rows)
    if fmt == "csv":
        return chosen.csv(rows, comparisons)
    return render(chosen.grid(rows, comparisons), fmt, smoke_banner(rows))


def format_comparisons(rows: list[Row], fmt: str = "md", table: int | None = None) -> str:
    """Each method of the table's groups minus its cell's baseline (Welch CI and p)."""
    shown = {r.key for r in table_rows(rows, table)}
    return listing.comparisons_text([c for c in compare(rows) if c.method.key in shown], fmt)
