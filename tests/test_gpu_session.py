"""The prepared GPU session on the CPU, in miniature: make repro-resnet32's plan and its deadline, and
scripts/gpu_session.sh's two calls end to end, leaving the files a GPU session returns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch

from conftest import ROOT

from isda_exp.parallel.device import resolve_precision

RUN_DIRS = ("cifar10/resnet32/baseline/baseline/seed0", "cifar10/resnet32/baseline/isda/seed0")


def script(name: str, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PY": sys.executable, **env})


def setting() -> str:
    return resolve_precision("auto", torch.device("cpu")) + "+cl"  # MINI: no compile on a CPU


def test_dry_run_lists_the_runs_and_their_expected_time_from_measured_figures(tmp_path):
    setting_ = setting()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"machine": {}, "rows": [
        {"model": "resnet32", "classes": 10, "setting": setting_, "train_img_s": 512.0, "test_img_s": 1024.0}]}))
    proc = script("repro_resnet32.sh", {"MINI": "1", "DRY": "1", "OUT": str(tmp_path), "K": "2",
                                        "THROUGHPUT": str(bench)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [ln for ln in proc.stdout.splitlines() if "/repro_resnet32/cifar10/resnet32/" in ln]
    assert len(runs) == 6 and all(f"measured {setting_}" in ln for ln in runs)  # 2 arms x seeds 0,1,2
    per_run = 2 * (256 / (512 / 2) + 256 / (1024 / 2))  # 2 epochs; K=2 unmeasured: each at half speed
    assert f"expected wall time: {per_run * 3:.0f} s for the 6 runs to train, 2 at once" in proc.stdout
    assert not (tmp_path / "repro_resnet32" / "cifar10").exists()  # nothing trained


@pytest.mark.slow
def test_a_deadline_stops_the_runs_at_a_checkpoint_and_the_report_still_runs(tmp_path):
    figures = tmp_path / "bench.json"  # the plans from figures: no timing of steps here
    figures.write_text(json.dumps({"rows": [{"model": "resnet32", "classes": 10, "setting": setting(),
                                             "train_img_s": 500.0, "test_img_s": 1000.0}]}))
    env = {"MINI": "1", "OUT": str(tmp_path), "SEEDS": "0", "K": "2", "DEADLINE": "20",
           "ARGS": "trainer.epochs=200", "THROUGHPUT": str(figures)}
    proc = script("repro_resnet32.sh", env)
    assert proc.returncode != 0 and "deadline of 20 s reached" in proc.stderr
    runs = tmp_path / "repro_resnet32"
    for rel in RUN_DIRS:
        run = runs / rel
        rows = (run / "metrics.jsonl").read_text().splitlines()
        assert 0 < len(rows) < 200 and (run / "last.pt").is_file() and not (run / "summary.json").exists()
    assert (runs / "curves.png").stat().st_size > 0
    again = script("repro_resnet32.sh", {**env, "DRY": "1", "DEADLINE": ""})
    assert again.stdout.count(" resume ") == 2  # the same command picks them up


@pytest.mark.slow
def test_the_session_in_miniature_returns_what_a_gpu_session_would(tmp_path):
    proc = script("gpu_session.sh", {"MINI": "1", "OUT": str(tmp_path)}, "mini", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    call1, call2 = tmp_path / "call1", tmp_path / "call2"
    assert sorted(p.name for p in call1.iterdir()) == [
        "bench_gpu.json", "bench_packing.json", "gpu_check.json", "gpu_check.md", "session_check.log"]
    got = sorted(p.name for p in call2.iterdir())
    assert got == ["curves.png", "plan.txt", "report.md", "repro_progress.json", "repro_runs.tgz",
                   "session_repro.log"]
    check = json.loads((call1 / "gpu_check.json").read_text())
    assert check["ok"] and check["mini"] and set(check["steps"]) == {"tests", "runs", "bench", "syncs", "ddp"}
    assert all(r["ok"] for r in check["steps"]["runs"]["rows"]) and len(check["steps"]["runs"]["rows"]) == 9
    progress = json.loads((call2 / "repro_progress.json").read_text())["runs"]
    assert set(progress) == set(RUN_DIRS) and all(r["finished"] and r["epochs_done"] == 2
                                                  for r in progress.values())
    with tarfile.open(call2 / "repro_runs.tgz") as tar:
        names = set(tar.getnames())
    assert {f"./{rel}/{f}" for rel in RUN_DIRS for f in ("metrics.jsonl", "summary.json")} <= names
    assert not any(n.endswith(".pt") for n in names)
    report = (call2 / "report.md").read_text()
    assert "| CIFAR-10 | ResNet-32 | baseline | isda |" in report and "needs >= 2 seeds per arm" in report
    assert "expected wall time" in (call2 / "plan.txt").read_text()
    assert "gpu_session: stored cifar10.part2of2" in (call2 / "session_repro.log").read_text()
