"""Augmentation ops checked against numpy constructions, exact enumeration and Monte Carlo."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.autoaugment as tv_aa

from isda_exp.data.cifar_augment import (AUGMENTATIONS, AutoAugmentDataset, BatchAugment,
                                         build_augment, crop_flip, crop_flip_apply, cutout,
                                         cutout_centres)
from isda_exp.data.normalize import CIFAR_MEAN, CIFAR_STD, normalize


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n: int, h: int = 32, w: int = 32, seed: int = 0, low: int = 0) -> torch.Tensor:
    return torch.randint(low, 256, (n, 3, h, w), dtype=torch.uint8, generator=gen(seed))


def chi2_critical(df: int, z: float = 3.29) -> float:
    """Upper chi-square quantile (z=3.29 -> p~5e-4) by the Wilson-Hilferty approximation."""
    k = 2.0 / (9.0 * df)
    return df * (1.0 - k + z * math.sqrt(k)) ** 3


def chi2_uniform(values: np.ndarray, n_bins: int) -> float:
    counts = np.bincount(values, minlength=n_bins)
    assert len(counts) == n_bins, "value outside the expected range"
    expected = len(values) / n_bins
    return float(((counts - expected) ** 2 / expected).sum())


def np_crop_flip(img: np.ndarray, dy: int, dx: int, flip: bool, padding: int) -> np.ndarray:
    """Reference: np.pad reflect, slice, mirror. img is [C, H, W]."""
    h, w = img.shape[1:]
    padded = np.pad(img, ((0, 0), (padding, padding), (padding, padding)), mode="reflect")
    out = padded[:, dy : dy + h, dx : dx + w]
    return out[:, :, ::-1] if flip else out


def np_cutout_mask(cy: int, cx: int, length: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    y0, x0 = cy - length // 2, cx - length // 2
    mask[max(y0, 0) : min(y0 + length, h), max(x0, 0) : min(x0 + length, w)] = True
    return mask


# --- normalize -------------------------------------------------------------------------------

def test_normalize_matches_numpy():
    x = rand_images(5, 7, 9)
    want = (x.numpy() / 255.0 - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    got = normalize(x)
    assert got.dtype == torch.float32 and got.device == x.device and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(CIFAR_MEAN, np.array([125.3, 123.0, 113.9]) / 255)
    np.testing.assert_allclose(CIFAR_STD, np.array([63.0, 62.1, 66.7]) / 255)


def test_normalize_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(2, 3, 4, 4))


@pytest.mark.slow
def test_normalize_real_cifar10_is_standardised(cifar10_npz):
    x = torch.from_numpy(np.load(cifar10_npz)["x_train"]).permute(0, 3, 1, 2)
    z = normalize(x).double()
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=0.01)
    np.testing.assert_allclose(std.numpy(), 1.0, atol=0.01)


# --- crop + flip -----------------------------------------------------------------------------

@pytest.mark.parametrize("padding", [4, 2])
def test_crop_flip_apply_matches_numpy_reflect_pad(padding):
    """Every offset and flip, each on its own random image, in one batch (checks the gather)."""
    k = 2 * padding + 1
    combos = [(dy, dx, f) for dy in range(k) for dx in range(k) for f in (False, True)]
    x = rand_images(len(combos), 32, 30, seed=padding)
    offsets = torch.tensor([(dy, dx) for dy, dx, _ in combos])
    flips = torch.tensor([f for *_, f in combos])
    got = crop_flip_apply(x, offsets, flips, padding).numpy()
    for i, (dy, dx, f) in enumerate(combos):
        np.testing.assert_array_equal(got[i], np_crop_flip(x[i].numpy(), dy, dx, f, padding))


def coordinate_images(n: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, so a crop reveals its offsets."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    img = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).to(torch.uint8)
    return img.expand(n, 3, h, w).contiguous()


def infer_crop(out: np.ndarray, padding: int = 4, w: int = 32):
    """Recover (dy, dx, flip) of each output from its unreflected interior."""
    dy = out[:, 0, padding, padding].astype(int)  # output row `padding` came from source row dy
    flip = out[:, 1, padding, 10] > out[:, 1, padding, 11]
    dx = np.where(flip, out[:, 1, padding, w - 1 - padding], out[:, 1, padding, padding]).astype(int)
    return dy, dx, flip


def test_crop_flip_offsets_uniform_flips_half_and_exact():
    n = 16200
    x = coordinate_images(n)
    out = crop_flip(x, gen(1)).numpy()
    dy, dx, flip = infer_crop(out)
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    joint = dy * 18 + dx * 2 + flip  # 162 equally likely cells if offsets and flip are uniform, independent
    assert chi2_uniform(joint, 162) < chi2_critical(161)
    assert abs(flip.mean() - 0.5) < 4 * 0.5 / math.sqrt(n)
    for i in range(0, n, 97):  # every output is exactly the numpy crop for its offsets
        np.testing.assert_array_equal(out[i], np_crop_flip(x[i].numpy(), dy[i], dx[i], flip[i], 4))


def test_crop_flip_images_get_independent_crops():
    out = crop_flip(coordinate_images(64), gen(2)).numpy()
    dy, dx, flip = infer_crop(out)
    distinct = len(set(zip(dy, dx, flip)))
    assert distinct > 40  # 64 draws from 162 cells: ~53 distinct expected; all equal if shared


def test_crop_flip_input_untouched_and_checks():
    x = rand_images(4)
    before = x.clone()
    crop_flip(x, gen(0))
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="uint8"):
        crop_flip(x.float(), gen(0))
    with pytest.raises(ValueError, match="padding"):
        crop_flip(x, gen(0), padding=32)
    with pytest.raises(ValueError, match="generator"):
        crop_flip(x, None)


# --- Cutout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [16, 5, 1])
def test_cutout_matches_numpy_mask(length):
    n, h, w = 400, 32, 24
    x = rand_images(n, h, w, seed=length, low=1)  # no zeros except the hole
    before = x.clone()
    g = gen(7)
    state = g.get_state()
    out = cutout(x, length, g).numpy()
    assert torch.equal(x, before)  # input untouched
    centres = cutout_centres(n, h, w, torch.Generator().set_state(state)).numpy()
    for i, (cy, cx) in enumerate(centres):
        mask = np_cutout_mask(cy, cx, length, h, w)
        np.testing.assert_array_equal(out[i], np.where(mask, 0, x[i].numpy()))


def test_cutout_interior_holes_are_exactly_length_square():
    n, length = 2000, 16
    out = cutout(torch.full((n, 3, 32, 32), 255, dtype=torch.uint8), length, gen(3)).numpy()
    zero = out == 0
    assert (zero.all(axis=1) == zero.any(axis=1)).all()  # same hole in every channel
    hole = zero[:, 0]
    rows, cols = hole.any(axis=2), hole.any(axis=1)
    area, height, width = hole.sum((1, 2)), rows.sum(1), cols.sum(1)
    assert (area == height * width).all()  # each hole is a filled rectangle
    assert (height <= length).all() and (width <= length).all()
    assert (height >= length // 2).all() and (width >= length // 2).all()  # clipped at most to half
    interior = (height == length) & (width == length)
    clipped = ~interior
    # P(centre row in [8, 24]) = 17/32 per axis -> ~28% of holes lie fully inside
    assert abs(interior.mean() - (17 / 32) ** 2) < 0.04
    assert clipped.any()


def test_cutout_centre_uniform_over_every_pixel():
    """length 1: the hole is the centre pixel itself; a non-square image catches h/w swaps."""
    h, w, per_cell = 6, 8, 200
    n = h * w * per_cell
    out = cutout(torch.full((n, 3, h, w), 200, dtype=torch.uint8), 1, gen(4)).numpy()
    hole = out[:, 0] == 0
    assert (hole.sum((1, 2)) == 1).all()
    cell = hole.reshape(n, -1).argmax(1)
    assert chi2_uniform(cell, h * w) < chi2_critical(h * w - 1)


def test_cutout_coverage_matches_exact_enumeration():
    """P(pixel covered) from all 1024 equally likely centres vs Monte Carlo, per pixel."""
    h = w = 32
    length, n = 16, 6000
    exact = np.mean([np_cutout_mask(cy, cx, length, h, w) for cy in range(h) for cx in range(w)], 0)
    out = cutout(torch.full((n, 3, h, w), 255, dtype=torch.uint8), length, gen(5))
    freq = (out[:, 0] == 0).double().mean(0).numpy()
    sigma = np.sqrt(exact * (1 - exact) / n)
    assert (np.abs(freq - exact) < 5 * sigma + 1e-9).all()
    assert exact[0, 0] < 0.1 < 0.2 < exact[16, 16]  # the corners are covered far less often


def test_cutout_holes_differ_between_images():
    out = cutout(torch.full((64, 3, 32, 32), 255, dtype=torch.uint8), 16, gen(6))
    holes = {tuple(m.flatten().tolist()) for m in (out[:, 0] == 0)}
    assert len(holes) > 55  # 64 draws over 1024 centres


def test_cutout_rejects_bad_length():
    with pytest.raises(ValueError, match="length"):
        cutout(rand_images(2), 0, gen(0))


# --- BatchAugment / seeding ------------------------------------------------------------------

def test_batch_augment_same_seed_same_batch_different_seed_different():
    x = rand_images(128, seed=9)
    aug = BatchAugment(16)
    a, b, c = aug(x, gen(11)), aug(x, gen(11)), aug(x, gen(12))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a == 0).all(dim=1).flatten(1).sum(1).min() >= 64  # every image got a hole (>= 8x8)


def test_batch_augment_without_cutout_is_crop_flip():
    x = rand_images(16, low=1)
    assert torch.equal(BatchAugment(0)(x, gen(3)), crop_flip(x, gen(3)))
    assert (BatchAugment(0)(x, gen(3)) > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_augment_on_cuda_with_cuda_generator():
    x = rand_images(64).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = BatchAugment(16)(x, g)
    assert out.device == x.device and out.dtype == torch.uint8
    assert torch.equal(out, BatchAugment(16)(x, torch.Generator(device="cuda").manual_seed(0)))
    with pytest.raises(ValueError, match="generator is on cpu"):
        crop_flip(x, gen(0))


# --- build_augment ---------------------------------------------------------------------------

def test_build_augment_choices():
    assert build_augment("baseline").cutout_length == 0
    assert build_augment("cutout").cutout_length == 16
    assert build_augment("cutout", 8).cutout_length == 8
    factory = build_augment("autoaugment", 12)
    ds = factory(rand_images(3), torch.arange(3), seed=0)
    assert isinstance(ds, AutoAugmentDataset) and ds.cutout_length == 12
    with pytest.raises(ValueError) as err:
        build_augment("mixup")
    assert all(name in str(err.value) for name in AUGMENTATIONS)
    with pytest.raises(ValueError, match="cutout_length"):
        build_augment("cutout", 0)


# --- AutoAugment ---------------------------------------------------------------------------

def make_aa(n: int = 40, seed: int = 0, cutout_length: int = 16) -> AutoAugmentDataset:
    return AutoAugmentDataset(rand_images(n, seed=100 + n), torch.arange(n) % 10, seed, cutout_length)


def test_autoaugment_item_type_shape_and_label():
    ds = make_aa()
    img, label = ds[(0, 7)]
    assert len(ds) == 40
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert label == 7 and isinstance(label, int)


def test_autoaugment_deterministic_per_key_and_keeps_global_rng():
    ds = make_aa()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = ds[(3, 5)][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    torch.manual_seed(999)  # a different global state must not matter
    assert torch.equal(make_aa()[(3, 5)][0], a)
    others = [ds[(3, 6)][0], ds[(4, 5)][0], make_aa(seed=1)[(3, 5)][0]]
    assert all(not torch.equal(a, o) for o in others)


def test_autoaugment_draws_differ_across_epochs():
    ds = make_aa(n=4)
    outs = {tuple(ds[(e, 0)][0].flatten().tolist()) for e in range(30)}
    assert len(outs) == 30


def test_autoaugment_applies_torchvision_cifar10_policy(monkeypatch):
    """Spy on torchvision's op dispatcher: op frequencies follow the CIFAR-10 policy, fill 128."""
    calls = []
    real = tv_aa._apply_op

    def spy(img, op_name, magnitude, interpolation, fill):
        calls.append((op_name, magnitude, fill))
        return real(img, op_name, magnitude, interpolation, fill)

    monkeypatch.setattr(tv_aa, "_apply_op", spy)
    n = 3000
    ds = make_aa(n=64, cutout_length=0)
    for i in range(n):
        ds[(i // 64, i % 64)]
    policy = tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy.CIFAR10).policies
    space = tv_aa.AutoAugment()._augmentation_space(10, (32, 32))
    expected, allowed = {}, set()
    for sub in policy:
        for op, p, mag in sub:
            expected[op] = expected.get(op, 0.0) + n * p / len(policy)
            m = float(space[op][0][mag]) if mag is not None else 0.0
            allowed |= {(op, round(m, 4)), (op, round(-m, 4))}
    counts = {op: 0 for op in expected}
    for op, mag, fill in calls:
        assert fill == [128.0, 128.0, 128.0]
        assert (op, round(mag, 4)) in allowed, (op, mag)
        counts[op] += 1
    assert set(counts) >= {"TranslateX", "TranslateY", "Sharpness", "Equalize"}
    for op, e in expected.items():
        if e == 0:
            assert counts[op] == 0
        else:
            assert abs(counts[op] - e) < 5 * math.sqrt(e) + 2, (op, counts[op], e)


def test_autoaugment_order_crop_flip_then_policy_then_cutout():
    """The policy sees a reflect-padded crop/flip of the image; Cutout then zeroes one box."""
    ds = make_aa(n=8, cutout_length=16)
    seen = []
    real = ds.autoaugment

    def spy(img):
        out = real(img)
        seen.append((img.clone(), out.clone()))
        return out

    ds.autoaugment = spy
    for e in range(6):
        for i in range(8):
            final = ds[(e, i)][0].numpy()
            before, after = (t[0].numpy() for t in seen[-1])
            src = ds.images[i].numpy()
            crops = [np_crop_flip(src, dy, dx, f, 4) for dy in range(9) for dx in range(9) for f in (0, 1)]
            assert any(np.array_equal(before, c) for c in crops)
            changed = (final != after).any(0)
            assert (final[:, changed] == 0).all()
            rows, cols = np.nonzero(changed)
            if len(rows):
                assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
            hole = (final == 0).all(0)  # the Cutout box: at least an 8x8 corner of zeros
            assert hole.sum() >= 64


def test_autoaugment_same_items_with_worker_processes():
    ds = make_aa(n=24, seed=5)
    keys = [(e, i) for e in range(2) for i in torch.randperm(24, generator=gen(e)).tolist()]

    def load(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=keys, num_workers=workers)
        return [(x.clone(), y.clone()) for x, y in loader]

    serial, parallel = load(0), load(2)
    assert len(serial) == len(parallel) == 6
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_autoaugment_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        AutoAugmentDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2), 0)
    with pytest.raises(ValueError, match="length"):
        AutoAugmentDataset(rand_images(2), torch.zeros(3), 0)
    with pytest.raises(TypeError, match="epoch, index"):
        make_aa()[5]
    with pytest.raises(IndexError, match="out of range"):
        make_aa()[(0, 40)]
