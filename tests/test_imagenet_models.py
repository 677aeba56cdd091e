"""Table 4's models and recipe, and ISDA at ImageNet scale (C=1000, A=2048): torchvision's
architectures cut before the classifier (parameter counts equal torchvision's), the authors'
ImageNet recipe with the linear scaling rule, the diagonal estimator against an independent
implementation of the authors' update, no N x C x A tensor, and the refused full covariance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from torch.utils._python_dispatch import TorchDispatchMode

from isda_exp.errors import UserError
from isda_exp.losses import MAX_FULL_COVARIANCE_BYTES, ISDALoss
from isda_exp.models import create_model, flops_per_image
from isda_exp.paths import config_dir
from isda_exp.training.build import build_criterion, build_optimizer
from isda_exp.training.schedule import lr_factor

MODELS = {"resnet50": 2048, "resnet101": 2048, "resnet152": 2048, "resnext50_32x4d": 2048,
          "resnext101_32x8d": 2048, "densenet121": 1024}
PAPER_MILLIONS = {"resnet50": 25.6, "resnet152": 60.2, "resnext50_32x4d": 25.0}  # docs/recipes.md


def composed(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_equals_torchvisions_and_the_paper(name):
    """Counted on the meta device: no weights are allocated."""
    with torch.device("meta"):
        ours = create_model(name)
        theirs = getattr(torchvision.models, name)(weights=None)
    assert ours.feature_dim == MODELS[name]
    head = ours.feature_dim * 1000 + 1000  # the runner's Linear(A, 1000)
    count = sum(p.numel() for p in ours.parameters()) + head
    assert count == sum(p.numel() for p in theirs.parameters())
    if name in PAPER_MILLIONS:
        assert round(count / 1e6, 1) == PAPER_MILLIONS[name]


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_forward_gives_the_pooled_features_at_a_small_input(name):
    torch.manual_seed(0)
    net = create_model(name).eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    head_name = "fc" if hasattr(theirs, "fc") else "classifier"
    head = getattr(theirs, head_name)
    theirs.load_state_dict({**net.body.state_dict(),  # our body's weights, their head's
                            **{f"{head_name}.{k}": v for k, v in head.state_dict().items()}})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = net(x)
        assert feats.shape == (2, MODELS[name])
        assert torch.allclose(head(feats), theirs(x), atol=1e-5)  # the same net, cut before its head


def test_flop_estimate_is_at_224_pixels():
    """ResNet-50: about 4.1 G multiply-adds an image at 224 x 224 (torchvision's 4.09 GFLOPS)."""
    assert flops_per_image("resnet50", 1000) / 2 == pytest.approx(4.09e9, rel=0.02)


# ------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recipe_is_the_authors_readme_command(name):
    r = composed(f"model={name}").model.recipe
    assert (r.epochs, r.batch_size, r.lr, r.lr_batch, r.momentum, r.nesterov, r.weight_decay,
            r.schedule) == (300, 512, 0.2, 512, 0.9, False, 1e-4, "cosine_imagenet")


@pytest.mark.parametrize("batch,lr", [(512, 0.2), (256, 0.1), (1024, 0.4), (64, 0.025)])
def test_linear_scaling_rule(batch, lr):
    cfg = composed("model=resnet50")
    opt, _ = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], 300, batch)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["weight_decay"] == 1e-4
    cifar = composed("model=resnet32")  # no lr_batch: the lr as given, whatever the batch
    opt, _ = build_optimizer(cifar, [torch.nn.Parameter(torch.zeros(1))], 160, batch)
    assert opt.param_groups[0]["lr"] == 0.1


def test_cosine_imagenet_schedule():
    epochs = 300
    factors = [lr_factor(e, epochs, "cosine_imagenet") for e in range(epochs)]
    assert factors[0] == 1.0 and factors[150] == pytest.approx(0.5) and 0 < factors[-1] < 1e-4
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)])


# ------------------------------------------------------------------ ISDA at C=1000, A=2048


def authors_diagonal_update(state, feats, labels, C):
    """The authors' ImageNet EstimatorCV (diagonal), in numpy: their one-hot N x C x A form."""
    ave, var, amount = state
    onehot = np.zeros((len(labels), C))
    onehot[np.arange(len(labels)), labels] = 1
    by_class = feats[:, None, :] * onehot[:, :, None]                         # N x C x A
    count = onehot.sum(0)[:, None]                                           # C x 1
    count_safe = np.where(count == 0, 1, count)
    ave_b = by_class.sum(0) / count_safe
    var_b = (((feats[:, None, :] - ave_b[None]) * onehot[:, :, None]) ** 2).sum(0) / count_safe
    weight = np.divide(count, count + amount, out=np.zeros_like(count), where=count + amount > 0)
    additional = weight * (1 - weight) * (ave - ave_b) ** 2
    var = var * (1 - weight) + var_b * weight + additional
    ave = ave * (1 - weight) + ave_b * weight
    return ave, var, amount + count


def authors_diagonal_logits(weight, bias, feats, labels, var, ratio):
    """y + ratio/2 * sum_k (w_jk - w_yk)^2 var_yk (the authors' diagonal isda_aug)."""
    y = feats @ weight.T + bias
    diff = weight[None, :, :] - weight[labels][:, None, :]                    # N x C x A
    return y + 0.5 * ratio * (diff ** 2 * var[labels][:, None, :]).sum(2)


def test_diagonal_estimator_and_loss_match_the_authors_formulation():
    C, A, N = 12, 10, 16
    rng = np.random.default_rng(0)
    loss = ISDALoss(A, C, "diagonal").double()
    fc = torch.nn.Linear(A, C).double()
    state = (np.zeros((C, A)), np.zeros((C, A)), np.zeros((C, 1)))
    for _ in range(5):
        labels = rng.integers(0, C // 2, N) * 2 if _ % 2 else rng.integers(0, C, N)  # absent classes too
        feats = rng.normal(2.0, 1.5, (N, A))
        state = authors_diagonal_update(state, feats, labels, C)
        f, t = torch.from_numpy(feats).requires_grad_(), torch.from_numpy(labels)
        value, _ = loss(f, fc, t, 0.7)
        w, b = fc.weight.detach().numpy(), fc.bias.detach().numpy()
        logits = authors_diagonal_logits(w, b, feats, labels, state[1], 0.7)
        shifted = logits - logits.max(1, keepdims=True)
        expected = -(shifted[np.arange(N), labels] - np.log(np.exp(shifted).sum(1))).mean()
        assert value.item() == pytest.approx(expected, rel=1e-10)
    assert np.allclose(loss.means.numpy(), state[0], atol=1e-12)
    assert np.allclose(loss.variances.numpy(), state[1], atol=1e-12)
    assert loss.counts.numpy().tolist() == state[2].ravel().astype(int).tolist()


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_diagonal_isda_at_imagenet_scale_never_makes_an_n_by_c_by_a_tensor():
    N, C, A = 64, 1000, 2048
    torch.manual_seed(0)
    loss, fc = ISDALoss(A, C, "diagonal"), torch.nn.Linear(A, C)
    feats = torch.randn(N, A, requires_grad=True)
    targets = torch.randint(0, C, (N,))
    with LargestTensor() as mode:
        value, _ = loss(feats, fc, targets, 7.5)
        value.backward()
    assert torch.isfinite(value) and fc.weight.grad is not None
    assert mode.largest <= C * A  # the weight's size (2 M); N x C x A would be 131 M


def test_a_full_covariance_at_imagenet_size_is_refused_naming_the_diagonal():
    with pytest.raises(UserError, match="needs 16.8 GB .* use isda=diagonal"):
        ISDALoss(2048, 1000, "full")
    cfg = composed("model=resnet50", "isda=on")
    with pytest.raises(UserError, match="isda=diagonal") as e:
        build_criterion(cfg, 2048, 1000)
    assert "\n" not in str(e.value)
    assert 100 * 2190 ** 2 * 4 <= MAX_FULL_COVARIANCE_BYTES  # the largest CIFAR model still fits


def test_the_benchmarks_authors_formulation_is_the_same_loss():
    """scripts/bench_folder.py times the authors' N x C x A form against ISDALoss: same numbers."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("bench_folder", ROOT / "scripts" / "bench_folder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    A, C, N = 16, 12, 20
    fc = torch.nn.Linear(A, C).double()
    ours, theirs = ISDALoss(A, C, "diagonal").double(), bench.AuthorsDiagonalISDA(A, C).double()
    for step in range(4):
        feats, y = torch.randn(N, A, dtype=torch.float64), torch.randint(0, C // (1 + step % 2), (N,))
        assert ours(feats, fc, y, 7.5)[0].item() == pytest.approx(theirs(feats, fc, y, 7.5)[0].item(), rel=1e-12)


# ------------------------------------------------------------------ Table 4: plan and table


def test_table4_plan_lists_six_imagenet_runs():
    from isda_exp.sweeps.plan import plan

    rows = plan(["experiment=table4"], 60.0)
    assert len(rows) == 6 and {r["epochs"] for r in rows} == {300}
    assert {r["train_images"] for r in rows} == {1281167}
    names = {r["run"].split("/imagenet/")[1].rsplit("/", 1)[0] for r in rows}
    assert names == {f"{m}/baseline/{k}" for m in ("resnet50", "resnet152", "resnext50_32x4d")
                     for k in ("baseline", "isda-diagonal")}


def test_table4_markdown_puts_runs_beside_the_paper(tmp_path, capsys):
    import json

    from isda_exp.report.cli import main
    from isda_exp.report.runs import load_runs
    from isda_exp.report.table4 import markdown, table4_runs

    def write_run(method, errors, status="finished"):
        run_dir = tmp_path / "imagenet" / "resnet50" / "baseline" / method / "seed0"
        run_dir.mkdir(parents=True)
        summary = {"model": "resnet50", "seed": 0, "dataset": "imagenet", "aug": "baseline",
                   "method": "baseline" if method == "baseline" else "isda",
                   "variant": None if method == "baseline" else "diagonal", "drop_rate": 0.0,
                   "test_error_last10": sum(t for t, _ in errors) / len(errors)}
        if status == "finished":
            (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e + 1, "train_error": 50.0, "test_error": t1, "test_error_top5": t5}) + "\n"
            for e, (t1, t5) in enumerate(errors)))
        return run_dir

    write_run("baseline", [(40.0, 20.0), (30.0, 10.0)])
    write_run("isda-diagonal", [(35.0, 9.0)])
    rows = table4_runs(load_runs(tmp_path))
    assert [r["curves"]["test_error"] for r in rows] == [[40.0, 30.0], [35.0]]
    table = markdown(rows)
    assert "| ResNet-50 | 30.00 / 10.00 | 23.58 / 6.92 | 35.00 / 9.00 | 23.30 / 6.82 |" in table
    assert "| ResNet-152 | - | 21.65 / 6.01 | - | 21.20 / 5.67 |" in table
    assert main([str(tmp_path), "--table", "4", "--out", str(tmp_path / "t.md")]) == 0
    assert main([str(tmp_path), "--table", "4", "--curves", str(tmp_path / "f3.png")]) == 0
    assert (tmp_path / "t.md").read_text().strip() == table
    assert (tmp_path / "f3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an unfinished run is listed, never shown in the table
    (tmp_path / "imagenet" / "resnet50" / "baseline" / "isda-diagonal" / "seed0" / "summary.json").unlink()
    assert main([str(tmp_path), "--table", "4"]) == 0
    out = capsys.readouterr().out
    assert "| ResNet-50 | 30.00 / 10.00 | 23.58 / 6.92 | - | 23.30 / 6.82 |" in out
