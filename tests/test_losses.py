"""The competing losses of Table 3 and ResNet dropout, against independent computations.

numpy formulas and per-sample loops for the losses, the paper's piecewise psi for L-Softmax, a
chi-square test for DisturbLabel, gradcheck for every loss, and tiny CLI runs for the wiring.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from scipy import stats

from isda_exp import losses, rundir
from isda_exp.cli.train import run
from isda_exp.losses import (
    CenterLoss,
    CrossEntropy,
    DisturbLabel,
    FocalLoss,
    GeneralizedCrossEntropy,
    ISDALoss,
    LargeMarginSoftmax,
)
from isda_exp.losses.competing import psi
from isda_exp.paths import config_dir
from isda_exp.report import paper
from isda_exp.rundir.identity import science_config
from isda_exp.training.build import build_criterion, build_model

CONFIGS = Path(config_dir())
LOSS_CHOICES = {"ce": "baseline", "focal": "focal", "lsoftmax": "lsoftmax", "center": "center",
                "lq": "lq", "disturblabel": "disturblabel"}
# ResNet-32 at a quarter of its width (4/8/16 channels, 16 features): every layer, 1/16 of the work
TINY = ["dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64", "trainer.batch_size=64",
        "trainer.progress=false", "trainer.tensorboard=false", "+model.net.base_width=4"]
FEATURES = 16


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def batch(n=12, a=5, c=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, a, generator=g, dtype=dtype)
    fc = nn.Linear(a, c).to(dtype)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(c, a, generator=g, dtype=dtype))
        fc.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    y = torch.randint(c, (n,), generator=g)
    return x, fc, y


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_logits(x, fc) -> np.ndarray:
    return x.detach().numpy() @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()


def np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np_log_softmax(z)[np.arange(len(y)), y].mean())


# ------------------------------------------------------------------ closed forms


def test_every_criterion_returns_plain_logits_and_ignores_ratio():
    x, fc, y = batch()
    for crit in (CrossEntropy(5, 4), FocalLoss(5, 4), GeneralizedCrossEntropy(5, 4), LargeMarginSoftmax(5, 4),
                 CenterLoss(5, 4), DisturbLabel(5, 4)):
        crit.eval()
        loss, logits = crit(x, fc, y, 0.0, epoch=0, step=0)
        assert loss.dim() == 0 and torch.isfinite(loss)
        np.testing.assert_allclose(logits.detach().numpy(), np_logits(x, fc), rtol=1e-12)
        assert torch.equal(crit(x, fc, y, 0.7, epoch=3, step=5)[0], loss)  # lambda is ISDA's


def test_cross_entropy_and_focal_gamma_0_equal_numpy_cross_entropy():
    x, fc, y = batch()
    want = np_ce(np_logits(x, fc), y.numpy())
    assert CrossEntropy(5, 4)(x, fc, y, 0.0)[0].item() == pytest.approx(want, rel=1e-12)
    assert FocalLoss(5, 4, gamma=0.0)(x, fc, y, 0.0)[0].item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_equals_its_formula(gamma):
    x, fc, y = batch(seed=1)
    logp = np_log_softmax(np_logits(x, fc))[np.arange(len(y)), y.numpy()]
    want = float(np.mean(-((1 - np.exp(logp)) ** gamma) * logp))
    assert FocalLoss(5, 4, gamma=gamma)(x, fc, y, 0.0)[0].item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.7, 1.0])
def test_lq_equals_its_formula(q):
    x, fc, y = batch(seed=2)
    p = np.exp(np_log_softmax(np_logits(x, fc)))[np.arange(len(y)), y.numpy()]
    want = float(np.mean((1 - p ** q) / q))
    assert GeneralizedCrossEntropy(5, 4, q=q)(x, fc, y, 0.0)[0].item() == pytest.approx(want, rel=1e-10)


def test_lq_tends_to_cross_entropy_as_q_goes_to_0():
    x, fc, y = batch(seed=3)
    ce = np_ce(np_logits(x, fc), y.numpy())
    gaps = [abs(GeneralizedCrossEntropy(5, 4, q=q)(x, fc, y, 0.0)[0].item() - ce) for q in (0.1, 0.01, 1e-4)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3 * ce


# ------------------------------------------------------------------ L-Softmax


def paper_psi(theta: float, m: int) -> float:
    """The paper's piecewise definition, from the angle."""
    k = min(int(theta * m / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def paper_dpsi_dcos(theta: float, m: int) -> float:
    """d psi / d cos(theta) = (d psi / d theta) / (d cos / d theta) on the piece of theta."""
    k = min(int(theta * m / math.pi), m - 1)
    return (-1) ** k * m * math.sin(m * theta) / math.sin(theta)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_matches_the_papers_piecewise_definition_and_its_gradient(m):
    thetas = [0.0, 0.1, 0.7, 1.0, 1.4, 1.9, 2.3, 2.8, 3.1, math.pi]
    cos = torch.tensor([math.cos(t) for t in thetas], dtype=torch.float64, requires_grad=True)
    out = psi(cos, m)
    np.testing.assert_allclose(out.detach().numpy(), [paper_psi(t, m) for t in thetas], atol=1e-12)
    grad, = torch.autograd.grad(out.sum(), cos)
    inner = [i for i, t in enumerate(thetas) if 0 < t < math.pi]
    np.testing.assert_allclose(grad.numpy()[inner], [paper_dpsi_dcos(thetas[i], m) for i in inner], rtol=1e-9)
    # psi is continuous and decreasing in theta over [0, pi] (what makes the margin)
    dense = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    values = psi(torch.cos(dense), m)
    assert (values[1:] <= values[:-1] + 1e-12).all()
    assert values[-1].item() == pytest.approx(-(2 * m - 1), abs=1e-9)


def test_lsoftmax_margin_1_is_softmax_cross_entropy():
    x, fc, y = batch(seed=4)
    crit = LargeMarginSoftmax(5, 4, margin=1, beta=0.0)
    assert crit(x, fc, y, 0.0)[0].item() == pytest.approx(np_ce(np_logits(x, fc), y.numpy()), rel=1e-12)


def test_lsoftmax_equals_a_per_sample_computation_and_anneals_beta():
    x, fc, y = batch(seed=5)
    crit = LargeMarginSoftmax(5, 4, margin=3, beta=10.0, beta_min=0.5, scale=0.5)
    W, b, X = fc.weight.detach().numpy(), fc.bias.detach().numpy(), x.detach().numpy()
    for t in range(8):
        beta = max(0.5, 10.0 * 0.5 ** t)
        z = X @ W.T + b
        for i, c in enumerate(y.tolist()):
            nw, nx = np.linalg.norm(W[c]), np.linalg.norm(X[i])
            theta = math.acos(np.clip(W[c] @ X[i] / (nw * nx), -1, 1))
            z[i, c] = (beta * nw * nx * math.cos(theta) + nw * nx * paper_psi(theta, 3)) / (1 + beta) + b[c]
        assert crit(x, fc, y, 0.0)[0].item() == pytest.approx(np_ce(z, y.numpy()), rel=1e-10), t
    assert int(crit.iteration) == 8
    crit.eval()
    crit(x, fc, y, 0.0)
    assert int(crit.iteration) == 8  # only training steps anneal


# ------------------------------------------------------------------ center loss


def test_center_loss_and_update_equal_a_per_sample_loop():
    x, fc, y = batch(n=20, seed=6)
    y[:3] = 0  # class 0 several times; class 3 may be absent
    y[y == 3] = 2
    crit = CenterLoss(5, 4, lambda_c=0.3, alpha=0.6)
    g = torch.Generator().manual_seed(9)
    crit.centers.copy_(torch.randn(4, 5, generator=g, dtype=torch.float32))
    c0 = crit.centers.double().numpy().copy()
    X = x.detach().numpy()
    loss = crit(x, fc, y, 0.0)[0].item()
    # loss: softmax CE + lambda/2 * mean ||x_i - c_yi||^2 with the centres before the update
    penalty = sum(0.5 * np.sum((X[i] - c0[c]) ** 2) for i, c in enumerate(y.tolist())) / len(y)
    assert loss == pytest.approx(np_ce(np_logits(x, fc), y.numpy()) + 0.3 * penalty, rel=1e-6)
    # update, Wen et al. Eq. 4: c_j -= alpha * sum_{y_i=j} (c_j - x_i) / (1 + n_j)
    want = c0.copy()
    for j in range(4):
        members = [i for i, c in enumerate(y.tolist()) if c == j]
        delta = sum((c0[j] - X[i] for i in members), np.zeros(5)) / (1 + len(members))
        want[j] = c0[j] - 0.6 * delta
    np.testing.assert_allclose(crit.centers.double().numpy(), want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(crit.centers[3].numpy(), c0[3].astype(np.float32))  # absent class unchanged
    crit.eval()
    before = crit.centers.clone()
    crit(x, fc, y, 0.0)
    assert torch.equal(crit.centers, before)  # eval mode never moves them
    assert "centers" in crit.state_dict() and not list(crit.parameters())  # buffers, not SGD


# ------------------------------------------------------------------ DisturbLabel


def test_disturblabel_noise_follows_the_papers_distribution():
    C, alpha, true = 10, 0.3, 3
    crit = DisturbLabel(8, C, alpha=alpha, seed=11)
    targets = torch.full((1000,), true)
    counts = np.zeros(C)
    for step in range(40):
        counts += np.bincount(crit.disturb(targets, epoch=step % 3, step=step).numpy(), minlength=C)
    p = np.full(C, alpha / C)
    p[true] = 1 - (C - 1) / C * alpha
    result = stats.chisquare(counts, counts.sum() * p)
    assert result.pvalue > 1e-3, (counts, result)
    # the other classes are uniform among themselves too (conditional test, sharper)
    others = np.delete(counts, true)
    assert stats.chisquare(others).pvalue > 1e-3


def test_disturblabel_is_a_function_of_seed_epoch_step():
    crit = DisturbLabel(8, 10, alpha=0.5, seed=1)
    y = torch.arange(200) % 10
    a = crit.disturb(y, 2, 7)
    assert torch.equal(a, crit.disturb(y, 2, 7))
    assert torch.equal(a, DisturbLabel(8, 10, alpha=0.5, seed=1).disturb(y, 2, 7))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, crit.disturb(y, 2, 7))
    for other in (crit.disturb(y, 2, 8), crit.disturb(y, 3, 7), DisturbLabel(8, 10, alpha=0.5, seed=2).disturb(y, 2, 7)):
        assert not torch.equal(a, other)
    assert not torch.equal(a, y)
    # training uses the disturbed labels; evaluation does not disturb
    x, fc, _ = batch(n=200, a=8, c=10)
    loss_train = crit(x.float(), fc.float(), y, 0.0, epoch=2, step=7)[0]
    z = np_logits(x.float(), fc.float())
    assert loss_train.item() == pytest.approx(np_ce(z, a.numpy()), rel=1e-5)
    crit.eval()
    assert crit(x.float(), fc.float(), y, 0.0, epoch=2, step=7)[0].item() == pytest.approx(np_ce(z, y.numpy()), rel=1e-5)


# ------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("make", [
    lambda: CrossEntropy(5, 4), lambda: FocalLoss(5, 4, gamma=2.0), lambda: FocalLoss(5, 4, gamma=0.5),
    lambda: GeneralizedCrossEntropy(5, 4, q=0.7), lambda: LargeMarginSoftmax(5, 4, margin=4, beta=0.0),
    lambda: LargeMarginSoftmax(5, 4, margin=2, beta=3.0), lambda: CenterLoss(5, 4, lambda_c=0.5),
    lambda: DisturbLabel(5, 4, alpha=0.5),
], ids=["ce", "focal2", "focal0.5", "lq", "lsoftmax4", "lsoftmax2-beta3", "center", "disturblabel"])
def test_every_loss_passes_gradcheck(make):
    crit = make().double()
    if isinstance(crit, (CenterLoss, LargeMarginSoftmax)):
        crit.eval()  # their state (centres, beta) moves at each training call; gradcheck calls many times
    if isinstance(crit, CenterLoss):
        crit.centers.copy_(torch.randn(4, 5, dtype=torch.float64))
    x, fc, y = batch(n=6, seed=7)
    w, b = fc.weight.detach().clone(), fc.bias.detach().clone()

    def f(x, w, b):
        lin = nn.Linear(5, 4).double()
        del lin.weight, lin.bias
        lin.weight, lin.bias = w, b
        return crit(x, lin, y, 0.0, epoch=1, step=2)[0]

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_isda_takes_the_shared_call():
    x, fc, y = batch(n=8, c=4)
    crit = ISDALoss(5, 4).double()
    loss, logits = crit(x, fc, y, 0.5, epoch=3, step=1)
    assert torch.isfinite(loss) and torch.equal(logits, fc(x))


# ------------------------------------------------------------------ configs and the CLI


def test_each_loss_choice_builds_with_its_parameters():
    assert sorted(p.stem for p in (CONFIGS / "loss").glob("*.yaml")) == sorted(LOSS_CHOICES)
    expected = {"ce": CrossEntropy, "focal": FocalLoss, "lsoftmax": LargeMarginSoftmax, "center": CenterLoss,
                "lq": GeneralizedCrossEntropy, "disturblabel": DisturbLabel}
    for name, cls in expected.items():
        cfg = composed("isda=off", f"loss={name}", "seed=4")
        crit = build_criterion(cfg, feature_dim=16, num_classes=10)
        assert type(crit) is cls and cfg.loss.name == LOSS_CHOICES[name]
        assert losses.loss_name(cfg.loss._target_) == name
    assert build_criterion(composed("isda=off", "loss=focal", "loss.gamma=0.5"), 16, 10).gamma == 0.5
    assert build_criterion(composed("isda=off", "loss=lq", "loss.q=0.3"), 16, 10).q == 0.3
    assert build_criterion(composed("isda=off", "loss=disturblabel", "seed=4"), 16, 10).seed == 4
    assert type(build_criterion(composed("isda=on"), 16, 10)) is ISDALoss  # isda=on with loss=ce


def test_science_config_names_the_loss_and_stays_as_before_for_plain_runs():
    ce, focal = science_config(composed("isda=off")), science_config(composed("isda=off", "loss=focal"))
    assert "loss" not in ce  # as stored by runs made before the loss group: they still resume
    assert focal["loss"]["_target_"] == "isda_exp.losses.FocalLoss" and focal["loss"]["gamma"] == 2.0
    g1 = science_config(composed("isda=off", "loss=focal", "loss.gamma=1.0"))
    assert g1 != focal
    r110 = science_config(composed("model=resnet110"))
    assert "drop_rate" not in r110["model"]["net"]
    assert science_config(composed("model=resnet110", "model.net.drop_rate=0.3"))["model"]["net"]["drop_rate"] == 0.3
    assert science_config(composed("model=wrn28_10"))["model"]["net"]["drop_rate"] == 0.3


def test_isda_with_another_loss_is_refused_in_one_line(tmp_path, cli_here):
    # the CLI's entry in this process (a real launch's exit 2 and one line: test_cli's test_bad_values)
    proc = cli_here(*TINY, "isda=on", "loss=focal", "trainer.epochs=1", "out_root=runs", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "loss=focal" in lines[0] and "isda=off" in lines[0]
    assert not list(tmp_path.rglob(rundir.CHECKPOINT)) and not list(tmp_path.rglob(rundir.SUMMARY))


def test_cli_trains_every_loss_choice_and_names_it(tmp_path, cli_here):
    names = ",".join(LOSS_CHOICES)  # the CLI's entry and Hydra's sweep, in this process
    cli_here("-m", *TINY, "trainer.epochs=2", "isda=off", f"loss={names}", "out_root=runs")
    for loss, method in LOSS_CHOICES.items():
        run_dir = tmp_path / f"runs/synthetic/resnet32/baseline/{method}/seed0"
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        assert (summary["method"], summary["loss"], summary["variant"], summary["epochs"]) == (method, loss, None, 2)
        assert summary["drop_rate"] == 0.0 and math.isfinite(summary["test_error_last10"])
        rows = [json.loads(r) for r in (run_dir / rundir.METRICS).read_text().splitlines()]
        assert [r["lambda"] for r in rows] == [0.0, 0.0] and all(math.isfinite(r["train_loss"]) for r in rows)
    state = torch.load(tmp_path / "runs/synthetic/resnet32/baseline/center/seed0/last.pt", weights_only=False)
    assert state["isda"]["centers"].shape == (10, FEATURES) and state["isda"]["centers"].abs().sum() > 0


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("loss", ["center", "lsoftmax"])
def test_interrupted_then_resumed_gives_the_same_state_and_numbers(tmp_path, monkeypatch, loss):
    cfg = composed(*TINY, "trainer.epochs=3", "isda=off", f"loss={loss}", "seed=2")
    run(cfg, tmp_path / "straight")
    save = rundir.save_checkpoint
    calls = []

    def save_then_die(path, state):  # killed right after the first epoch's checkpoint
        save(path, state)
        calls.append(state["epoch"])
        raise Interrupted

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(rundir, "save_checkpoint", save)
    assert calls == [1] and not (tmp_path / "resumed" / rundir.SUMMARY).exists()
    run(cfg, tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / rundir.CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "resumed" / rundir.CHECKPOINT, weights_only=False)
    assert a["isda"].keys() == b["isda"].keys() and a["isda"]
    for key in a["isda"]:
        assert torch.equal(a["isda"][key], b["isda"][key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    sa = json.loads((tmp_path / "straight" / rundir.SUMMARY).read_text())
    sb = json.loads((tmp_path / "resumed" / rundir.SUMMARY).read_text())
    assert sa["test_error_last10"] == sb["test_error_last10"] and sa["method"] == sb["method"] == loss


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("model", ["resnet110", "se_resnet110"])
def test_resnet_dropout_sits_between_the_convolutions(model):
    plain, _ = build_model(composed(f"model={model}"), 10)
    torch.manual_seed(0)
    drop, _ = build_model(composed(f"model={model}", "model.net.drop_rate=0.5"), 10)
    assert sum(p.numel() for p in drop.parameters()) == sum(p.numel() for p in plain.parameters())
    drop.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), drop.eval()
    assert torch.equal(drop(x), plain(x))  # eval: no dropout
    drop.train()
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))  # torch's global RNG: a function of the seed
    assert not torch.equal(a, drop(x))
    assert not torch.allclose(a, plain(x))  # training mode differs from evaluation mode
    # placement: conv2 of each block sees dropout(relu(bn1(conv1(x)))): zeros or 2x the activation
    block, seen = drop.blocks[5], {}
    block.conv2.register_forward_pre_hook(lambda mod, inp: seen.__setitem__("in", inp[0].detach()))
    block.conv1.register_forward_hook(lambda mod, inp, out: seen.__setitem__("conv1", out.detach()))
    drop(x)  # training mode: bn1 uses the batch statistics, recomputed below
    act = torch.relu(nn.functional.batch_norm(seen["conv1"], None, None, block.bn1.weight, block.bn1.bias,
                                              training=True)).detach()
    kept = seen["in"] != 0
    assert 0.3 < (kept.sum() / (act != 0).sum()).item() < 0.7
    torch.testing.assert_close(seen["in"][kept], 2 * act[kept])


def test_method_label_and_run_directory_name_dropout():
    assert paper.method_label("baseline", None, "resnet110", 0.3) == "baseline+dropout"
    assert paper.method_label("isda", "full", "resnet110", 0.3) == "isda+dropout"
    assert paper.method_label("isda", "diagonal", "wrn28_10", 0.3) == "isda-diagonal"  # the recipe's own
    assert paper.method_label("baseline", None, "wrn28_10", 0.3) == "baseline"
    assert paper.method_label("baseline", None, "wrn28_10", 0.0) == "baseline+nodropout"
    assert paper.method_label("focal", None, "resnet110", 0.0) == "focal"
    assert paper.method_label("isda", None) == "isda" and paper.method_label("isda", "shared") == "isda-shared"
    assert composed("model=resnet110", "isda=off").run_name == "cifar10/resnet110/baseline/baseline/seed0"
    assert composed("model=resnet110", "isda=off", "model.net.drop_rate=0.3").run_name == \
        "cifar10/resnet110/baseline/baseline+dropout/seed0"
    assert composed("model=se_resnet110", "model.net.drop_rate=0.3").run_name == \
        "cifar10/se_resnet110/baseline/isda+dropout/seed0"
    assert composed("model=wrn28_10", "isda=diagonal").run_name == "cifar10/wrn28_10/baseline/isda-diagonal/seed0"
    assert composed("isda=off", "loss=lq", "seed=2").run_name == "cifar10/resnet32/baseline/lq/seed2"
