"""Pretrained weights (model.pretrained) for every family: a timm or torchvision backbone loaded from
a local file gives exactly the source model's features and logits on the same batch, in every
file layout a user has (plain, wrapped, DDP-prefixed, .safetensors); what does not fit is one line;
pickled objects are refused; the science config holds the file's hash (never the path); a folder's
transforms follow the weights' own input; the fine-tuning lr multiplier and its param groups."""
from __future__ import annotations

import hashlib
import math
import shutil

import pytest
import timm
import torch
import torchvision
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from isda_exp.errors import UserError
from isda_exp.models import create_model
from isda_exp.models.pretrained import extract_weights, load_pretrained, read_weights
from isda_exp.paths import config_dir
from isda_exp.rundir.identity import science_config
from isda_exp.training.build import build_model, build_optimizer, resolve_auto
from isda_exp.training.weights import resolve_inputs

CPU = torch.device("cpu")


def composed(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def timm_source(arch: str, classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=classes).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return model


def write(state: dict, path, layout: str):
    if layout == "plain":
        torch.save(state, path)
    elif layout == "state_dict+module":  # a DDP model's checkpoint, wrapped
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif layout == "model":
        torch.save({"model": state, "optimizer": {}}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("arch,layout", [("resnet18", "plain"), ("resnet18", "state_dict+module"),
                                         ("resnet18", "model"), ("convnext_nano", "safetensors")])
def test_a_timm_backbone_from_a_file_gives_the_source_features_and_logits(arch, layout, tmp_path):
    source = timm_source(arch, classes=5)
    suffix = ".safetensors" if layout == "safetensors" else ".pth"
    path = write(source.state_dict(), tmp_path / f"w{suffix}", layout)
    cfg = composed("model=timm", f"model.arch={arch}", f"model.pretrained={path}")
    net, fc = build_model(cfg, 5)
    net.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want_features = source.forward_head(source.forward_features(x), pre_logits=True)
        assert torch.equal(net(x), want_features)
        assert torch.equal(fc(net(x)), source(x))  # the classifier fits: it is the source's


def test_another_class_count_keeps_the_backbone_and_makes_a_new_classifier(tmp_path, caplog):
    source = timm_source("resnet18", classes=1000)
    path = write(source.state_dict(), tmp_path / "w.pth", "plain")
    net, fc = create_model("timm", arch="resnet18").eval(), torch.nn.Linear(512, 7)
    before = fc.weight.clone()
    info = load_pretrained(net, fc, str(path))
    assert info["classifier"].startswith("new (the weights' has 1000 classes")
    assert torch.equal(fc.weight, before)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(net(x), source.forward_head(source.forward_features(x), pre_logits=True))


def test_a_torchvision_model_loads_torchvisions_own_layout(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=3).eval()
    path = write(source.state_dict(), tmp_path / "tv.pth", "state_dict+module")
    net = create_model("timm", arch="resnet18")  # timm's resnet18 has torchvision's key names
    fc = torch.nn.Linear(512, 3)
    load_pretrained(net, fc, str(path))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(fc(net.eval()(x)), source(x), atol=1e-5)


def test_weights_that_do_not_fit_are_one_line_naming_the_first_keys(tmp_path):
    path = write(timm_source("resnet34", classes=10).state_dict(), tmp_path / "r34.pth", "plain")
    cfg = composed("model=timm", "model.arch=resnet18", f"model.pretrained={path}")
    with pytest.raises(UserError) as e:
        build_model(cfg, 10)
    msg = str(e.value)
    assert "\n" not in msg and "do not fit TimmFeatures(resnet18)" in msg
    assert "unexpected: layer1.2.conv1.weight" in msg and "..." in msg  # the first few, not all


def test_a_pickled_object_is_refused_in_one_line_and_extracted_only_when_trusted(tmp_path):
    state = timm_source("resnet18", classes=4).state_dict()
    path = tmp_path / "authors.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()},
                "isda": _PickledLoss(4)}, path)
    with pytest.raises(UserError) as e:
        read_weights(str(path))
    msg = str(e.value)
    assert "\n" not in msg and "holds pickled Python objects" in msg and "--trust-pickle" in msg
    with pytest.raises(UserError, match="add --trust-pickle"):
        extract_weights(str(path), str(tmp_path / "w.safetensors"))
    out = tmp_path / "w.safetensors"
    assert extract_weights(str(path), str(out), trust_pickle=True) == len(state)
    got = read_weights(str(out))
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


class _PickledLoss:
    """Stands for the authors' pickled loss object (a class the loader must never run)."""

    def __init__(self, classes):
        self.classes = classes

    def __reduce__(self):
        return (_PickledLoss, (self.classes,))


@pytest.mark.parametrize("spec,message", [
    ("missing_dir/w.pth", "no such file"),
    ("not_torch.pth", "is not a PyTorch weights file"),
])
def test_bad_files_are_one_line(spec, message, tmp_path):
    (tmp_path / "not_torch.pth").write_text("hello")
    with pytest.raises(UserError, match=message) as e:
        load_pretrained(create_model("resnet32"), torch.nn.Linear(64, 10), str(tmp_path / spec))
    assert "\n" not in str(e.value)


def test_names_without_a_library_or_of_no_weights_are_one_line():
    with pytest.raises(UserError, match="has no published weights to name: pass a weights file"):
        load_pretrained(create_model("resnet32"), torch.nn.Linear(64, 10), "IMAGENET1K_V2")
    with pytest.raises(UserError, match="IMAGENET1K_V3 is not a torchvision weights name of resnet50: "
                                        "use IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        with torch.device("meta"):
            create_model("resnet50").weights_name("IMAGENET1K_V3")
    with pytest.raises(UserError, match="not a timm weights tag of resnet18: use one of a1_in1k"):
        with torch.device("meta"):
            create_model("timm", arch="resnet18").weights_name("nope")
    with pytest.raises(UserError, match="not a timm architecture .*did you mean convnext_nano"):
        create_model("timm", arch="convnext_nanoo")


def test_the_science_config_holds_the_files_hash_not_its_path(tmp_path):
    path = write(timm_source("resnet18", classes=10).state_dict(), tmp_path / "a.pth", "plain")
    moved = tmp_path / "elsewhere" / "b.pth"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    sciences = []
    for p in (path, moved):
        cfg = composed("model=timm", f"model.pretrained={p}")
        resolve_auto(cfg)
        sciences.append(science_config(cfg))
    assert sciences[0] == sciences[1]  # the same weights at another path: the same run
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sciences[0]["model"]["pretrained_id"] == f"sha256:{digest}"
    assert "pretrained" not in sciences[0]["model"] and str(tmp_path) not in repr(sciences[0])
    plain = composed("model=resnet50")
    resolve_auto(plain)
    assert {"pretrained", "pretrained_id"}.isdisjoint(science_config(plain)["model"])
    named = composed("model=resnet50", "model.pretrained=IMAGENET1K_V2")
    resolve_auto(named)  # no download: the name is resolved from torchvision's enum
    assert science_config(named)["model"]["pretrained_id"] == "torchvision:ResNet50_Weights.IMAGENET1K_V2"


def test_a_folders_transforms_at_auto_follow_the_weights_unless_set(tmp_path):
    def dataset(*overrides):
        cfg = composed("dataset=folder", "dataset.root=x", *overrides)
        resolve_inputs(cfg, lambda: create_model(cfg.model.net.name, **({"arch": cfg.model.arch}
                                                                         if "arch" in cfg.model else {})))
        return {k: cfg.dataset[k] for k in ("mean", "std", "train_crop", "eval_resize", "eval_crop")}
    vit = timm.get_pretrained_cfg("vit_tiny_patch16_224").to_dict()
    assert dataset("model=timm", "model.arch=vit_tiny_patch16_224") == {
        "mean": list(vit["mean"]), "std": list(vit["std"]), "train_crop": 224,
        "eval_resize": int(224 / vit["crop_pct"]), "eval_crop": 224}
    assert dataset("model=timm", "model.arch=vit_tiny_patch16_224", "dataset.eval_crop=200")["eval_crop"] == 200
    tv = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert dataset("model=resnet50", "model.pretrained=IMAGENET1K_V2")["eval_resize"] == tv.resize_size[0] == 232
    assert dataset("model=resnet32") == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                         "train_crop": 224, "eval_resize": 256, "eval_crop": 224}


@pytest.mark.filterwarnings("ignore:Detected call of")  # the schedule alone is stepped here
def test_the_backbone_lr_multiplier_and_unchanged_param_groups_without_it():
    cfg = composed("model=resnet32", "+model.net.base_width=4")
    net, fc = build_model(cfg, 10)
    backbone, head = list(net.parameters()), list(fc.parameters())
    old, _ = build_optimizer(cfg, [*backbone, *head], 160, 128)  # how every recipe built it
    new, _ = build_optimizer(cfg, (backbone, head), 160, 128)
    assert new.state_dict() == old.state_dict() and len(new.param_groups) == 1
    assert all(a is b for a, b in zip(new.param_groups[0]["params"], [*backbone, *head]))
    ft = composed("model=resnet32", "+model.net.base_width=4", "experiment=finetune")
    assert ft.model.recipe.backbone_lr_mult == 0.1
    opt, schedule = build_optimizer(ft, (backbone, head), 30, 64)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.01, 0.01 * 0.1]
    assert opt.param_groups[0]["params"] == head and opt.param_groups[1]["params"] == backbone
    for epoch in (0, 1):  # cosine to 0: 0.5 (1 + cos(pi (epoch + 1) / epochs)), both groups alike
        factor = 0.5 * (1 + math.cos(math.pi * (epoch + 1) / 30))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * factor, 0.001 * factor])
        schedule.step()
    science = science_config(composed("model=resnet32", "+model.recipe.backbone_lr_mult=1.0"))
    assert "backbone_lr_mult" not in science["model"]["recipe"]  # 1: one lr, as before


def test_densenet_bc_265_has_the_authors_parameter_count():
    with torch.device("meta"):
        net = create_model("densenet265")
    count = sum(p.numel() for p in net.parameters()) + net.feature_dim * 1000 + 1000
    assert net.feature_dim == 2688 and round(count / 1e6, 1) == 33.3  # their README: 33.3M


def test_the_done_when_command_fine_tunes_a_timm_backbone_from_a_file(cli_here, tmp_path):
    from test_folder import write_folder

    root = write_folder(tmp_path / "data", per_class_train=4, per_class_val=2, size=24, classes=3)
    source = timm_source("resnet18", classes=1000)
    path = write(source.state_dict(), tmp_path / "resnet18.pth", "plain")
    out = tmp_path / "runs"
    cli_here("dataset=folder", f"dataset.root={root}", "model=timm", "model.arch=resnet18",
             f"model.pretrained={path}", "isda=diagonal", "trainer.epochs=1", "trainer.batch_size=6",
             "dataset.train_crop=32", "dataset.eval_resize=36", "dataset.eval_crop=32",
             "trainer.num_workers=0", "trainer.progress=false", "trainer.tensorboard=false",
             "device=cpu", f"out_root={out}")
    run = next(out.rglob("summary.json")).parent
    import json

    stored = json.loads((run / "run_config.json").read_text())
    assert stored["model"]["pretrained_id"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert "pretrained weights" in (run / "train.log").read_text()
    trained = torch.load(run / "last.pt", weights_only=True)["model"]
    moved = [k for k, v in source.state_dict().items()
             if not k.startswith("fc.") and v.is_floating_point() and not torch.equal(trained["body." + k], v)]
    assert moved  # it fine-tuned the loaded backbone


def test_the_zoo_printout_and_the_plan_size_the_timm_architecture():
    from isda_exp.models._stats import zoo_table
    from isda_exp.sweeps.plan import job_cost

    source = timm.create_model("resnet18", num_classes=1000)
    row = zoo_table(1000, ["timm:resnet18"]).splitlines()[1]
    assert row.startswith("timm:resnet18") and f"{sum(p.numel() for p in source.parameters()) / 1e6:.3f}M" in row
    assert " 512 " in row  # the feature dimension
    small, large = (job_cost(composed("model=timm", f"model.arch={a}", "dataset=imagenet"))["pflops"]
                    for a in ("resnet18", "convnext_nano"))
    assert large / small == pytest.approx(4.891 / 3.628, rel=0.01)  # their forward FLOPs


def test_a_weights_name_without_network_is_one_line(monkeypatch):
    import urllib.error

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.__class__, "get_state_dict", offline)
    with torch.device("meta"):
        net = create_model("resnet50")
    with pytest.raises(UserError, match="cannot get torchvision's ResNet50_Weights.IMAGENET1K_V2 .*"
                                        "without network, download https://") as e:
        load_pretrained(net, torch.nn.Linear(2048, 10), "IMAGENET1K_V2")
    assert "\n" not in str(e.value)
