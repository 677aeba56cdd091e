"""Segmentation runs end to end on the generated set: a run's files and records, the report's
reading of them, kill -9 mid-run then the same command resumes to the uninterrupted numbers, the
few-hundred-iteration run that learns (slow), and the authors' per-iteration schedules."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import wait_for
from isda_exp import rundir
from isda_exp.cli.train import run
from isda_exp.paths import config_dir
from isda_exp.training import preempt
from isda_exp.training.seg_build import poly_lr, seg_ratio

TINY = ["dataset=seg_synthetic", "model=deeplabv3_tiny", "isda=diagonal", "isda.lambda_0=2.5",
        "trainer.progress=false", "trainer.threads=1", "trainer.num_workers=0", "seed=3",
        "dataset.train_size=32", "dataset.test_size=4", "trainer.batch_size=4"]
RUN = "seg_synthetic/deeplabv3_tiny/baseline/isda-diagonal/seed3"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_authors_schedules_per_iteration():
    """lr = 0.01 (1 - (i - 1) / 40000)^0.9 and lambda = 7.5 i / 40000, i counted from 1."""
    assert poly_lr(0.01, 1, 40000, 0.9) == 0.01
    assert poly_lr(0.01, 40000, 40000, 0.9) == pytest.approx(0.01 * (1 / 40000) ** 0.9)
    assert poly_lr(0.01, 20001, 40000, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert seg_ratio(7.5, 1, 40000) == 7.5 / 40000 and seg_ratio(7.5, 40000, 40000) == 7.5
    assert seg_ratio(None, 10, 40000) == 0.0 and seg_ratio(7.5, 1, 40000, constant=True) == 7.5


def test_a_run_writes_its_records_and_the_same_command_skips_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="isda_exp")
    run_dir = tmp_path / RUN
    summary = run(composed("trainer.iterations=6", "trainer.log_every=2",
                           "trainer.eval_every=4", "trainer.checkpoint_every=3"), run_dir)
    metrics = rows(run_dir)
    assert [r["iteration"] for r in metrics] == [2, 4, 4, 6, 6]  # train rows, an evaluation, the final
    train = [r for r in metrics if "train_loss" in r]
    assert [r["lambda"] for r in train] == pytest.approx([2.5 * i / 6 for i in (2, 4, 6)])
    assert [r["lr"] for r in train] == pytest.approx([poly_lr(0.02, i, 6, 0.9) for i in (2, 4, 6)])
    final = metrics[-1]
    assert final["final"] and set(final["iou"]) == {"background", "shape1", "shape2", "shape3"}
    assert summary["task"] == "segmentation" and summary["miou"] == final["miou"]
    assert {"miou_ms", "miou_msf", "iou_ms"} <= set(summary) and summary["iterations"] == 6
    assert summary["science"]["trainer"]["iterations"] == 6
    stored = json.loads((run_dir / "run_config.json").read_text())
    assert stored["trainer"] == {"iterations": 6, "batch_size": 4, "precision": "fp32",
                                 "isda_statistics": "global"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run_dir / "tb")).Reload().Tags()["scalars"]
    assert {"train_loss", "lr", "lambda", "miou", "miou_msf", "iou/shape2", "iou_ms/background"} <= set(tags)
    again = run(composed("trainer.iterations=6", "trainer.log_every=2", "trainer.eval_every=4",
                         "trainer.checkpoint_every=3"), run_dir)
    assert again["miou"] == summary["miou"] and "has already finished" in caplog.text


def test_a_stop_signal_mid_run_checkpoints_and_the_run_resumes_exactly(tmp_path, monkeypatch):
    """SIGTERM after iteration 7 (between the periodic checkpoints at 5 and 10): a checkpoint
    there, Preempted, then the same run resumed in this process ends with the straight numbers."""
    args = ["trainer.iterations=16", "trainer.log_every=3", "trainer.checkpoint_every=5",
            "trainer.eval_every=8"]
    want = run(composed(*args), tmp_path / "straight")
    from isda_exp.training import seg_engine

    steps, step = [], seg_engine.SegEngine.train_step

    def counting(self, *a):
        steps.append(1)
        return step(self, *a)
    monkeypatch.setattr(seg_engine.SegEngine, "train_step", counting)
    monkeypatch.setattr(preempt, "requested", lambda: signal.SIGTERM if len(steps) == 7 else None)
    run_dir = tmp_path / "stopped"
    with pytest.raises(preempt.Preempted):
        run(composed(*args), run_dir)
    assert rundir.load_checkpoint(run_dir / "last.pt")["iteration"] == 7
    monkeypatch.setattr(preempt, "requested", lambda: None)
    got = run(composed(*args), run_dir)
    assert rows(run_dir) == rows(tmp_path / "straight") and got["miou"] == want["miou"]
    assert len(steps) == 16  # 7 before the stop, 9 after: no iteration trained twice


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_resumes_to_the_uninterrupted_numbers(tmp_path):
    args = ["trainer.iterations=120", "trainer.log_every=10", "trainer.checkpoint_every=4"]
    straight = tmp_path / "straight" / RUN
    want = run(composed(*args), straight)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "isda_exp", *TINY, *args, "out_root=runs"]
    run_dir = tmp_path / "runs" / RUN
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(lambda: (run_dir / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = rundir.load_checkpoint(run_dir / "last.pt")["iteration"]
    assert 0 < killed_at < 120 and not (run_dir / "summary.json").exists()
    got = run(composed(*args), run_dir)  # the same command (in this process: the same numbers)
    assert rows(run_dir) == rows(straight)
    assert got["miou"] == want["miou"] and got["iou"] == want["iou"]


@pytest.mark.slow
def test_three_hundred_iterations_learn_the_generated_scenes(tmp_path):
    """The recipe of deeplabv3_tiny (300 iterations) on the whole generated set (the smoke
    target's data), baseline and ISDA: mIoU far above chance (a uniform guess scores about 10%,
    the background everywhere about 19%). Runs of other seeds end between 54% and 88% (one pair
    of shape classes is sometimes still confused after 300 iterations)."""
    for method in ("off", "diagonal"):
        summary = run(composed(f"isda={method}", "seed=0", "dataset.train_size=64",
                               "dataset.test_size=16", "trainer.batch_size=8",
                               "trainer.log_every=100"), tmp_path / method)
        assert summary["miou"] > 50 and summary["pixel_acc"] > 85, (method, summary["miou"])


def test_a_diverging_run_stops_with_one_line_and_failed_json(tmp_path, cli_here):
    proc = cli_here(*TINY, "trainer.iterations=8", "trainer.log_every=4", "model.recipe.lr=1e8",
                    "out_root=runs", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "training diverged at iteration" in proc.stderr and "model.recipe.lr" in proc.stderr
    failed = json.loads((tmp_path / "runs" / RUN / "failed.json").read_text())
    assert failed["reason"] == "diverged" and not (tmp_path / "runs" / RUN / "summary.json").exists()
