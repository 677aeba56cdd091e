"""Integrity: the report never mixes unlike runs, every failure is one line, a run's record never lies.

One test per numbered case of the integrity rules (each failed before the fix). Runs are tiny (32 images,
one epoch, one thread): in-process (the CLI's entry, cli_here, where Hydra is part of it) where
that proves the same, a subprocess where exit codes or signals are the point.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import run_cli
from isda_exp import report, rundir
from isda_exp.cli.train import Refused, run
from isda_exp.data import read_npz
from isda_exp.errors import UserError
from isda_exp.paths import config_dir
from isda_exp.rundir import identity
from isda_exp.training import preempt
from isda_exp.training.engine import Engine
from isda_exp.training.validate import check_added_keys

TINY = ["model=resnet32", "dataset=synthetic", "dataset.train_size=32", "dataset.test_size=16",
        "trainer.batch_size=16", "trainer.epochs=1", "trainer.threads=1", "trainer.progress=false",
        "trainer.tensorboard=false", "device=cpu"]  # 2 steps an epoch
QUICK = ["+model.net.base_width=4"]  # runs that train: ResNet-32 at a quarter of its width
RUN = "synthetic/resnet32/baseline/isda/seed0"


def composed(*overrides: str, quick: bool = True):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *(QUICK if quick else []), *overrides])


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (dot files and .hydra/ included) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- 1. the report averages unlike runs


def test_1_the_report_refuses_to_average_runs_with_another_lr_and_names_the_key(tmp_path):
    run(composed("seed=0"), tmp_path / "a")
    run(composed("seed=1"), tmp_path / "b")
    run(composed("seed=3", "model.recipe.lr=0.05"), tmp_path / "c")  # the same group by its label
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["label"] == "isda"
    assert summary["science"]["model"]["recipe"]["lr"] == 0.05 and "seed" not in summary["science"]
    assert summary["science"]["trainer"] == {"epochs": 1, "batch_size": 16, "precision": "fp32",
                                             "channels_last": False, "sync_bn": False, "world_size": 1}
    with pytest.raises(report.ReportError, match=r"model\.recipe\.lr = 0\.1 in \S+/a, \S+/b; 0\.05 in \S+/c"):
        report.aggregate(report.load_runs(tmp_path))
    rc = report.main([str(tmp_path)])
    assert rc == 2
    (tmp_path / "c" / "summary.json").unlink()  # the odd run out: the two alike runs average
    (row,) = report.aggregate(report.load_runs(tmp_path))
    assert row.seeds == 2 and row.method == "isda"


def test_1_runs_from_before_summary_held_science_compare_through_run_config(tmp_path):
    old = {"test_error_last10": 7.0, "epochs": 1, "seed": 0, "dataset": "synthetic", "model": "resnet32",
           "aug": "baseline", "method": "isda", "variant": "full", "lambda_0": 0.5}
    for name, lr, seed in (("a", 0.1, 0), ("b", 0.2, 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({**old, "seed": seed}))
        science = identity.science_config(composed(f"seed={seed}", f"model.recipe.lr={lr}"))
        (tmp_path / name / "run_config.json").write_text(json.dumps(science))
    with pytest.raises(report.ReportError, match=r"model\.recipe\.lr"):
        report.aggregate(report.load_runs(tmp_path))


def test_1_the_label_is_read_from_summary_and_recomputed_only_for_old_ones():
    assert identity.summary_label({"label": "isda-shared", "method": "baseline", "model": "m"}) == "isda-shared"
    assert identity.summary_label({"method": "isda", "variant": "full", "model": "resnet110",
                                   "drop_rate": 0.3}) == "isda+dropout"
    for overrides, label in ((), "isda"), (("isda=off",), "baseline"), (("isda=constant",), "isda-constant"), \
            (("isda=off", "loss=focal"), "focal"), (("+model.net.drop_rate=0.3",), "isda+dropout"):
        cfg = composed(*overrides)
        assert identity.config_label(cfg) == label
        assert cfg.run_name.split("/")[3] == label  # the run directory's method part agrees


# ---------------------------------------------------------------- 2. unknown keys added with +


@pytest.mark.parametrize("override,closest", [("+modle=wrn16_8", "model"), ("+trainer.epoch=1", "trainer.epochs"),
                                              ("+model.recipe.lrr=0.05", "model.recipe.lr"),
                                              ("+dataset.train_subsett=8", "dataset.train_subset")])
def test_2_an_unknown_key_added_with_plus_names_the_closest_key(override, closest):
    cfg = composed(override)
    with pytest.raises(UserError, match=rf"unknown config key \S+: did you mean {closest}\?"):
        check_added_keys(cfg, [override], ("method", "experiment"))


@pytest.mark.parametrize("override", ["+model.net.base_width=4", "+method=isda_dropout", "++hydra.job.env_set.X=1"])
def test_2_the_projects_own_plus_overrides_still_work(override):
    check_added_keys(composed(override, quick=False), [override], ("method", "experiment"))


def test_2_the_cli_refuses_a_misspelt_plus_key_in_one_line(tmp_path):
    proc = run_cli(*TINY, "+modle=wrn16_8", "out_root=runs", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "did you mean model?" in one_line(proc)
    assert not list((tmp_path / "runs").rglob("summary.json"))


# ---------------------------------------------------------------- 3. a refused rerun changes no file


def test_3_a_refused_rerun_changes_no_file_of_the_run(tmp_path, cli_here):
    # the CLI's entry in-process (Hydra's logging and records included): the files are the point;
    # test_cli and test_7 launch these refusals (exit 2; a sweep's exit 1) as real processes
    assert cli_here(*TINY, *QUICK, "out_root=runs").returncode == 0
    run_dir = tmp_path / "runs" / RUN
    assert "precision: fp32" in (run_dir / ".hydra" / "config.yaml").read_text()
    before = files(run_dir)
    proc = cli_here(*TINY, *QUICK, "out_root=runs", "trainer.precision=bf16", check=False)
    assert proc.returncode == 2 and "another configuration" in one_line(proc)
    assert files(run_dir) == before
    proc = cli_here("-m", *TINY, *QUICK, "out_root=runs", "trainer.precision=bf16", check=False)
    assert proc.returncode == 1 and "another configuration" in proc.stderr
    assert files(run_dir) == before and "Traceback" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- 4, 5. missing or damaged records


def test_4_a_trained_run_without_run_config_is_refused_not_resumed(tmp_path):
    run_dir = tmp_path / RUN
    run(composed("trainer.epochs=2"), run_dir)
    (run_dir / "summary.json").unlink()
    (run_dir / "run_config.json").unlink()
    before = files(run_dir)
    for overrides in (("trainer.epochs=2", "model.recipe.lr=0.05"), ("trainer.epochs=2", "isda=off")):
        with pytest.raises(Refused, match=r"no run_config\.json.*move the run aside \(mv "):
            run(composed(*overrides), run_dir)
    assert files(run_dir) == before


def test_5_a_truncated_summary_is_one_line_and_the_run_gets_no_failed_json(tmp_path):
    run_dir = tmp_path / RUN
    run(composed(), run_dir)
    text = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(text[:40])
    before = files(run_dir)
    with pytest.raises(Refused, match=r"summary\.json cannot be read .*move the run aside"):
        run(composed(), run_dir)
    assert files(run_dir) == before and not (run_dir / "failed.json").exists()
    (run_dir / "run_config.json").write_text("{")
    with pytest.raises(Refused, match=r"run_config\.json cannot be read"):
        run(composed(), run_dir)


# ---------------------------------------------------------------- 6. unwritable output directory


def test_6_an_output_directory_that_cannot_be_written_is_one_line_exit_2(tmp_path, cli_here):
    (tmp_path / "afile").write_text("not a folder")
    for sweep in ((), ("-m",)):  # a real process, then the same entry in-process
        proc = cli_here(*sweep, *TINY, "out_root=afile/runs", check=False) if sweep else \
            run_cli(*sweep, *TINY, "out_root=afile/runs", cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "afile/runs" in one_line(proc) and "out_root=DIR" in proc.stderr


def test_6_the_run_log_of_an_unwritable_directory_is_dropped_without_a_traceback(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    handler = rundir.RunLog(str(tmp_path / "afile" / "train.log"))
    handler.emit(logging.LogRecord("isda_exp", logging.INFO, __file__, 1, "hello", None, None))
    handler.close()
    assert handler.broken and capsys.readouterr().err == ""


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_6_permission_denied_is_a_disk_error_line(tmp_path, code):
    with pytest.raises(UserError, match=r"while writing .*out_root=DIR on a writable disk"):
        with rundir.disk_errors(tmp_path / "x"):
            raise OSError(code, os.strerror(code))


# ---------------------------------------------------------------- 7. a sweep where one run fails


def test_7_a_sweep_lists_its_failed_runs_and_exits_1_without_a_traceback(tmp_path):
    # isda=on with loss=focal is refused; isda=off loss=focal trains
    proc = run_cli("-m", *TINY, *QUICK, "isda=off,on", "loss=focal", "out_root=runs", cwd=tmp_path, check=False)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in logs, logs
    assert "1 run(s) of this sweep failed" in logs
    assert f"failed: {tmp_path / 'runs/synthetic/resnet32/baseline/isda/seed0'}: ISDA" in logs
    assert (tmp_path / "runs/synthetic/resnet32/baseline/focal/seed0/summary.json").exists()


# ---------------------------------------------------------------- 8. bad data files


def test_8_a_run_that_fails_before_its_first_step_is_not_in_progress(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage, not an npz")
    with pytest.raises(UserError, match="is not an .npz archive"):
        run(composed(f"dataset.npz={tmp_path / 'bad.npz'}"), tmp_path / "runs" / RUN)
    assert [r.status for r in report.load_runs(tmp_path / "runs")] == []  # nothing, not "in progress"


# ---------------------------------------------------------------- 9. checkpoint rotation


def test_9_a_failed_save_rotates_nothing_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    rundir.save_checkpoint(path, {"epoch": 1})
    rundir.save_checkpoint(path, {"epoch": 2})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(rundir.files.os, "fsync", full)
    with pytest.raises(UserError, match="no space left"):
        rundir.save_checkpoint(path, {"epoch": 3})
    monkeypatch.setattr(rundir.files.os, "fsync", real_fsync)
    prev = tmp_path / "last.prev.pt"
    assert not os.path.samefile(path, prev)
    assert _epoch(path) == 2 and _epoch(prev) == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_9_rotation_from_linked_files_leaves_no_link_temp(tmp_path):
    # a save cut between its renames (as the old rotation left a full disk): last.pt and
    # last.prev.pt are one file; the next save must rotate cleanly
    path, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    rundir.save_checkpoint(path, {"epoch": 1})
    os.link(path, prev)
    rundir.save_checkpoint(path, {"epoch": 2})
    assert not os.path.samefile(path, prev) and _epoch(path) == 2 and _epoch(prev) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def _epoch(path: Path) -> int:
    import torch

    return torch.load(path, weights_only=True)["epoch"]


# ---------------------------------------------------------------- 10. signals and data files


def test_10_ctrl_c_while_loading_is_one_line_status_130(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # Ctrl-C as in a terminal, also when pytest itself runs in the background (where SIGINT is ignored)
    proc = subprocess.Popen([sys.executable, "-m", "isda_exp", *TINY, "out_root=runs"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.5)  # torch and Hydra are still loading
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_10_sighup_checkpoints_then_stops_like_sigterm(tmp_path, monkeypatch):
    # the terminal closes at the first step; SIGHUP has a handler, as in a terminal (not ignored,
    # as under nohup): were it not caught by the run, that handler records it and the test fails
    hung_up = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: hung_up.append(signum))
    step = Engine.train_step

    def hang_up(self, *a, **k):
        if a[-1] == 0:
            os.kill(os.getpid(), signal.SIGHUP)
        return step(self, *a, **k)
    monkeypatch.setattr(Engine, "train_step", hang_up)
    run_dir = tmp_path / RUN
    try:
        with pytest.raises(preempt.Preempted) as e:
            run(composed(), run_dir)
    finally:
        signal.signal(signal.SIGHUP, before)
    assert preempt.name(e.value.signum) == "SIGHUP" and hung_up == []
    assert rundir.load_checkpoint(run_dir / "last.pt")["partial"]["batch"] == 1


def test_10_npz_a_directory_or_garbage_says_so(tmp_path):
    with pytest.raises(UserError, match=r"dataset\.npz=\S+ is a directory; pass the \.npz file itself"):
        read_npz(str(tmp_path), "cifar10", 10)
    (tmp_path / "x.npz").write_bytes(b"\x80\x04 not a zip")
    with pytest.raises(UserError, match=r"is not an \.npz archive") as e:
        read_npz(str(tmp_path / "x.npz"), "cifar10", 10)
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize("args,shown", [(["trainer.epochz=3"], "unknown config key trainer.epochz: did you mean trainer.epochs?"),
                                        (["-m", "isda=off,on", "model.recipe.lrr=0.1"], "did you mean model.recipe.lr?"),
                                        (["model.net.drop_rate=0.3"], "add it with +model.net.drop_rate=VALUE")])
def test_2_an_unknown_key_without_plus_is_one_line_too(args, shown):
    from isda_exp.cli.train import check_command

    with pytest.raises(UserError, match=re.escape(shown)):
        check_command(args)
    check_command(["-m", "seed=0,1", "isda=off,on", "trainer.epochs=2", "+method=isda_dropout", "model=resnet110"])
