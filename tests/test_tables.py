"""Tables 3 and 5, the lambda_0 hold-out protocol and the hold-out search (make lambda-search)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from isda_exp.data import Arrays, load_synthetic, take_subsets
from isda_exp.errors import UserError
from isda_exp.report import paper

TINY = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=128", "trainer.batch_size=64",
        "trainer.progress=false", "trainer.tensorboard=false", "+model.net.base_width=4"]


# ------------------------------------------------------------------ the hold-out


def numbered(labels: list[int], num_classes: int) -> Arrays:
    """Arrays whose training image i carries its index in its first two pixels (to trace it)."""
    n = len(labels)
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
    x_test = torch.full((7, 3, 32, 32), 255, dtype=torch.uint8)
    return Arrays("cifar10", num_classes, x, torch.tensor(labels), x_test, torch.zeros(7, dtype=torch.int64))


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


@pytest.fixture
def imbalanced() -> Arrays:
    rng = np.random.default_rng(0)  # classes of very different sizes: 30..300 images
    labels = np.concatenate([np.full(30 * (c + 1), c) for c in range(10)])
    return numbered(rng.permutation(labels).tolist(), 10)


def test_holdout_is_class_balanced_disjoint_complete_and_replaces_the_test_set(imbalanced):
    a = take_subsets(imbalanced, None, None, seed=0, validation=200)
    assert a.eval_split == "holdout" and imbalanced.eval_split == "test"
    assert np.bincount(a.y_test.numpy(), minlength=10).tolist() == [20] * 10  # exactly N / C each
    held, train = ids(a.x_test), ids(a.x_train)
    assert len(set(held)) == 200 and len(set(train)) == len(imbalanced.y_train) - 200
    assert not set(held) & set(train)  # disjoint
    assert sorted(held + train) == list(range(len(imbalanced.y_train)))  # nothing lost, no test image
    labels = imbalanced.y_train.numpy()
    assert all(labels[i] == y for i, y in zip(held + train, a.y_test.tolist() + a.y_train.tolist()))


def test_holdout_is_seeded_by_the_subset_seed_alone(imbalanced):
    first = ids(take_subsets(imbalanced, None, None, seed=0, validation=100).x_test)
    again = ids(take_subsets(imbalanced, None, None, seed=0, validation=100).x_test)
    other = ids(take_subsets(imbalanced, None, None, seed=1, validation=100).x_test)
    assert first == again and first != other
    # the run seed does not enter: two training runs with different seeds load the same hold-out
    s0 = load_synthetic(train_size=300, test_size=10, validation=50)
    s1 = load_synthetic(train_size=300, test_size=10, validation=50)
    assert torch.equal(s0.x_test, s1.x_test) and torch.equal(s0.x_train, s1.x_train)


def test_subsets_compose_with_the_holdout(imbalanced):
    a = take_subsets(imbalanced, 500, 40, seed=3, validation=200)
    full = take_subsets(imbalanced, None, None, seed=3, validation=200)
    assert len(a.y_train) == 500 and len(a.y_test) == 40 and a.eval_split == "holdout"
    assert set(ids(a.x_train)) <= set(ids(full.x_train))  # train_subset: from the 45,000 that remain
    assert set(ids(a.x_test)) <= set(ids(full.x_test))  # test_subset: from the hold-out


@pytest.mark.parametrize("n, words", [(205, "multiple of the 10 classes"), (0, "positive multiple"),
                                      (400, "class 0")])
def test_bad_holdout_sizes_are_refused(imbalanced, n, words):
    with pytest.raises(UserError, match=words):
        take_subsets(imbalanced, None, None, seed=0, validation=n)


def test_cli_run_on_the_holdout_reports_eval_split(tmp_path, cli_here):
    cli_here(*TINY, "trainer.epochs=1", "isda=off", "dataset.validation=50", "out_root=o")
    run_dir = tmp_path / "o/synthetic/resnet32/baseline/baseline/seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_split"] == "holdout"
    assert (summary["train_size"], summary["test_size"]) == (206, 50)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_split"] for r in rows] == ["holdout"]


# ------------------------------------------------------------------ the hold-out search


def fake_run(root: Path, lam: float, seed: int, error: float | None = None, status: str = "finished",
             split: str = "holdout", model: str = "resnet110", name: str | None = None) -> Path:
    """A run directory as the trainer leaves it: run_config.json, and summary.json or failed.json."""
    run = root / (name or f"lambda_0_{lam}") / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"seed": seed, "model": {"name": model}, "dataset": {"name": "cifar10", "validation":
              5000 if split == "holdout" else None}, "isda": {"lambda_0": lam, "constant": False}}
    (run / "run_config.json").write_text(json.dumps(config))
    if status == "finished":
        (run / "summary.json").write_text(json.dumps({
            "test_error_last10": error, "seed": seed, "dataset": "cifar10", "model": model,
            "aug": "baseline", "method": "isda", "variant": "full", "eval_split": split, "epochs": 160}))
    elif status == "failed":
        (run / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    else:
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "test_error": 1.0}) + "\n")
    return run


def search_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "isda_exp.sweeps.search", *args], capture_output=True, text=True)


def test_search_picks_the_lowest_mean_and_never_averages_unfinished_runs(tmp_path):
    errors = {0.1: [5.0, 5.3, 5.6], 0.25: [4.9, 5.1, 5.0], 0.5: [4.7, 5.0], 0.75: [5.5, 5.5, 5.5],
              1.0: [6.0, 6.1, 6.2]}
    for lam, errs in errors.items():
        for seed, e in enumerate(errs):
            fake_run(tmp_path, lam, seed, e)
    fake_run(tmp_path, 0.5, 2, status="failed")  # averaged as anything it would pull 0.5's mean away
    fake_run(tmp_path, 1.0, 3, status="in_progress")
    from isda_exp.sweeps import search

    values, left_out = search.collect(tmp_path, "isda.lambda_0")
    assert [v.value for v in values] == [0.1, 0.25, 0.5, 0.75, 1.0]
    by_hand = {lam: sum(errs) / len(errs) for lam, errs in errors.items()}  # 5.3, 5.0, 4.85, 5.5, 6.1
    assert {v.value: round(v.mean, 10) for v in values} == {k: round(m, 10) for k, m in by_hand.items()}
    assert values[2].std == pytest.approx(np.std([4.7, 5.0], ddof=1))
    assert search.choose(values).value == 0.5
    assert sorted(r.status for r, _ in left_out) == ["failed", "in_progress"]

    proc = search_cli(str(tmp_path), "--param", "isda.lambda_0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "chosen: isda.lambda_0 = 0.5 (lowest mean hold-out error, 4.85%)" in out
    assert "| 0.5 | 2 | 4.85 ± 0.21 | 0: 4.70, 1: 5.00 |" in out
    assert "| 0.1 | 3 | 5.30 ± 0.30 |" in out
    assert "provisional: 2 run(s) not finished" in out
    assert "lambda_0_0.5/seed2: failed: RuntimeError: out of memory" in out
    assert "lambda_0_1.0/seed3: in progress" in out


def test_search_refuses_test_set_runs_and_mixed_sweeps(tmp_path):
    for lam in (0.1, 0.5):
        fake_run(tmp_path / "test", lam, 0, 5.0, split="test")
    proc = search_cli(str(tmp_path / "test"))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("run the sweep with dataset.validation=5000 (make lambda-search)")
    assert "evaluated on the test set" in proc.stderr

    fake_run(tmp_path / "mixed", 0.1, 0, 5.0)
    fake_run(tmp_path / "mixed", 0.5, 0, 4.0, model="wrn28_10")
    proc = search_cli(str(tmp_path / "mixed"))
    assert proc.returncode == 2 and "model.name" in proc.stderr and proc.stderr.startswith("error: ")
    assert proc.stdout == ""  # no choice printed from a mixed directory


def test_search_any_parameter_and_ties(tmp_path):
    for gamma, errs in {0.5: [3.0, 4.0], 2.0: [3.5, 3.5], 1.0: [4.0, 3.0]}.items():
        for seed, e in enumerate(errs):
            run = fake_run(tmp_path, 0.0, seed, e, name=f"gamma_{gamma}")
            config = json.loads((run / "run_config.json").read_text())
            config["loss"] = {"name": "focal", "gamma": gamma}
            (run / "run_config.json").write_text(json.dumps(config))
    proc = search_cli(str(tmp_path), "--param", "loss.gamma")
    assert proc.returncode == 0, proc.stderr
    assert "chosen: loss.gamma = 0.5 (lowest mean hold-out error, 3.50%)" in proc.stdout
    assert "tie: 1.0, 2.0 reach the same mean" in proc.stdout


# ------------------------------------------------------------------ the report: Tables 3 and 5


def write_summary(root: Path, rel: str, err: float, *, dataset="cifar10", model="wrn28_10",
                  method="baseline", variant=None, seed=0, split="test", **extra) -> None:
    """summary.json of a finished full-recipe run, as the trainer writes it."""
    d = root / rel
    d.mkdir(parents=True)
    sizes = (45000, 5000) if split == "holdout" else (50000, 10000)
    (d / "summary.json").write_text(json.dumps({
        "test_error_last10": err, "epochs": 240, "recipe_epochs": 240, "seed": seed, "dataset": dataset,
        "model": model, "aug": "baseline", "method": method, "variant": variant, "lambda_0": 0.5,
        "train_size": sizes[0], "test_size": sizes[1], "eval_split": split, **extra}))


def cells_of(root: Path, rel: str, errors: list[float], **kw) -> None:
    for seed, e in enumerate(errors):
        write_summary(root, f"{rel}/seed{seed}", e, seed=seed, **kw)


def md_rows(text: str, title: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        if not set(ln) <= set("|-:"):
            rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def report_cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "isda_exp.report", *map(str, args)],
                          capture_output=True, text=True)


def test_table5_layout_beside_the_numbers_table5_prints(tmp_path):
    cells_of(tmp_path, "b10", [3.7, 3.9])
    cells_of(tmp_path, "b100", [18.6], dataset="cifar100")
    cells_of(tmp_path, "id10", [3.5, 3.6, 3.7], method="isda", variant="identity")
    cells_of(tmp_path, "i100", [18.0, 18.2], dataset="cifar100", method="isda", variant="full")
    cells_of(tmp_path, "ho", [1.0, 1.2], dataset="cifar100", method="isda", split="holdout")
    cells_of(tmp_path, "r32", [7.0], model="resnet32")  # a Table 1 cell: not in Table 5
    proc = report_cli(tmp_path, "--table", "5")
    assert proc.returncode == 0, proc.stderr
    header, *body = md_rows(proc.stdout, "### Table 5")
    assert header == ["Method"] + [f"Wide-ResNet-28-10 {d} {s}" for d in ("C10", "C100")
                                   for s in ("ours (n)", "paper", "diff")]
    assert [r[0] for r in body] == ["Basic", "Identity matrix", "Diagonal matrix",
                                    "Single covariance matrix", "Constant lambda_0", "ISDA"]
    # by hand: means 3.80 (std 0.1414), 18.60, 3.60 (0.10), 18.10 (0.1414); Table 5 prints Basic
    # C100 as 18.58 (Table 1: 18.53), so the difference is +0.02, not +0.07
    assert body[0][1:] == ["3.80 ± 0.14 (2)", "3.82 ± 0.15", "-0.02", "18.60 (1)", "18.58 ± 0.10", "+0.02"]
    assert body[1][1:] == ["3.60 ± 0.10 (3)", "3.63 ± 0.12", "-0.03", "—", "18.53 ± 0.02", "—"]
    assert body[2][1:] == ["—", "3.70 ± 0.15", "—", "—", "18.23 ± 0.02", "—"]
    assert body[5][1:] == ["—", "3.58 ± 0.15", "—", "18.10 ± 0.14 (2)", "17.98 ± 0.15", "+0.12"]
    assert "1.10" not in proc.stdout  # the hold-out runs are in no cell

    csv_text = report_cli(tmp_path, "--table", "5", "--format", "csv").stdout
    lines = [ln.split(",") for ln in csv_text.splitlines()]
    assert lines[0][:4] == ["row", "dataset", "model", "method"]
    assert len(lines) == 1 + 6 * 2
    basic100 = lines[2]
    assert basic100[:5] == ["Basic", "cifar100", "wrn28_10", "baseline", "1"]
    assert [float(x) for x in basic100[5:10:2]] == [18.6, 18.58, pytest.approx(0.02)]
    tex = report_cli(tmp_path, "--table", "5", "--format", "tex").stdout
    assert r"Constant lambda\_0" in tex and r"3.80 $\pm$ 0.14 (2)" in tex and tex.count(r"\\") == 8


def test_holdout_groups_are_labelled_and_kept_apart(tmp_path):
    cells_of(tmp_path, "test", [18.0, 18.2], dataset="cifar100", method="isda")
    cells_of(tmp_path, "ho", [1.0, 1.2], dataset="cifar100", method="isda", split="holdout")
    proc = report_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = md_rows(proc.stdout, "### Test error")[1:]
    assert [(r[3], r[5], r[6]) for r in body] == [("isda", "18.10 ± 0.14", "17.98 ± 0.15"),
                                                  ("isda (hold-out)", "1.10 ± 0.14", "—")]
    assert "SMOKE" not in proc.stdout  # 45,000 + 5,000 images are the full training set


# ------------------------------------------------------------------ plans (DRY) and smoke runs


def make(*args: str, cwd: Path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), f"PY={sys.executable}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def planned(overrides: list[str]) -> list[dict]:
    from isda_exp.sweeps import plan

    return plan.plan(overrides, tflops=60)


def test_mini_is_six_cifar10_runs_that_fit_an_hour_at_the_measured_fp32_speed(tmp_path):
    """make mini's protocol: ResNet-32 baseline and ISDA, 3 seeds each, CIFAR-10, 6,000 training
    and 3,000 test images, 18 epochs, precision auto; at ResNet-32's fp32 throughput on 2 Zen 3
    cores (244 training, 916 test images/s, the slowest machine it is sized for) about 50 minutes."""
    rows = planned(["experiment=mini", f"out_root={tmp_path}"])
    assert len(rows) == 6 and {r["epochs"] for r in rows} == {18} and {r["train_images"] for r in rows} == {6000}
    methods = sorted(Path(r["run"]).parts[-2] for r in rows)
    assert methods == ["baseline"] * 3 + ["isda"] * 3
    assert all(Path(r["run"]).parts[-5] == "cifar10" for r in rows)
    seconds = sum(r["epochs"] * (r["train_images"] / 244 + 3000 / 916) for r in rows)
    assert 40 * 60 < seconds < 55 * 60


def test_plan_composes_a_seed_sweep_once_and_gives_the_full_composes(tmp_path):
    """plan.composed reuses one compose for jobs that differ only in their seed: every config
    equals Hydra's own compose of that job (resolved), and the run folders follow the seed."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from isda_exp.paths import config_dir
    from isda_exp.sweeps import plan

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        jobs = plan.sweep_overrides(["experiment=table5", "dataset=cifar10", "isda=off,on",
                                     "seed=0,2", f"out_root={tmp_path}"])
        fast = [OmegaConf.to_container(c, resolve=True) for c in plan.composed(jobs)]
        full = [OmegaConf.to_container(compose("train", overrides=j), resolve=True) for j in jobs]
    assert len(jobs) == 4 and fast == full
    assert sorted(c["seed"] for c in fast) == [0, 0, 2, 2]
    assert len({c["run_name"] for c in fast}) == 4


def test_table5_plan_lists_36_runs(tmp_path):
    rows = planned(["experiment=table5", f"out_root={tmp_path}"])
    assert len(rows) == 2 * 6 * 3
    methods = {Path(r["run"]).parts[-2] for r in rows}
    assert methods == {"baseline", "isda", "isda-identity", "isda-diagonal", "isda-shared", "isda-constant"}
    assert {Path(r["run"]).parts[-4] for r in rows} == {"wrn28_10"}
    assert all(r["epochs"] == 240 and r["train_images"] == 50000 for r in rows)


def test_lambda_search_dry_lists_values_x_seeds_on_the_holdout(tmp_path):
    proc = make("lambda-search", "MODEL=resnet110", "DATASET=cifar100", "DRY=1", f"OUT={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.startswith(str(tmp_path))]
    assert len(runs) == 5 * 3 and "15 runs, 15 to train" in proc.stdout
    names = {Path(r).parts[-2] for r in runs}
    assert names == {f"lambda_0_{v}" for v in ("0.1", "0.25", "0.5", "0.75", "1.0")}
    assert all(" 45000 " in ln for ln in proc.stdout.splitlines() if ln.startswith(str(tmp_path)))
    focal = make("lambda-search", "MODEL=resnet32", "DATASET=cifar10", "LOSS=focal", "PARAM=loss.gamma",
                 "VALUES=0.5,1,2", "SEEDS=0", "DRY=1", f"OUT={tmp_path}", cwd=tmp_path)
    if focal.returncode == 0:  # needs the loss group (branch losses)
        assert "3 runs" in focal.stdout and "/focal/loss.gamma/gamma_2/seed0" in focal.stdout
    bad = make("lambda-search", "MODEL=resnet32", "DATASET=cifar10", "LOSS=focal", "DRY=1", cwd=tmp_path)
    assert bad.returncode != 0 and "give the loss's PARAM=" in bad.stdout + bad.stderr
    bad = make("lambda-search", "DRY=1", cwd=tmp_path)
    assert bad.returncode != 0 and "give MODEL= and DATASET=" in bad.stdout + bad.stderr


def tiny_npz(folder: Path, n_train: int = 400, n_test: int = 40) -> Path:
    """cifar10.npz / cifar100.npz stand-ins written with numpy alone (fast on a busy machine)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        np.savez(folder / f"{name}.npz",
                 x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                 y_train=np.arange(n_train) % classes,
                 x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                 y_test=np.arange(n_test) % classes)
    return folder


def test_table5_composes_and_runs_in_miniature(tmp_path, cli_here):
    """experiment=table5's sweep, two of its cells, on ResNet-32 and tiny data, then --table 5."""
    cli_here("-m", "experiment=table5", "model=resnet32", "+model.net.base_width=4", "dataset=synthetic",
             "dataset.train_size=128", "dataset.test_size=32", "trainer.batch_size=64", "trainer.epochs=1",
             "trainer.progress=false", "trainer.tensorboard=false", "isda=off,diagonal", "seed=0", "out_root=t5")
    found = sorted(p.parent.relative_to(tmp_path / "t5").as_posix() for p in (tmp_path / "t5").rglob("summary.json"))
    assert found == ["synthetic/resnet32/baseline/baseline/seed0", "synthetic/resnet32/baseline/isda-diagonal/seed0"]
    proc = report_cli(tmp_path / "t5", "--table", "5")
    assert proc.returncode == 0, proc.stderr
    assert "SMOKE TABLE" in proc.stdout


@pytest.mark.slow
def test_lambda_search_smoke_end_to_end(tmp_path):
    data = tiny_npz(tmp_path / "data")
    proc = make("lambda-search-smoke", f"OUT={tmp_path}", f"DATA={data}", "SMOKE_SEEDS=0", "VALUES=0.1,1.0",
                "SMOKE_SUBSET=16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("summary.json"))
    assert found == [f"smoke/real/search/cifar10/resnet32/isda/isda.lambda_0/lambda_0_{v}/seed0"
                     for v in ("0.1", "1.0")]
    summaries = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    assert all(s["eval_split"] == "holdout" and s["test_size"] == 100 for s in summaries)
    best = min(summaries, key=lambda s: (s["test_error_last10"], s["lambda_0"]))
    assert f"chosen: isda.lambda_0 = {best['lambda_0']} " in proc.stdout


@pytest.mark.slow
def test_table5_smoke_two_cells(tmp_path):
    data = tiny_npz(tmp_path / "data")
    proc = make("table5-smoke", f"OUT={tmp_path}", f"DATA={data}", "SMOKE_SEEDS=0", "SMOKE_SUBSET=8",
                "ARGS=dataset=cifar10 isda=off,constant", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "smoke/real/table5.md").read_text()
    assert "SMOKE TABLE" in md
    body = {r[0]: r for r in md_rows(md, "### Table 5")[1:]}
    assert body["Basic"][1].endswith("(1)") and body["Constant lambda_0"][1].endswith("(1)")
    assert body["ISDA"][1] == "—" and body["Basic"][2] == "3.82 ± 0.15"
    assert (tmp_path / "smoke/real/table5.csv").read_text().startswith("row,dataset,model,method")
    assert (tmp_path / "smoke/real/table5.tex").exists()


def test_compare_pairs_holdout_with_holdout_only(tmp_path):
    cells_of(tmp_path, "tb", [18.5, 18.7], dataset="cifar100")
    cells_of(tmp_path, "ti", [18.0, 18.2], dataset="cifar100", method="isda")
    cells_of(tmp_path, "hi", [1.0, 1.2], dataset="cifar100", method="isda", split="holdout")
    proc = report_cli(tmp_path, "--compare", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split(",") for ln in proc.stdout.splitlines()[1:]]
    assert [(ln[3], ln[4], ln[7]) for ln in lines] == [("isda", "baseline", "-0.5000")]  # no hold-out pair
    cells_of(tmp_path, "hb", [1.5, 1.7], dataset="cifar100", split="holdout")
    lines = [ln.split(",") for ln in report_cli(tmp_path, "--compare", "--format", "csv").stdout.splitlines()[1:]]
    assert sorted((ln[3], ln[4], ln[7]) for ln in lines) == [
        ("isda", "baseline", "-0.5000"), ("isda (hold-out)", "baseline (hold-out)", "-0.5000")]


def test_table3_layout_rows_labels_and_printed_numbers(tmp_path):
    r110, wrn = {"model": "resnet110"}, {"model": "wrn28_10"}
    cells_of(tmp_path, "a", [6.5, 6.7], method="focal", loss="focal", drop_rate=0.0, **r110)
    cells_of(tmp_path, "b", [6.8], method="baseline", drop_rate=0.0, **r110)
    cells_of(tmp_path, "c", [6.2, 6.4], method="baseline", drop_rate=0.3, **r110)
    cells_of(tmp_path, "d", [26.0, 26.4, 26.2], dataset="cifar100", method="isda", drop_rate=0.3, **r110)
    cells_of(tmp_path, "e", [3.9], method="baseline", drop_rate=0.3, **wrn)  # the recipe's dropout
    cells_of(tmp_path, "f", [18.4, 18.6], dataset="cifar100", method="lsoftmax", drop_rate=0.3, **wrn)
    cells_of(tmp_path, "g", [18.3], dataset="cifar100", method="isda", drop_rate=0.0, **wrn)  # no dropout
    cells_of(tmp_path, "h", [1.0], method="focal", drop_rate=0.0, split="holdout", **r110)
    proc = report_cli(tmp_path, "--table", "3")
    assert proc.returncode == 0, proc.stderr
    header, *body = md_rows(proc.stdout, "### Table 3")
    assert header[0] == "Method" and len(header) == 13
    assert [h.rsplit(" ", 2)[0] for h in header[1::3]] == ["ResNet-110 C10", "ResNet-110 C100",
                                                           "Wide-ResNet-28-10 C10", "Wide-ResNet-28-10 C100"]
    names = [r[0].split(" -- ")[0] for r in body]
    assert names == [r[0] for r in paper.TABLE3_ROWS]
    assert names[:5] == ["Large Margin", "Disturb Label", "Focal Loss", "Center Loss", "L_q Loss"]
    assert names[9:] == ["Basic", "Basic + Dropout", "ISDA", "ISDA + Dropout"]
    rows = {n: r for n, r in zip(names, body)}
    # by hand: means/sample stds 6.60/0.14, 6.80, 6.30/0.14, 26.20/0.20, 3.90, 18.50/0.14, 18.30
    assert rows["Focal Loss"][1:4] == ["6.60 ± 0.14 (2)", "6.68 ± 0.22", "-0.08"]
    assert rows["Basic"][1:4] == ["6.80 (1)", "6.76 ± 0.34", "+0.04"]
    assert rows["Basic + Dropout"][1:4] == ["6.30 ± 0.14 (2)", "6.23 ± 0.11", "+0.07"]
    assert rows["ISDA + Dropout"][4:7] == ["26.20 ± 0.20 (3)", "26.35 ± 0.30", "-0.15"]
    assert rows["Basic + Dropout"][7:10] == ["3.90 (1)", "3.82 ± 0.15", "+0.08"]  # WRN at its recipe's 0.3
    assert rows["Basic"][7:10] == ["—", "—", "—"]  # the paper prints "-": WRN without dropout
    assert rows["Large Margin"][10:13] == ["18.50 ± 0.14 (2)", "18.48 ± 0.05", "+0.02"]
    assert rows["ISDA"][10:13] == ["18.30 (1)", "—", "—"]  # ours without dropout; the paper has none
    assert rows["ISDA + Dropout"][10:13] == ["—", "17.98 ± 0.15", "—"]
    wgan = rows["WGAN"]
    assert wgan[0] == "WGAN -- not reproduced (needs a trained GAN per class)"
    assert wgan[1:7] == ["not reproduced", "6.63 ± 0.23", "—", "not reproduced", "—", "—"]
    assert rows["infoGAN"][10:12] == ["not reproduced", "18.44 ± 0.10"]
    assert "1.00" not in proc.stdout  # the hold-out run is in no cell

    lines = report_cli(tmp_path, "--table", "3", "--format", "csv").stdout.splitlines()
    assert len(lines) == 1 + 13 * 4
    focal = [ln for ln in lines if ln.startswith("Focal Loss,cifar10,resnet110,")][0].split(",")
    assert focal[3:6] == ["focal", "2", "6.6000"] and focal[-1] == "true"
    assert lines[-1].startswith("ISDA + Dropout,cifar100,wrn28_10,isda,0,")
    assert any(ln.startswith("CGAN,cifar100,wrn28_10,,0,,,18.7900,0.0800,,false,false") for ln in lines)
    tex = report_cli(tmp_path, "--table", "3", "--format", "tex").stdout
    assert r"L\_q Loss" in tex and tex.count(r"\\") == 2 + 13


def test_table3_plan_is_54_plus_42_distinct_runs(tmp_path):
    r110 = planned(["experiment=table3", f"out_root={tmp_path}"])
    wrn = planned(["experiment=table3_wrn", f"out_root={tmp_path}"])
    assert (len(r110), len(wrn)) == (2 * 9 * 3, 2 * 7 * 3)
    assert len({r["run"] for r in r110 + wrn}) == 96
    method = lambda rows, model: sorted({Path(r["run"]).parts[-2] for r in rows if f"/{model}/" in r["run"]})
    assert method(r110, "resnet110") == sorted(["lsoftmax", "disturblabel", "focal", "center", "lq", "baseline",
                                                "baseline+dropout", "isda", "isda+dropout"])
    # WRN-28-10 at its recipe's dropout: plain labels, which Table 3 puts in its "+ Dropout" rows
    assert method(wrn, "wrn28_10") == sorted(["lsoftmax", "disturblabel", "focal", "center", "lq", "baseline", "isda"])


def test_table3_composes_and_runs_in_miniature(tmp_path, cli_here):
    """experiment=table3's sweep for two rows (a loss; ISDA + Dropout) on ResNet-32 and tiny data."""
    cli_here("-m", "experiment=table3", "model=resnet32", "+model.net.base_width=4", "dataset=synthetic",
             "dataset.train_size=128", "dataset.test_size=32", "trainer.batch_size=64", "trainer.epochs=1",
             "trainer.progress=false", "trainer.tensorboard=false", "method=focal,isda_dropout", "seed=0", "out_root=t3")
    summaries = {p.parent.relative_to(tmp_path / "t3").as_posix(): json.loads(p.read_text())
                 for p in (tmp_path / "t3").rglob("summary.json")}
    assert sorted(summaries) == ["synthetic/resnet32/baseline/focal/seed0",
                                 "synthetic/resnet32/baseline/isda+dropout/seed0"]
    focal, isda = (summaries[k] for k in sorted(summaries))
    assert (focal["method"], focal["drop_rate"], isda["method"], isda["drop_rate"]) == ("focal", 0.0, "isda", 0.3)
    proc = report_cli(tmp_path / "t3", "--table", "3")
    assert proc.returncode == 0, proc.stderr
    assert "SMOKE TABLE" in proc.stdout
    header, *body = md_rows(proc.stdout, "### Table 3")
    rows = {r[0]: dict(zip(header, r)) for r in body}
    assert rows["Focal Loss"]["ResNet-32 Synth ours (n)"].endswith("(1)")
    assert rows["ISDA + Dropout"]["ResNet-32 Synth ours (n)"].endswith("(1)")
    assert rows["ISDA"]["ResNet-32 Synth ours (n)"] == "—"


@pytest.mark.slow
def test_table3_smoke_both_sweeps(tmp_path):
    data = tiny_npz(tmp_path / "data")
    proc = make("table3-smoke", f"OUT={tmp_path}", f"DATA={data}", "SMOKE_SEEDS=0", "SMOKE_SUBSET=8",
                "ARGS=dataset=cifar10 method=focal,basic", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "smoke/real/table3.md").read_text()
    assert "SMOKE TABLE" in md
    body = {r[0].split(" -- ")[0]: r for r in md_rows(md, "### Table 3")[1:]}
    # ResNet-110: focal and Basic; WRN-28-10 (recipe dropout): focal and "Basic + Dropout"
    assert body["Focal Loss"][1].endswith("(1)") and body["Focal Loss"][7].endswith("(1)")
    assert body["Basic"][1].endswith("(1)") and body["Basic + Dropout"][7].endswith("(1)")
    assert body["Basic + Dropout"][1] == "—" and body["Basic"][7] == "—"
    assert (tmp_path / "smoke/real/table3.csv").exists() and (tmp_path / "smoke/real/table3.tex").exists()


def _paper_text() -> str:
    from conftest import ROOT

    for shared in (ROOT.parent / "shared", ROOT.parent.parent / "shared"):
        if (shared / "paper" / "isda_paper_summary.txt").is_file():
            return (shared / "paper" / "isda_paper_summary.txt").read_text()
    pytest.skip("no ../shared/paper")


def _pm(cell: str) -> tuple[float, float] | None:
    nums = [float(x) for x in re.findall(r"\d+\.\d+", cell)]
    return None if not nums else (nums[0], nums[1])


def test_tables_3_and_5_match_the_paper_text():
    """Both tables re-read from the paper's text, row by row, in its order."""
    text = _paper_text()
    block = text[text.index("Table 3:"):text.index("Table 4:")]
    lines = [ln.split("\t") for ln in block.splitlines() if ln.count("\t") == 4 and "%" in ln]
    read = [(re.sub(r"\s*\[\d+\]$", "", ln[0]), tuple(_pm(c) for c in ln[1:])) for ln in lines]
    assert read == [(name, numbers) for name, _, _, numbers in paper.TABLE3_ROWS]
    block = text[text.index("Table 5:"):]
    lines = [ln.split("\t") for ln in block.splitlines() if ln.count("\t") == 2 and "pm" in ln]
    read = [(ln[0].replace("λ", "lambda"), _pm(ln[1]), _pm(ln[2])) for ln in lines]
    assert read == [(name, c10, c100) for name, _, c10, c100 in paper.TABLE5_ROWS]
    assert paper.table_number(5, "cifar100", "wrn28_10", "Basic") == (18.58, 0.10)  # Table 1: 18.53
    assert paper.paper_number("cifar100", "wrn28_10", "baseline", "baseline") == (18.53, 0.07)


def test_each_table_holds_only_the_cells_its_registry_entry_names(capsys):
    """The registry is the one source: what a table selects lies within the augs and methods its
    entry names (those the "no finished runs for Table N" message lists), and every named method
    fills a cell; the CLI offers exactly the registered tables."""
    from isda_exp.report import TABLES, Row, main, table_rows

    every = {m for t in TABLES.values() for m in t.methods} | {"isda-other", "focal+dropout"}
    augs = ("baseline", "cutout", "autoaugment", "randaugment")
    rows = [Row(d, m, a, me, 1, 5.0, None, None, None, False)
            for d in ("cifar10", "cifar100") for m in ("resnet110", "wrn28_10", "shake26_2x32d")
            for a in augs for me in sorted(every)]
    for number, layout in TABLES.items():
        shown = table_rows(rows, number)
        assert shown and all(r.aug in layout.augs and r.method in layout.methods for r in shown), number
        assert {r.method for r in shown} == set(layout.methods), number
    assert TABLES[3].methods == tuple(dict.fromkeys(
        paper.table3_label(me, d, m) for _, me, d, _ in paper.TABLE3_ROWS for m in paper.TABLE3_MODELS
        if me is not None))
    assert TABLES[5].methods == tuple(label for _, label, _, _ in paper.TABLE5_ROWS)
    assert sorted(TABLES) == [1, 2, 3, 5]
    with pytest.raises(SystemExit) as exit_:  # Table 4 (ImageNet: top-1 / top-5) is report.table4's
        main(["runs", "--table", "6"])
    assert exit_.value.code == 2 and "choose from 1, 2, 3, 4, 5" in capsys.readouterr().err
