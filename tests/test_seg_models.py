"""The segmentation networks: DeepLab-v3 is torchvision's (with the same weights it gives
torchvision's logits), each head's penultimate map and final 1x1 classifier are what the runner
gets, the authors' head widths, PSPNet's shapes, backbone weights from a local file, and the
Cityscapes and VOC layouts read through their loaders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from isda_exp.data.segmentation import load_cityscapes, load_voc
from isda_exp.errors import UserError
from isda_exp.models.segmentation import deeplabv3, pspnet

OPTIONS = dict(crop_size=32, train_scales=[1.0], flip=True, mean=[0.5] * 3, std=[0.25] * 3,
               evaluation=dict(mode="whole", scales=[1.0], flip=False))


def test_deeplabv3_is_torchvisions_network_cut_before_its_classifiers():
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                            num_classes=5, aux_loss=True).eval()
    ours = deeplabv3(5, "resnet50").eval()
    mapped = {}
    for k, v in tv.state_dict().items():
        head, _, rest = k.partition(".")
        if head == "backbone":
            mapped[k] = v
        else:
            h = 0 if head == "classifier" else 1
            index, _, tail = rest.partition(".")
            last = 4
            mapped[f"classifiers.{h}.{tail}" if int(index) == last else f"heads.{h}.{rest}"] = v
    ours.load_state_dict(mapped)  # strict: the same parameters, one for one
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        want = tv(x)
        feats = ours(x)
        logits = [c(f) for c, f in zip(ours.classifiers, feats)]
    assert [f.shape[1] for f in feats] == [256, 256] and feats[0].shape[-1] == 9  # stride 8
    for got, key in zip(logits, ("out", "aux")):
        up = F.interpolate(got, size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(up, want[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.main_logits(x), logits[0])


def test_the_authors_heads_and_pspnet():
    net = deeplabv3(19, "tiny", head="authors", atrous_rates=(1, 2, 3))
    assert net.feature_dims == (512, 512)
    assert any(isinstance(m, torch.nn.Dropout2d) and m.p == 0.1 for m in net.heads[0].modules())
    psp = pspnet(7, "tiny", stage_channels=8, head_channels=24, aux_channels=12)
    feats = psp(torch.randn(2, 3, 48, 40))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 6, 5), (2, 12, 6, 5)]
    assert psp.classifiers[0].weight.shape == (7, 24, 1, 1) and psp.classifiers[1].in_channels == 12


def test_backbone_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    donor = deeplabv3(3, "tiny")
    state = {f"backbone.{k}": v for k, v in donor.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": donor.backbone.state_dict()}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(2)
        net = deeplabv3(3, "tiny", pretrained=str(tmp_path / name))
        for k, v in donor.backbone.state_dict().items():
            assert torch.equal(net.backbone.state_dict()[k], v), (name, k)
    torch.save({"layer9.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not fit the tiny backbone"):
        deeplabv3(3, "tiny", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match="does not exist"):
        deeplabv3(3, "tiny", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="not a torchvision weights name"):
        deeplabv3(3, "resnet50", pretrained="IMAGENET9K")


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_the_cityscapes_layout_maps_label_ids_through_its_loader(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice([0, 7, 8, 26, 33, 255], size=(10, 12)).astype(np.uint8)
    for split in ("train", "val"):
        _png(tmp_path / "leftImg8bit" / split / "aachen" / f"aachen_1_leftImg8bit.png",
             rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
        _png(tmp_path / "gtFine" / split / "aachen" / "aachen_1_gtFine_labelIds.png", ids)
    source = load_cityscapes(root=str(tmp_path), **OPTIONS)
    _, mask = source.train.read(0)
    want = np.select([ids == 7, ids == 8, ids == 26, ids == 33], [0, 1, 13, 18], 255)
    assert np.array_equal(mask.numpy(), want) and source.num_classes == 19
    bad = ids.copy()
    bad[0, 0] = 40
    _png(tmp_path / "gtFine" / "val" / "aachen" / "aachen_1_gtFine_labelIds.png", bad)
    with pytest.raises(UserError, match=r"label values \[40\]"):
        source.val.read(0)


def test_the_voc_layout_and_its_augmented_training_list(tmp_path):
    rng = np.random.default_rng(1)
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for name in ("a", "b", "c"):
        _png(tmp_path / "JPEGImages" / f"{name}.png", rng.integers(0, 255, (8, 9, 3), dtype=np.uint8))
        (tmp_path / "JPEGImages" / f"{name}.png").rename(tmp_path / "JPEGImages" / f"{name}.jpg")
        _png(tmp_path / "SegmentationClass" / f"{name}.png", rng.choice([0, 5, 20, 255], (8, 9)).astype(np.uint8))
        _png(tmp_path / "SegmentationClassAug" / f"{name}.png", np.full((8, 9), 3, np.uint8))
    (sets / "train.txt").write_text("a\n")
    (sets / "val.txt").write_text("b\n")
    (sets / "train_aug.txt").write_text("a\nc\n")
    plain = load_voc(root=str(tmp_path), **OPTIONS)
    assert (plain.num_train, len(plain.val), plain.num_classes) == (1, 1, 21)
    augmented = load_voc(root=str(tmp_path), augmented=True, **OPTIONS)
    assert augmented.num_train == 2 and set(augmented.train.read(1)[1].unique().tolist()) == {3}
    (sets / "val.txt").write_text("b\nzz\n")
    with pytest.raises(UserError, match="files listed in .* are missing"):
        load_voc(root=str(tmp_path), **OPTIONS)
