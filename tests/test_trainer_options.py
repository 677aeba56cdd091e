"""Trainer speed options on the CPU: precision, channels_last, compile (and its fallback), eval.

Each option must train to finite metrics and leave the science alone: the ISDA statistics stay
float32 under autocast, channels_last matches the default layout, a failed compile falls back to
exactly the eager run, and the test pass does not depend on its batch size.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from isda_exp.cli.train import run
from isda_exp.data import normalize
from isda_exp.errors import UserError
from isda_exp.paths import config_dir
from isda_exp.training.trainer import Trainer

TINY = ["dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64", "trainer.batch_size=64",
        "trainer.epochs=1", "trainer.progress=false", "trainer.tensorboard=false"]
# ResNet-32 at a quarter of its width (1/16 of the work), where a test compares two runs of the same net
QUICK = "+model.net.base_width=4"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def trained(tmp_path: Path, *overrides: str) -> dict:
    """Metrics of one tiny in-process run, without its timing."""
    run(composed(*overrides), tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    return {k: v for k, v in row.items() if k != "seconds"}


def isda_features(trainer: Trainer, x: torch.Tensor) -> torch.Tensor:
    """The features the criterion sees in a training forward pass (as the trainer computes them)."""
    seen = []
    handle = trainer.engine.net.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    with torch.no_grad(), trainer.engine.autocast():
        trainer.engine.net.train()
        trainer.engine.forward(trainer.engine.inputs(x))
    handle.remove()
    return seen[0]


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("flags, expected", [(["avx2", "fma"], "fp32"), (["avx2", "avx512_bf16"], "bf16"),
                                             (["amx_bf16", "amx_tile"], "bf16"), ([], "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, flags, expected):
    from isda_exp.parallel import device as dev

    monkeypatch.setattr(dev, "cpu_flags", lambda: flags)
    assert dev.resolve_precision("auto", torch.device("cpu")) == expected
    assert dev.resolve_precision("fp16", torch.device("cpu")) == "fp16"  # an explicit choice stays
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_auto_precision_is_recorded_as_the_precision_used(tmp_path, cli_here):
    """The summary and run_config.json hold the resolved precision, so the same command with that
    precision named is the same (finished) run, and the other precision is refused."""
    from isda_exp.parallel.device import resolve_precision

    used = resolve_precision("auto", torch.device("cpu"))
    args = [*TINY, QUICK, "device=cpu", "out_root=runs"]
    cli_here(*args, "trainer.precision=auto")
    (summary,) = (tmp_path / "runs").rglob("summary.json")
    record = json.loads(summary.read_text())
    assert record["precision"] == used and record["science"]["trainer"]["precision"] == used
    stored = json.loads((summary.parent / "run_config.json").read_text())
    assert stored["trainer"]["precision"] == used
    again = cli_here(*args, f"trainer.precision={used}")
    assert "has already finished" in again.stdout
    other = "fp32" if used == "bf16" else "bf16"
    refused = cli_here(*args, f"trainer.precision={other}", check=False)
    assert refused.returncode == 2 and "trainer.precision" in refused.stderr



@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_and_isda_statistics_stay_float32(tmp_path, precision):
    # fp16 autocast is ~20x slower than fp32 on a CPU without fp16 arithmetic: keep the run small
    small = ["dataset.train_size=32", "dataset.test_size=16", "trainer.batch_size=16", "trainer.epochs=2"]
    trainer = Trainer(composed(f"trainer.precision={precision}", "isda=on", QUICK, *small), tmp_path)
    row = {**trainer.train_epoch(1), **trainer.evaluate()}  # epoch 1: lambda > 0, quadratic term on
    assert row["lambda"] > 0
    assert all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "train_error", "test_error"))
    crit = trainer.engine.criterion
    assert crit.means.dtype == crit.covariances.dtype == torch.float32
    assert int(crit.counts.sum()) == 32  # every training image entered the statistics

    # One more step on a fixed batch, from empty statistics: the buffers hold the float32 batch
    # statistics of the features the model produced (compared with a float64 numpy computation).
    for buffer in (crit.counts, crit.means, crit.covariances):
        buffer.zero_()
    x, y = trainer.run.data.x_train[:16], trainer.run.data.y_train[:16]
    feats = isda_features(trainer, x).double().numpy()  # no dropout in ResNet-32: same features
    loss, logits = trainer.engine.train_step(x, y, 0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert crit.means.dtype == crit.covariances.dtype == torch.float32
    c = int(np.bincount(y.numpy()).argmax())
    fc = feats[y.numpy() == c]
    np.testing.assert_allclose(crit.means[c].numpy(), fc.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(crit.covariances[c].numpy(), np.cov(fc.T, bias=True), rtol=1e-3, atol=1e-5)

    # The quadratic term is float32 even when the logits come out of autocast in low precision.
    with trainer.engine.autocast():
        low = trainer.engine.fc(torch.from_numpy(feats[:8]).to(trainer.engine.amp_dtype or torch.float32))
        aug = crit.augmented_logits(low, trainer.engine.fc.weight, y[:8], 0.5)
    assert aug.dtype == torch.float32


def test_bf16_logits_are_close_to_fp32(tmp_path):
    nets = {p: Trainer(composed(f"trainer.precision={p}", QUICK), tmp_path / p) for p in ("fp32", "bf16")}
    batch = nets["fp32"].run.data.x_test[:64]
    out = {}
    for precision, trainer in nets.items():
        trainer.engine.net.eval()
        with torch.no_grad(), trainer.engine.autocast():
            out[precision] = trainer.engine.fc(trainer.engine.forward(normalize(batch))).float()
    assert all(torch.equal(a, b) for a, b in zip(nets["fp32"].engine.net.state_dict().values(),
                                                 nets["bf16"].engine.net.state_dict().values()))
    ref, low = out["fp32"], out["bf16"]
    assert not torch.equal(ref, low)  # autocast really ran in bf16
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.02, f"bf16 logits differ from fp32 by {rel:.3f} (relative)"


def test_unknown_precision_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"trainer.precision=fp8 .*fp32, bf16 or fp16"):
        Trainer(composed("trainer.precision=fp8"), tmp_path)
    with pytest.raises(UserError, match="eval_batch_size=0"):
        Trainer(composed("trainer.eval_batch_size=0"), tmp_path)


# ------------------------------------------------------------------ channels_last


def conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1]  # 3x3: layouts differ


def test_channels_last_matches_the_default_layout(tmp_path):
    trainers = {}
    for layout in ("default", "channels_last"):
        (tmp_path / layout).mkdir()
        # lr 0.02: at the recipe's 0.1 two steps from a fresh init amplify the layouts' float32
        # rounding past any fixed tolerance on some CPUs (test loss 105 vs 111 seen)
        cfg = composed("isda=on", f"trainer.channels_last={layout == 'channels_last'}",
                       "model.recipe.lr=0.02")
        trainers[layout] = Trainer(cfg, tmp_path / layout)
    # In float64 the two layouts compute the same function and gradients (rounding aside): the
    # layout changes nothing but speed and float32 rounding.
    x = trainers["default"].run.data.x_train[:16]
    grads = {}
    for layout, trainer in trainers.items():
        net = copy.deepcopy(trainer.engine.net).double()
        out = net(trainer.engine.inputs(x).double())
        out.square().sum().backward()
        grads[layout] = (out.detach(), [p.grad for p in net.parameters()])
        if layout == "channels_last":
            assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(net))
    (a, ga), (b, gb) = grads.values()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)

    rows = {}
    for layout, trainer in trainers.items():
        trainer.fit()
        row = json.loads((tmp_path / layout / "metrics.jsonl").read_text())
        rows[layout] = {k: v for k, v in row.items() if k != "seconds"}
    convs = conv_weights(trainers["channels_last"].engine.net)
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not any(p.is_contiguous() for p in convs)  # still NHWC after the optimizer steps
    default, last = rows["default"], rows["channels_last"]
    # float32 BatchNorm gradients differ by ~1% between the layouts' kernels (both are that far
    # from float64), and two SGD steps from a fresh init amplify it: compare within that
    assert last["train_loss"] == pytest.approx(default["train_loss"], rel=1e-3)
    assert abs(last["train_error"] - default["train_error"]) <= 100 * 1 / 128
    assert last["test_loss"] == pytest.approx(default["test_loss"], rel=0.05)
    assert abs(last["test_error"] - default["test_error"]) <= 100 * 2 / 64


# ------------------------------------------------------------------ compile


class FailingBackward(torch.autograd.Function):
    """Identity whose backward raises, like a lazily compiled backward graph that cannot build."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("C++ compile error in the backward graph")


def fake_compile(kind: str):
    def compile_(net, **kwargs):
        if kind == "at_compile":
            raise RuntimeError("torch.compile is not supported on this platform")

        def compiled(x):
            if kind == "forward":
                raise RuntimeError("InductorError: no working C++ compiler")
            return FailingBackward.apply(net(x))  # the forward runs (BN statistics move), backward fails
        return compiled
    return compile_


@pytest.fixture(scope="module")
def eager_isda_run(tmp_path_factory) -> dict:
    return trained(tmp_path_factory.mktemp("eager"), QUICK, "isda=constant")  # lambda > 0 from step one


@pytest.mark.parametrize("kind", ["at_compile", "forward", "backward"])
def test_failed_compile_falls_back_to_exactly_the_eager_run(tmp_path, monkeypatch, kind, eager_isda_run):
    monkeypatch.setattr(torch, "compile", fake_compile(kind))
    with pytest.warns(UserWarning, match="torch.compile"):
        fallback = trained(tmp_path, QUICK, "isda=constant", "trainer.compile=true")
    assert fallback == eager_isda_run


def test_compile_really_compiles_and_trains(tmp_path, monkeypatch):
    """A real torch.compile (dynamo + AOTAutograd; aot_eager keeps the test fast without a C++ build)."""
    calls = []
    real = torch.compile

    def traced(net, **kwargs):
        calls.append(net)
        return real(net, backend="aot_eager")

    eager = trained(tmp_path / "eager", QUICK)
    monkeypatch.setattr(torch, "compile", traced)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile")  # no fallback here
        compiled = trained(tmp_path / "compiled", QUICK, "trainer.compile=true")
    assert len(calls) == 1
    for key in ("train_loss", "test_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key


# ------------------------------------------------------------------ evaluation


def test_evaluation_is_inference_mode_and_independent_of_its_batch_size(tmp_path):
    trainer = Trainer(composed("dataset.test_size=200", "trainer.eval_batch_size=64"), tmp_path)
    trainer.train_epoch(0)
    modes = []
    hook = trainer.engine.net.register_forward_hook(
        lambda m, i, o: modes.append((torch.is_inference_mode_enabled(), m.training)))
    before = {k: v.clone() for k, v in trainer.engine.net.state_dict().items()}
    big = trainer.evaluate()
    trainer.run.eval_batch_size = 7  # 29 batches, the last one partial
    small = trainer.evaluate()
    hook.remove()
    assert set(modes) == {(True, False)} and len(modes) == 4 + 29
    assert all(torch.equal(v, trainer.engine.net.state_dict()[k]) for k, v in before.items())
    # the error count, exactly, against a plain eval-mode forward of the whole test set at once
    with torch.no_grad():
        logits = trainer.engine.fc(trainer.engine.net(normalize(trainer.run.data.x_test)))
    wrong = int((logits.argmax(1) != trainer.run.data.y_test).sum())
    assert big["test_error"] == small["test_error"] == 100.0 * wrong / 200
    loss = torch.nn.functional.cross_entropy(logits, trainer.run.data.y_test).item()
    assert big["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert small["test_loss"] == pytest.approx(loss, rel=1e-5)
