"""Table 7 from real (tiny) segmentation runs: the cells are the runs' means and sample stds, ISDA -
baseline and its CI equal Welch's test computed by scipy from the runs' numbers, unlike runs are
refused, the plain report points to --table 7; and the plan of make table7 DRY=1."""
from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from isda_exp.cli.train import run
from isda_exp.paths import config_dir
from isda_exp.report.cli import main as report_main
from isda_exp.sweeps import plan

TINY = ["dataset=seg_synthetic", "model=deeplabv3_tiny", "trainer.progress=false", "trainer.threads=1",
        "trainer.num_workers=0", "dataset.train_size=16", "dataset.test_size=3",
        "trainer.batch_size=4", "trainer.iterations=4", "trainer.log_every=2", "isda.lambda_0=2.5",
        "trainer.tensorboard=false", "dataset.evaluation.scales=[0.75,1.0]"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("table7")
    out = {}
    for method in ("off", "diagonal"):
        for seed in (0, 1, 2):
            cfg = composed(f"isda={method}", f"seed={seed}", f"out_root={root}")
            out[(method, seed)] = run(cfg, root / cfg.run_name)
    return root, out


def test_table7_holds_the_runs_means_and_welchs_difference(runs, capsys):
    root, summaries = runs
    assert report_main([str(root), "--table", "7", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = lines[0].split(","), [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [r["method"] for r in rows] == ["baseline", "isda-diagonal"] and "miou_msf_mean" in header
    for row, method in zip(rows, ("off", "diagonal")):
        for key in ("miou", "miou_ms", "miou_msf"):
            values = [summaries[(method, s)][key] for s in range(3)]
            assert float(row[f"{key}_mean"]) == pytest.approx(np.mean(values), abs=1e-4)
            assert float(row[f"{key}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    isda, base = rows[1], rows[0]
    for key in ("miou", "miou_ms"):
        a = [summaries[("diagonal", s)][key] for s in range(3)]
        b = [summaries[("off", s)][key] for s in range(3)]
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)
        assert float(isda[f"{key}_vs_baseline"]) == pytest.approx(np.mean(a) - np.mean(b), abs=1e-4)
        assert float(isda[f"{key}_ci_low"]) == pytest.approx(ci.low, abs=1e-3)
        assert float(isda[f"{key}_ci_high"]) == pytest.approx(ci.high, abs=1e-3)
        assert base[f"{key}_vs_baseline"] == "" and base[f"{key}_paper"] == ""  # a smoke table
    assert report_main([str(root), "--table", "7"]) == 0
    assert "SMOKE TABLE" in capsys.readouterr().out


def test_unlike_runs_are_refused_and_the_plain_report_points_to_table_7(runs, tmp_path, capsys):
    root, _ = runs
    assert report_main([str(root)]) == 2
    assert "--table 7" in capsys.readouterr().err
    odd = tmp_path / "odd"
    cfg = composed("isda=off", "seed=5", "trainer.iterations=3", f"out_root={odd}")
    run(cfg, odd / cfg.run_name)
    import shutil

    shutil.copytree(root, odd, dirs_exist_ok=True)
    assert report_main([str(odd), "--table", "7"]) == 2
    assert "science configs differ" in capsys.readouterr().err


def test_make_table7_dry_lists_the_four_runs_and_their_cost(capsys):
    """The table's sweep (its networks swapped for the tiny ones: building ResNet-101s to count
    their FLOPs takes seconds each), and a cost linear in the iterations."""
    assert plan.main(["experiment=table7", "model=deeplabv3_tiny,pspnet_tiny", "--tflops", "60"]) == 0
    out = capsys.readouterr().out
    assert out.count("300it") == 4 and "4 runs, 4 to train" in out
    assert "cityscapes/deeplabv3_tiny/baseline/isda-diagonal" in out and "pspnet_tiny/baseline/baseline" in out
    small = [plan.seg_job_cost(composed(f"trainer.iterations={n}", "dataset.test_size=1"))["pflops"]
             for n in (100, 200, 400)]
    assert small[2] - small[1] == pytest.approx(2 * (small[1] - small[0]))  # linear in iterations
    assert small[0] > 0


def test_explain_refuses_a_segmentation_run_in_one_line(runs, capsys):
    from isda_exp.explain.cli import main as explain_main

    root, _ = runs
    run_dir = next(p.parent for p in root.rglob("summary.json"))
    (run_dir / ".hydra").mkdir(exist_ok=True)  # what the command line writes (run() alone does not)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(composed("isda=off")))
    assert explain_main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a segmentation run" in err[0] and "--table 7" in err[0]
