"""report --compare: method minus baseline with Welch's CI and p, against hand-worked answers."""
from __future__ import annotations

import csv
import io
import json
import statistics

import numpy as np
import pytest
from scipy import stats

from isda_exp import report
from isda_exp.report.compare import welch


def stats_of(xs):
    return statistics.fmean(xs), statistics.variance(xs), len(xs)


def test_equal_variances_by_hand():
    # a = 1,2,3 and b = 4,5,6: means 2 and 5, variances 1 and 1, se = sqrt(1/3 + 1/3),
    # df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4 exactly; t(0.975, 4) = 2.776 (any t table);
    # t = 3 / 0.8165 = 3.674, two-sided p = 0.0213.
    w = welch(*stats_of([1, 2, 3]), *stats_of([4, 5, 6]))
    se = (2 / 3) ** 0.5
    assert w.diff == 3.0
    assert w.df == pytest.approx(4.0, abs=1e-12)
    assert (w.high - w.diff) / se == pytest.approx(2.776, abs=5e-4)
    assert (w.low, w.high) == pytest.approx((3 - 2.7764 * se, 3 + 2.7764 * se), abs=1e-3)
    assert w.p_value == pytest.approx(0.0213, abs=1e-4)


def test_welch_satterthwaite_df_by_hand():
    # a = 10,12,14 (var 4, n 3), b = 20,30,40,50 (var 500/3, n 4):
    # s_a = 4/3, s_b = 125/3; df = (129/3)^2 / ((4/3)^2 / 2 + (125/3)^2 / 3) = 3.1902...
    w = welch(*stats_of([10, 12, 14]), *stats_of([20, 30, 40, 50]))
    sa, sb = 4 / 3, 125 / 3
    assert w.df == pytest.approx((sa + sb) ** 2 / (sa ** 2 / 2 + sb ** 2 / 3), rel=1e-12)
    assert w.df == pytest.approx(3.1902, abs=1e-4)
    assert w.diff == 23.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy_on_raw_samples(seed):
    """From summary statistics, as the report has them, equal to scipy's test on the samples."""
    rng = np.random.default_rng(seed)
    a = rng.normal(7.0, 0.3, size=rng.integers(2, 7))
    b = rng.normal(6.6, 0.6, size=rng.integers(2, 7))
    w = welch(*stats_of(a), *stats_of(b))
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert w.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (w.low, w.high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
    assert w.df == pytest.approx(ref.df, rel=1e-9)


def test_needs_two_seeds():
    with pytest.raises(ValueError, match=">= 2"):
        welch(1.0, 0.0, 1, 2.0, 0.1, 3)


def write_run(root, name, error, method="baseline", variant=None, dataset="cifar10", seed=0):
    d = root / name
    d.mkdir(parents=True)
    summary = {"test_error_last10": error, "dataset": dataset, "model": "resnet32",
               "aug": "baseline", "method": method, "variant": variant, "seed": seed,
               "epochs": 160, "recipe_epochs": 160, "train_size": 50000, "test_size": 10000}
    (d / "summary.json").write_text(json.dumps(summary))


def test_compare_cli(tmp_path, capsys):
    base, isda = [7.4, 7.2, 7.5], [7.0, 7.1, 6.8]
    for i, (b, a) in enumerate(zip(base, isda)):
        write_run(tmp_path, f"b{i}", b, seed=i)
        write_run(tmp_path, f"i{i}", a, method="isda", variant="full", seed=i)
    write_run(tmp_path, "c100b", 31.0, dataset="cifar100")
    write_run(tmp_path, "c100i", 30.0, method="isda", dataset="cifar100")
    assert report.main([str(tmp_path), "--compare"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split(" | ") for ln in out.splitlines() if ln.startswith("| CIFAR")]
    c10 = [c.strip("| ") for c in lines[0]]
    c100 = [c.strip("| ") for c in lines[1]]
    ref = stats.ttest_ind(isda, base, equal_var=False)
    lo, hi = ref.confidence_interval(0.95)
    assert c10[3:] == ["isda", "baseline", "3 vs 3", f"{np.mean(isda) - np.mean(base):+.2f}",
                       f"[{lo:+.2f}, {hi:+.2f}]", f"{ref.pvalue:.3f}"]
    assert c100[6] == "needs >= 2 seeds per arm (1 vs 1)" and c100[7:] == ["—", "—"]

    assert report.main([str(tmp_path), "--compare", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(rows[0]["p_value"]) == pytest.approx(ref.pvalue, rel=1e-5)
    assert rows[1]["diff"] == "" and rows[1]["note"].startswith("needs >= 2 seeds")


def test_dropout_rows_pair_with_the_dropout_baseline(tmp_path):
    rows = []
    for method, errs in (("baseline", [7, 7.2]), ("baseline+dropout", [6.5, 6.6]),
                         ("isda+dropout", [6.0, 6.2]), ("focal", [6.9, 7.1])):
        for i, e in enumerate(errs):
            write_run(tmp_path, f"{method}{i}", e, method=method, seed=i)
    rows = report.aggregate(report.load_runs(tmp_path))
    pairs = {c.method.method: c.reference.method for c in report.compare(rows)}
    assert pairs == {"isda+dropout": "baseline+dropout", "focal": "baseline"}
