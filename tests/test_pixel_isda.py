"""Per-pixel ISDA against the authors' segmentation formulation re-derived independently: their
EstimatorCV (one bucket more than the classes, where void pixels go) and isda_aug in numpy
float64, and their whole training loss as a plain torch transcription (N x C x A tensors over
pixels) for the gradients; with void pixels, classes absent from a step and uneven feature maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isda_exp.losses import PixelISDA, SegmentationLoss

A, C, VOID = 6, 4, 255
CROP, FEAT = (11, 9), (4, 3)  # labels at crop size, features at stride ~3


def scenes(steps: int = 4, seed: int = 0):
    """(features [2, A, h, w], labels [2, H, W]) per step: void blocks, a class missing in a step."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        labels = rng.integers(0, C, size=(2, *CROP))
        labels[:, :3, :4] = VOID  # a void region large enough to survive the downsampling
        labels[1, 5:, 4:] = VOID
        if step == 1:
            labels[labels == 2] = 0  # class 2 absent
        feats = rng.normal(size=(2, A, *FEAT)) * 1.5
        out.append((feats, labels))
    return out


def nearest(labels: np.ndarray, size) -> np.ndarray:
    """Nearest downsampling as torch's mode='nearest': source index floor(i * in / out)."""
    H, W = labels.shape[-2:]
    rows = np.floor(np.arange(size[0]) * (H / size[0])).astype(int)
    cols = np.floor(np.arange(size[1]) * (W / size[1])).astype(int)
    return labels[:, rows][:, :, cols]


class AuthorsEstimator:
    """EstimatorCV of the authors' train_isda.py, diagonal, C + 1 buckets (void -> bucket C)."""

    def __init__(self):
        self.cov = np.zeros((C + 1, A))
        self.ave = np.zeros((C + 1, A))
        self.amount = np.zeros(C + 1)

    def update(self, feats: np.ndarray, labels: np.ndarray) -> None:
        labels = np.where(labels == VOID, C, labels)
        onehot = np.eye(C + 1)[labels]                                   # [N, C+1]
        by_sort = feats[:, None, :] * onehot[:, :, None]                 # [N, C+1, A]
        amount = onehot.sum(0)[:, None].repeat(A, 1)
        amount[amount == 0] = 1
        ave = by_sort.sum(0) / amount
        var = ((by_sort - ave[None] * onehot[:, :, None]) ** 2).sum(0) / amount
        m = onehot.sum(0)[:, None].repeat(A, 1)
        with np.errstate(invalid="ignore"):
            weight = m / (m + self.amount[:, None])
        weight[np.isnan(weight)] = 0
        extra = weight * (1 - weight) * (self.ave - ave) ** 2
        self.cov = self.cov * (1 - weight) + var * weight + extra
        self.ave = self.ave * (1 - weight) + ave * weight
        self.amount += onehot.sum(0)


def authors_aug(y: np.ndarray, W: np.ndarray, labels: np.ndarray, cov: np.ndarray, ratio):
    """isda_aug: y + 0.5 ratio sum_a (w_j - w_y)^2 var_y, left as it is at void pixels."""
    void = labels == VOID
    lab = np.where(void, 0, labels)
    sigma2 = ratio * (((W[None] - W[lab][:, None]) ** 2) * cov[lab][:, None, :]).sum(2)
    return y + 0.5 * sigma2 * (~void)[:, None]


def flat(x: np.ndarray) -> np.ndarray:
    """[N, A, h, w] -> [N h w, A] as the authors' permute(0, 2, 3, 1).view(-1, A)."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def test_downsampling_is_torch_nearest():
    labels = np.random.default_rng(1).integers(0, 9, size=(2, *CROP))
    from isda_exp.losses.pixel_isda import downsample_labels

    got = downsample_labels(torch.from_numpy(labels), FEAT).numpy()
    assert np.array_equal(got, nearest(labels, FEAT))


@pytest.mark.parametrize("ratio", [0.0, 0.7, 7.5])
def test_statistics_and_augmented_logits_equal_the_authors(ratio):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(A, C, 1).double()
    W, b = conv.weight.detach().reshape(C, A).numpy(), conv.bias.detach().numpy()
    ours, theirs = PixelISDA(A, C).double(), AuthorsEstimator()
    for feats, labels in scenes():
        small = nearest(labels, FEAT).reshape(-1)
        theirs.update(flat(feats), small)
        want = authors_aug(flat(feats) @ W.T + b, W, small, theirs.cov, ratio)
        aug, plain = ours(torch.from_numpy(feats), conv, torch.from_numpy(labels), ratio)
        np.testing.assert_allclose(flat(aug.detach().numpy()), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(flat(plain.detach().numpy()), flat(feats) @ W.T + b, rtol=1e-12)
        seen = theirs.amount[:C] > 0
        assert np.array_equal(ours.isda.counts.numpy(), theirs.amount[:C])  # void never counted
        np.testing.assert_allclose(ours.isda.means.numpy()[seen], theirs.ave[:C][seen], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.isda.variances.numpy()[seen], theirs.cov[:C][seen],
                                   rtol=1e-10, atol=1e-12)
    assert theirs.amount[C] > 0  # void pixels were there (the authors' spare bucket took them)


def authors_loss(feats, convs, labels, ratio, covs, weights=(1.0, 0.4)):
    """The authors' forward in torch float64, N x C x A tensors, for autograd's gradients."""
    total = 0.0
    for f, conv, cov, weight in zip(feats, convs, covs, weights):
        N, _, h, w = f.shape
        y = conv(f).permute(0, 2, 3, 1).reshape(-1, C)
        small = torch.from_numpy(nearest(labels.numpy(), (h, w)).reshape(-1))
        void = small == VOID
        lab = torch.where(void, 0, small)
        Wm = conv.weight.reshape(C, A)
        NxW_ij = Wm.expand(len(lab), C, A)
        NxW_kj = torch.gather(NxW_ij, 1, lab.view(-1, 1, 1).expand(len(lab), C, A))
        cv = torch.from_numpy(cov)[lab]
        sigma2 = ratio * (Wm - NxW_kj).pow(2).mul(cv.view(-1, 1, A).expand(-1, C, A)).sum(2)
        aug = y + 0.5 * sigma2 * (~void).view(-1, 1)
        aug = aug.view(N, h, w, C).permute(0, 3, 1, 2)
        up = F.interpolate(aug, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        total = total + weight * F.cross_entropy(up, labels, ignore_index=VOID)
    return total


def test_the_two_head_loss_and_its_gradients_equal_the_authors():
    torch.manual_seed(1)
    convs = [torch.nn.Conv2d(A, C, 1).double() for _ in range(2)]
    ours = SegmentationLoss((1.0, 0.4), [PixelISDA(A, C).double() for _ in range(2)])
    theirs = [AuthorsEstimator(), AuthorsEstimator()]
    sizes = (FEAT, (3, 2))  # the auxiliary head's map of another size
    data = scenes(3, seed=5)
    for step, (feats, labels) in enumerate(data):
        ratio = 7.5 * (step + 1) / len(data)
        aux = feats[:, :, :sizes[1][0], :sizes[1][1]] * 0.5 + 1
        maps = [torch.tensor(feats, requires_grad=True), torch.tensor(aux, requires_grad=True)]
        labels_t = torch.from_numpy(labels)
        for est, f in zip(theirs, (feats, aux)):
            est.update(flat(f), nearest(labels, f.shape[-2:]).reshape(-1))
        loss, main = ours(maps, convs, labels_t, ratio)
        got = torch.autograd.grad(loss, [*maps, *[p for c in convs for p in c.parameters()]])
        maps2 = [m.detach().clone().requires_grad_(True) for m in maps]
        want_loss = authors_loss(maps2, convs, labels_t, ratio, [e.cov for e in theirs])
        want = torch.autograd.grad(want_loss, [*maps2, *[p for c in convs for p in c.parameters()]])
        torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(main, convs[0](maps[0]))


def test_full_covariance_per_pixel_equals_numpy():
    """covariance=full: each class's biased covariance of its non-void pixels, and Eq. 4's term."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(A, C, 1).double()
    W = conv.weight.detach().reshape(C, A).numpy()
    ours = PixelISDA(A, C, covariance="full").double()
    xs, ys = [], []
    for feats, labels in scenes(3, seed=3):
        small = nearest(labels, FEAT).reshape(-1)
        xs.append(flat(feats)[small != VOID])
        ys.append(small[small != VOID])
        aug, plain = ours(torch.from_numpy(feats), conv, torch.from_numpy(labels), 2.0)
    x, y = np.concatenate(xs), np.concatenate(ys)
    for c in range(C):
        cov = np.cov(x[y == c].T, bias=True)
        np.testing.assert_allclose(ours.isda.covariances[c].numpy(), cov, rtol=1e-9, atol=1e-12)
    small = nearest(labels, FEAT).reshape(-1)
    p = flat(plain.detach().numpy())
    for i in np.flatnonzero(small != VOID)[:10]:
        d = W - W[small[i]]
        q = np.einsum("ja,ab,jb->j", d, np.cov(x[y == small[i]].T, bias=True), d)
        np.testing.assert_allclose(flat(aug.detach().numpy())[i], p[i] + q, rtol=1e-9)
    assert np.array_equal(flat(aug.detach().numpy())[small == VOID], p[small == VOID])


def test_an_all_void_batch_changes_nothing_and_trains_on_nothing():
    conv = torch.nn.Conv2d(A, C, 1)
    ours = PixelISDA(A, C)
    feats = torch.randn(1, A, *FEAT, requires_grad=True)
    labels = torch.full((1, *CROP), VOID)
    aug, plain = ours(feats, conv, labels, 1.0)
    assert torch.equal(aug, plain) and int(ours.isda.counts.sum()) == 0
    loss, _ = SegmentationLoss((1.0,), [ours])([feats], [conv], labels, 1.0)
    assert float(loss) == 0.0


def test_a_label_outside_the_classes_is_refused():
    with pytest.raises(ValueError, match="outside"):
        PixelISDA(A, C)(torch.randn(1, A, *FEAT), torch.nn.Conv2d(A, C, 1),
                        torch.full((1, *CROP), C), 1.0)
