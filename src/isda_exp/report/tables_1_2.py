"""Tables 1 (standard augmentation) and 2 (Cutout, AutoAugment): baseline and ISDA per cell,
each beside the paper's number and with the difference to the cell's baseline."""
from __future__ import annotations

from . import paper
from .groups import DATASET_ORDER, Row, group_order
from .render import CELL_COLUMNS, VS_BASELINE, Grid, delta, result_cells

METHODS = ("baseline", "isda")
TABLE1_AUGS = ("baseline",)
TABLE2_COLUMNS = (("cutout", "baseline", "Cutout"), ("cutout", "isda", "Cutout+ISDA"),
                  ("autoaugment", "baseline", "AA"), ("autoaugment", "isda", "AA+ISDA"))
TABLE2_AUGS = tuple(dict.fromkeys(aug for aug, _, _ in TABLE2_COLUMNS))


def _cells(row: Row | None, key: tuple) -> list[str]:
    """Ours (with n), paper and difference for one cell of Table 1 or 2."""
    return result_cells(row, paper.paper_number(*key), None if row is None else row.diff)


def table1_grid(rows: list[Row], comparisons: dict) -> Grid:
    by_key = {r.key: r for r in rows}
    datasets = _present(DATASET_ORDER[:2], {r.dataset for r in rows}, keep_all=True)
    models = _present(tuple(paper.MODEL_NAMES), {r.model for r in rows})
    columns = [("", "Model"), ("", "Method")]
    columns += [(paper.dataset_name(d), s) for d in datasets for s in (*CELL_COLUMNS, VS_BASELINE)]
    out = []
    for model in models:
        for method in METHODS:
            line = [paper.model_name(model), method]
            for d in datasets:
                key = (d, model, TABLE1_AUGS[0], method)
                line += _cells(by_key.get(key), key)
                line.append(delta(comparisons.get(key)))
            out.append(line)
    title = ("Table 1: test error (%), standard augmentation -- mean ± sample std of the "
             "last-10-epoch error across seeds (n), beside the paper")
    return Grid(title, columns, out)


def table2_grid(rows: list[Row], comparisons: dict) -> Grid:
    by_key = {r.key: r for r in rows}
    pairs = sorted({(r.dataset, r.model) for r in rows},
                   key=lambda p: group_order((p[0], p[1], "", "")))
    columns = [("", "Dataset"), ("", "Model")]
    columns += [(label, s) for _, method, label in TABLE2_COLUMNS
                for s in (CELL_COLUMNS if method == "baseline" else (*CELL_COLUMNS, VS_BASELINE))]
    out = []
    for dataset, model in pairs:
        line = [paper.dataset_name(dataset), paper.model_name(model)]
        for aug, method, _ in TABLE2_COLUMNS:
            key = (dataset, model, aug, method)
            line += _cells(by_key.get(key), key)
            if method != "baseline":
                line.append(delta(comparisons.get(key)))
        out.append(line)
    title = ("Table 2: test error (%) with Cutout / AutoAugment (AA) -- mean ± sample std of "
             "the last-10-epoch error across seeds (n), beside the paper")
    return Grid(title, columns, out)


def _present(order: tuple[str, ...], seen: set[str], keep_all: bool = False) -> list[str]:
    """Entries of ``order`` (all, or those seen) followed by any other seen values, sorted."""
    return [v for v in order if keep_all or v in seen] + sorted(seen - set(order))
