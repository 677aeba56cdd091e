"""scripts/gpu_check: on a machine without a GPU it says so in one line and exits non-zero; its run
checker and summary writer work on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path needs a machine without one")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_non_zero(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PY": sys.executable,
                                                       "OUT": str(tmp_path)})
    assert proc.returncode == gpu_check.NO_GPU_EXIT
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU on this machine"), lines
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing that could pass for a result


def write_run(run_dir, rows, summary=True):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        (run_dir / "summary.json").write_text("{}")


def test_check_run_accepts_finished_finite_runs_only(tmp_path):
    good = [{"epoch": e, "train_loss": 2.0 / e, "test_error": 80.0, "seconds": 1.5} for e in (1, 2)]
    write_run(tmp_path / "ok", good)
    assert gpu_check.check_run(tmp_path / "ok", 2) == {
        "ok": True, "problems": [], "train_loss": 1.0, "test_error": 80.0, "seconds": 3.0}
    write_run(tmp_path / "nan", [good[0], {**good[1], "train_loss": float("nan")}])
    res = gpu_check.check_run(tmp_path / "nan", 2)
    assert not res["ok"] and res["problems"] == ["epoch 2: non-finite train_loss"]
    write_run(tmp_path / "short", good[:1], summary=False)
    res = gpu_check.check_run(tmp_path / "short", 2)
    assert not res["ok"] and res["problems"] == ["no summary.json", "1 metric rows, expected 2"]


def test_summary_has_every_step_and_says_which_failed():
    run = {"ok": False, "problems": ["epoch 2: non-finite train_loss"], "train_loss": None,
           "test_error": 90.0, "seconds": 12.0}
    result = {"gpu": "Test GPU", "gpus": 1, "torch": torch.__version__, "seconds": 100.0, "ok": False,
              "steps": {
                  "tests": {"ok": True, "result": "5 passed in 3.0s"},
                  "runs": {"ok": False, "rows": [{"aug": "cutout", "precision": "fp16", **run}]},
                  "ddp": {"ok": None, "skipped": "1 GPU: needs 2 or more"},
                  "bench": {"ok": False, "error": "RuntimeError: boom"},
                  "syncs": {"ok": True, "rows": [{"precision": "fp32", "syncs": [
                      {"where": "isda.py:154 update_statistics <- trainer.py:170 _step",
                       "per_step": 2.0}]}]}}}
    text, md = gpu_check.summarize(result)
    assert json.loads(text) == result
    assert "overall: **FAIL**" in md
    assert "| tests | pass | 5 passed in 3.0s |" in md
    assert "| ddp | skipped | 1 GPU: needs 2 or more |" in md
    assert "| bench | FAIL | RuntimeError: boom |" in md
    assert "| cutout | fp16 | FAIL |  | 90.000 | 12.0 | epoch 2: non-finite train_loss |" in md
    assert "| 2 | isda.py:154 update_statistics <- trainer.py:170 _step |" in md


@pytest.mark.parametrize("overrides, args", [
    (["isda=on", "aug=cutout"], ("cutout", "isda")),  # step_runs
    (["isda=on"], ("baseline", "isda")),  # step_ddp
    (["isda=off", "seed=2"], ("baseline", "baseline", 2)),
])
def test_the_run_it_checks_is_where_the_cli_trains(tmp_path, overrides, args):
    from hydra import compose, initialize_config_dir

    from isda_exp.paths import config_dir
    from isda_exp.rundir.files import run_dir_of, run_path

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=cifar10", "model=resnet32", f"out_root={tmp_path}",
                                          *overrides])
    assert run_dir_of(cfg) == tmp_path / cfg.run_name
    assert run_path(tmp_path, "cifar10", "resnet32", *args) == run_dir_of(cfg)
