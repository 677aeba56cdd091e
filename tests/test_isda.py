"""ISDA loss against independent computations: numpy statistics, plain transcriptions of Eq. 4 and
Eq. 9-11, plain cross-entropy, a Monte-Carlo estimate of the expected augmented loss, gradcheck."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isda_exp.losses import COVARIANCES, ISDALoss, isda_ratio

A, C = 7, 6
BLOCKS = [0, 800, None]  # one class per block (views) / two float64 classes / all at once


# ----------------------------------------------------------------- independent references

def uneven_batches(steps: int = 30, seed: int = 0, dim: int = A):
    """Labels with a class seen once (3), one never seen (5), absent classes, one-class batches."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(5.0, 2.0, size=(C, dim))
    scales = rng.uniform(0.2, 3.0, size=(C, 1))
    labels = [np.array([0, 0, 1, 2, 2, 2, 1]), np.array([3]), np.full(9, 1), np.array([4, 0, 2, 4])]
    labels += [rng.choice([0, 1, 2, 4], size=rng.integers(1, 20), p=[.5, .2, .2, .1])
               for _ in range(steps)]
    return [(offsets[y] + scales[y] * rng.normal(size=(len(y), dim)), y) for y in labels]


def numpy_stats(xs: np.ndarray, ys: np.ndarray, c: int):
    """Count, mean and biased covariance of all features of class c seen so far."""
    seen = xs[ys == c]
    if len(seen) == 0:
        return 0, np.zeros(xs.shape[1]), np.zeros((xs.shape[1], xs.shape[1]))
    return len(seen), seen.mean(0), np.cov(seen.T, bias=True).reshape(xs.shape[1], xs.shape[1])


def eq9_11(n, mu, sigma, batch):
    """Eq. 9-11 written plainly: merge one class's batch into (n, mu, Sigma)."""
    m = len(batch)
    mu_b = batch.mean(0)
    sigma_b = (batch - mu_b).T @ (batch - mu_b) / m
    mu_new = (n * mu + m * mu_b) / (n + m)
    sigma_new = (n * sigma + m * sigma_b) / (n + m) \
        + n * m * np.outer(mu - mu_b, mu - mu_b) / (n + m) ** 2
    return n + m, mu_new, sigma_new


def eq4(feats, W, b, y, sigma_of, lam):
    """Eq. 4 by a per-sample, per-class loop (torch, so that autograd gives its gradients)."""
    total = 0.0
    for i in range(len(y)):
        sigma = sigma_of(int(y[i]))
        z = []
        for j in range(len(W)):
            d = W[j] - W[y[i]]
            z.append(W[j] @ feats[i] + b[j] + lam / 2 * (d @ sigma @ d))
        z = torch.stack(z)
        total = total + torch.logsumexp(z, 0) - z[y[i]]
    return total / len(y)


def sigma_fn(mode: str, xs: np.ndarray, ys: np.ndarray):
    """The covariance each variant plugs into Eq. 4, from numpy statistics of features seen."""
    def sigma_of(c):
        if mode == "identity":
            return torch.eye(xs.shape[1], dtype=torch.float64)
        _, _, cov = numpy_stats(xs, np.zeros_like(ys) if mode == "shared" else ys,
                                0 if mode == "shared" else c)
        return torch.from_numpy(np.diag(np.diag(cov)) if mode == "diagonal" else cov)
    return sigma_of


def module_stats(crit: ISDALoss, c: int):
    cov = crit.variances[c] if crit.covariance == "diagonal" else crit.covariances[c]
    return int(crit.counts[c]), crit.means[c].double().numpy(), cov.double().numpy()


def make(mode="full", block_bytes=None, seed=0, dim=A, classes=C):
    torch.manual_seed(seed)
    crit = ISDALoss(dim, classes, mode, block_bytes=block_bytes).double()
    fc = torch.nn.Linear(dim, classes).double()
    with torch.no_grad():
        fc.weight.mul_(2.0)
    return crit, fc


def tensors(x, y):
    return torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).long()


def step(crit, fc, x, y, lam):
    feats, targets = tensors(x, y)
    return crit(feats, fc, targets, lam)


# ------------------------------------------------------------------------------ lambda

def test_isda_ratio_is_linear_in_the_0_indexed_epoch():
    assert isda_ratio(0.5, 0, 160) == 0.0  # first epoch: plain cross-entropy
    assert isda_ratio(0.5, 80, 160) == pytest.approx(0.25)
    assert isda_ratio(0.5, 159, 160) == pytest.approx(0.5 * 159 / 160)  # never quite lambda_0
    assert [isda_ratio(0.5, e, 4, constant=True) for e in range(4)] == [0.5] * 4


@pytest.mark.parametrize("args, word", [((0.5, 160, 160), "epoch"), ((0.5, -1, 160), "epoch"),
                                        ((0.5, 0, 0), "epochs"), ((-0.1, 0, 10), "lambda_0")])
def test_isda_ratio_rejects_bad_input(args, word):
    with pytest.raises(ValueError, match=word):
        isda_ratio(*args)


# ------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("mode", ["full", "diagonal", "shared"])
def test_statistics_equal_numpy_of_all_features_seen(mode, block_bytes):
    crit, fc = make(mode, block_bytes)
    xs, ys = np.zeros((0, A)), np.zeros(0, dtype=int)
    for x, y in uneven_batches():
        step(crit, fc, x, y, 0.5)
        xs, ys = np.concatenate([xs, x]), np.concatenate([ys, y])
    groups = ys * 0 if mode == "shared" else ys
    for c in range(1 if mode == "shared" else C):
        n, mu, cov = numpy_stats(xs, groups, c)
        if mode == "diagonal":
            cov = np.diag(cov)
        got_n, got_mu, got_cov = module_stats(crit, c)
        assert got_n == n
        np.testing.assert_allclose(got_mu, mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_cov, cov, rtol=1e-12, atol=1e-12)
    if mode != "shared":
        assert module_stats(crit, 5)[0] == 0 and not crit.means[5].any()  # never seen: zero


@pytest.mark.parametrize("mode, block_bytes", [("full", b) for b in BLOCKS] + [("diagonal", None)])
def test_update_matches_eq9_11_step_by_step_and_leaves_absent_classes_untouched(mode, block_bytes):
    crit, fc = make(mode, block_bytes)
    state = {c: (0, np.zeros(A), np.zeros((A, A))) for c in range(C)}
    for x, y in uneven_batches():
        before = {k: v.clone() for k, v in crit.state_dict().items()}
        step(crit, fc, x, y, 0.5)
        for c in range(C):
            if c in y:
                state[c] = eq9_11(*state[c], x[y == c])
            else:  # bit for bit unchanged
                assert all(torch.equal(v[c], before[k][c]) for k, v in crit.state_dict().items())
            n, mu, sigma = state[c]
            got_n, got_mu, got_sigma = module_stats(crit, c)
            sigma = np.diag(sigma) if mode == "diagonal" else sigma
            assert got_n == n
            np.testing.assert_allclose(got_mu, mu, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got_sigma, sigma, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["full", "diagonal", "shared"])
def test_float32_statistics_stay_accurate_over_a_long_run(mode):
    crit = ISDALoss(A, C, mode)
    fc = torch.nn.Linear(A, C)
    batches = uneven_batches(steps=150, seed=3)
    for x, y in batches:
        crit(torch.from_numpy(x).float(), fc, torch.from_numpy(y).long(), 0.5)
    xs = np.concatenate([x.astype(np.float32).astype(np.float64) for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    ys = ys * 0 if mode == "shared" else ys
    for c in range(1 if mode == "shared" else 5):
        _, mu, cov = numpy_stats(xs, ys, c)
        cov = np.diag(cov) if mode == "diagonal" else cov
        _, got_mu, got_cov = module_stats(crit, c)
        np.testing.assert_allclose(got_mu, mu, rtol=0, atol=2e-6 * np.abs(mu).max())
        # (raw moments, mean(a a^T) - mu mu^T, miss this by up to 1e-4 in float32)
        np.testing.assert_allclose(got_cov, cov, rtol=0, atol=2e-6 * np.abs(cov).max())


def test_identity_keeps_counts_only_and_eval_mode_freezes_statistics():
    crit, fc = make("identity")
    x, y = uneven_batches()[0]
    step(crit, fc, x, y, 0.5)
    assert set(crit.state_dict()) == {"counts"}
    assert crit.counts.tolist() == np.bincount(y, minlength=C).tolist()
    full, fc = make("full")
    step(full, fc, x, y, 0.5)
    saved = {k: v.clone() for k, v in full.state_dict().items()}
    full.eval()
    step(full, fc, x, y, 0.5)
    assert all(torch.equal(saved[k], v) for k, v in full.state_dict().items())


# ------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("mode, block_bytes", [(m, None) for m in COVARIANCES]
                         + [("full", 0), ("full", 800)])
def test_loss_and_gradients_equal_eq4_loop_with_updated_statistics(mode, block_bytes):
    crit, fc = make(mode, block_bytes)
    xs, ys = np.zeros((0, A)), np.zeros(0, dtype=int)
    for t, (x, y) in enumerate(uneven_batches(steps=6)):
        xs, ys = np.concatenate([xs, x]), np.concatenate([ys, y])  # the update comes first
        lam = 0.1 * t
        feats, targets = tensors(x, y)
        fc.zero_grad()
        loss, logits = crit(feats, fc, targets, lam)
        loss.backward()
        ref_feats, W, b = (t.detach().clone().requires_grad_() for t in
                           (feats, fc.weight, fc.bias))
        ref = eq4(ref_feats, W, b, targets, sigma_fn(mode, xs, ys), lam)
        ref.backward()
        assert torch.equal(logits, F.linear(feats, fc.weight, fc.bias))
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
        for got, want in ((feats.grad, ref_feats.grad), (fc.weight.grad, W.grad),
                          (fc.bias.grad, b.grad)):
            torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("mode", COVARIANCES)
def test_lambda_zero_is_plain_cross_entropy(mode):
    crit, fc = make(mode)
    for x, y in uneven_batches(steps=2):
        feats, targets = tensors(x, y)
        loss, logits = crit(feats, fc, targets, 0.0)
        assert torch.equal(loss, F.cross_entropy(fc(feats), targets))
    assert int(crit.counts.sum()) > 0  # the statistics still accumulate


@pytest.mark.parametrize("mode, block_bytes", [(m, None) for m in COVARIANCES] + [("full", 0)])
def test_gradcheck(mode, block_bytes):
    crit, fc = make(mode, block_bytes, dim=3, classes=4)
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 1, 3, 0, 3])
    crit.update_statistics(torch.from_numpy(rng.normal(size=(6, 3)) + 2), torch.from_numpy(y))
    crit.eval()  # gradcheck calls the loss many times: keep the statistics fixed

    class Linear(torch.nn.Module):  # a classifier whose tensors are gradcheck's inputs
        def __init__(self, weight, bias):
            super().__init__()
            self.weight, self.bias = weight, bias

        def forward(self, x):
            return F.linear(x, self.weight, self.bias)

    def loss(feats, weight, bias):
        return crit(feats, Linear(weight, bias), torch.from_numpy(y), 0.7)[0]

    inputs = tuple(t.detach().clone().requires_grad_() for t in
                   (torch.from_numpy(rng.normal(size=(6, 3))), fc.weight, fc.bias))
    assert torch.autograd.gradcheck(loss, inputs)


def test_monte_carlo_expected_loss_lies_below_the_bound_with_the_predicted_jensen_gap():
    """Sample a~ ~ N(a_i, lambda Sigma_{y_i}): plain CE <= E[CE(a~)] <= Eq. 4, and the gap between
    the bound and the expectation tends to the delta method's (lambda/2) p^T V p as lambda -> 0,
    V_jk = (w_j - w_y)^T Sigma_y (w_k - w_y), p = softmax of the plain logits."""
    dim, classes, N, M = 4, 3, 6, 20000
    crit, fc = make("full", dim=dim, classes=classes)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        fc.weight.mul_(1.5)
    crit.update_statistics(torch.randn(60, dim, generator=gen, dtype=torch.float64) * 0.8,
                           torch.arange(60) % classes)
    crit.eval()
    x, y = torch.randn(N, dim, generator=gen, dtype=torch.float64), torch.arange(N) % classes
    W, b = fc.weight.detach(), fc.bias.detach()
    plain = F.cross_entropy(fc(x), y).item()
    ratios = []
    for lam in (0.01, 0.1, 1.0):
        bound = crit(x, fc, y, lam)[0].item()
        samples, predicted = [], []
        for i in range(N):
            sigma = crit.covariances[y[i]]
            val, vec = torch.linalg.eigh(lam * sigma)
            eps = torch.randn(M, dim, generator=gen, dtype=torch.float64) @ (vec * val.sqrt()).T
            ce = [F.cross_entropy((x[i] + s) @ W.T + b, y[i].expand(M), reduction="none")
                  for s in (eps, -eps)]  # antithetic pairs
            samples.append((ce[0] + ce[1]) / 2)
            p, D = torch.softmax(x[i] @ W.T + b, 0), W - W[y[i]]
            predicted.append(lam / 2 * p @ D @ sigma @ D.T @ p)
        per_draw = torch.stack(samples).mean(0)
        expected, se = per_draw.mean().item(), per_draw.std().item() / M ** 0.5
        assert plain < expected < bound - 10 * se
        ratios.append((bound - expected) / torch.stack(predicted).mean().item())
    assert abs(ratios[0] - 1) < 0.02  # the gap is (lambda/2) p^T V p to first order
    assert 1 < ratios[1] < ratios[2]  # and grows faster than that for larger lambda


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_statistics_and_quadratic_term_in_float32(dtype):
    torch.manual_seed(0)
    crit, fc, backbone = ISDALoss(A, C), torch.nn.Linear(A, C), torch.nn.Linear(A, A)
    with torch.no_grad():
        fc.weight.mul_(4.0)
    seen_x, seen_y = [], []
    for x, y in uneven_batches(steps=3):
        with torch.autocast("cpu", dtype=dtype):
            feats = backbone(torch.from_numpy(x).float())
            loss, logits = crit(feats, fc, torch.from_numpy(y).long(), 5.0)
        assert feats.dtype == logits.dtype == dtype and loss.dtype == torch.float32
        seen_x.append(feats.detach().double().numpy())
        seen_y.append(y)
    assert crit.covariances.dtype == crit.means.dtype == torch.float32
    xs, ys = np.concatenate(seen_x), np.concatenate(seen_y)
    _, mu, cov = numpy_stats(xs, ys, 0)
    np.testing.assert_allclose(crit.covariances[0].numpy(), cov, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(crit.means[0].numpy(), mu, rtol=1e-5, atol=1e-5)
    # The last batch's loss: float32 quadratic term on the low-precision logits.
    W = fc.weight.detach().double()
    targets = torch.from_numpy(y).long()
    z = [logits[i].double() + 2.5 * torch.stack(
        [(W[j] - W[t]) @ crit.covariances[t].double() @ (W[j] - W[t]) for j in range(C)])
         for i, t in enumerate(targets)]
    ref = F.cross_entropy(torch.stack(z), targets)
    assert loss.item() == pytest.approx(ref.item(), rel=2e-6)


# --------------------------------------------------------------------- module plumbing

def test_checkpoint_resume_continues_bit_for_bit():
    batches = uneven_batches(steps=6)
    straight, fc = make("full")
    losses = [step(straight, fc, x, y, 0.3)[0] for x, y in batches]
    first, fc = make("full")
    for x, y in batches[:5]:
        step(first, fc, x, y, 0.3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    assert set(first.state_dict()) == {"counts", "means", "covariances"}
    resumed, _ = make("full")
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    for (x, y), want in zip(batches[5:], losses[5:]):
        assert torch.equal(step(resumed, fc, x, y, 0.3)[0], want)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value)


def test_buffers_follow_dtype_and_diagonal_storage_fits_imagenet_heads():
    crit = ISDALoss(A, C)
    assert crit.covariances.dtype == torch.float32 and crit.counts.dtype == torch.int64
    crit.double()
    assert crit.covariances.dtype == torch.float64 and crit.counts.dtype == torch.int64
    big = ISDALoss(2048, 1000, "diagonal")
    assert big.variances.shape == (1000, 2048) and not hasattr(big, "covariances")
    torch.manual_seed(0)
    fc = torch.nn.Linear(2048, 1000)
    feats, y = torch.randn(64, 2048).abs(), torch.randint(0, 1000, (64,))
    big(feats, fc, y, 0.5)
    aug = big.augmented_logits(fc(feats), fc.weight, y, 0.5)
    W, var = fc.weight.detach().double(), big.variances.double()
    for i in range(3):  # sum_a (w_ja - w_ya)^2 var_ya, sample by sample
        q = ((W - W[y[i]]).square() * var[y[i]]).sum(1)
        want = fc(feats[i]).double() + 0.25 * q
        torch.testing.assert_close(aug[i].double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block_bytes", [0, None])
def test_low_precision_buffers_still_track_the_statistics(block_bytes):
    """A criterion cast with .to(bfloat16) stores bf16 statistics (merged in float32)."""
    crit = ISDALoss(A, C, block_bytes=block_bytes).to(torch.bfloat16)
    fc = torch.nn.Linear(A, C)
    batches = uneven_batches(steps=4)
    for x, y in batches:
        loss = crit(torch.from_numpy(x).float(), fc, torch.from_numpy(y).long(), 0.5)[0]
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    xs, ys = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    assert crit.covariances.dtype == torch.bfloat16
    for c in range(3):
        _, mu, cov = numpy_stats(xs, ys, c)
        _, got_mu, got_cov = module_stats(crit, c)
        np.testing.assert_allclose(got_cov, cov, rtol=0, atol=2e-2 * np.abs(cov).max())
        np.testing.assert_allclose(got_mu, mu, rtol=0, atol=2e-2 * np.abs(mu).max())


@pytest.mark.parametrize("call, word", [
    (lambda c, fc: c(torch.zeros(4, A + 1), fc, torch.zeros(4).long(), 0.5), "features"),
    (lambda c, fc: c(torch.zeros(0, A), fc, torch.zeros(0).long(), 0.5), "empty"),
    (lambda c, fc: c(torch.zeros(4, A), fc, torch.zeros(4), 0.5), "targets"),
    (lambda c, fc: c(torch.zeros(4, A), fc, torch.zeros(3).long(), 0.5), "targets"),
    (lambda c, fc: c(torch.zeros(4, A), fc, torch.tensor([0, 1, 2, C]), 0.5), "outside"),
    (lambda c, fc: c(torch.zeros(4, A), fc, torch.tensor([0, -1, 2, 1]), 0.5), "outside"),
    (lambda c, fc: c(torch.zeros(4, A), torch.nn.Linear(A, C + 1), torch.zeros(4).long(), 0.5),
     "fc"),
    (lambda c, fc: c(torch.zeros(4, A), fc, torch.zeros(4).long(), -0.5), "ratio"),
])
@pytest.mark.parametrize("mode", ["full", "shared"])
def test_bad_calls_raise_one_line_errors_and_leave_statistics_alone(call, word, mode):
    crit, fc = ISDALoss(A, C, mode), torch.nn.Linear(A, C)
    with pytest.raises(ValueError, match=word):
        call(crit, fc)
    assert not crit.counts.any()


@pytest.mark.parametrize("kwargs, word", [({"covariance": "low-rank"}, "covariance"),
                                          ({"num_classes": 0}, "num_classes"),
                                          ({"feature_dim": 2.5}, "feature_dim"),
                                          ({"block_bytes": -1}, "block_bytes")])
def test_bad_construction_raises(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ISDALoss(**{"feature_dim": A, "num_classes": C, **kwargs})
