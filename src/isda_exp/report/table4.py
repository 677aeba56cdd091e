"""Table 4 (ImageNet, top-1 | top-5 validation error) and Figure 3's curves.

`python -m isda_exp.report DIR --table 4` sets the finished runs under DIR (experiment=table4)
beside the paper's numbers; `--table 4 --curves PNG` draws Figure 3. A run's figure is its last
epoch's validation error (top-1 and top-5: metrics.jsonl's test_error and test_error_top5), as
the paper reports. The runs come from the report's loader (failed and unfinished runs are listed,
never shown), and a group whose runs differ in their science config is refused as for any table.
"""
from __future__ import annotations

import json
from pathlib import Path

from .groups import aggregate
from .runs import RunRecord

# model -> (label, {method dir: (top-1, top-5) error % in the paper's Table 4})
PAPER_TABLE4 = {
    "resnet50": ("ResNet-50", {"baseline": (23.58, 6.92), "isda-diagonal": (23.30, 6.82)}),
    "resnet152": ("ResNet-152", {"baseline": (21.65, 6.01), "isda-diagonal": (21.20, 5.67)}),
    "resnext50_32x4d": ("ResNeXt-50, 32x4d", {"baseline": (22.42, 6.42), "isda-diagonal": (21.88, 6.23)}),
}
METHODS = (("baseline", "Basic"), ("isda-diagonal", "ISDA"))


def table4_runs(runs: list[RunRecord]) -> list[dict]:
    """One row per finished run: model, method, seed, the last epoch's top-1/top-5 validation
    error and the per-epoch curves. Groups of unlike runs are refused first (aggregate)."""
    aggregate(runs)  # raises ReportError for a group mixing science configs
    rows = []
    for run in sorted((r for r in runs if r.status == "finished" and r.key is not None),
                      key=lambda r: str(r.path)):
        history = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        last = history[-1]
        rows.append({"model": run.key[1], "method": run.key[3], "seed": run.summary.get("seed"),
                     "epochs": len(history), "top1": last["test_error"],
                     "top5": last.get("test_error_top5"), "run": str(run.path),
                     "curves": curves(history)})
    return rows


def curves(history: list[dict]) -> dict:
    """Figure 3: training and validation error (%) per epoch."""
    return {"epoch": [r["epoch"] for r in history], "train_error": [r["train_error"] for r in history],
            "test_error": [r["test_error"] for r in history]}


def _cell(values: list[tuple[float, float | None]]) -> str:
    if not values:
        return "-"
    top1 = sum(v[0] for v in values) / len(values)
    top5s = [v[1] for v in values if v[1] is not None]
    top5 = f"{sum(top5s) / len(top5s):.2f}" if top5s else "-"
    return f"{top1:.2f} / {top5}" + (f" (n={len(values)})" if len(values) > 1 else "")


def markdown(rows: list[dict]) -> str:
    """Table 4: per model, Basic and ISDA top-1 / top-5 error, ours and the paper's."""
    lines = ["| model | Basic (ours) | Basic (paper) | ISDA (ours) | ISDA (paper) |",
             "|---|---|---|---|---|"]
    models = list(PAPER_TABLE4) + sorted({r["model"] for r in rows} - set(PAPER_TABLE4))
    for model in models:
        label, paper = PAPER_TABLE4.get(model, (model, {}))
        cells = [label]
        for method, _ in METHODS:
            ours = [(r["top1"], r["top5"]) for r in rows if r["model"] == model and r["method"] == method]
            cells += [_cell(ours), "%.2f / %.2f" % paper[method] if method in paper else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    epochs = sorted({r["epochs"] for r in rows})
    lines.append(f"\nTop-1 / top-5 validation error (%) after the last epoch "
                 f"(epochs trained: {', '.join(map(str, epochs)) or 'none'}); paper: 300-epoch runs.")
    return "\n".join(lines)


def figure3(rows: list[dict], path: Path) -> None:
    """Figure 3: per model, training (dashed) and validation (solid) top-1 error per epoch,
    Basic and ISDA (the first seed of each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in PAPER_TABLE4 if any(r["model"] == m for r in rows)] or \
        sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (method, label), colour in zip(METHODS, ("tab:blue", "tab:red")):
            run = next((r for r in rows if r["model"] == model and r["method"] == method), None)
            if run is None:
                continue
            c = run["curves"]
            ax.plot(c["epoch"], c["train_error"], "--", marker=".", color=colour, label=f"{label} train")
            ax.plot(c["epoch"], c["test_error"], "-", marker=".", color=colour, label=f"{label} val")
        ax.set(title=PAPER_TABLE4.get(model, (model,))[0], xlabel="epoch", ylabel="top-1 error (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
