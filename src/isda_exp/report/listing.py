"""The report's lists, one line per item: every group, each method against its baseline, and the
runs left out of the averages."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable

from . import paper
from .compare import Comparison
from .groups import Row
from .render import (
    MISSING,
    VS_BASELINE,
    Grid,
    csv_text,
    delta,
    fixed,
    md_line,
    mean_std,
    num,
    p_text,
    render,
    smoke_banner,
)
from .runs import RunRecord

CSV_COLUMNS = ("dataset", "model", "aug", "method", "seeds", "error_mean", "error_std",
               "paper_mean", "paper_std")
CSV_EXTRA = ("diff", "vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high", "vs_baseline_p",
             "baseline_seeds", "smoke")
COMPARISON_CSV = ("dataset", "model", "aug", "method", "reference", "seeds", "reference_seeds",
                  "diff", "ci_low", "ci_high", "p_value", "df", "note")


def groups_grid(rows: list[Row], comparisons: dict) -> Grid:
    """Every group: ours, the paper's number, the difference and the comparison to the baseline."""
    names = ("Dataset", "Model", "Aug", "Method", "Seeds", "Ours", "Paper", "Diff", VS_BASELINE)
    out = [[paper.dataset_name(r.dataset), paper.model_name(r.model), r.aug, r.method,
            str(r.seeds), mean_std(r.error_mean, r.error_std),
            mean_std(r.paper_mean, r.paper_std), fixed(r.diff, "+.2f"),
            delta(comparisons.get(r.key))] for r in rows]
    title = ("Test error (%) per group -- mean ± sample std (n-1) of the last-10-epoch error "
             "across seeds, beside the paper")
    return Grid(title, [("", n) for n in names], out, lead=4)


def groups_csv(rows: list[Row], comparisons: dict) -> str:
    """Every group as CSV, with its comparison to the baseline (the CSV of Tables 1 and 2 too)."""
    lines = []
    for r in rows:
        c = comparisons.get(r.key)
        w = None if c is None else c.result
        vs = [""] * 4 if w is None else [num(w.diff), num(w.low), num(w.high), num(w.p_value, ".6g")]
        lines.append([r.dataset, r.model, r.aug, r.method, r.seeds, num(r.error_mean),
                      num(r.error_std), num(r.paper_mean), num(r.paper_std), num(r.diff),
                      *vs, "" if c is None else c.reference.seeds, "true" if r.smoke else "false"])
    return csv_text(CSV_COLUMNS + CSV_EXTRA, lines)


def comparisons_text(comparisons: list[Comparison], fmt: str) -> str:
    """Each method minus its cell's baseline: difference, Welch 95% CI, p, seeds per arm."""
    if fmt == "csv":
        lines = []
        for c in comparisons:
            r, w = c.method, c.result
            nums = [""] * 5 if w is None else [num(w.diff), num(w.low), num(w.high),
                                               num(w.p_value, ".6g"), num(w.df, ".3f")]
            lines.append([r.dataset, r.model, r.aug, r.method, c.reference.method, r.seeds,
                          c.reference.seeds, *nums, c.note or ""])
        return csv_text(COMPARISON_CSV, lines)
    names = ("Dataset", "Model", "Aug", "Method", "vs", "Seeds", "Difference", "95% CI", "p")
    out = []
    for c in comparisons:
        r, w = c.method, c.result
        line = [paper.dataset_name(r.dataset), paper.model_name(r.model), r.aug, r.method,
                c.reference.method, f"{r.seeds} vs {c.reference.seeds}"]
        if w is None:
            line += [c.note, MISSING, MISSING]
        else:
            line += [f"{w.diff:+.2f}", f"[{w.low:+.2f}, {w.high:+.2f}]", p_text(w.p_value)]
        out.append(line)
    title = ("Method minus baseline, test error (percentage points): difference of the mean "
             "last-10-epoch errors, Welch 95% CI and two-sided p (negative = lower error)")
    grid = Grid(title, [("", n) for n in names], out, lead=5)
    return render(grid, fmt, smoke_banner([c.method for c in comparisons]))


def format_pending(runs: Iterable[RunRecord], fmt: str = "md", root: str | os.PathLike | None = None,
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
            out += [md_line(it) for it in items]
        if notes:
            out += ([""] if out else []) + ["#### Notes", ""] + [f"- {n}" for n in notes]
        return "\n".join(out) + "\n"
    prefix = "% " if fmt == "tex" else ""
    out = [f"{prefix}not averaged: {s}: {p} ({d})" for s, p, d in items]
    out += [f"{prefix}note: {n}" for n in notes]
    return "\n".join(out) + "\n"


def _status_text(run: RunRecord) -> str:
    return "in progress" if run.status == "in_progress" else run.status


def _detail(run: RunRecord) -> str:
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
