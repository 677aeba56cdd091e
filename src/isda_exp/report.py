"""Aggregate trainer runs into the paper's tables (1, 2, long format) and Figure 2's curves.

Usage: ``python -m isda_exp.report RUNS_DIR [--format md|csv|tex] [--table 1|2] [--out FILE]``
or ``python -m isda_exp.report RUNS_DIR --curves OUT.png``.

A run is a directory holding any of summary.json (finished), failed.json (failed), metrics.jsonl,
last.pt or run_config.json (in progress). Only finished runs are averaged; the others are listed
apart. A finished run's group comes from its summary.json, an unfinished one's from its
run_config.json, or failing that from the trainer's ``<dataset>/<model>/<aug>/<method>/seed<N>``
directory layout (needed only to draw its curve).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from isda_exp import paper
from isda_exp.errors import UserError
from isda_exp.runfiles import CHECKPOINT, CONFIG, FAILED, METRICS, SUMMARY, atomic_write

RUN_MARKERS = frozenset({SUMMARY, FAILED, METRICS, CHECKPOINT, CONFIG})
REQUIRED_FIELDS = ("test_error_last10", "dataset", "model", "aug", "method")
CSV_COLUMNS = ("dataset", "model", "aug", "method", "seeds", "error_mean", "error_std",
               "paper_mean", "paper_std")
CSV_EXTRA = ("diff", "smoke")
FULL_TRAIN_SIZE = 50000
FULL_TEST_SIZE = 10000
SMOKE_TEXT = ("SMOKE TABLE: miniature runs ({epochs}, subsets/synthetic data) "
              "-- not comparable to the paper")
MISSING = "—"
TABLE_FILTERS = {
    1: (("baseline",), ("baseline", "isda")),
    2: (("cutout", "autoaugment"), ("baseline", "isda")),
}
TABLE2_COLUMNS = (("cutout", "baseline", "Cutout"), ("cutout", "isda", "Cutout+ISDA"),
                  ("autoaugment", "baseline", "AA"), ("autoaugment", "isda", "AA+ISDA"))
DATASET_ORDER = ("cifar10", "cifar100", "synthetic")
AUG_ORDER = ("baseline", "cutout", "autoaugment")

Key = tuple[str, str, str, str]  # (dataset, model, aug, method label)


class ReportError(UserError, ValueError):
    """Bad input to the report (missing directory, no runs): one line for the user."""

    def __init__(self, message: str, listing: str = ""):
        super().__init__(message)
        self.listing = listing  # the unfinished runs, shown before the message when there are any


# ----------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One run directory and what its files say."""

    path: Path
    status: str  # "finished" | "in_progress" | "failed"
    summary: dict | None = None
    key: Key | None = None
    last_epoch: int | None = None
    error: str | None = None
    config: dict | None = None  # run_config.json of an unfinished run

    @property
    def smoke(self) -> bool:
        """True for miniature runs: short schedule, subset of CIFAR, or synthetic data."""
        if self.summary is None:
            return _config_smoke(self.config or {})
        s = self.summary
        short = _num(s.get("epochs")) is not None and _num(s.get("recipe_epochs")) is not None \
            and s["epochs"] < s["recipe_epochs"]
        subset = (_num(s.get("train_size")) is not None and s["train_size"] < FULL_TRAIN_SIZE) \
            or (_num(s.get("test_size")) is not None and s["test_size"] < FULL_TEST_SIZE)
        return bool(short or subset or s.get("dataset") == "synthetic")


def _config_smoke(config: dict) -> bool:
    """The smoke test for a run that has no summary yet, from its run_config.json."""
    try:
        epochs, recipe = config["trainer"].get("epochs"), config["model"]["recipe"]["epochs"]
        data = config["dataset"]
        return bool((epochs is not None and epochs < recipe) or data.get("name") == "synthetic"
                    or data.get("train_subset") or data.get("test_subset"))
    except (KeyError, TypeError, AttributeError):
        return False


def _num(value) -> float | None:
    """The value if it is a real number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def load_runs(root: str | os.PathLike) -> list[Run]:
    """Every run directory under ``root`` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"runs directory '{root}' does not exist; pass the directory the "
                          "trainer wrote its runs into")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        names = set(filenames)
        if names & RUN_MARKERS:
            runs.append(_read_run(Path(dirpath), names))
            dirnames[:] = []  # a run's own subfolders (tensorboard, .hydra) hold no runs
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(runs, key=lambda r: str(r.path))


def _read_run(path: Path, names: set[str]) -> Run:
    last = _last_epoch(path / METRICS) if METRICS in names else None
    config = None
    if CONFIG in names:
        with contextlib.suppress(OSError, ValueError):
            config = _read_json(path / CONFIG)
    key = _config_key(config) or _path_key(path)
    if SUMMARY in names:
        try:
            summary = _read_json(path / SUMMARY)
            key = _summary_key(summary)
        except (OSError, ValueError) as exc:
            return Run(path, "failed", last_epoch=last, key=key, config=config,
                       error=f"unreadable summary.json: {exc}")
        return Run(path, "finished", summary, key, last_epoch=summary.get("epochs", last))
    if FAILED in names:
        try:
            info = _read_json(path / FAILED)
            error = str(info.get("error", "no error message in failed.json"))
        except (OSError, ValueError) as exc:
            error = f"unreadable failed.json: {exc}"
        return Run(path, "failed", key=key, last_epoch=last, error=error, config=config)
    return Run(path, "in_progress", key=key, last_epoch=last, config=config)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds {type(data).__name__}, expected a JSON object")
    return data


def _summary_key(summary: dict) -> Key:
    """The group key of a finished run; ValueError naming the field when the summary is unusable."""
    missing = [f for f in REQUIRED_FIELDS if f not in summary]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if _num(summary["test_error_last10"]) is None:
        raise ValueError(f"test_error_last10 is {summary['test_error_last10']!r}, not a number")
    label = paper.method_label(str(summary["method"]), summary.get("variant"))
    return (str(summary["dataset"]), str(summary["model"]), str(summary["aug"]), label)


def _config_key(config: dict | None) -> Key | None:
    """Group of a run from its run_config.json (the trainer's composed config), if readable."""
    if not config:
        return None
    try:
        isda = config["isda"]
        if not isda.get("loss"):
            label = "baseline"
        else:
            variant = "constant" if isda.get("constant") else isda["loss"].get("covariance")
            label = paper.method_label("isda", variant)
        return (str(config["dataset"]["name"]), str(config["model"]["name"]),
                str(config["aug"]["name"]), label)
    except (KeyError, TypeError, AttributeError):
        return None


def _path_key(path: Path) -> Key | None:
    """Group of an unfinished run from the trainer's directory layout, or None if it differs."""
    parts = path.parts
    if len(parts) < 5 or not re.fullmatch(r"seed\d+", parts[-1]):
        return None
    dataset, model, aug, method = parts[-5:-1]
    match = re.fullmatch(r"(baseline|isda)(?:[-_](\w+))?", method)
    if match is None:
        return None
    return (dataset, model, aug, paper.method_label(match[1], match[2]))


def read_metrics(path: Path) -> dict[int, float]:
    """Epoch -> test error from metrics.jsonl; a torn last line or a bad row is skipped."""
    errors: dict[int, float] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return errors
    for line in lines:
        try:
            row = json.loads(line)
            epoch, error = row["epoch"], row["test_error"]
        except (ValueError, KeyError, TypeError):
            continue
        if _num(epoch) is not None and _num(error) is not None:
            errors[int(epoch)] = float(error)  # a resumed run may log an epoch twice: keep the last
    return errors


def _last_epoch(path: Path) -> int | None:
    epochs = read_metrics(path)
    return max(epochs) if epochs else None


def select_runs(runs: Iterable[Run], **wanted: Iterable[str] | None) -> list[Run]:
    """Runs whose key matches every given filter (dataset/model/aug/method); keyless runs stay."""
    fields = ("dataset", "model", "aug", "method")
    out = []
    for run in runs:
        if run.key is None or all(not wanted.get(f) or run.key[i] in wanted[f]
                                  for i, f in enumerate(fields)):
            out.append(run)
    return out


# ------------------------------------------------------------------------------- aggregation


@dataclass
class Row:
    """One group of finished runs: mean and sample std of test_error_last10 across seeds."""

    dataset: str
    model: str
    aug: str
    method: str  # label: baseline, isda, isda-<variant>
    seeds: int
    error_mean: float
    error_std: float | None  # None with a single seed
    paper_mean: float | None
    paper_std: float | None
    smoke: bool
    epochs: tuple[int, ...] = ()
    runs: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def key(self) -> Key:
        return (self.dataset, self.model, self.aug, self.method)

    @property
    def diff(self) -> float | None:
        return None if self.paper_mean is None else self.error_mean - self.paper_mean


def aggregate(runs: Iterable[Run]) -> list[Row]:
    """Group finished runs by (dataset, model, aug, method/variant), in the paper's order."""
    groups: dict[Key, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "finished" and run.key is not None:
            groups[run.key].append(run)
    return sorted((_row(key, members) for key, members in groups.items()),
                  key=lambda r: _order(r.key))


def _row(key: Key, members: list[Run]) -> Row:
    errors = [float(r.summary["test_error_last10"]) for r in members]
    n = len(errors)
    mean = math.fsum(errors) / n
    std = math.sqrt(math.fsum((e - mean) ** 2 for e in errors) / (n - 1)) if n > 1 else None
    published = paper.paper_number(*key)
    epochs = tuple(sorted({int(r.summary["epochs"]) for r in members
                           if _num(r.summary.get("epochs")) is not None}))
    return Row(*key, seeds=n, error_mean=mean, error_std=std,
               paper_mean=published[0] if published else None,
               paper_std=published[1] if published else None,
               smoke=any(r.smoke for r in members), epochs=epochs,
               runs=tuple(r.path for r in members), notes=_group_notes(key, members))


def _group_notes(key: Key, members: list[Run]) -> tuple[str, ...]:
    """Warnings for groups that average things that should not be averaged together."""
    notes = []
    seeds = [r.summary.get("seed") for r in members]
    dupes = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if dupes:
        notes.append(f"{'/'.join(key)}: seed(s) {', '.join(dupes)} appear in several runs")
    for name in ("epochs", "train_size", "lambda_0"):
        values = {repr(r.summary.get(name)) for r in members}
        if len(values) > 1:
            notes.append(f"{'/'.join(key)}: runs differ in {name} ({', '.join(sorted(values))})")
    return tuple(notes)


def _order(key: Key) -> tuple:
    dataset, model, aug, method = key
    models = tuple(paper.MODEL_NAMES)
    return (_rank(dataset, DATASET_ORDER), dataset, _rank(model, models), model,
            _rank(aug, AUG_ORDER), aug, _rank(method, paper.METHOD_ORDER), method)


def _rank(value: str, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)


# -------------------------------------------------------------------------------- formatting


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
        raise ValueError(f"unknown table {table!r}; use 1 or 2")
    rows = table_rows(rows, table)
    if fmt == "csv":
        return _csv(rows)
    grid = {None: _long_grid, 1: _table1_grid, 2: _table2_grid}[table](rows)
    banner = smoke_banner(rows)
    return _markdown(grid, banner) if fmt == "md" else _latex(grid, banner)


def table_rows(rows: list[Row], table: int | None) -> list[Row]:
    """The rows belonging to Table 1 or 2 (aug and method of the cells), all rows for None."""
    if table is None:
        return list(rows)
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


def _table1_grid(rows: list[Row]) -> _Grid:
    by_key = {r.key: r for r in rows}
    datasets = _present(DATASET_ORDER[:2], {r.dataset for r in rows}, keep_all=True)
    models = _present(tuple(paper.MODEL_NAMES), {r.model for r in rows})
    columns = [("", "Model"), ("", "Method")]
    columns += [(paper.dataset_name(d), s) for d in datasets for s in _SUB]
    out = []
    for model in models:
        for method in ("baseline", "isda"):
            line = [paper.model_name(model), method]
            for d in datasets:
                key = (d, model, "baseline", method)
                line += _cells(by_key.get(key), paper.paper_number(*key))
            out.append(line)
    title = ("Table 1: test error (%), standard augmentation -- mean ± sample std of the "
             "last-10-epoch error across seeds (n), beside the paper")
    return _Grid(title, columns, out)


def _table2_grid(rows: list[Row]) -> _Grid:
    by_key = {r.key: r for r in rows}
    pairs = sorted({(r.dataset, r.model) for r in rows},
                   key=lambda p: _order((p[0], p[1], "", "")))
    columns = [("", "Dataset"), ("", "Model")]
    columns += [(label, s) for _, _, label in TABLE2_COLUMNS for s in _SUB]
    out = []
    for dataset, model in pairs:
        line = [paper.dataset_name(dataset), paper.model_name(model)]
        for aug, method, _ in TABLE2_COLUMNS:
            key = (dataset, model, aug, method)
            line += _cells(by_key.get(key), paper.paper_number(*key))
        out.append(line)
    title = ("Table 2: test error (%) with Cutout / AutoAugment (AA) -- mean ± sample std of "
             "the last-10-epoch error across seeds (n), beside the paper")
    return _Grid(title, columns, out)


def _long_grid(rows: list[Row]) -> _Grid:
    names = ("Dataset", "Model", "Aug", "Method", "Seeds", "Ours", "Paper", "Diff")
    out = [[paper.dataset_name(r.dataset), paper.model_name(r.model), r.aug, r.method,
            str(r.seeds), _mean_std(r.error_mean, r.error_std),
            _mean_std(r.paper_mean, r.paper_std), _fmt(r.diff, "+.2f")] for r in rows]
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


def _csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + CSV_EXTRA)

    def num(x):
        return "" if x is None else f"{x:.4f}"

    for r in rows:
        writer.writerow([r.dataset, r.model, r.aug, r.method, r.seeds, num(r.error_mean),
                         num(r.error_std), num(r.paper_mean), num(r.paper_std), num(r.diff),
                         "true" if r.smoke else "false"])
    return buf.getvalue()


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


# -------------------------------------------------------------------------------- curves


@dataclass
class Curve:
    """Test error per epoch of one group: mean and min-max band across its seeds."""

    key: Key
    epochs: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int
    smoke: bool
    running: int = 0  # seeds still in progress


METHOD_COLORS = {"baseline": "C0", "isda": "C3", "isda-identity": "C1", "isda-diagonal": "C2",
                 "isda-shared": "C4", "isda-constant": "C5"}


def curve_data(runs: Iterable[Run]) -> list[Curve]:
    """Curves of finished and in-progress runs; an epoch averages the seeds that reached it."""
    per_group: dict[Key, list[tuple[Run, dict[int, float]]]] = defaultdict(list)
    for run in runs:
        if run.status == "failed" or run.key is None:
            continue
        metrics = read_metrics(run.path / METRICS)
        if metrics:
            per_group[run.key].append((run, metrics))
    curves = []
    for key in sorted(per_group, key=_order):
        members = per_group[key]
        epochs = sorted({e for _, m in members for e in m})
        values = [[m[e] for _, m in members if e in m] for e in epochs]
        curves.append(Curve(key, epochs, [math.fsum(v) / len(v) for v in values],
                            [min(v) for v in values], [max(v) for v in values],
                            seeds=len(members), smoke=any(r.smoke for r, _ in members),
                            running=sum(r.status == "in_progress" for r, _ in members)))
    return curves


def plot_curves(root: str | os.PathLike, out_png: str | os.PathLike,
                runs: list[Run] | None = None) -> int:
    """Figure 2: test error per epoch, one panel per (dataset, model, aug); returns curves drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = curve_data(load_runs(root) if runs is None else runs)
    if not curves:
        raise ReportError(f"no metrics.jsonl with test errors under '{root}'; "
                          "nothing to plot (have the runs finished an epoch?)")
    panels = sorted({c.key[:3] for c in curves}, key=lambda k: _order((*k, "")))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, [c for c in curves if c.key[:3] == panel])
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    title = "Test error per epoch: mean across seeds, band = min-max"
    if any(c.smoke for c in curves):
        title = "SMOKE: miniature runs -- not comparable to the paper\n" + title
    fig.suptitle(title)
    fmt = Path(out_png).suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ReportError(f"cannot write a figure as '.{fmt}'; name the output .png, .pdf or .svg")
    atomic_write(out_png, lambda fh: fig.savefig(fh, format=fmt, dpi=120))
    return len(curves)


def _draw_panel(ax, panel: tuple[str, str, str], curves: list[Curve]) -> None:
    from matplotlib.ticker import MaxNLocator

    dataset, model, aug = panel
    for curve in curves:
        label = f"{curve.key[3]} ({curve.seeds} seed{'s' if curve.seeds != 1 else ''}"
        label += f", {curve.running} running)" if curve.running else ")"
        color = METHOD_COLORS.get(curve.key[3], "C7")
        ax.plot(curve.epochs, curve.mean, label=label, lw=1.4, color=color,
                marker="o" if len(curve.epochs) <= 12 else None, ms=3)
        if curve.seeds > 1:
            ax.fill_between(curve.epochs, curve.low, curve.high, color=color, alpha=0.25, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{paper.dataset_name(dataset)}, {paper.model_name(model)}, "
                 f"{paper.AUG_NAMES.get(aug, aug)} aug", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ------------------------------------------------------------------------------------ output


def build_report(root: str | os.PathLike, fmt: str = "md", table: int | None = None,
                 select: dict | None = None) -> tuple[str, str]:
    """(main text, side text): the table and, for CSV, the not-averaged listing kept apart."""
    runs = select_runs(load_runs(root), **(select or {}))
    if not runs:
        raise ReportError(f"no runs under '{root}' (no folder with summary.json, failed.json, "
                          "metrics.jsonl, last.pt or run_config.json); check the path")
    rows = aggregate(runs)
    if not rows:
        pending = sum(r.status == "in_progress" for r in runs)
        raise ReportError(f"no finished runs under '{root}' ({pending} in progress, "
                          f"{len(runs) - pending} failed); nothing to average yet",
                          listing=format_pending(runs, "csv", root))
    shown = table_rows(rows, table)
    if not shown:
        augs, methods = TABLE_FILTERS[table]
        raise ReportError(f"no finished runs for Table {table} (aug {'/'.join(augs)}, method "
                          f"{'/'.join(methods)}); drop --table to see the {len(rows)} groups")
    text = format_table(rows, fmt, table)
    notes = [n for r in shown for n in r.notes]
    side = format_pending(runs, fmt, root, notes)
    if fmt == "csv":
        return text, side
    return (text + "\n" + side if side else text), ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    select = {"dataset": args.dataset, "model": args.model, "aug": args.aug}
    try:
        if args.curves:
            runs = select_runs(load_runs(args.runs_dir), **select)
            n = plot_curves(args.runs_dir, args.curves, runs=runs)
            print(f"wrote {args.curves} ({n} curves)", file=sys.stderr)
            return 0
        text, side = build_report(args.runs_dir, args.format, args.table, select)
        if args.out:
            atomic_write(args.out, lambda fh: fh.write(text.encode("utf-8")))
        else:
            sys.stdout.write(text)
        if side:
            sys.stderr.write(side)
    except (ReportError, OSError) as exc:
        sys.stderr.write(getattr(exc, "listing", ""))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isda_exp.report", description=(
        "Mean and sample std of test_error_last10 across seeds per (dataset, model, aug, "
        "method), beside the ISDA paper's numbers; or Figure 2's curves with --curves."))
    p.add_argument("runs_dir", help="folder holding the run directories (searched recursively)")
    p.add_argument("--format", choices=("md", "csv", "tex"), default="md")
    p.add_argument("--table", type=int, choices=(1, 2), help="lay out as the paper's Table 1 or 2")
    p.add_argument("--out", help="write to this file (atomically) instead of stdout")
    p.add_argument("--curves", metavar="OUT.png", help="plot test error per epoch instead")
    p.add_argument("--dataset", action="append", help="keep only this dataset (repeatable)")
    p.add_argument("--model", action="append", help="keep only this model (repeatable)")
    p.add_argument("--aug", action="append", help="keep only this aug (repeatable)")
    return p


if __name__ == "__main__":
    sys.exit(main())
