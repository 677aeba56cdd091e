"""`python -m isda_exp.report`: the command line over loading, grouping, tables and curves."""
from __future__ import annotations

import argparse
import os
import sys

from ..rundir.files import CHECKPOINT, CONFIG, FAILED, METRICS, SUMMARY, atomic_write
from . import table4, table7
from .curves import plot_curves
from .groups import aggregate
from .listing import format_pending
from .render import FORMATS
from .runs import ReportError, load_runs, select_runs
from .tables import TABLES, format_comparisons, format_table, table_rows


def build_report(root: str | os.PathLike, fmt: str = "md", table: int | None = None,
                 select: dict | None = None, comparisons: bool = False) -> tuple[str, str]:
    """(main text, side text): the table (or with `comparisons`, each method minus baseline with
    its Welch CI) and, for CSV, the not-averaged listing kept apart."""
    runs = select_runs(load_runs(root), **(select or {}))
    if not runs:
        raise ReportError(f"no runs under '{root}' (no folder with {SUMMARY}, {FAILED}, "
                          f"{METRICS}, {CHECKPOINT} or {CONFIG}); check the path")
    rows = aggregate(runs)
    if not rows and any(r.summary and r.summary.get("task") == "segmentation" for r in runs):
        raise ReportError(f"the finished runs under '{root}' are segmentation runs (mIoU): report "
                          "them with --table 7")
    if not rows:
        pending = sum(r.status == "in_progress" for r in runs)
        raise ReportError(f"no finished runs under '{root}' ({pending} in progress, "
                          f"{len(runs) - pending} failed); nothing to average yet",
                          listing=format_pending(runs, "csv", root))
    shown = table_rows(rows, table)
    if not shown:
        augs, methods = TABLES[table].augs, TABLES[table].methods
        raise ReportError(f"no finished runs for Table {table} (aug {'/'.join(augs)}, method "
                          f"{'/'.join(methods)}); drop --table to see the {len(rows)} groups")
    text = format_comparisons(rows, fmt, table) if comparisons else format_table(rows, fmt, table)
    notes = [n for r in shown for n in r.notes]
    side = format_pending(runs, fmt, root, notes)
    if fmt == "csv":
        return text, side
    return (text + "\n" + side if side else text), ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    select = {"dataset": args.dataset, "model": args.model, "aug": args.aug}
    try:
        if args.table == 4:
            return _table4(args, select)
        if args.table == 7:  # ---- Table 7 (segmentation): report.table7
            return _table7(args, select)
        if args.curves:
            runs = select_runs(load_runs(args.runs_dir), **select)
            n = plot_curves(args.runs_dir, args.curves, runs=runs)
            print(f"wrote {args.curves} ({n} curves)", file=sys.stderr)
            return 0
        _emit(*build_report(args.runs_dir, args.format, args.table, select, args.compare), args.out)
    except (ReportError, OSError) as exc:
        sys.stderr.write(getattr(exc, "listing", ""))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _table4(args, select: dict) -> int:
    """Table 4 (Markdown: top-1 / top-5 beside the paper's) or, with --curves, Figure 3."""
    if args.format != "md" or args.compare:
        raise ReportError("--table 4 is set in Markdown (top-1 / top-5 per run's last epoch): "
                          "drop --format and --compare")
    runs = select_runs(load_runs(args.runs_dir), **select)
    rows = table4.table4_runs(runs)
    if not rows:
        raise ReportError(f"no finished runs under '{args.runs_dir}' for Table 4 (make table4 "
                          "writes outputs/table4)", listing=format_pending(runs, "csv", args.runs_dir))
    if args.curves:
        table4.figure3(rows, args.curves)
        print(f"wrote {args.curves} (Figure 3, {len(rows)} runs)", file=sys.stderr)
        return 0
    _emit(table4.markdown(rows) + "\n", format_pending(runs, "md", args.runs_dir), args.out)
    return 0


def _table7(args, select: dict) -> int:
    """Table 7 (Markdown or CSV): mIoU single scale / multi-scale / + flip beside the paper's,
    with ISDA - baseline and its Welch 95% CI."""
    if args.format == "tex" or args.compare or args.curves:
        raise ReportError("--table 7 is set in Markdown or CSV (it holds the ISDA - baseline "
                          "differences): drop --format tex, --compare and --curves")
    runs = select_runs(load_runs(args.runs_dir), **select)
    rows = table7.table7_rows(runs)
    if not rows:
        raise ReportError(f"no finished segmentation runs under '{args.runs_dir}' for Table 7 (make "
                          "table7 writes outputs/table7)", listing=format_pending(runs, "csv", args.runs_dir))
    text = table7.to_csv(rows) if args.format == "csv" else table7.markdown(rows)
    _emit(text, format_pending(runs, "md", args.runs_dir), args.out)
    return 0


def _emit(text: str, side: str, out: str | None) -> None:
    """The table to `out` (atomically) or stdout; the not-averaged listing to stderr."""
    if out:
        atomic_write(out, lambda fh: fh.write(text.encode("utf-8")))
    else:
        sys.stdout.write(text)
    if side:
        sys.stderr.write(side)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isda_exp.report", description=(
        "Mean and sample std of test_error_last10 across seeds per (dataset, model, aug, "
        "method), beside the ISDA paper's numbers; each method minus baseline with --compare; or "
        "Figure 2's curves with --curves."))
    p.add_argument("runs_dir", help="folder holding the run directories (searched recursively)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--table", type=int, choices=sorted([*TABLES, 4, 7]),
                   help="lay out as the paper's Table 1, 2, 3, 4 (ImageNet: top-1 / top-5), 5 or 7 "
                        "(Cityscapes segmentation: mIoU)")
    p.add_argument("--out", help="write to this file (atomically) instead of stdout")
    p.add_argument("--curves", metavar="OUT.png", help="plot test error per epoch instead")
    p.add_argument("--compare", action="store_true", help=(
        "each method minus its cell's baseline: difference of the mean last-10 errors, Welch "
        "95%% CI and p-value, seeds per arm"))
    p.add_argument("--dataset", action="append", help="keep only this dataset (repeatable)")
    p.add_argument("--model", action="append", help="keep only this model (repeatable)")
    p.add_argument("--aug", action="append", help="keep only this aug (repeatable)")
    return p


if __name__ == "__main__":
    sys.exit(main())
