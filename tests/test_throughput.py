"""Expected wall time from measured throughput (isda_exp.sweeps.throughput, `plan --throughput` and
`--measure`): each figure against the arithmetic done by hand."""
from __future__ import annotations

import json

import pytest
import torch

from isda_exp.parallel.device import resolve_precision
from isda_exp.sweeps import plan, throughput


def bench_file(tmp_path, rows=(), packing=(), gpu="Test GPU"):
    path = tmp_path / f"bench{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"machine": {"gpu": gpu} if gpu else {}, "rows": list(rows),
                                "packing": list(packing)}))
    return path


ROW = {"model": "resnet32", "classes": 10, "setting": "bf16+cl", "device": "cuda", "train_img_s": 8000.0,
       "test_img_s": 40000.0, "isda_overhead": 1.25, "first_steps_s": 3.0, "first_eval_s": 1.0,
       "compiled": False}
COMPILED = {**ROW, "setting": "bf16+cl+compile", "train_img_s": 12000.0, "test_img_s": 50000.0,
            "first_steps_s": 50.0, "first_eval_s": 20.0, "compiled": True}
PACKS = [{"model": "resnet32", "setting": "bf16+cl", "pack": k, "total_img_s": t}
         for k, t in ((1, 8000.0), (2, 14400.0), (4, 14800.0))]


def test_figures_leave_out_failed_and_modified_rows(tmp_path):
    narrow = {**ROW, "setting": "fp32", "overrides": ["+model.net.base_width=4"]}
    failed = {"model": "resnet110", "setting": "fp32", "error": "CUDA out of memory"}
    figs = throughput.read_figures(bench_file(tmp_path, [ROW, narrow, failed],
                                              [*PACKS, {**PACKS[0], "pack": 8, "error": "oom"}]))
    assert list(figs["rows"]) == [("resnet32", 10, "bf16+cl")]
    assert figs["packing"] == {("resnet32", "bf16+cl"): {1: 8000.0, 2: 14400.0, 4: 14800.0}}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(Exception, match="no 'rows' or 'packing'"):
        throughput.read_figures(bad)


def test_run_seconds_packing_and_schedule_by_hand(tmp_path):
    figs = throughput.read_figures(bench_file(tmp_path, [ROW], PACKS))
    share, note = throughput.packing_share(figs, "resnet32", "bf16+cl", 2)
    assert share == pytest.approx(14400 / 2 / 8000) and "measured" in note
    assert throughput.packing_share(figs, "resnet32", "bf16+cl", 3)[0] == pytest.approx(1 / 3)
    isda = throughput.run_seconds(160, 50000, 10000, ROW, share, isda=True)
    assert isda == pytest.approx(160 * (50000 / (8000 * 0.9) + 10000 / (40000 * 0.9)) + 4.0)
    base = throughput.run_seconds(160, 50000, 10000, ROW, share, isda=False)
    assert base == pytest.approx(160 * (50000 / (8000 * 0.9 * 1.25) + 10000 / (40000 * 0.9)) + 4.0)
    compiled = throughput.run_seconds(1, 50000, 10000, COMPILED, 1.0, isda=True)
    assert compiled == pytest.approx(50000 / 12000 + 10000 / 50000 + 2 * 70.0)  # compiles twice
    assert throughput.schedule([60.0] * 5, 2) == 180.0
    assert throughput.schedule([5.0, 1.0, 1.0, 1.0], 2) == 5.0
    assert throughput.best_packing(figs, "resnet32") == 2  # 14,400 is within 5% of 14,800


def test_fastest_counts_compilation_against_the_whole_run(tmp_path):
    figs = throughput.read_figures(bench_file(tmp_path, [ROW, COMPILED]))
    best, times = throughput.fastest(figs, "resnet32", ["bf16+cl", "bf16+cl+compile"], 160,
                                     (50000, 10000), 1)
    eager = 160 * (50000 / 8000 + 10000 / 40000) + 4
    fast = 160 * (50000 / 12000 + 10000 / 50000) + 140
    assert times == pytest.approx({"bf16+cl": eager, "bf16+cl+compile": fast})
    assert best == "bf16+cl+compile"
    best, _ = throughput.fastest(figs, "resnet32", ["bf16+cl", "bf16+cl+compile"], 2, (50000, 10000), 1)
    assert best == "bf16+cl"  # two epochs do not pay for the compilation


def test_precision_auto_resolves_as_on_the_device_that_will_train():
    from hydra import compose, initialize_config_dir

    from isda_exp.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=repro_resnet32"])
    assert throughput.setting_name(cfg, "cpu") == resolve_precision("auto", torch.device("cpu")) + "+cl+compile"
    if not torch.cuda.is_available():
        assert throughput.setting_name(cfg, "cuda") == "bf16+cl+compile"


def test_plan_prints_the_expected_wall_time_from_bench_figures(tmp_path, capsys):
    f = bench_file(tmp_path, [ROW, COMPILED], PACKS)
    out_root = tmp_path / "runs"
    assert plan.main(["experiment=repro_resnet32", "seed=0", f"out_root={out_root}", "--throughput", str(f),
                      "--per-gpu", "2"]) == 0
    out = capsys.readouterr().out
    share = 14400 / 2 / 8000  # the packing of bf16+cl: the compiled setting's own is not measured
    isda = 160 * (50000 / (12000 * share) + 10000 / (50000 * share)) + 140
    base = 160 * (50000 / (12000 * share * 1.25) + 10000 / (50000 * share)) + 140
    lines = {ln.split()[0].split("/")[-2]: ln for ln in out.splitlines() if str(out_root) in ln}
    assert f"{isda / 60:.1f}" in lines["isda"].split() and f"{base / 60:.1f}" in lines["baseline"].split()
    assert "measured bf16+cl+compile" in lines["isda"]
    assert f"expected wall time: {max(isda, base) / 60:.1f} min for the 2 runs to train, 2 at once" in out


def test_plan_measure_times_each_distinct_setting_once(tmp_path, capsys, monkeypatch):
    calls = []
    real = throughput.measure

    def counted(cfg, steps=throughput.MEASURE_STEPS):
        calls.append(cfg.isda.name)
        return real(cfg, steps=1)
    monkeypatch.setattr(throughput, "measure", counted)
    assert plan.main(["experiment=repro_resnet32", "seed=0,1", f"out_root={tmp_path}", "device=cpu",
                      "trainer.compile=false", "+model.net.base_width=4", "trainer.eval_batch_size=64",
                      "--measure"]) == 0
    out = capsys.readouterr().out
    assert sorted(calls) == ["baseline", "isda"]  # 4 runs, 2 settings
    assert out.count("measured here (cpu, 1 steps)") == 4 and "expected wall time: " in out
