"""`python -m isda_exp.explain`: each part against an independent computation, then end to end on a
tiny trained run whose data plant a known factor (the size of a shape) in one class."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import integrate, stats

from isda_exp.cli.train import run
from isda_exp.data import normalize
from isda_exp.errors import UserError
from isda_exp.explain import covariance, directions, neighbours
from isda_exp.explain.bound import isda_bound, mc_expected_ce
from isda_exp.explain.cli import main
from isda_exp.explain.rebuild import rebuild
from isda_exp.explain.run import checkpoint_id, load_run
from isda_exp.explain.sampling import Sampler
from isda_exp.losses import CrossEntropy, ISDALoss
from isda_exp.paths import config_dir
from isda_exp.training import preempt

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ directions


def random_covariance(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return m @ m.T / dim + 0.01 * torch.eye(dim, dtype=torch.float64)


def test_eigen_matches_numpy():
    cov = random_covariance(24, 0)
    values, vectors = directions.eigen(cov)
    ref_values, ref_vectors = np.linalg.eigh(cov.numpy())
    ref_values, ref_vectors = ref_values[::-1], ref_vectors[:, ::-1]
    np.testing.assert_allclose(values.numpy(), ref_values, rtol=1e-10, atol=1e-12)
    # the same vectors up to sign (distinct eigenvalues here), and V diag(w) V^T = Sigma
    dots = np.abs(np.sum(vectors.numpy() * ref_vectors, axis=0))
    np.testing.assert_allclose(dots, 1.0, atol=1e-8)
    np.testing.assert_allclose((vectors * values) @ vectors.T, cov.numpy(), atol=1e-10)
    assert np.all(np.diff(values.numpy()) <= 0)


def test_spectrum_counts_directions():
    spec = directions.spectrum(torch.tensor([6.0, 3.0, 0.9, 0.1, -1e-9]))
    assert spec["trace"] == pytest.approx(10.0)
    assert spec["cumulative_fraction"][:4] == pytest.approx([0.6, 0.9, 0.99, 1.0])
    assert (spec["directions_for_50pct"], spec["directions_for_90pct"],
            spec["directions_for_99pct"]) == (1, 2, 3)


def test_top_direction_orders_a_planted_factor_on_features():
    """Features of one class vary along a known direction u with a factor t, plus isotropic noise
    10x smaller: the top direction's ordering has Spearman rho > 0.95 with t."""
    rng = np.random.default_rng(0)
    n, dim = 300, 16
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    t = rng.uniform(-1, 1, size=n)
    feats = 3.0 + np.outer(t, u) + 0.1 * rng.normal(size=(n, dim))
    labels = torch.zeros(n, dtype=torch.int64)
    covs = covariance.estimate(feats.astype(np.float32), labels, num_classes=1, batch_size=64)
    found, _ = directions.class_directions(torch.from_numpy(feats), np.arange(n), covs.matrices[0],
                                           k=2, strip=n)
    rho = stats.spearmanr(found[0].projections, t[found[0].order]).statistic
    assert abs(rho) > 0.95
    assert abs(stats.spearmanr(found[1].projections, t[found[1].order]).statistic) < 0.3
    assert found[0].strip == found[0].order.tolist()  # strip >= n: every image, in order


# ------------------------------------------------------------------ covariances


def test_estimate_is_the_biased_class_covariance():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(500, 6)).astype(np.float32) * np.arange(1, 7)
    labels = torch.from_numpy(rng.integers(0, 3, size=500))
    covs = covariance.estimate(feats, labels, 3, batch_size=37)  # uneven batches
    for c in range(3):
        rows = feats[labels.numpy() == c].astype(np.float64)
        np.testing.assert_allclose(covs.matrices[c].numpy(), np.cov(rows.T, bias=True), atol=1e-9)
        assert covs.counts[c] == len(rows)


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared", "identity"])
def test_checkpoint_variants_as_full_matrices(kind):
    torch.manual_seed(0)
    crit = ISDALoss(5, 3, kind)
    crit.update_statistics(torch.randn(60, 5) * 2, torch.arange(60) % 3)
    covs = covariance.from_checkpoint(crit)
    assert covs.matrices.shape == (3, 5, 5) and covs.source == f"checkpoint ({kind})"
    for c in range(3):
        expected = {"full": lambda: crit.covariances[c], "diagonal": lambda: torch.diag(crit.variances[c]),
                    "shared": lambda: crit.covariances[0], "identity": lambda: torch.eye(5)}[kind]()
        torch.testing.assert_close(covs.matrices[c], expected.double())


def test_agreement_of_two_estimates():
    cov = random_covariance(6, 9)
    same = covariance.agreement(cov, cov * 2)
    assert same["top_cosine"] == pytest.approx(1) and same["top3_overlap"] == pytest.approx(1)
    assert same["trace_other"] == pytest.approx(2 * same["trace"])
    values, vectors = directions.eigen(cov)  # the same eigenvectors, the spectrum reversed
    other = (vectors * values.flip(0)) @ vectors.T
    moved = covariance.agreement(cov, other)
    assert moved["top_cosine"] == pytest.approx(0, abs=1e-9)
    assert moved["top3_overlap"] == pytest.approx(0, abs=1e-9)


def test_choose_uses_the_features_without_isda_and_refuses_checkpoint():
    feats = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    labels = torch.arange(40) % 2
    plain = CrossEntropy(feature_dim=4, num_classes=2)
    assert covariance.choose("auto", plain, feats, labels, 2).source.startswith("training features")
    with pytest.raises(UserError, match="needs an ISDA run"):
        covariance.choose("checkpoint", plain, feats, labels, 2)


# ------------------------------------------------------------------ draws, keep rate, bound


def linear(weight, bias) -> torch.nn.Linear:
    fc = torch.nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        fc.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return fc


def test_draws_have_the_requested_covariance():
    cov = random_covariance(3, 4)
    sampler = Sampler(cov.unsqueeze(0), seed=0)
    draws = sampler.draw(torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([0]), 0.7, 40000)[0]
    np.testing.assert_allclose(draws.mean(0).numpy(), [1.0, -2.0, 0.5], atol=0.03)
    np.testing.assert_allclose(np.cov(draws.numpy().T), 0.7 * cov.numpy(), atol=0.03)


def test_keep_rate_matches_the_normal_cdf():
    """Two classes in 1-D: the draw keeps label 0 iff d * a~ + db < 0, so the exact keep rate
    is Phi(-(d a + db) / (|d| sqrt(lambda) sigma))."""
    fc = linear([[1.0], [-1.0]], [0.0, 0.0])  # predicts 0 iff a > 0
    sigma2 = 0.5
    covs = torch.full((2, 1, 1), sigma2, dtype=torch.float64)
    feats = torch.tensor([[0.4], [0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    draws, lam = 20000, 2.0
    got = neighbours.keep_rates(Sampler(covs, 0), fc, feats, labels, [0.0, lam], draws)
    exact = np.mean([stats.norm.cdf(a / math.sqrt(lam * sigma2)) for a in (0.4, 0.9)])
    assert got[0]["keep_label"] == 1.0
    assert got[1]["keep_label"] == pytest.approx(exact, abs=4 * math.sqrt(0.25 / (2 * draws)))


def test_nearest_chunked_equals_brute_force():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(1000, 8)).astype(np.float32)
    queries = torch.from_numpy(rng.normal(size=(7, 8)))
    idx, dist = neighbours.nearest(train, queries, chunk=128)
    full = np.linalg.norm(queries.numpy()[:, None, :] - train[None].astype(np.float64), axis=2)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-9)


def exact_two_class(a: float, y: int, fc, sigma2: float, lam: float) -> tuple[float, float]:
    """Independent: E[CE] by quadrature over x = d a~ + db ~ N(m, s2), CE = softplus(x); and
    Eq. 4 in closed form, log(1 + exp(m + s2 / 2))."""
    w, b = fc.weight.detach().numpy()[:, 0], fc.bias.detach().numpy()
    d, db = w[1 - y] - w[y], b[1 - y] - b[y]
    m, s2 = d * a + db, lam * sigma2 * d * d
    f = lambda x: np.logaddexp(0, x) * stats.norm.pdf(x, m, math.sqrt(s2))  # noqa: E731
    expected = integrate.quad(f, m - 12 * math.sqrt(s2), m + 12 * math.sqrt(s2), epsabs=1e-12)[0]
    return expected, float(np.logaddexp(0, m + s2 / 2))


def test_monte_carlo_converges_to_the_exact_expectation_below_the_bound():
    fc = linear([[1.5], [-0.5]], [0.2, -0.1])
    covs = torch.tensor([[[0.8]], [[0.3]]], dtype=torch.float64)
    feats = torch.tensor([[0.3], [-0.4], [1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    for lam in (0.5, 2.0):
        exact = [exact_two_class(float(a), int(y), fc, float(covs[y, 0, 0]), lam)
                 for a, y in zip(feats[:, 0], labels)]
        expected, bound = np.mean([e for e, _ in exact]), np.mean([b for _, b in exact])
        errors = []
        for draws in (100, 10000):
            mc, se = mc_expected_ce(Sampler(covs, seed=1), fc, feats, labels, lam, draws)
            assert abs(mc - expected) < 4 * se
            errors.append(se)
        assert errors[1] < errors[0] / 5 and errors[1] < 0.01  # converges as 1/sqrt(M)
        assert isda_bound(fc, covs, feats, labels, lam) == pytest.approx(bound, rel=1e-10)
        assert expected < bound


def test_bound_holds_in_two_dims_with_three_classes():
    """C=3, A=2: the exact expectation by 2-D Gauss-Hermite quadrature (numpy only) below the
    bound from ISDALoss, and the Monte Carlo estimate within 4 standard errors of it."""
    fc = linear([[1.0, 0.5], [-0.7, 1.2], [0.2, -1.0]], [0.1, 0.0, -0.2])
    covs = torch.stack([random_covariance(2, s) for s in (5, 6, 7)])
    feat, y, lam = torch.tensor([[0.5, -0.3]], dtype=torch.float64), 1, 1.5
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)  # for exp(-x^2 / 2)
    root = np.linalg.cholesky(lam * covs[y].numpy())
    zz = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    ww = np.outer(weights, weights).ravel() / (2 * math.pi)
    pts = feat.numpy()[0] + zz @ root.T
    logit = pts @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
    ce = np.logaddexp.reduce(logit, axis=1) - logit[:, y]
    expected = float(ww @ ce)
    bound = isda_bound(fc, covs, feat, torch.tensor([y]), lam)
    assert expected < bound
    mc, se = mc_expected_ce(Sampler(covs, seed=2), fc, feat, torch.tensor([y]), lam, 40000)
    assert abs(mc - expected) < 4 * se


def test_checkpoint_id_follows_the_weights():
    net = torch.nn.Linear(3, 2)
    ckpt = {"epoch": 4, "model": net.state_dict(), "classifier": {}, "isda": None}
    first = checkpoint_id(ckpt)
    assert first.startswith("e4-") and checkpoint_id(ckpt) == first
    ckpt["model"] = {k: v + 1e-6 for k, v in ckpt["model"].items()}
    assert checkpoint_id(ckpt) != first
    assert checkpoint_id({**ckpt, "partial": {"batch": 7}}).startswith("e4b7-")


# ------------------------------------------------------------------ end to end


def planted_npz(path: Path, n_train: int = 160, n_test: int = 40, classes: int = 4) -> np.ndarray:
    """Class 0: a bright square centred on a dark background, its side drawn uniformly from
    4 to 28 pixels (the planted factor); classes 1..: a fixed colour each with an 8-pixel square
    at a random place. Mild pixel noise everywhere. Returns the training images' factor.

    (Brightness of a flat image was tried first: ReLU features fold around the normalisation
    mean, so no single direction orders it; the size of a shape changes the pooled features
    monotonically.)"""
    rng = np.random.default_rng(7)

    def make(n):
        y = np.arange(n) % classes
        factor = rng.uniform(0, 1, size=n)
        x = np.empty((n, 32, 32, 3))
        for i in range(n):
            if y[i] == 0:
                x[i] = 60
                side = int(round(4 + 24 * factor[i]))
                lo = (32 - side) // 2
                x[i, lo:lo + side, lo:lo + side] = 220
            else:
                x[i] = 40 + 50 * np.array([y[i] % 2, y[i] % 3, 1.0]) * (y[i] + 1) / classes
                r, c = rng.integers(0, 24, size=2)
                x[i, r:r + 8, c:c + 8] = 230
            x[i] += rng.normal(0, 6, size=(32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64), factor

    x_train, y_train, factor = make(n_train)
    x_test, y_test, _ = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return factor


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch ISDA ResNet-32 run on the planted data, trained in this process; its composed
    config saved where Hydra saves it."""
    root = tmp_path_factory.mktemp("explain")
    size = planted_npz(root / "planted.npz")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=synthetic", f"dataset.npz={root / 'planted.npz'}", "dataset.num_classes=4",
            "isda=on", "trainer.epochs=2", "trainer.batch_size=32", "trainer.threads=1",
            "trainer.progress=false", "trainer.tensorboard=false", "seed=0"])
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with mock.patch.object(preempt, "catch_signals", contextlib.nullcontext):
        run(cfg, run_dir)
    return run_dir, size


def snapshot(run_dir: Path) -> dict:
    """Every file of the run outside explain/, with its content hash."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "explain" not in p.parts}


FAST = ["--threads", "1", "--draws", "3", "--mc-draws", "16", "--keep-images", "64",
        "--bound-images", "32", "--lambdas", "0,1,4", "--directions", "2"]


def test_cli_end_to_end_on_the_planted_run(tiny_run, capsys):
    """The top direction of class 0 (square size planted) orders its training images by size:
    Spearman |rho| > 0.9 over all 40 images (0.996 when written). The run's own files stay unchanged;
    a second call reuses the feature cache and gives the same numbers."""
    run_dir, size = tiny_run
    before = snapshot(run_dir)
    assert main([str(run_dir), "--classes", "0,2", "--strip", "100", *FAST]) == 0
    out = run_dir / "explain"
    result = json.loads((out / "explain.json").read_text())
    assert {"directions.png", "spectrum.png", "neighbours.png", "lambda.png", "explain.md"} \
        <= {p.name for p in out.iterdir()}
    assert result["covariance"]["source"] == "checkpoint (full)"
    top = result["directions"][0]["directions"][0]
    assert len(top["strip"]) == 40
    rho = stats.spearmanr(top["strip_projections"], size[top["strip"]]).statistic
    assert abs(rho) > 0.9, rho
    lam0 = result["run"]["lambda_0"]
    assert [b["lambda"] for b in result["bound"]] == [0, lam0, 4 * lam0]
    assert result["bound"][0]["gap"] == pytest.approx(0, abs=1e-9)
    assert all(b["bound_eq4"] >= b["mc_expected_ce"] - 3 * b["mc_standard_error"] - 1e-9
               for b in result["bound"])
    assert snapshot(run_dir) == before
    cache = sorted((out / "cache").iterdir())
    stamps = [p.stat().st_mtime_ns for p in cache]
    assert main([str(run_dir), "--classes", "0,2", "--strip", "100", *FAST]) == 0
    assert [p.stat().st_mtime_ns for p in sorted((out / "cache").iterdir())] == stamps
    again = json.loads((out / "explain.json").read_text())
    assert again["bound"] == result["bound"] and again["directions"] == result["directions"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_one_line_exit_2(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    assert main([str(tmp_path), *FAST]) == 2
    assert "is not a run directory" in error_line(capsys)
    assert main([str(tmp_path / "missing"), *FAST]) == 2
    assert "is not a directory" in error_line(capsys)
    no_ckpt = tmp_path / "fresh"
    (no_ckpt / ".hydra").mkdir(parents=True)
    (no_ckpt / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    assert main([str(no_ckpt), *FAST]) == 2
    assert "has no checkpoint" in error_line(capsys)
    assert not (no_ckpt / "explain").exists()
    before = snapshot(run_dir)
    had_explain = (run_dir / "explain").exists()
    for bad in ("4", "-1", "cat"):
        assert main([str(run_dir), "--classes", bad, *FAST]) == 2
        assert f"class '{bad}' does not exist" in error_line(capsys)
    assert main([str(run_dir), "--images", "40", *FAST]) == 2
    assert "not a test-set index" in error_line(capsys)
    assert snapshot(run_dir) == before
    assert (run_dir / "explain").exists() == had_explain


# ------------------------------------------------------------------ an image-folder run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """The planted data as PNG class folders (lossless, 32 px: the evaluation transform keeps the
    pixels), a 2-epoch ISDA ResNet-32 trained on the folder in this process. Returns the run dir,
    the training images' factor and pixels in the folder's order (class by class)."""
    root = tmp_path_factory.mktemp("explain_folder")
    factor = planted_npz(root / "planted.npz")
    with np.load(root / "planted.npz") as f:
        arrays = {k: f[k] for k in f.files}
    spec = importlib.util.spec_from_file_location("cifar_folder", ROOT / "scripts" / "cifar_folder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for split, x, y in (("train", arrays["x_train"], arrays["y_train"]),
                        ("val", arrays["x_test"], arrays["y_test"])):
        script.write_split(root / "data" / split, x, y, len(y), 32, 90, 1)  # every image a PNG
    order = np.concatenate([np.flatnonzero(arrays["y_train"] == c) for c in range(4)])
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=folder", f"dataset.root={root / 'data'}", "dataset.train_crop=32",
            "dataset.eval_resize=32", "dataset.eval_crop=32", "dataset.scale=[0.8,1.0]",
            "model=resnet32", "isda=on", "trainer.epochs=2", "trainer.batch_size=32",
            "trainer.threads=1", "trainer.num_workers=0", "trainer.progress=false",
            "trainer.tensorboard=false", "seed=0"])
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with mock.patch.object(preempt, "catch_signals", contextlib.nullcontext):
        run(cfg, run_dir)
    return run_dir, factor[order], arrays["x_train"][order]


def test_explain_on_an_image_folder_run(folder_run):
    """Features streamed from the files equal the network on the same pixels held in memory
    (normalised with the folder's mean and std); the planted factor is found again; the class
    names are the folders'; the tiles are read from the files."""
    run_dir, size, pixels = folder_run
    before = snapshot(run_dir)
    assert main([str(run_dir), "--classes", "class000,class002", "--strip", "100",
                 "--batch-size", "24", *FAST]) == 0
    result = json.loads((run_dir / "explain" / "explain.json").read_text())
    assert [d["class"] for d in result["directions"]] == [0, 2]
    cached = next((run_dir / "explain" / "cache").glob("features-train-*.npy"))
    loaded = load_run(run_dir)
    built = rebuild(loaded.cfg, loaded.checkpoint)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        direct = built.net(normalize(x, built.data.norm)).numpy()
    assert built.data.norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    np.testing.assert_allclose(np.load(cached), direct, rtol=1e-4, atol=1e-4)
    top = result["directions"][0]["directions"][0]
    rho = stats.spearmanr(top["strip_projections"], size[top["strip"]]).statistic
    assert abs(rho) > 0.9, rho
    assert built.data.x_train[int(top["strip"][0])].shape == (3, 64, 64)  # a tile from its file
    assert "class000" in (run_dir / "explain" / "explain.md").read_text()
    assert snapshot(run_dir) == before
