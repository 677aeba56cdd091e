"""Model zoo: sizes vs the papers, feature interface, configs vs the recipes, shake-shake."""
from __future__ import annotations

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from isda_exp import models
from isda_exp.models import count_params, create_model, flops_per_image, list_models
from isda_exp.models.resnet import CifarResNet
from isda_exp.models.shake_shake import ShakeBlock, ShakeShakeMix, ShakeShakeNet, shake_shake

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"

# name -> (parameter count printed in the papers, in millions, as printed; feature dim A)
PAPER = {
    "resnet32": ("0.5", 64),  # ISDA Table 1 (He et al.'s 0.46M is their zero-padding shortcut)
    "resnet110": ("1.7", 64),
    "se_resnet110": ("1.7", 64),
    "wrn16_8": ("11.0", 512),
    "wrn28_10": ("36.5", 640),
    "resnext29_8x64d": ("34.4", 1024),
    "densenet_bc100_12": ("0.8", 342),
    "densenet_bc190_40": ("25.6", 2190),
    "shake26_2x32d": ("2.9", 128),
    "shake26_2x112d": ("35.6", 448),  # AutoAugment paper
}

# docs/recipes.md: epochs, batch, lr, weight decay, schedule, milestones, gamma, extra net kwargs
_RESNET = (160, 128, 0.1, 1e-4, "step", [80, 120], 0.1, {})
_WRN = (240, 128, 0.1, 5e-4, "step", [60, 120, 160, 200], 0.2, {})
_DENSE = (300, 64, 0.1, 1e-4, "step", [150, 200, 250], 0.1, {})
_SHAKE = (1800, 64, 0.1, 1e-4, "cosine", [], 1.0, {})
RECIPES = {
    "resnet32": _RESNET,
    "resnet110": _RESNET[:-1] + ({"drop_rate": 0.0},),  # model.net.drop_rate: Table 3's "+ Dropout" rows
    "se_resnet110": (200, 128, 0.1, 1e-4, "step", [80, 120, 160], 0.1, {"drop_rate": 0.0}),
    "wrn16_8": _WRN,
    "wrn28_10": _WRN[:-1] + ({"drop_rate": 0.3},),
    "resnext29_8x64d": (350, 128, 0.05, 5e-4, "step", [150, 225, 300], 0.1, {}),
    "densenet_bc100_12": _DENSE,
    "densenet_bc190_40": _DENSE,
    "shake26_2x32d": _SHAKE,
    "shake26_2x112d": _SHAKE,
}


def _resnet_closed_form(blocks_per_stage: int, se: bool, classes: int = 10) -> tuple[int, int]:
    """(params, forward FLOPs) of the projection-shortcut CIFAR ResNet, counted by hand."""
    params, flops = 27 * 16 + 2 * 16, 2 * 27 * 16 * 32 * 32
    cin = 16
    for stage in range(3):
        cout, hw = 16 * 2 ** stage, (32 // 2 ** stage) ** 2
        for _ in range(blocks_per_stage):
            params += 9 * cin * cout + 9 * cout * cout + 4 * cout
            flops += 2 * 9 * (cin + cout) * cout * hw
            if cin != cout:
                params += cin * cout + 2 * cout
                flops += 2 * cin * cout * hw
            if se:
                hidden = cout // 16
                params += 2 * cout * hidden + hidden + cout
                flops += 4 * cout * hidden
            cin = cout
    return params + 64 * classes + classes, flops + 2 * 64 * classes


@pytest.mark.parametrize("name", sorted(PAPER))
def test_param_count_and_feature_dim_match_paper(name):
    printed, feature_dim = PAPER[name]
    decimals = len(printed.split(".")[1])
    assert round(count_params(name) / 1e6, decimals) == float(printed)
    assert create_model(name).feature_dim == feature_dim


@pytest.mark.parametrize("name,n,se", [("resnet32", 5, False), ("resnet110", 18, False), ("se_resnet110", 18, True)])
def test_resnet_params_and_flops_match_hand_count(name, n, se):
    params, flops = _resnet_closed_form(n, se)
    assert count_params(name) == params
    assert flops_per_image(name) == flops


IMAGENET = ["densenet121", "densenet265", "resnet101", "resnet152", "resnet50", "resnext101_32x8d",
            "resnext50_32x4d", "timm"]  # test_imagenet_models, test_pretrained


def test_registry_lists_exactly_the_paper_models():
    assert list_models() == sorted([*PAPER, *IMAGENET])


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet33'.*resnet32"):
        create_model("resnet33")


def test_bad_depth_is_rejected():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=33)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_forward_backward_returns_features_and_reaches_every_parameter(name):
    torch.manual_seed(0)
    net = create_model(name).train()
    feats = net(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, net.feature_dim)
    torch.nn.Linear(net.feature_dim, 10)(feats).logsumexp(1).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


def test_init_is_kaiming_fan_out_and_unit_batchnorm():
    torch.manual_seed(0)
    net = create_model("wrn16_8")
    conv = net.blocks[0].conv1  # 128 x 16 x 3 x 3: fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)
    assert (net.bn.weight == 1).all() and (net.bn.bias == 0).all()


@pytest.mark.parametrize("name,kwargs", [("shake26_2x32d", {}), ("wrn16_8", {"drop_rate": 0.3})])
def test_training_randomness_follows_torch_global_seed(name, kwargs):
    torch.manual_seed(0)
    net = create_model(name, **kwargs).train()
    x = torch.randn(4, 3, 32, 32)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def run(seed):
        net.load_state_dict(state)  # undo the BN running-stat update
        torch.manual_seed(seed)
        return net(x)

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_densenet_memory_efficient_mode_gives_the_same_outputs_and_gradients():
    from isda_exp.models.densenet import DenseNetBC

    torch.manual_seed(0)
    plain = DenseNetBC(depth=16, growth_rate=6)
    saving = DenseNetBC(depth=16, growth_rate=6, memory_efficient=True)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    outs = [net(x) for net in (plain, saving)]
    torch.testing.assert_close(outs[0], outs[1])
    grads = [torch.autograd.grad(o.square().sum(), [x, *net.parameters()]) for o, net in zip(outs, (plain, saving))]
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)
    # the recomputation in backward must not update BatchNorm's running statistics a second time
    buffers = [dict(net.named_buffers()) for net in (plain, saving)]
    assert buffers[0].keys() == buffers[1].keys()
    for name, value in buffers[0].items():
        torch.testing.assert_close(buffers[1][name], value, msg=name)
    assert {int(v) for k, v in buffers[1].items() if k.endswith("num_batches_tracked")} == {1}
    # and after a second step, and in eval mode, both still agree
    for net in (plain, saving):
        net(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
        net.eval()
    y = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(saving(y), plain(y))


# --- configs --------------------------------------------------------------------------------------

def test_config_dir_and_registry_list_the_same_models():
    """The zoo's classification models; the other model configs are the segmentation networks
    (isda_exp.models.segmentation, built with their class count: tests/test_seg_models.py)."""
    configs = {p.stem: OmegaConf.load(p).net._target_ for p in CONFIG_DIR.glob("*.yaml")}
    assert sorted(k for k, t in configs.items() if t == "isda_exp.models.create_model") == list_models()
    assert {t for t in configs.values() if t != "isda_exp.models.create_model"} == {
        "isda_exp.models.segmentation.deeplabv3", "isda_exp.models.segmentation.pspnet"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_matches_recipe_and_instantiates(name):
    epochs, batch, lr, wd, schedule, milestones, gamma, net_kwargs = RECIPES[name]
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert cfg.name == name and cfg.net.name == name
    assert cfg.net._target_ == "isda_exp.models.create_model"
    extra = {k: v for k, v in cfg.net.items() if k not in ("_target_", "name")}
    assert extra == net_kwargs
    r = cfg.recipe
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay) == (epochs, batch, lr, wd)
    assert (r.momentum, r.nesterov) == (0.9, True)
    assert (r.schedule, list(r.milestones), r.gamma) == (schedule, milestones, gamma)
    net = hydra.utils.instantiate(cfg.net)
    assert net.feature_dim == PAPER[name][1]
    drops = {m.drop_rate for m in net.modules() if hasattr(m, "drop_rate")}
    assert drops <= {net_kwargs.get("drop_rate", 0.0)}


def test_training_cost_uses_recipe_epochs():
    _, flops = _resnet_closed_form(5, False)
    assert models.training_pflops("resnet32") == pytest.approx(3 * flops * 50_000 * 160 / 1e15)


# --- shake-shake ---------------------------------------------------------------------------------

def test_shake_forward_mixes_each_image_with_its_own_alpha():
    a, b = torch.zeros(256, 3, 4, 4), torch.ones(256, 3, 4, 4)
    torch.manual_seed(7)
    out = shake_shake(a, b, training=True)
    torch.manual_seed(7)
    alpha = torch.rand(256, 1, 1, 1)  # the first draw is alpha
    torch.testing.assert_close(out, (1 - alpha).expand_as(out))
    per_image = out.flatten(1)
    assert (per_image == per_image[:, :1]).all()  # one weight per image
    assert per_image.min() >= 0 and per_image.max() <= 1 and per_image[:, 0].std() > 0.2


def test_shake_backward_uses_an_independent_beta():
    n = 4096
    a = torch.randn(n, 2, 3, 3, requires_grad=True)
    b = torch.randn(n, 2, 3, 3, requires_grad=True)
    torch.manual_seed(3)
    out = shake_shake(a, b, training=True)
    alpha = ((out - b) / (a - b)).detach().flatten(1)[:, 0]
    out.sum().backward()
    beta = a.grad.flatten(1)[:, 0]
    assert (a.grad.flatten(1) == beta[:, None]).all()
    torch.testing.assert_close(b.grad, 1 - a.grad)
    assert beta.min() >= 0 and beta.max() <= 1
    assert abs(beta.mean().item() - 0.5) < 0.03  # U[0, 1]: sd of the mean ~0.0045
    corr = torch.corrcoef(torch.stack([alpha, beta]))[0, 1].item()
    assert abs(corr) < 0.08  # independent draws: sd of corr ~0.016


def test_shake_mix_gradient_is_exact_when_alpha_equals_beta():
    a = torch.randn(3, 2, 2, 2, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, 2, 2, 2, dtype=torch.double, requires_grad=True)
    w = torch.rand(3, 1, 1, 1, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda u, v: ShakeShakeMix.apply(u, v, w, w), (a, b))


def test_shake_eval_is_the_exact_average_and_deterministic():
    torch.manual_seed(0)
    block = ShakeBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    rng = torch.get_rng_state()
    out = block(x)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing
    expected = block.shortcut(x) + 0.5 * (block.branch1(x) + block.branch2(x))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    net = ShakeShakeNet(depth=8, base_width=8).eval()
    y = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(y), net(y))


# --- the zoo printout ----------------------------------------------------------------------------

@pytest.mark.slow
def test_zoo_printout_lists_every_model(capsys):
    from isda_exp.models.__main__ import main

    main([])
    lines = capsys.readouterr().out.splitlines()
    for name in list_models():
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{count_params(name) / 1e6:.3f}M" in row
