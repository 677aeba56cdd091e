"""The report against hand-written run directories with known answers (no training involved)."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from isda_exp import report
from isda_exp.report import paper

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def write_run(root: Path, rel: str, err: float | None = None, *, status: str = "finished",
              dataset="cifar10", model="resnet32", aug="baseline", method="baseline",
              variant=None, seed=0, epochs=160, recipe_epochs=160, train_size=50000,
              test_size=10000, curve: list[float] | None = None, error_msg="boom") -> Path:
    """A run directory as the trainer leaves it; `rel` is deliberately unrelated to the group."""
    d = root / rel
    d.mkdir(parents=True)
    if curve is not None:
        lines = [json.dumps({"epoch": i + 1, "train_loss": 1.0, "train_error": 50.0,
                             "test_loss": 1.0, "test_error": e, "lr": 0.1, "lambda": 0.0,
                             "seconds": 1.0}) for i, e in enumerate(curve)]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if status == "finished":
        summary = {"test_error_last10": err, "test_error_final": err, "test_error_best": err,
                   "epochs": epochs, "recipe_epochs": recipe_epochs, "seed": seed,
                   "dataset": dataset, "model": model, "aug": aug, "method": method,
                   "variant": variant, "lambda_0": 0.5 if method == "isda" else 0.0,
                   "train_size": train_size, "test_size": test_size, "wall_time": 1.0,
                   "torch_version": "2.x", "device": "cpu"}
        (d / "summary.json").write_text(json.dumps(summary))
    elif status == "failed":
        (d / "failed.json").write_text(json.dumps({"error": error_msg}))
    elif status == "checkpoint":
        (d / "last.pt").write_bytes(b"not a real checkpoint")
    return d


def cell(seeds, root, prefix, **kw):
    for i, e in enumerate(seeds):
        write_run(root, f"{prefix}/{i}", e, seed=i, **kw)


def run_main(argv, capsys):
    rc = report.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def md_table(text: str, title_start: str) -> list[list[str]]:
    """The cells of the Markdown table that follows the heading starting with title_start."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title_start))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        if not re.fullmatch(r"\|(:?-{3,}:?\|)+", ln):  # skip the alignment row
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]])
    return rows


# ------------------------------------------------------------------------------- aggregation


def test_known_mean_and_sample_std(tmp_path):
    for i, (rel, e) in enumerate([("x/one", 7.0), ("deep/er/two", 7.2), ("three", 7.4)]):
        write_run(tmp_path, rel, e, seed=i)
    (row,) = report.aggregate(report.load_runs(tmp_path))
    assert row.key == ("cifar10", "resnet32", "baseline", "baseline")
    assert row.seeds == 3
    assert row.error_mean == pytest.approx(7.2, abs=1e-12)
    assert row.error_std == pytest.approx(0.2, abs=1e-12)


def test_groups_match_statistics_module(tmp_path):
    rng = random.Random(5)
    groups = {("cifar100", "wrn28_10", "cutout", "isda", "full"): [rng.uniform(15, 20) for _ in range(5)],
              ("cifar100", "wrn28_10", "cutout", "baseline", None): [rng.uniform(15, 20) for _ in range(4)],
              ("cifar10", "wrn28_10", "cutout", "isda", None): [rng.uniform(2, 4) for _ in range(2)]}
    for g, (key, errs) in enumerate(groups.items()):
        ds, model, aug, method, variant = key
        for i, e in enumerate(errs):
            write_run(tmp_path, f"g{g}s{i}", e, seed=i, dataset=ds, model=model, aug=aug,
                      method=method, variant=variant)
    write_run(tmp_path, "single", 3.3, dataset="cifar10", model="wrn28_10", aug="autoaugment")
    rows = {r.key: r for r in report.aggregate(report.load_runs(tmp_path))}
    assert len(rows) == 4
    for (ds, model, aug, method, _), errs in groups.items():
        r = rows[(ds, model, aug, method)]
        assert r.seeds == len(errs)
        assert r.error_mean == pytest.approx(statistics.mean(errs), rel=1e-12)
        assert r.error_std == pytest.approx(statistics.stdev(errs), rel=1e-12)
    single = rows[("cifar10", "wrn28_10", "autoaugment", "baseline")]
    assert single.seeds == 1 and single.error_std is None
    # paper order: C10 before C100, baseline before isda within a cell
    assert [r.key for r in report.aggregate(report.load_runs(tmp_path))][0][0] == "cifar10"


def test_paper_numbers_and_difference(tmp_path):
    cell([30.0, 30.5], tmp_path, "a", dataset="cifar100", method="isda", variant="full")
    write_run(tmp_path, "b", 18.4, dataset="cifar100", model="wrn28_10", method="isda",
              variant="diagonal")
    write_run(tmp_path, "c", 2.0, model="unknown_net")
    rows = {r.key: r for r in report.aggregate(report.load_runs(tmp_path))}
    r = rows[("cifar100", "resnet32", "baseline", "isda")]
    assert (r.paper_mean, r.paper_std) == (30.27, 0.34)
    assert r.diff == pytest.approx(30.25 - 30.27)
    ablation = rows[("cifar100", "wrn28_10", "baseline", "isda-diagonal")]
    assert (ablation.paper_mean, ablation.paper_std) == (18.23, 0.02)
    assert ablation.diff == pytest.approx(18.4 - 18.23)
    outside = rows[("cifar10", "unknown_net", "baseline", "baseline")]
    assert outside.paper_mean is None and outside.diff is None


def test_variant_none_and_full_are_the_same_group(tmp_path):
    write_run(tmp_path, "a", 7.0, method="isda", variant=None, seed=0)
    write_run(tmp_path, "b", 7.4, method="isda", variant="full", seed=1)
    write_run(tmp_path, "c", 7.9, method="isda", variant="shared", seed=0)
    rows = {r.method: r for r in report.aggregate(report.load_runs(tmp_path))}
    assert set(rows) == {"isda", "isda-shared"}
    assert rows["isda"].seeds == 2 and rows["isda"].error_mean == pytest.approx(7.2)


def test_group_key_comes_from_summary_not_path(tmp_path):
    write_run(tmp_path, "cifar10/resnet110/cutout/baseline/seed0", 20.0, dataset="cifar100")
    (row,) = report.aggregate(report.load_runs(tmp_path))
    assert row.key == ("cifar100", "resnet32", "baseline", "baseline")


def test_mixed_groups_are_refused_and_a_repeated_seed_gets_a_note(tmp_path):
    # runs that differ (here in epochs) are never averaged into one cell
    write_run(tmp_path, "a", 7.0, seed=0)
    write_run(tmp_path, "b", 7.2, seed=0, epochs=80)
    with pytest.raises(report.ReportError, match=r"trainer\.epochs = 160 in \S+/a; 80 in \S+/b"):
        report.aggregate(report.load_runs(tmp_path))
    write_run(tmp_path, "c", 7.4, seed=0, epochs=80)  # the same seed and config again: counted once
    (tmp_path / "a" / "summary.json").unlink()
    (row,) = report.aggregate(report.load_runs(tmp_path))
    assert row.seeds == 1 and row.error_mean == 7.2
    assert any("seed 0 finished twice" in n for n in row.notes)


# --------------------------------------------------------------------- unfinished and failed


def test_unfinished_runs_listed_not_averaged(tmp_path, capsys):
    cell([7.0, 7.2, 7.4], tmp_path, "done")
    write_run(tmp_path, "running", status="running", curve=[50.0, 40.0, 30.0, 25.0])
    write_run(tmp_path, "ckpt_only", status="checkpoint")
    write_run(tmp_path, "crashed", status="failed", curve=[60.0], error_msg="CUDA out of memory")
    torn = write_run(tmp_path, "torn", 1.0)
    (torn / "summary.json").write_text('{"test_error_last10": 1.0, "data')
    # unfinished runs whose layout names the same group as the finished ones
    write_run(tmp_path, "cifar10/resnet32/baseline/baseline/seed7", status="failed")
    write_run(tmp_path, "cifar10/resnet32/baseline/baseline/seed8", status="running", curve=[9.0])
    write_run(tmp_path, "nonnumeric", 1.0).joinpath("summary.json").write_text(
        json.dumps({"test_error_last10": "n/a", "dataset": "cifar10", "model": "resnet32",
                    "aug": "baseline", "method": "baseline"}))

    runs = report.load_runs(tmp_path)
    status = {r.path.name: r.status for r in runs}
    assert status["running"] == "in_progress" and status["ckpt_only"] == "in_progress"
    assert status["crashed"] == status["torn"] == status["nonnumeric"] == "failed"
    (row,) = report.aggregate(runs)
    assert row.seeds == 3 and row.error_mean == pytest.approx(7.2)

    rc, out, err = run_main([tmp_path], capsys)
    assert rc == 0
    header, *listing = md_table(out, "#### Runs not averaged")
    assert header == ["Status", "Run", "Detail"]
    by_dir = {r[1]: r for r in listing}
    assert by_dir["running"] == ["in progress", "running", "last epoch 4"]
    assert by_dir["ckpt_only"][2] == "no epoch logged"
    assert by_dir["crashed"] == ["failed", "crashed", "CUDA out of memory (last epoch 1)"]
    assert "unreadable summary.json" in by_dir["torn"][2]
    assert "not a number" in by_dir["nonnumeric"][2]
    assert len(listing) == 7

    rc, out, err = run_main([tmp_path, "--format", "csv"], capsys)
    assert rc == 0 and "running" not in out and "crashed" not in out  # csv stays pure
    assert "not averaged: in progress: running (last epoch 4)" in err


def test_unfinished_run_group_from_run_config(tmp_path):
    d = write_run(tmp_path, "anywhere", status="running", curve=[40.0])
    config = {"seed": 1, "model": {"name": "wrn28_10", "recipe": {"epochs": 240}},
              "dataset": {"name": "cifar100", "train_subset": None, "test_subset": None},
              "aug": {"name": "cutout"}, "trainer": {"epochs": None},
              "isda": {"name": "isda", "loss": {"covariance": "diagonal"}, "constant": False}}
    (d / "run_config.json").write_text(json.dumps(config))
    (run,) = report.load_runs(tmp_path)
    assert run.key == ("cifar100", "wrn28_10", "cutout", "isda-diagonal") and not run.smoke
    config["isda"] = {"name": "baseline", "loss": None, "constant": False}
    config["trainer"]["epochs"] = 1
    (d / "run_config.json").write_text(json.dumps(config))
    (run,) = report.load_runs(tmp_path)
    assert run.key == ("cifar100", "wrn28_10", "cutout", "baseline") and run.smoke


# ------------------------------------------------------------------------------------ formats


def test_csv_columns_and_values(tmp_path):
    cell([7.0, 7.2, 7.4], tmp_path, "b")
    write_run(tmp_path, "i", 6.5, method="isda")
    text = report.format_table(report.aggregate(report.load_runs(tmp_path)), "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:9] == ["dataset", "model", "aug", "method", "seeds", "error_mean",
                           "error_std", "paper_mean", "paper_std"]
    assert rows[0][-1] == "smoke"
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)
    base = dict(zip(rows[0], rows[1]))
    assert base["method"] == "baseline" and base["seeds"] == "3"
    assert float(base["error_mean"]) == pytest.approx(7.2)
    assert float(base["error_std"]) == pytest.approx(0.2)
    assert (float(base["paper_mean"]), float(base["paper_std"])) == (7.39, 0.10)
    assert float(base["diff"]) == pytest.approx(-0.19)
    isda = dict(zip(rows[0], rows[2]))
    assert isda["error_std"] == "" and isda["seeds"] == "1" and isda["smoke"] == "false"


def test_table1_layout(tmp_path, capsys):
    cell([7.0, 7.2, 7.4], tmp_path, "c10b")
    cell([6.8, 7.0], tmp_path, "c10i", method="isda", variant="full")
    cell([31.0], tmp_path, "c100b", dataset="cifar100")
    cell([2.0, 2.1], tmp_path, "cutout", model="wrn28_10", aug="cutout")  # not a Table 1 cell
    cell([18.0], tmp_path, "abl", dataset="cifar100", model="wrn28_10", method="isda",
         variant="identity")  # Table 5, not Table 1
    rc, out, _ = run_main([tmp_path, "--table", "1"], capsys)
    assert rc == 0
    rows = md_table(out, "### Table 1")
    header, body = rows[0], rows[1:]
    assert header[:2] == ["Model", "Method"] and header[2] == "CIFAR-10 ours (n)"
    assert header[5] == "CIFAR-10 vs baseline [95% CI]"
    assert header[6] == "CIFAR-100 ours (n)"
    welch = stats.ttest_ind([6.8, 7.0], [7.0, 7.2, 7.4], equal_var=False)
    lo, hi = welch.confidence_interval(0.95)
    vs = f"-0.30 [{lo:+.2f}, {hi:+.2f}] p={welch.pvalue:.3f}"
    assert body == [
        ["ResNet-32", "baseline", "7.20 ± 0.20 (3)", "7.39 ± 0.10", "-0.19", "—",
         "31.00 (1)", "31.20 ± 0.41", "-0.20", "—"],
        ["ResNet-32", "isda", "6.90 ± 0.14 (2)", "7.09 ± 0.12", "-0.19", vs,
         "—", "30.27 ± 0.34", "—", "—"],
    ]


def test_table2_layout(tmp_path, capsys):
    cell([2.9, 3.1], tmp_path, "a", model="wrn28_10", aug="cutout")
    cell([2.6], tmp_path, "b", model="wrn28_10", aug="autoaugment", method="isda")
    cell([17.0], tmp_path, "c", dataset="cifar100", model="shake26_2x112d", aug="autoaugment",
         method="isda")
    cell([7.0], tmp_path, "d")  # standard aug: Table 1 only
    rc, out, _ = run_main([tmp_path, "--table", "2"], capsys)
    assert rc == 0
    header, *body = md_table(out, "### Table 2")
    starts = (2, 5, 9, 12)  # ours/paper/diff, plus "vs baseline" after the ISDA groups
    groups = [header[i].rsplit(" ", 1)[0] for i in starts]
    assert groups == ["Cutout ours", "Cutout+ISDA ours", "AA ours", "AA+ISDA ours"]
    assert (header[8], header[15]) == ("Cutout+ISDA vs baseline [95% CI]",
                                       "AA+ISDA vs baseline [95% CI]")
    assert [r[:2] for r in body] == [["CIFAR-10", "Wide-ResNet-28-10"],
                                     ["CIFAR-100", "Shake-Shake 26 2x112d"]]
    c10, c100 = body
    assert c10[2:5] == ["3.00 ± 0.14 (2)", "2.99 ± 0.06", "+0.01"]
    assert c10[5:9] == ["—", "2.83 ± 0.04", "—", "—"]
    assert c10[9:12] == ["—", "2.65 ± 0.07", "—"]
    assert c10[12:16] == ["2.60 (1)", "2.56 ± 0.01", "+0.04", "—"]  # no AA baseline run
    assert [c100[i + 1] for i in starts] == ["17.34 ± 0.28", "16.24 ± 0.20", "15.21 ± 0.20",
                                              "13.87 ± 0.26"]
    assert c100[14] == "+3.13"


def test_table_without_matching_runs_exits_2(tmp_path, capsys):
    cell([7.0], tmp_path, "a")
    rc, out, err = run_main([tmp_path, "--table", "2"], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: no finished runs for Table 2")


def test_markdown_is_well_formed(tmp_path):
    cell([7.0, 7.2], tmp_path, "a")
    cell([18.0, 18.2], tmp_path, "b", dataset="cifar100", model="wrn28_10", method="isda")
    rows = report.aggregate(report.load_runs(tmp_path))
    for table in (None, 1):
        lines = [ln for ln in report.format_table(rows, "md", table).splitlines()
                 if ln.startswith("|")]
        widths = {len(re.split(r"(?<!\\)\|", ln)) for ln in lines}
        assert len(widths) == 1
        assert re.fullmatch(r"\|(:?-{3,}:?\|)+", lines[1])


def _tex_rows(text: str) -> list[str]:
    body = text[text.index(r"\begin{tabular}"):text.index(r"\end{tabular}")]
    return [ln for ln in body.splitlines() if ln.endswith(r"\\")]


def test_latex_is_well_formed(tmp_path):
    cell([7.0, 7.2], tmp_path, "a", model="my_net")  # underscore must be escaped
    cell([6.0], tmp_path, "b", method="isda")
    rows = report.aggregate(report.load_runs(tmp_path))
    for table in (None, 1):
        text = report.format_table(rows, "tex", table)
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", text)[1]
        for ln in _tex_rows(text):
            spans = sum(int(w) for w in re.findall(r"\\multicolumn\{(\d+)\}", ln))
            cells = ln.count("&") + 1 - len(re.findall(r"\\multicolumn", ln)) + spans
            assert cells == len(spec), ln
        assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
        assert text.count("{") == text.count("}")
        assert "my\\_net" in text and "$\\pm$" in text
        assert "±" not in "".join(_tex_rows(text))
    assert "$-1.09$" in report.format_table(rows, "tex", 1)  # 6.00 vs 7.09: a real minus


# --------------------------------------------------------------------------------------- smoke


def test_smoke_banner_for_miniature_runs(tmp_path):
    smoke = tmp_path / "smoke"
    for seed in (0, 1):
        write_run(smoke, f"s{seed}", 80.0 + seed, seed=seed, dataset="synthetic", epochs=1,
                  train_size=2000, test_size=500)
        write_run(smoke, f"i{seed}", 79.0 + seed, seed=seed, dataset="synthetic", epochs=1,
                  train_size=2000, test_size=500, method="isda")
    rows = report.aggregate(report.load_runs(smoke))
    banner = ("SMOKE TABLE: miniature runs (1 epoch, subsets/synthetic data) -- not comparable "
              "to the paper")
    md = report.format_table(rows, "md", 1)
    assert md.splitlines()[0] == f"**{banner}**"
    assert "Synthetic ours (n)" in md  # the synthetic column appears beside C10/C100
    tex = report.format_table(rows, "tex")
    assert tex.splitlines()[0] == f"% {banner}" and r"\textbf{SMOKE TABLE" in tex
    assert {r["smoke"] for r in csv.DictReader(io.StringIO(report.format_table(rows, "csv")))} \
        == {"true"}


@pytest.mark.parametrize("change, scale", [
    ({"epochs": 10}, "reduced"), ({"train_size": 5000}, "reduced"), ({"test_size": 1000}, "reduced"),
    ({"dataset": "synthetic"}, "smoke"), ({"epochs": 4}, "smoke"), ({"train_size": 999}, "smoke")])
def test_each_smoke_criterion(tmp_path, change, scale):
    """Any departure from the full recipe keeps the numbers from looking like a reproduction; a
    real-data reduced protocol (make mini) says REDUCED, a miniature or synthetic one SMOKE."""
    write_run(tmp_path, "a", 7.0, **change)
    (row,) = report.aggregate(report.load_runs(tmp_path))
    assert row.smoke and row.scale == scale
    md = report.format_table([row], "md")
    assert ("SMOKE TABLE" in md) == (scale == "smoke") and ("REDUCED REPRODUCTION" in md) == (scale == "reduced")
    assert "not comparable to the paper" in md.splitlines()[0]


def test_no_banner_for_full_recipe_runs(tmp_path):
    cell([7.0, 7.2, 7.4], tmp_path, "a")
    rows = report.aggregate(report.load_runs(tmp_path))
    for fmt in ("md", "tex", "csv"):
        assert "SMOKE TABLE" not in report.format_table(rows, fmt)
    assert report.format_table(rows, "csv").splitlines()[1].endswith(",false")


# -------------------------------------------------------------------------------------- curves


def test_curve_data_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(5, 60, size=(3, 6))
    for s in range(3):
        write_run(tmp_path, f"b{s}", 7.0, seed=s, curve=list(base[s]))
    write_run(tmp_path, "i0", 6.0, method="isda", curve=[50.0, 40.0, 30.0])
    # unfinished seed of the isda group, only its directory layout names the group
    write_run(tmp_path, "cifar10/resnet32/baseline/isda/seed1", status="running",
              curve=[52.0, 38.0])
    write_run(tmp_path, "cifar10/resnet32/baseline/isda/seed2", status="failed",
              curve=[99.0, 99.0])
    curves = {c.key[3]: c for c in report.curve_data(report.load_runs(tmp_path))}
    b = curves["baseline"]
    assert b.epochs == list(range(1, 7)) and b.seeds == 3 and b.running == 0
    np.testing.assert_allclose(b.mean, base.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(b.low, base.min(axis=0))
    np.testing.assert_allclose(b.high, base.max(axis=0))
    i = curves["isda"]
    assert i.seeds == 2 and i.running == 1  # the failed run is left out
    assert i.mean == pytest.approx([51.0, 39.0, 30.0])
    assert (i.low, i.high) == ([50.0, 38.0, 30.0], [52.0, 40.0, 30.0])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_curves_png_written(tmp_path, capsys):
    runs = tmp_path / "runs"
    for s in range(2):
        for method, offset in (("baseline", 0.0), ("isda", -1.0)):
            for ds in ("cifar10", "cifar100"):
                write_run(runs, f"{ds}{method}{s}", 20.0, seed=s, method=method, dataset=ds,
                          model="wrn28_10", curve=[60 + offset - 5 * e + s for e in range(8)])
    out = tmp_path / "fig" / "figure2.png"
    rc, _, err = run_main([runs, "--curves", out], capsys)
    assert rc == 0 and "4 curves" in err
    width, height = _png_size(out)
    assert width > 600 and height > 300
    assert sorted(os.listdir(out.parent)) == ["figure2.png"]  # no temp file left behind
    # a filter keeps Figure 2's own panel (CIFAR-100, WRN)
    assert report.plot_curves(runs, out, runs=report.select_runs(
        report.load_runs(runs), dataset=["cifar100"])) == 2


def test_curves_without_metrics_exit_2(tmp_path, capsys):
    write_run(tmp_path, "a", 7.0)  # a summary but no metrics.jsonl
    rc, _, err = run_main([tmp_path, "--curves", tmp_path / "x.png"], capsys)
    assert rc == 2 and err.startswith("error: no metrics.jsonl") and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
    write_run(tmp_path, "b", 7.0, curve=[50.0])
    rc, _, err = run_main([tmp_path, "--curves", tmp_path / "x.docx"], capsys)
    assert rc == 2 and "cannot write a figure as '.docx'" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


# ----------------------------------------------------------------------------- CLI and output


def test_missing_dir_one_line_exit_2(tmp_path, capsys):
    rc, out, err = run_main([tmp_path / "nope"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: runs directory") and "nope" in err


def test_empty_dir_and_unfinished_only_exit_2(tmp_path, capsys):
    rc, _, err = run_main([tmp_path], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no runs under" in err
    write_run(tmp_path, "r", status="running", curve=[50.0])
    rc, out, err = run_main([tmp_path], capsys)
    assert rc == 2 and out == ""
    assert err.splitlines()[-1].startswith("error: no finished runs") and "1 in progress" in err


def test_module_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    missing = subprocess.run([sys.executable, "-m", "isda_exp.report", str(tmp_path / "nope")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1
    cell([7.0, 7.2, 7.4], tmp_path, "a")
    ok = subprocess.run([sys.executable, "-m", "isda_exp.report", str(tmp_path), "--format",
                         "csv"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("dataset,model,aug,method,seeds,")


def test_out_file_equals_stdout(tmp_path, capsys):
    cell([7.0, 7.2, 7.4], tmp_path / "runs", "a")
    write_run(tmp_path / "runs", "r", status="running", curve=[50.0])
    _, stdout, _ = run_main([tmp_path / "runs", "--table", "1"], capsys)
    target = tmp_path / "tables" / "t1.md"
    rc, out, _ = run_main([tmp_path / "runs", "--table", "1", "--out", target], capsys)
    assert rc == 0 and out == "" and target.read_text() == stdout
    assert os.listdir(target.parent) == ["t1.md"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "table.md"
    target.write_text("old table\n")

    def half_then_crash(fh):
        fh.write(b"half a ta")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report.atomic_write(target, half_then_crash)
    assert target.read_text() == "old table\n"
    assert os.listdir(tmp_path) == ["table.md"]


# --------------------------------------------------------------------------------- paper data


def test_paper_tables_complete():
    keys = paper.PAPER
    t1 = [k for k in keys if k[2] == "baseline" and k[3] in ("baseline", "isda")]
    t2 = [k for k in keys if k[2] in ("cutout", "autoaugment")]
    t5 = [k for k in keys if k[3].startswith("isda-")]
    assert (len(t1), len(t2), len(t5)) == (40, 24, 8)
    assert set(paper.TABLE1_MODELS) == set(paper.MODEL_NAMES)
    assert {k[1] for k in t2} == set(paper.TABLE2_MODELS)
    assert {k[1] for k in t5} == {"wrn28_10"}


def test_paper_isda_never_worse_than_baseline():
    """A property of the published tables that catches swapped or mistyped cells."""
    for (ds, model, aug, method), (mean, _) in paper.PAPER.items():
        if method == "baseline" or not method.startswith("isda") or "+" in method:
            continue  # Table 3's competing losses and dropout rows need not sit between the two
        isda = paper.PAPER[(ds, model, aug, "isda")][0]
        basic = paper.PAPER[(ds, model, aug, "baseline")][0]
        assert isda <= mean <= basic, (ds, model, aug, method)
        assert mean < basic or method != "isda"


def _pm(text: str) -> tuple[float, float | None]:
    nums = [float(x) for x in re.findall(r"\d+\.\d+", text)]
    return (nums[0], nums[1] if len(nums) > 1 else None)


@pytest.mark.skipif(not (SHARED / "RECIPES.md").is_file(), reason="no ../shared/RECIPES.md")
def test_paper_matches_recipes_file():
    """Tables 1 and 2 re-read from RECIPES.md, an independent transcription."""
    names = {**{v: k for k, v in paper.MODEL_NAMES.items()}, "WRN-28-10": "wrn28_10"}
    seen = 0
    for line in (SHARED / "RECIPES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].replace(" (TPAMI)", "") in names:
            model = names[cells[0].replace(" (TPAMI)", "")]
            if not re.match(r"\d", cells[1]):
                continue
            for (ds, method), text in zip([("cifar10", "baseline"), ("cifar10", "isda"),
                                           ("cifar100", "baseline"), ("cifar100", "isda")],
                                          cells[1:]):
                assert paper.PAPER[(ds, model, "baseline", method)] == _pm(text), (model, ds)
                seen += 1
        if len(cells) == 6 and cells[0] in ("C10", "C100") and cells[1] in names:
            ds = {"C10": "cifar10", "C100": "cifar100"}[cells[0]]
            for (aug, method), text in zip([("cutout", "baseline"), ("cutout", "isda"),
                                            ("autoaugment", "baseline"), ("autoaugment", "isda")],
                                           cells[2:]):
                assert paper.PAPER[(ds, names[cells[1]], aug, method)] == _pm(text)
                seen += 1
    assert seen == 40 + 24


@pytest.mark.skipif(not (SHARED / "paper" / "isda_paper_summary.txt").is_file(),
                    reason="no ../shared/paper")
def test_paper_ablation_matches_paper_text():
    """Table 5 re-read from the paper's text (the only source with its std values)."""
    text = (SHARED / "paper" / "isda_paper_summary.txt").read_text()
    block = text[text.index("Table 5:"):]
    rows = {"Identity matrix": "identity", "Diagonal matrix": "diagonal",
            "Single covariance matrix": "shared", "Constant λ_0": "constant"}
    for label, variant in rows.items():
        line = next(ln for ln in block.splitlines() if ln.startswith(label))
        nums = [float(x) for x in re.findall(r"\d+\.\d+", line)]
        assert paper.PAPER[("cifar10", "wrn28_10", "baseline", f"isda-{variant}")] == tuple(nums[:2])
        assert paper.PAPER[("cifar100", "wrn28_10", "baseline", f"isda-{variant}")] == tuple(nums[2:])
