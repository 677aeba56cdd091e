"""Aggregate trainer runs into the paper's tables and Figure 2's curves.

Usage: ``python -m isda_exp.report RUNS_DIR [--format md|csv|tex] [--table 1|2] [--compare] [--out FILE]``
or ``python -m isda_exp.report RUNS_DIR --curves OUT.png``.

Data flows one way: runs (loading run directories) -> groups (cells: mean and std across seeds)
-> tables (Markdown, LaTeX, CSV) / compare (method minus baseline, Welch) / curves (Figure 2).
Only finished runs are averaged; the others are listed apart.
"""
from isda_exp.runfiles import atomic_write

from .cli import build_report, main
from .compare import Comparison, Welch, compare, welch
from .curves import Curve, curve_data, plot_curves
from .groups import Row, aggregate
from .runs import Key, ReportError, Run, load_runs, read_metrics, select_runs
from .tables import (format_comparisons, format_pending, format_table, smoke_banner, table_rows,
                     tex_escape)

__all__ = ["Comparison", "Welch", "compare", "welch", "format_comparisons", "Curve", "Key", "ReportError", "Row", "Run", "aggregate", "atomic_write", "build_report",
           "curve_data", "format_pending", "format_table", "load_runs", "main", "plot_curves",
           "read_metrics", "select_runs", "smoke_banner", "table_rows", "tex_escape"]
