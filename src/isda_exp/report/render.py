"""Markup of the report: a table as a grid of texts, set as Markdown, LaTeX (booktabs) or CSV.

A leaf: the layouts (which rows, which columns) build a `Grid` from the texts of this module
and hand it back here to be set; nothing here knows the paper's tables.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

FORMATS = ("md", "csv", "tex")
MISSING = "—"
SMOKE_TEXT = ("SMOKE TABLE: miniature runs ({epochs}, subsets/synthetic data) "
              "-- not comparable to the paper")
REDUCED_TEXT = ("REDUCED REPRODUCTION: real data, {epochs}, subsets of the data set "
                "-- not comparable to the paper's full-recipe numbers")
CELL_COLUMNS = ("ours (n)", "paper", "diff")  # the three texts of one (group, paper) cell
VS_BASELINE = "vs baseline [95% CI]"


@dataclass
class Grid:
    """A table independent of its markup: columns are (group, name); group "" spans nothing."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[str]]
    lead: int = 2  # leading text columns (left-aligned); the rest are numbers


# ------------------------------------------------------------------------------ texts


def num(x, spec: str = ".4f") -> str:
    """A CSV number: empty when missing."""
    return "" if x is None else format(x, spec)


def fixed(value: float | None, spec: str = ".2f") -> str:
    """A table number, or the missing mark."""
    return MISSING if value is None else format(value, spec)


def mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def result_cells(ours, published: tuple[float, float | None] | None, diff: float | None) -> list[str]:
    """The CELL_COLUMNS texts: our group ("mean ± std (n)"), the paper's number, ours minus paper.

    `ours` is a group row (error_mean, error_std, seeds) or None when not run.
    """
    paper_text = mean_std(*published) if published else MISSING
    if ours is None:
        return [MISSING, paper_text, MISSING]
    return [f"{mean_std(ours.error_mean, ours.error_std)} ({ours.seeds})", paper_text,
            fixed(diff, "+.2f")]


def delta(comparison) -> str:
    """The difference to the baseline with its 95% CI and p, for a table cell (None: no baseline)."""
    if comparison is None:
        return MISSING
    w = comparison.result
    if w is None:
        return "n < 2"
    return f"{w.diff:+.2f} [{w.low:+.2f}, {w.high:+.2f}] p={p_text(w.p_value)}"


def smoke_banner(rows) -> str | None:
    """The label of a table whose groups are not all full-recipe runs: SMOKE when any is a smoke
    run (synthetic data, a few epochs or images), else REDUCED (real data, a reduced protocol such
    as `make mini`); None for full-recipe groups."""
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
    miniature = any(getattr(r, "scale", "smoke") == "smoke" for r in smoke)
    return (SMOKE_TEXT if miniature else REDUCED_TEXT).format(epochs=text)


# ------------------------------------------------------------------------------ markup


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use md, csv or tex")


def render(grid: Grid, fmt: str, banner: str | None) -> str:
    """The grid as Markdown ("md") or LaTeX ("tex"), the smoke banner above it when given."""
    return markdown(grid, banner) if fmt == "md" else latex(grid, banner)


def csv_text(header, lines) -> str:
    """One CSV document (header + lines), the writer every CSV output of the report shares."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return buf.getvalue()


def md_line(cells) -> str:
    """One Markdown table line, a "|" inside a cell escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(grid: Grid, banner: str | None) -> str:
    header = [f"{g} {n}".strip() for g, n in grid.columns]
    parts = [f"**{banner}**", ""] if banner else []
    parts += [f"### {grid.title}", "", md_line(header),
              "|" + "|".join("---" if i < grid.lead else "---:"
                             for i in range(len(grid.columns))) + "|"]
    parts += [md_line(r) for r in grid.rows]
    return "\n".join(parts) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "\\": r"\textbackslash{}", "±": r"$\pm$", MISSING: "---"}


def tex_escape(text: str) -> str:
    """Text for a LaTeX cell: specials escaped, signed numbers set in math for a true minus."""
    if re.fullmatch(r"[+-]\d+(\.\d+)?", text):
        return f"${text}$"
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def latex(grid: Grid, banner: str | None) -> str:
    ncol = len(grid.columns)
    lead = grid.lead
    out = [f"% {banner}"] if banner else []
    out += [f"% {grid.title}", r"\begin{tabular}{" + "l" * lead + "r" * (ncol - lead) + "}",
            r"\toprule"]
    if banner:
        out += [rf"\multicolumn{{{ncol}}}{{l}}{{\textbf{{{tex_escape(banner)}}}}} \\", r"\midrule"]
    groups = spans(grid.columns)
    if any(g for g, _, _ in groups):
        out.append(" & ".join(rf"\multicolumn{{{w}}}{{c}}{{{tex_escape(g)}}}" if g else
                              " & ".join([""] * w) for g, _, w in groups) + r" \\")
        out.append("".join(rf"\cmidrule(lr){{{s + 1}-{s + w}}}" for g, s, w in groups if g))
    out.append(" & ".join(tex_escape(n) for _, n in grid.columns) + r" \\")
    out.append(r"\midrule")
    out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in grid.rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def spans(columns: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Runs of equal group labels as (group, start index, width)."""
    out: list[tuple[str, int, int]] = []
    for i, (group, _) in enumerate(columns):
        if out and out[-1][0] == group:
            g, s, w = out[-1]
            out[-1] = (g, s, w + 1)
        else:
            out.append((group, i, 1))
    return out
