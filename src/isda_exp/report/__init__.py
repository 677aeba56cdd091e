"""Aggregate trainer runs into the paper's tables and Figure 2's curves.

Usage: ``python -m isda_exp.report RUNS_DIR [--format md|csv|tex] [--table 1|2|3|5] [--compare]
[--out FILE]`` or ``python -m isda_exp.report RUNS_DIR --curves OUT.png``.

Data flows one way: runs (loading run directories) -> groups (cells: mean and std across seeds)
-> compare (method minus baseline, Welch) -> tables (the registry of the paper's Tables 1, 2, 3
and 5: tables_1_2, tables_3_5; listing: every group, the comparisons, the runs not averaged) -> render
(Markdown, LaTeX, CSV); curves draws Figure 2. Only finished runs are averaged; the others are
listed apart.
"""
from ..rundir.files import atomic_write
from .cli import build_report, main
from .compare import Comparison, Welch, compare, welch
from .curves import Curve, curve_data, plot_curves
from .groups import Row, aggregate
from .listing import format_pending
from .render import smoke_banner, tex_escape
from .runs import Key, ReportError, RunRecord, load_runs, read_metrics, select_runs
from .tables import TABLES, format_comparisons, format_table, table_rows

__all__ = ["Comparison", "Welch", "compare", "welch", "format_comparisons", "Curve", "Key",
           "ReportError", "Row", "RunRecord", "TABLES", "aggregate", "atomic_write", "build_report",
           "curve_data", "format_pending", "format_table", "load_runs", "main", "plot_curves",
           "read_metrics", "select_runs", "smoke_banner", "table_rows", "tex_escape"]
