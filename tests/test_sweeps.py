"""Sweeps: multirun directories, skip/resume on a second pass, failures isolated, joblib, the plan."""
from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from isda_exp.models import flops_per_image
from isda_exp.report.cli import main as report_main
from isda_exp.sweeps import plan

# ResNet-32 at a quarter of its width (4/8/16 channels): every layer, 1/16 of the work; 2 steps an epoch
TINY = ["dataset=synthetic", "dataset.train_size=32", "dataset.test_size=16", "trainer.batch_size=16",
        "trainer.progress=false", "trainer.tensorboard=false", "+model.net.base_width=4"]


class Killed(Exception):
    """Stands for kill -9 right after a checkpoint: the run stops there, leaving what it wrote."""


def interrupted_after_epoch_1(run_dir: Path, *overrides: str) -> None:
    """Train in this process (1 thread: the numbers of the CLI's runs) until epoch 1's checkpoint."""
    from hydra import compose, initialize_config_dir

    from isda_exp import rundir
    from isda_exp.cli.train import run
    from isda_exp.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer.threads=1"])
    save = rundir.save_checkpoint

    def save_then_die(path, state):
        save(path, state)
        raise Killed
    rundir.save_checkpoint = save_then_die
    try:
        run(cfg, run_dir)
    except Killed:
        pass
    finally:
        rundir.save_checkpoint = save


def summaries(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("summary.json")}


def test_sweep_dirs_name_the_run_and_a_second_pass_skips_and_resumes(tmp_path, cli_here):
    # both passes through the CLI's entry in-process: a sweep in a real process is test_integrity's test_7
    args = ["-m", *TINY, "trainer.epochs=2", "trainer.threads=1", "seed=0,1", "isda=off,on", "out_root=sweep"]
    assert cli_here(*args).returncode == 0
    done = summaries(tmp_path / "sweep")
    assert sorted(done) == [f"synthetic/resnet32/baseline/{m}/seed{s}" for m in ("baseline", "isda") for s in (0, 1)]
    assert {(d["method"], d["seed"]) for d in done.values()} == {(m, s) for m in ("baseline", "isda") for s in (0, 1)}

    # interrupt one run: back to its state after epoch 1 (as if killed then), then sweep again
    run_dir = tmp_path / "sweep/synthetic/resnet32/baseline/isda/seed1"
    final = (run_dir / "metrics.jsonl").read_text().splitlines()
    straight_ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    (run_dir / "summary.json").unlink()
    ckpt2 = tmp_path / "sweep2/synthetic/resnet32/baseline/isda/seed1/last.pt"
    interrupted_after_epoch_1(ckpt2.parent, *TINY, "trainer.epochs=2", "seed=1", "isda=on")
    state = torch.load(ckpt2, weights_only=False)
    assert state["epoch"] == 1
    for name in ("last.pt", "metrics.jsonl"):
        shutil.copy(ckpt2.parent / name, run_dir / name)

    before = {k: v for k, v in summaries(tmp_path / "sweep").items()}
    proc = cli_here(*args)
    assert proc.returncode == 0
    assert proc.stdout.count("already finished") == 3
    assert proc.stdout.count("resuming") == 1
    after = summaries(tmp_path / "sweep")
    assert all(after[k] == v for k, v in before.items())  # finished runs untouched
    resumed = (run_dir / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]
    assert strip(resumed) == strip(final)
    assert straight_ckpt["epoch"] == 2


def test_one_failed_run_does_not_stop_the_others(tmp_path, monkeypatch, capsys, cli_here):
    monkeypatch.setattr(sys, "argv", ["synthetic_npz.py", str(tmp_path / "cifar10.npz"), "--train", "32", "--test", "16"])
    runpy.run_path(str(ROOT / "scripts/synthetic_npz.py"), run_name="__main__")  # the script, in-process
    # cifar100.npz is missing: that job fails, the cifar10 job must still run and finish
    proc = cli_here("-m", "dataset=cifar100,cifar10", "dataset.npz=${dataset.name}.npz", "trainer.epochs=1",
                    "trainer.batch_size=16", "trainer.progress=false", "trainer.tensorboard=false",
                    "trainer.threads=1", "+model.net.base_width=4", "out_root=sweep", check=False)
    assert proc.returncode != 0  # the sweep reports the failure at the end
    done = summaries(tmp_path / "sweep")
    assert list(done) == ["cifar10/resnet32/baseline/isda/seed0"]
    failed = json.loads((tmp_path / "sweep/cifar100/resnet32/baseline/isda/seed0/failed.json").read_text())
    assert "cifar100.npz" in failed["error"] and "not found" in failed["error"]
    capsys.readouterr()
    report_main([str(tmp_path / "sweep")])  # `python -m isda_exp.report sweep`, in-process
    out = capsys.readouterr().out
    assert "failed" in out.lower() and "cifar100.npz" in out


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "trainer.epochs=1",
                   "seed=0,1", "out_root=par", cwd=tmp_path)
    done = summaries(tmp_path / "par")
    assert sorted(d["seed"] for d in done.values()) == [0, 1]
    assert "Joblib" in proc.stdout + proc.stderr
    # one thread set per job: 2 jobs share this machine's cores
    cores = os.cpu_count()
    assert all(d["threads"] == max(1, cores // 2) for d in done.values())


def test_plan_lists_runs_and_costs_from_the_zoo(tmp_path):
    from hydra import initialize_config_dir

    from isda_exp.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        jobs = plan.sweep_overrides(["experiment=table1", "model=resnet32,resnet110", f"out_root={tmp_path}"])
    assert len(jobs) == 2 * 2 * 2 * 3  # models x datasets x methods x seeds
    rows = plan.plan(["experiment=table1", "model=resnet32", "seed=0", f"out_root={tmp_path}"], tflops=60)
    assert len(rows) == 4 and all(r["status"] == "new" for r in rows)
    expected = (3 * 50000 + 10000) * 160 * flops_per_image("resnet32", 10) / 1e15
    c10 = [r for r in rows if "/cifar10/" in r["run"]]
    assert c10[0]["pflops"] == pytest.approx(expected)
    assert c10[0]["gpu_hours"] == pytest.approx(expected * 1e15 / 60e12 / 3600)
    table2 = plan.plan(["experiment=table2", "seed=0", f"out_root={tmp_path}"], tflops=60)
    assert {r["run"].split("/")[-3] for r in table2} == {"cutout", "autoaugment"}
    assert len(table2) == 3 * 2 * 2 * 2
