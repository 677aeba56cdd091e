"""Figure 2: test error per epoch, mean across seeds with a min-max band, one panel per cell."""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..rundir.files import METRICS, atomic_write
from . import paper
from .groups import group_order
from .groups import coarsest
from .runs import Key, ReportError, RunRecord, load_runs, read_metrics


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
    scale: str = "full"  # full | reduced | smoke (report.runs.RunRecord.scale)


METHOD_COLORS = {"baseline": "C0", "isda": "C3", "isda-identity": "C1", "isda-diagonal": "C2",
                 "isda-shared": "C4", "isda-constant": "C5"}


def curve_data(runs: Iterable[RunRecord]) -> list[Curve]:
    """Curves of finished and in-progress runs; an epoch averages the seeds that reached it."""
    per_group: dict[Key, list[tuple[RunRecord, dict[int, float]]]] = defaultdict(list)
    for run in runs:
        if run.status == "failed" or run.key is None:
            continue
        metrics = read_metrics(run.path / METRICS)
        if metrics:
            per_group[run.key].append((run, metrics))
    curves = []
    for key in sorted(per_group, key=group_order):
        members = per_group[key]
        epochs = sorted({e for _, m in members for e in m})
        values = [[m[e] for _, m in members if e in m] for e in epochs]
        curves.append(Curve(key, epochs, [math.fsum(v) / len(v) for v in values],
                            [min(v) for v in values], [max(v) for v in values],
                            seeds=len(members), smoke=any(r.smoke for r, _ in members),
                            running=sum(r.status == "in_progress" for r, _ in members),
                            scale=coarsest([r for r, _ in members])))
    return curves


def plot_curves(root: str | os.PathLike, out_png: str | os.PathLike,
                runs: list[RunRecord] | None = None) -> int:
    """Figure 2: test error per epoch, one panel per (dataset, model, aug); returns curves drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = curve_data(load_runs(root) if runs is None else runs)
    if not curves:
        raise ReportError(f"no metrics.jsonl with test errors under '{root}'; "
                          "nothing to plot (have the runs finished an epoch?)")
    panels = sorted({c.key[:3] for c in curves}, key=lambda k: group_order((*k, "")))
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
    scales = {c.scale for c in curves}
    if "smoke" in scales:
        title = "SMOKE: miniature runs -- not comparable to the paper\n" + title
    elif "reduced" in scales:
        title = "REDUCED REPRODUCTION (real data, subsets):\nnot the paper's full recipe\n" + title
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
