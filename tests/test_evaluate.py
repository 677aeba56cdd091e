"""`python -m isda_exp.evaluate`: checkpoints in the authors' ImageNet format (written here from
torchvision's architectures: `{'state_dict': {'module.' + k: v}, ..., pickled loss}`, their DenseNet
naming norm5/classifier norm_final/fc) are refused as pickles, extracted only when trusted, and then
evaluate per image to the predictions of the torchvision model they came from; a run directory
evaluates to exactly its last test pass (loss, top-1, top-5), per class and per image."""
from __future__ import annotations

import csv
import json
import sys
import types

import pytest
import torch
import torchvision

from isda_exp.data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from isda_exp.evaluate.cli import main

CLASSES = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from test_folder import write_folder

    return write_folder(tmp_path_factory.mktemp("eval") / "data", per_class_train=2,
                        per_class_val=3, size=40, classes=CLASSES)


class EstimatorCV:  # stands for the authors' ISDA module's classes, pickled into their checkpoints
    def __init__(self, feature_num, class_num):
        self.CoVariance = torch.zeros(class_num, feature_num)


def authors_checkpoint(arch: str, path, seed: int = 0):
    """A torchvision `arch` with random weights and BatchNorm statistics, saved as the authors'
    training script saves a DDP model, with their loss object pickled beside it."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=CLASSES).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    state = model.state_dict()
    if arch.startswith("densenet"):  # their DenseNet: norm_final and fc
        state = {k.replace("features.norm5.", "features.norm_final.").replace("classifier.", "fc."): v
                 for k, v in state.items()}
    module = types.ModuleType("ISDA_imagenet")  # importable while saving, gone when loading
    EstimatorCV.__module__ = "ISDA_imagenet"
    module.EstimatorCV = EstimatorCV
    sys.modules["ISDA_imagenet"] = module
    try:
        torch.save({"epoch": 300, "arch": arch, "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "best_acc1": 78.1, "optimizer": {}, "isda_criterion": EstimatorCV(8, CLASSES)}, path)
    finally:
        del sys.modules["ISDA_imagenet"]
        EstimatorCV.__module__ = __name__
    return model


def expected_predictions(model, folder):
    """The source model on the evaluation transform's batches (the data source's own stream)."""
    from isda_exp.data.folder import load_folder

    data = load_folder("folder", str(folder), eval_resize=36, eval_crop=32)
    with torch.no_grad():
        logits = torch.cat([model(normalize(x, (IMAGENET_MEAN, IMAGENET_STD)))
                            for x, _ in data.eval_stream(torch.device("cpu")).batches(5)])
    return logits


@pytest.mark.parametrize("arch,model", [("resnet50", "resnet50"), ("densenet121", "densenet121")])
def test_an_authors_checkpoint_evaluates_to_its_architectures_predictions(arch, model, folder,
                                                                          tmp_path, capsys):
    ckpt = tmp_path / f"{arch}_isda.pth.tar"
    source = authors_checkpoint(arch, ckpt)
    weights = tmp_path / "w.safetensors"
    common = ["--model", model, "--data", str(folder), "--device", "cpu", "--set",
              "dataset.eval_resize=36", "--set", "dataset.eval_crop=32"]
    assert main(["--weights", str(ckpt), *common]) == 2  # pickled objects: refused
    err = capsys.readouterr().err
    assert "holds pickled Python objects (ISDA_imagenet.EstimatorCV" in err and err.count("\n") == 1
    assert main(["--extract", str(ckpt), "--out", str(weights)]) == 2  # not without the flag
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["--extract", str(ckpt), "--out", str(weights), "--trust-pickle"]) == 0
    preds = tmp_path / "preds.csv"
    assert main(["--weights", str(weights), *common, "--csv", str(preds), "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(preds.open()))
    logits = expected_predictions(source, folder)
    assert len(rows) == CLASSES * 3
    assert [int(r["prediction"]) for r in rows] == logits.argmax(1).tolist()  # per image
    labels = torch.tensor([int(r["label"]) for r in rows])
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses.tolist(), abs=2e-5)
    assert rows[0]["file"].startswith("val/class000/") and rows[0]["label_name"] == "class000"
    out = capsys.readouterr().out
    error = 100.0 * (logits.argmax(1) != labels).float().mean().item()
    assert f"top-1 error {error:.2f}%" in out


def test_a_run_directory_evaluates_to_its_last_test_pass(cli_here, tmp_path):
    out = tmp_path / "runs"
    cli_here("dataset=synthetic", "dataset.train_size=64", "dataset.test_size=37",
             "+model.net.base_width=4", "trainer.epochs=2", "trainer.batch_size=16",
             "trainer.eval_batch_size=10", "device=cpu", "trainer.progress=false",
             "trainer.tensorboard=false", f"out_root={out}")
    run = next(out.rglob("summary.json")).parent
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert main([str(run), "--device", "cpu", "--json", str(tmp_path / "e.json"),
                 "--csv", str(tmp_path / "p.csv")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["num_images"] == 37
    assert got["test_loss"] == last["test_loss"] and got["test_error"] == last["test_error"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    wrong = [int(r["correct"]) == 0 for r in rows]
    assert 100.0 * sum(wrong) / 37 == pytest.approx(got["test_error"])
    for c, (err, n) in enumerate(zip(got["per_class_error"], got["per_class_count"])):
        mine = [w for w, r in zip(wrong, rows) if int(r["label"]) == c]
        assert n == len(mine) and (err is None if not n else err == pytest.approx(100 * sum(mine) / n))
    assert main([str(tmp_path / "nope")]) == 2 and main([]) == 2
