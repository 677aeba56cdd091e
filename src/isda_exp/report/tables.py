"""Rendering cells as the paper's tables (1, 2) or a long table, in Markdown, LaTeX or CSV."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from isda_exp import paper

from .compare import Comparison, by_method_key, compare
from .groups import DATASET_ORDER, Row, _order
from .runs import Run

CSV_COLUMNS = ("dataset", "model", "aug", "method", "seeds", "error_mean", "error_std",
               "paper_mean", "paper_std")
CSV_EXTRA = ("diff", "vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high", "vs_baseline_p",
             "baseline_seeds", "smoke")
SMOKE_TEXT = ("SMOKE TABLE: miniature runs ({epochs}, subsets/synthetic data) "
              "-- not comparable to the paper")
MISSING = "—"
TABLE_FILTERS = {
    1: (("baseline",), ("baseline", "isda")),
    2: (("cutout", "autoaugment"), ("baseline", "isda")),
    3: (("baseline",), tuple(dict.fromkeys(paper.table3_label(me, d, m) for _, me, d, _ in paper.TABLE3_ROWS
                                           for m in paper.TABLE3_MODELS if me is not None))),
    5: (("baseline",), tuple(label for _, label, _, _ in paper.TABLE5_ROWS)),
}
TABLE2_COLUMNS = (("cutout", "baseline", "Cutout"), ("cutout", "isda", "Cutout+ISDA"),
                  ("autoaugment", "baseline", "AA"), ("autoaugment", "isda", "AA+ISDA"))


def csv_text(header, lines) -> str:
    """One CSV document (header + lines), the writer every CSV output of the report shares."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return buf.getvalue()


def num(x, spec: str = ".4f") -> str:
    """A CSV number: empty when missing."""
    return "" if x is None else format(x, spec)


@dataclass
class _Grid:
    """A table independent of its markup: columns are (group, name); group "" spans nothing."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[str]]
    lead: int = 2  # leading text columns (left-aligned); the rest are numbers


def format_table(rows: list[Row], fmt: str = "md", table: int | None = None) -> str:
    """Render group rows as Markdown, LaTeX (booktabs) or CSV; ``table`` picks the paper's layout."""
    if fmt not in ("md", "csv", "tex"):
        raise ValueError(f"unknown format {fmt!r}; use md, csv or tex")
    if table is not None and table not in TABLE_FILTERS:
        raise ValueError(f"unknown table {table!r}; use 1, 2, 3 or 5")
    comparisons = by_method_key(compare(rows))
    rows = table_rows(rows, table)
    if table in (3, 5):  # one row per method, beside the numbers each table prints
        from .table35 import grid, to_csv

        if fmt == "csv":
            return to_csv(table, rows)
        return _render(grid(table, rows), fmt, smoke_banner(rows))
    if fmt == "csv":
        return _csv(rows, comparisons)
    grid = {None: _long_grid, 1: _table1_grid, 2: _table2_grid}[table](rows, comparisons)
    return _render(grid, fmt, smoke_banner(rows))


def format_comparisons(rows: list[Row], fmt: str = "md", table: int | None = None) -> str:
    """Each method minus its cell's baseline: difference, Welch 95% CI, p, seeds per arm."""
    shown = {r.key for r in table_rows(rows, table)}
    comparisons = [c for c in compare(rows) if c.method.key in shown]
    if fmt == "csv":
        header = ("dataset", "model", "aug", "method", "reference", "seeds", "reference_seeds",
                  "diff", "ci_low", "ci_high", "p_value", "df", "note")
        lines = []
        for c in comparisons:
            r, w = c.method, c.result
            nums = [""] * 5 if w is None else [num(w.diff), num(w.low), num(w.high),
                                               num(w.p_value, ".6g"), num(w.df, ".3f")]
            lines.append([r.dataset, r.model, r.aug, r.method, c.reference.method, r.seeds,
                          c.reference.seeds, *nums, c.note or ""])
        return csv_text(header, lines)
    names = ("Dataset", "Model", "Aug", "Method", "vs", "Seeds", "Difference", "95% CI", "p")
    out = []
    for c in comparisons:
        r, w = c.method, c.result
        line = [paper.dataset_name(r.dataset), paper.model_name(r.model), r.aug, r.method,
                c.reference.method, f"{r.seeds} vs {c.reference.seeds}"]
        if w is None:
            line += [c.note, MISSING, MISSING]
        else:
            line += [f"{w.diff:+.2f}", f"[{w.low:+.2f}, {w.high:+.2f}]", _p_text(w.p_value)]
        out.append(line)
    title = ("Method minus baseline, test error (percentage points): difference of the mean "
             "last-10-epoch errors, Welch 95% CI and two-sided p (negative = lower error)")
    grid = _Grid(title, [("", n) for n in names], out, lead=5)
    return _render(grid, fmt, smoke_banner([c.method for c in comparisons]))


def _render(grid: "_Grid", fmt: str, banner: str | None) -> str:
    return _markdown(grid, banner) if fmt == "md" else _latex(grid, banner)


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _delta(comparison: Comparison | None) -> str:
    """The difference to the baseline with its 95% CI and p, for a table cell."""
    if comparison is None:
        return MISSING
    w = comparison.result
    if w is None:
        return "n < 2"
    return f"{w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}] p={_p_text(w.p_value)}"


def table_rows(rows: list[Row], table: int | None) -> list[Row]:
    """The rows belonging to Table 1, 2, 3 or 5 (aug and method of the cells), all rows for None."""
    if table is None:
        return list(rows)
    if table in (3, 5):
        from .table35 import select

        return select(table, rows)
    augs, methods = TABLE_FILTERS[table]
    return [r for r in rows if r.aug in augs and r.method in methods]


def smoke_banner(rows: list[Row]) -> str | None:
    """The smoke label when any aggregated run is miniature, else None."""
    smoke = [r for r in rows if r.smoke]
    if not smoke:
        return None
    epochs = sorted({e for r in smoke for e in r.epochs})
    if not epochs:
        text = "few epochs"
    elif len(epochs) == 1:
        text = f"{epochs[0]} epoch" + ("s" if epochs[0] != 1 else "")
    else:
        text = f"{epochs[0]}-{epochs[-1]} epochs"
    return SMOKE_TEXT.format(epochs=text)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return MISSING if value is None else format(value, spec)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _cells(row: Row | None, published: tuple[float, float | None] | None) -> list[str]:
    """Ours (with n), paper and difference for one cell of Table 1 or 2."""
    paper_text = _mean_std(*published) if published else MISSING
    if row is None:
        return [MISSING, paper_text, MISSING]
    ours = f"{_mean_std(row.error_mean, row.error_std)} ({row.seeds})"
    return [ours, paper_text, _fmt(row.diff, "+.2f")]


_SUB = ("ours (n)", "paper", "diff")
_VS = "vs baseline [95% CI]"


def _table1_grid(rows: list[Row], comparisons: dict) -> _Grid:
    by_key = {r.key: r for r in rows}
    datasets = _present(DATASET_ORDER[:2], {r.dataset for r in rows}, keep_all=True)
    models = _present(tuple(paper.MODEL_NAMES), {r.model for r in rows})
    columns = [("", "Model"), ("", "Method")]
    columns += [(paper.dataset_name(d), s) for d in datasets for s in (*_SUB, _VS)]
    out = []
    for model in models:
        for method in ("baseline", "isda"):
            line = [paper.model_name(model), method]
            for d in datasets:
                key = (d, model, "baseline", method)
                line += _cells(by_key.get(key), paper.paper_number(*key))
                line.append(_delta(comparisons.get(key)))
            out.append(line)
    title = ("Table 1: test error (%), standard augmentation -- mean ± sample std of the "
             "last-10-epoch error across seeds (n), beside the paper")
    return _Grid(title, columns, out)


def _table2_grid(rows: list[Row], comparisons: dict) -> _Grid:
    by_key = {r.key: r for r in rows}
    pairs = sorted({(r.dataset, r.model) for r in rows},
                   key=lambda p: _order((p[0], p[1], "", "")))
    columns = [("", "Dataset"), ("", "Model")]
    columns += [(label, s) for _, method, label in TABLE2_COLUMNS
                for s in (_SUB if method == "baseline" else (*_SUB, _VS))]
    out = []
    for dataset, model in pairs:
        line = [paper.dataset_name(dataset), paper.model_name(model)]
        for aug, method, _ in TABLE2_COLUMNS:
            key = (dataset, model, aug, method)
            line += _cells(by_key.get(key), paper.paper_number(*key))
            if method != "baseline":
                line.append(_delta(comparisons.get(key)))
        out.append(line)
    title = ("Table 2: test error (%) with Cutout / AutoAugment (AA) -- mean ± sample std of "
             "the last-10-epoch error across seeds (n), beside the paper")
    return _Grid(title, columns, out)


def _long_grid(rows: list[Row], comparisons: dict) -> _Grid:
    names = ("Dataset", "Model", "Aug", "Method", "Seeds", "Ours", "Paper", "Diff", _VS)
    out = [[paper.dataset_name(r.dataset), paper.model_name(r.model), r.aug, r.method,
            str(r.seeds), _mean_std(r.error_mean, r.error_std),
            _mean_std(r.paper_mean, r.paper_std), _fmt(r.diff, "+.2f"),
            _delta(comparisons.get(r.key))] for r in rows]
    title = ("Test error (%) per group -- mean ± sample std (n-1) of the last-10-epoch error "
             "across seeds, beside the paper")
    return _Grid(title, [("", n) for n in names], out, lead=4)


def _present(order: tuple[str, ...], seen: set[str], keep_all: bool = False) -> list[str]:
    """Entries of ``order`` (all, or those seen) followed by any other seen values, sorted."""
    return [v for v in order if keep_all or v in seen] + sorted(seen - set(order))


def _markdown(grid: _Grid, banner: str | None) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = [f"{g} {n}".strip() for g, n in grid.columns]
    parts = [f"**{banner}**", ""] if banner else []
    parts += [f"### {grid.title}", "", line(header),
              "|" + "|".join("---" if i < grid.lead else "---:"
                             for i in range(len(grid.columns))) + "|"]
    parts += [line(r) for r in grid.rows]
    return "\n".join(parts) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "\\": r"\textbackslash{}", "±": r"$\pm$", MISSING: "---"}


def tex_escape(text: str) -> str:
    """Text for a LaTeX cell: specials escaped, signed numbers set in math for a true minus."""
    if re.fullmatch(r"[+-]\d+(\.\d+)?", text):
        return f"${text}$"
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _latex(grid: _Grid, banner: str | None) -> str:
    ncol = len(grid.columns)
    lead = grid.lead
    out = [f"% {banner}"] if banner else []
    out += [f"% {grid.title}", r"\begin{tabular}{" + "l" * lead + "r" * (ncol - lead) + "}",
            r"\toprule"]
    if banner:
        out += [rf"\multicolumn{{{ncol}}}{{l}}{{\textbf{{{tex_escape(banner)}}}}} \\", r"\midrule"]
    spans = _spans(grid.columns)
    if any(g for g, _, _ in spans):
        out.append(" & ".join(rf"\multicolumn{{{w}}}{{c}}{{{tex_escape(g)}}}" if g else
                              " & ".join([""] * w) for g, _, w in spans) + r" \\")
        out.append("".join(rf"\cmidrule(lr){{{s + 1}-{s + w}}}" for g, s, w in spans if g))
    out.append(" & ".join(tex_escape(n) for _, n in grid.columns) + r" \\")
    out.append(r"\midrule")
    out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in grid.rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def _spans(columns: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Runs of equal group labels as (group, start index, width)."""
    spans: list[tuple[str, int, int]] = []
    for i, (group, _) in enumerate(columns):
        if spans and spans[-1][0] == group:
            g, s, w = spans[-1]
            spans[-1] = (g, s, w + 1)
        else:
            spans.append((group, i, 1))
    return spans


def _csv(rows: list[Row], comparisons: dict) -> str:
    lines = []
    for r in rows:
        c = comparisons.get(r.key)
        w = None if c is None else c.result
        vs = [""] * 4 if w is None else [num(w.diff), num(w.low), num(w.high), num(w.p_value, ".6g")]
        lines.append([r.dataset, r.model, r.aug, r.method, r.seeds, num(r.error_mean),
                      num(r.error_std), num(r.paper_mean), num(r.paper_std), num(r.diff),
                      *vs, "" if c is None else c.reference.seeds, "true" if r.smoke else "false"])
    return csv_text(CSV_COLUMNS + CSV_EXTRA, lines)


def format_pending(runs: Iterable[Run], fmt: str = "md", root: str | os.PathLike | None = None,
                   notes: Iterable[str] = ()) -> str:
    """The runs left out of the averages (in progress, failed) and any group warnings."""
    items = [(_status_text(r), _rel(r.path, root), _detail(r))
             for r in runs if r.status != "finished"]
    notes = list(notes)
    if not items and not notes:
        return ""
    if fmt == "md":
        out = []
        if items:
            out += ["#### Runs not averaged (in progress or failed)", "",
                    "| Status | Run | Detail |", "|---|---|---|"]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in it) + " |" for it in items]
        if notes:
            out += ([""] if out else []) + ["#### Notes", ""] + [f"- {n}" for n in notes]
        return "\n".join(out) + "\n"
    prefix = "% " if fmt == "tex" else ""
    out = [f"{prefix}not averaged: {s}: {p} ({d})" for s, p, d in items]
    out += [f"{prefix}note: {n}" for n in notes]
    return "\n".join(out) + "\n"


def _status_text(run: Run) -> str:
    return "in progress" if run.status == "in_progress" else run.status


def _detail(run: Run) -> str:
    """Last logged epoch, and for a failed run its error message squeezed onto one line."""
    epoch = f"last epoch {run.last_epoch}" if run.last_epoch is not None else "no epoch logged"
    if run.status != "failed":
        return epoch
    message = " ".join(str(run.error).split())
    message = (message[:200] + "...") if len(message) > 200 else message
    return f"{message} ({epoch})" if run.last_epoch is not None else message


def _rel(path: Path, root: str | os.PathLike | None) -> str:
    if root is not None:
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(root)) or "."
    return str(path)
