"""Segmentation data: the Cityscapes table, masks read exactly (palette and grey PNGs), joint
transforms that keep every label value one of the mask's own and pad bottom/right with void, the
iteration sampler as a function of (seed, iteration) alone, and bad input as one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from isda_exp.data.segmentation import CITYSCAPES_CLASSES, cityscapes_lut, load_seg_folder, write_seg_folder
from isda_exp.data.segmentation.files import read_mask
from isda_exp.data.segmentation.generated import scenes
from isda_exp.data.segmentation.streams import IterationSampler, batch_keys
from isda_exp.data.segmentation.transforms import rescale, train_transform, zero_outside
from isda_exp.data.streams import epoch_order
from isda_exp.errors import UserError

OPTIONS = dict(crop_size=32, train_scales=[1.0], flip=True, mean=[0.5] * 3, std=[0.25] * 3,
               evaluation=dict(mode="whole", scales=[1.0], flip=False))
FOLDER = ["dataset=seg_folder", "dataset.num_classes=4", "model=deeplabv3_tiny", "trainer.iterations=2",
          "trainer.batch_size=2", "dataset.crop_size=32", "dataset.evaluation.crop=32",
          "dataset.evaluation.stride=32", "trainer.progress=false", "trainer.num_workers=0",
          "isda=diagonal", "out_root=runs"]


def test_the_cityscapes_table_maps_label_ids_to_the_19_train_ids():
    lut = cityscapes_lut()
    named = {7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole",
             19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky",
             24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
             32: "motorcycle", 33: "bicycle"}
    for label_id in range(34):
        want = CITYSCAPES_CLASSES.index(named[label_id]) if label_id in named else 255
        assert lut[label_id] == want, label_id
    assert lut[255] == 255 and (lut[34:255] == -1).all()  # 255: the licence plate's -1; others unknown


@pytest.mark.parametrize("palette", [True, False])
def test_masks_are_read_exactly_from_palette_and_grey_pngs(tmp_path, palette):
    write_seg_folder(str(tmp_path), 3, 1, size=(20, 24), num_classes=4, seed=3, palette_masks=palette)
    path = tmp_path / "masks" / "train" / "scene0001.png"
    assert Image.open(path).mode == ("P" if palette else "L")
    want = scenes(4, (20, 24), 4, 3)[1][1]
    assert np.array_equal(read_mask(str(path)), want) and 255 in want
    source = load_seg_folder("f", str(tmp_path), 4, **OPTIONS)
    img, mask = source.train.read(1)
    assert np.array_equal(mask.numpy(), want) and img.shape == (3, 20, 24)


def test_joint_transforms_keep_labels_exact_and_pad_bottom_right_with_void():
    images, masks = scenes(6, (40, 50), 5, 0)
    for i, (img, mask) in enumerate(zip(images, masks)):
        img, mask = torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)
        for scale in (0.5, 0.77, 1.3):
            _, m = rescale(img, mask, scale)
            assert set(m.unique().tolist()) <= set(mask.unique().tolist())
        gen = torch.Generator().manual_seed(i)
        out, m, box = train_transform(img, mask, 64, (0.6, 1.0), True, gen)
        assert out.shape == (3, 64, 64) and m.shape == (64, 64)
        top, bottom, left, right = box.tolist()
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert (m[~inside] == 255).all() and (out[:, ~inside] == 0).all()  # the crop's padding
        assert set(m[inside].unique().tolist()) <= set(mask.unique().tolist())
        x = torch.ones(1, 3, 64, 64)
        zero_outside(x, box.unsqueeze(0))
        assert torch.equal(x[0, 0] == 1, inside)


def test_batch_g_is_a_function_of_seed_and_g_over_epochs_and_ranks():
    n, B, seed = 10, 4, 7
    stream = [k for g in range(6) for k in batch_keys(g, n, B, seed, {})]
    want = [(e, i) for e in range(3) for i in epoch_order(n, seed, e).tolist()][:24]
    assert stream == want  # an endless sequence of seeded epochs
    full = list(IterationSampler(n, B, seed, 6))
    resumed = IterationSampler(n, B, seed, 6)
    resumed.set_start(4)
    assert list(resumed) == full[4:]
    ranks = [list(IterationSampler(n, B, seed, 6, r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full


def test_a_missing_mask_is_one_line(tmp_path):
    write_seg_folder(str(tmp_path), 3, 1, size=(20, 24))
    (tmp_path / "masks" / "train" / "scene0002.png").unlink()
    with pytest.raises(UserError, match="1 of the 3 images .* have no mask"):
        load_seg_folder("f", str(tmp_path), 4, **OPTIONS)


def test_bad_masks_from_the_command_line_are_one_line_exit_2(tmp_path, cli_here):
    """A mask of another size than its image, then a label value outside the classes."""
    root = tmp_path / "data"
    write_seg_folder(str(root), 4, 2, size=(20, 24), num_classes=4)
    args = [*FOLDER, f"dataset.root={root}"]
    mask = root / "masks" / "val" / "scene0004.png"
    good = Image.open(mask)
    good.resize((12, 20)).save(mask)
    proc = cli_here(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is 12x20 but its image" in proc.stderr and "scene0004" in proc.stderr
    bad = np.array(good)
    bad[0, 0] = 7
    Image.fromarray(bad).save(mask)
    proc = cli_here(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "label values [7] outside the 4 classes" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("aug=cutout", "aug=cutout is a CIFAR augmentation"),
    ("model=resnet32", "model=resnet32 is a classification model"),
    ("loss=focal", "loss=focal is not available"),
    ("trainer.isda_statistics=local", "trainer.isda_statistics=local is not allowed: use global or per_rank"),
    ("trainer.batch_size=1", "leaves 1 image per rank"),
    ("dataset.evaluation.stride=99", "stride=99 is not allowed"),
])
def test_a_segmentation_command_that_cannot_work_is_one_line(tmp_path, cli_here, override, message):
    root = tmp_path / "data"
    write_seg_folder(str(root), 2, 1, size=(20, 24))
    proc = cli_here(*FOLDER, f"dataset.root={root}", override, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert not list((tmp_path / "runs").rglob("last.pt"))


def test_an_unreadable_image_is_replaced_by_the_next_pair_and_a_colour_mask_is_refused(tmp_path, caplog):
    write_seg_folder(str(tmp_path), 3, 1, size=(20, 24))
    (tmp_path / "images" / "train" / "scene0001.png").write_bytes(b"not a png")
    source = load_seg_folder("f", str(tmp_path), 4, **OPTIONS)
    img, mask = source.train.read(1)
    want = scenes(4, (20, 24), 4, 0)
    assert np.array_equal(mask.numpy(), want[1][2]) and "unreadable image or mask" in caplog.text
    rgb = tmp_path / "masks" / "train" / "scene0000.png"
    Image.fromarray(np.stack([want[1][0]] * 3, -1)).save(rgb)
    with pytest.raises(UserError, match="is a RGB image: masks must be class-index PNGs"):
        source.train.read(0)
