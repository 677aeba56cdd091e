"""Table 7 (semantic segmentation, the journal version): mIoU single scale / multi-scale / multi-scale
+ flip per network, baseline and ISDA, ours beside the paper's, and ISDA - baseline with its Welch
95% CI when each arm has 2 or more seeds.

`python -m isda_exp.report DIR --table 7` reads the finished segmentation runs under DIR (their
summary.json: miou, miou_ms, miou_msf). Runs of one cell must share their science config (the
seed aside), as for every table; failed and unfinished runs are listed, never averaged. A table of
runs that are not the paper's (another data set, fewer iterations, subsets, the tiny models) is
marked SMOKE and shows no paper numbers beside them.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..rundir import identity
from . import paper
from .compare import welch
from .render import MISSING, SMOKE_TEXT, csv_text, md_line
from .runs import ReportError, RunRecord

COLUMNS = (("miou", "single scale"), ("miou_ms", "multi-scale"), ("miou_msf", "multi-scale + flip"))


def _is_isda(method: str) -> bool:
    return method.startswith("isda")


def table7_rows(runs: list[RunRecord]) -> list[dict]:
    """One row per (dataset, model, method): each column's seeds, mean and sample std."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.status == "finished" and run.key is not None and run.summary.get("task") == "segmentation":
            groups[(run.key[0], run.key[1], run.key[3])].append(run)
    rows = []
    for (dataset, model, method), members in sorted(groups.items()):
        members = _alike(dataset, model, method, members)
        row = {"dataset": dataset, "model": model, "method": method, "seeds": len(members),
               "smoke": any(_smoke(r.summary) for r in members),
               "iterations": sorted({int(r.summary.get("iterations", 0)) for r in members})}
        for key, _ in COLUMNS:
            values = [float(r.summary[key]) for r in members if isinstance(r.summary.get(key), (int, float))]
            row[key] = values
        rows.append(row)
    return rows


def _alike(dataset: str, model: str, method: str, members: list[RunRecord]) -> list[RunRecord]:
    """One run per seed, after refusing a cell whose runs differ in their science config."""
    differ = identity.differences([r.science for r in members])
    if differ:
        raise ReportError(f"{dataset}/{model}/{method} holds runs whose science configs differ "
                          f"({', '.join(differ[:3])}), which the report never averages; move the odd "
                          "runs to another folder and report each folder on its own")
    seen: dict = {}
    for r in sorted(members, key=lambda r: str(r.path)):
        seen.setdefault(r.summary.get("seed", id(r)), r)
    return list(seen.values())


def _smoke(summary: dict) -> bool:
    """Not the paper's protocol: another data set, fewer iterations, subsets or a tiny model."""
    short = int(summary.get("iterations") or 0) < int(summary.get("recipe_iterations") or 0)
    return bool(short or summary.get("dataset") != paper.TABLE7_DATASET
                or summary.get("model") not in paper.TABLE7_MODELS
                or summary.get("train_size", 2975) < 2975 or summary.get("test_size", 500) < 500)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def _cell(values: list[float]) -> str:
    mean, std = _stats(values)
    if mean is None:
        return MISSING
    return (f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}") + f" ({len(values)})"


def difference(isda: list[float], base: list[float]):
    """ISDA - baseline: (difference of the means, Welch 95% CI low, high), the CI None below 2 seeds."""
    if not isda or not base:
        return None
    (mi, _), (mb, _) = _stats(isda), _stats(base)
    if len(isda) < 2 or len(base) < 2:
        return mi - mb, None, None
    var = lambda v, m: math.fsum((x - m) ** 2 for x in v) / (len(v) - 1)  # noqa: E731
    w = welch(mb, var(base, mb), len(base), mi, var(isda, mi), len(isda))
    return w.diff, w.low, w.high


def _diff_text(d) -> str:
    if d is None:
        return MISSING
    return f"{d[0]:+.2f}" + ("" if d[1] is None else f" [{d[1]:+.2f}, {d[2]:+.2f}]")


def _published(row: dict, key: str, smoke: bool) -> float | None:
    label = "isda" if _is_isda(row["method"]) else row["method"]
    numbers = paper.TABLE7.get((row["model"], label))
    if smoke or numbers is None or row["dataset"] != paper.TABLE7_DATASET:
        return None
    return numbers[[k for k, _ in COLUMNS].index(key)]


def _baseline_of(rows: list[dict], row: dict) -> dict | None:
    return next((r for r in rows if r["dataset"] == row["dataset"] and r["model"] == row["model"]
                 and r["method"] == "baseline"), None)


def markdown(rows: list[dict]) -> str:
    """The table: per network and method, each column's ours (n) and the paper's; ISDA rows add
    ISDA - baseline [Welch 95% CI] per column."""
    smoke = any(r["smoke"] for r in rows)
    header = ["Data set", "Network", "Method"]
    for _, name in COLUMNS:
        header += [f"{name} (ours)", f"{name} (paper)", f"{name}: ISDA - baseline"]
    lines = [f"**{SMOKE_TEXT.format(epochs='few iterations')}**", ""] if smoke else []
    lines += ["### Table 7: mIoU (%) on the evaluation split, mean ± sample std (seeds)", "",
              md_line(header), "|---|---|---|" + "---:|" * (len(header) - 3)]
    for row in rows:
        base = _baseline_of(rows, row)
        cells = [row["dataset"], paper.TABLE7_MODELS.get(row["model"], row["model"]), row["method"]]
        for key, _ in COLUMNS:
            pub = _published(row, key, smoke)
            d = difference(row[key], base[key]) if _is_isda(row["method"]) and base else None
            cells += [_cell(row[key]), MISSING if pub is None else f"{pub:.2f}",
                      _diff_text(d) if _is_isda(row["method"]) else MISSING]
        lines.append(md_line(cells))
    its = sorted({i for r in rows for i in r["iterations"]})
    lines.append(f"\nIterations trained: {', '.join(map(str, its))}; the paper's runs: 40,000 on "
                 "Cityscapes fine train (one run per cell), evaluated on its 500 val images.")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    header = ["dataset", "model", "method", "seeds", "smoke"]
    for key, _ in COLUMNS:
        header += [f"{key}_mean", f"{key}_std", f"{key}_paper", f"{key}_vs_baseline",
                   f"{key}_ci_low", f"{key}_ci_high"]
    out = []
    for row in rows:
        base = _baseline_of(rows, row)
        line = [row["dataset"], row["model"], row["method"], row["seeds"], str(row["smoke"]).lower()]
        for key, _ in COLUMNS:
            mean, std = _stats(row[key])
            d = difference(row[key], base[key]) if _is_isda(row["method"]) and base else None
            pub = _published(row, key, row["smoke"])
            line += [_num(mean), _num(std), _num(pub), *(_num(v) for v in (d or (None, None, None)))]
        out.append(line)
    return csv_text(header, out)


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"
