"""Tables 3 (competing losses, dropout) and 5 (ablation): one row per method in the paper's order.

Each table is set beside the numbers it prints (Table 5's Basic differs from Table 1's). Table 3's
generator-based rows carry the paper's numbers only: they are not reproduced. Groups evaluated on
the hold-out have their own label and never appear here.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import paper
from .groups import Row
from .render import CELL_COLUMNS, MISSING, Grid, csv_text, mean_std, num, result_cells

DATASETS = ("cifar10", "cifar100")


@dataclass
class Cell:
    """One (row, dataset, model) cell: our group (or None) and the printed number (or None)."""

    row: str
    dataset: str
    model: str
    label: str | None  # the runs' method label; None: not reproduced
    ours: Row | None
    published: tuple[float, float | None] | None

    @property
    def diff(self) -> float | None:
        if self.ours is None or self.published is None:
            return None
        return self.ours.error_mean - self.published[0]


def paper_models(table: int) -> tuple[str, ...]:
    """The models the paper prints the table for."""
    return (paper.TABLE5_MODEL,) if table == 5 else paper.TABLE3_MODELS


def table_labels(table: int, model: str) -> tuple[str, ...]:
    """The method labels that fill the table's cells for a model, in the paper's row order."""
    if table == 5:
        return tuple(label for _, label, _, _ in paper.TABLE5_ROWS)
    return tuple(paper.table3_label(method, dropout, model)
                 for _, method, dropout, _ in paper.TABLE3_ROWS if method is not None)


def labels(table: int) -> tuple[str, ...]:
    """Every method label of the table's cells on the paper's models, row by row."""
    per_model = [table_labels(table, m) for m in paper_models(table)]
    return tuple(dict.fromkeys(label for row in zip(*per_model) for label in row))


def _specific(label: str) -> bool:
    """A label only this table has (an ablation, a competing loss, dropout), not Table 1's cells."""
    return label not in ("baseline", "isda")


def models(table: int, rows: list[Row]) -> list[str]:
    """The paper's models of the table, then any other model with a run of a method of its own."""
    own = paper_models(table)
    extra = {r.model for r in rows if r.aug == "baseline" and r.model not in own
             and r.method in table_labels(table, r.model) and _specific(r.method)}
    order = tuple(paper.MODEL_NAMES)
    return list(own) + sorted(extra, key=lambda m: (order.index(m) if m in order else len(order), m))


def select(table: int, rows: list[Row]) -> list[Row]:
    """The groups that fill a cell of Table 3 or 5 (standard augmentation, a row's method)."""
    shown = models(table, rows)
    return [r for r in rows if r.aug == "baseline" and r.model in shown
            and r.method in table_labels(table, r.model)]


def cells(table: int, rows: list[Row]) -> list[list[Cell]]:
    """The table's rows in the paper's order, each a list of cells (model-major, then dataset)."""
    by_key = {r.key: r for r in rows}
    spec = ([(name, lambda m, label=label: label) for name, label, _, _ in paper.TABLE5_ROWS]
            if table == 5 else
            [(name, lambda m, me=method, d=dropout: paper.table3_label(me, d, m))
             for name, method, dropout, _ in paper.TABLE3_ROWS])
    datasets = list(DATASETS) + sorted({r.dataset for r in rows} - set(DATASETS))  # e.g. synthetic
    out = []
    for name, label_of in spec:
        line = []
        for model in models(table, rows):
            label = label_of(model)
            for dataset in datasets:
                ours = by_key.get((dataset, model, "baseline", label)) if label else None
                line.append(Cell(name, dataset, model, label, ours,
                                 paper.table_number(table, dataset, model, name)))
        out.append(line)
    return out


def _text(cell: Cell) -> list[str]:
    if cell.label is None:
        return ["not reproduced", mean_std(*cell.published) if cell.published else MISSING, MISSING]
    return result_cells(cell.ours, cell.published, cell.diff)


def grid(table: int, rows: list[Row]) -> Grid:
    table_cells = cells(table, rows)
    heads = [(c.model, c.dataset) for c in table_cells[0]]
    columns = [("", "Method")]
    columns += [(f"{paper.model_name(m)} {paper.DATASET_SHORT.get(d, d)}", s) for m, d in heads
                for s in CELL_COLUMNS]
    out = []
    for line in table_cells:
        name = line[0].row
        if all(c.label is None for c in line):
            name = f"{name} -- {paper.NOT_REPRODUCED}"
        out.append([name] + [t for c in line for t in _text(c)])
    what = ("Table 3: test error (%) of competing losses and dropout (standard augmentation)"
            if table == 3 else "Table 5: the ablation, test error (%) (standard augmentation)")
    title = (f"{what} -- mean ± sample std of the last-10-epoch error across seeds (n), beside "
             "the numbers this table prints (\"—\": not run, or \"-\" in the paper)")
    return Grid(title, columns, out, lead=1)


CSV_COLUMNS = ("row", "dataset", "model", "method", "seeds", "error_mean", "error_std",
               "paper_mean", "paper_std", "diff", "smoke", "reproduced")


def to_csv(table: int, rows: list[Row]) -> str:
    """The table in long form, one line per cell, in the paper's row order."""
    lines = []
    for line in cells(table, rows):
        for c in line:
            o, p = c.ours, c.published
            lines.append([c.row, c.dataset, c.model, c.label or "", o.seeds if o else 0,
                          num(o and o.error_mean), num(o and o.error_std), num(p and p[0]),
                          num(p and p[1]), num(c.diff), "true" if o and o.smoke else "false",
                          "false" if c.label is None else "true"])
    return csv_text(CSV_COLUMNS, lines)
