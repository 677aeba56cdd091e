"""The steps of `python -m isda_exp.explain` in order: check, load, features, covariance,
directions, neighbours, keep rate, bound; returns explain.json's content."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..parallel.device import resolve_device
from . import covariance, directions, features, figures, neighbours, page, source
from .bound import bound_curve
from .options import PAPER_LAMBDA_0, Options, resolve_classes, resolve_images
from .rebuild import rebuild
from .run import load_run
from .sampling import Sampler, logits


def explain(run_dir: str | Path, opts: Options) -> dict:
    """Everything into RUN_DIR/explain/; the result (explain.json's content) is returned."""
    tic, timing = time.perf_counter(), {}
    opts.check()
    run = load_run(run_dir, opts.overrides)
    cfg = run.cfg
    names = source.class_names(cfg.dataset)
    classes = resolve_classes(opts.classes, names)  # before building anything
    device = resolve_device(opts.device, flag="--device ")
    built = rebuild(cfg, run.checkpoint)
    data = built.data
    images = resolve_images(opts.images, data.y_test, classes)
    timing["load_s"] = time.perf_counter() - tic
    train_feats, test_feats = _features(run, built, device, opts.batch_size)
    timing["features_s"] = _lap(tic, timing)
    covs = covariance.choose(opts.covariance, built.criterion, train_feats, data.y_train,
                             data.num_classes)
    lam0 = _reference_lambda(cfg)
    result = {"run": _run_info(run, built, lam0),
              "settings": {**vars(opts), "classes": classes, "images": images,
                           "lambda_reference": lam0, "metric": neighbours.METRIC,
                           "device": str(device)},
              "covariance": {"source": covs.source, "counts": covs.counts}}
    result["directions"] = _directions(train_feats, data.y_train, covs, classes, opts)
    if covs.source.startswith("checkpoint") and "identity" not in covs.source:
        result["covariance"]["against_final_features"] = _against_features(
            covs, train_feats, data, classes)
    timing["directions_s"] = _lap(tic, timing)
    sampler = Sampler(covs.matrices, opts.seed)
    result["neighbours"] = _neighbours(sampler, built.fc, train_feats, test_feats, data, images,
                                       [m * lam0 for m in opts.show_lambdas], opts.draws)
    timing["neighbours_s"] = _lap(tic, timing)
    chosen = _sample(len(data.y_train), opts.keep_images, opts.seed, 1)
    result["keep_rate"] = neighbours.keep_rates(
        sampler, built.fc, features.rows(train_feats, chosen), data.y_train[chosen],
        [m * lam0 for m in opts.lambdas], opts.mc_draws)
    result["keep_rate_images"] = chosen.tolist()
    timing["keep_rate_s"] = _lap(tic, timing)
    chosen = _sample(len(data.y_train), opts.bound_images, opts.seed, 2)
    result["bound"] = bound_curve(sampler, built.fc, features.rows(train_feats, chosen),
                                  data.y_train[chosen], [m * lam0 for m in opts.lambdas],
                                  opts.mc_draws)
    result["bound_images"] = chosen.tolist()
    timing["bound_s"] = _lap(tic, timing)
    result["figures"] = _figures(result, data, names, run.out)
    timing["figures_s"] = _lap(tic, timing)
    timing["total_s"] = time.perf_counter() - tic
    result["timing"] = timing
    page.write(run.out, result, names)
    return result


def _lap(tic: float, timing: dict) -> float:
    """Seconds since the last step recorded in `timing` (wall clock)."""
    return time.perf_counter() - tic - sum(timing.values())


def _features(run, built, device, batch_size: int):
    cache = run.out / features.CACHE
    data = built.data
    out = []
    for split, images in (("train", data.x_train), ("test", data.x_test)):
        key = f"{run.checkpoint_id}-{features.data_key(run.cfg.dataset, images.labels)}"
        out.append(features.cached_features(cache, split, key, built.net, images, device,
                                            batch_size, data.norm))
    return out


def _reference_lambda(cfg) -> float:
    """The run's lambda_0; 0.5 (the paper's) for a run without ISDA, whose lambda_0 means nothing."""
    lam0 = float(cfg.isda.get("lambda_0") or 0.0)
    return lam0 if cfg.isda.get("loss") is not None and lam0 > 0 else PAPER_LAMBDA_0


def _run_info(run, built, lam0: float) -> dict:
    cfg, data = run.cfg, built.data
    isda = cfg.isda.get("loss")
    return {"path": str(run.path), "checkpoint": run.checkpoint_path.name,
            "checkpoint_id": run.checkpoint_id, "epoch": int(run.checkpoint["epoch"]),
            "dataset": str(cfg.dataset.name), "model": str(cfg.model.name),
            "method": str(cfg.isda.name), "isda_covariance": None if isda is None else str(isda.covariance),
            "lambda_0": float(cfg.isda.get("lambda_0") or 0.0), "lambda_reference": lam0,
            "feature_dim": int(built.net.feature_dim), "num_classes": int(data.num_classes),
            "train_size": len(data.y_train), "test_size": len(data.y_test),
            "eval_split": data.eval_split}


def _directions(train_feats, labels, covs, classes, opts) -> list[dict]:
    out = []
    for c in classes:
        index = (labels == c).nonzero().flatten().numpy()
        entry = {"class": c, "train_images": len(index), "estimate_count": covs.counts[c]}
        if len(index) < 2:
            out.append({**entry, "directions": [], "spectrum": directions.spectrum(
                directions.eigen(covs.matrices[c])[0]), "note": "fewer than 2 training images"})
            continue
        found, spec = directions.class_directions(features.rows(train_feats, index), index,
                                                  covs.matrices[c], opts.directions, opts.strip)
        entry["spectrum"] = spec
        entry["directions"] = [{"rank": d.rank, "eigenvalue": d.eigenvalue, "fraction": d.fraction,
                                "strip": d.strip, "strip_projections": d.strip_projections}
                               for d in found]
        out.append(entry)
    return out


def _against_features(covs, train_feats, data, classes) -> list[dict]:
    """The checkpoint's running estimate (over all of training) against the final model's
    training features, per shown class: does the final model still vary along those directions?"""
    final = covariance.estimate(train_feats, data.y_train, data.num_classes)
    return [{"class": c, **covariance.agreement(covs.matrices[c], final.matrices[c])}
            for c in classes]


def _neighbours(sampler, fc, train_feats, test_feats, data, images, lambdas, draws) -> list[dict]:
    out = []
    for i in images:
        feat = features.rows(test_feats, [i])[0]
        label = int(data.y_test[i])
        idx, dist = neighbours.nearest(train_feats, feat.view(1, -1))
        augmented = [neighbours.augmented_neighbours(sampler, fc, train_feats, data.y_train, feat,
                                                   label, lam, draws)
                     for lam in lambdas]
        out.append({"test_index": i, "label": label,
                    "prediction": int(logits(fc, feat).argmax()),
                    "nearest_train": int(idx[0]), "nearest_distance": float(dist[0]),
                    "nearest_label": int(data.y_train[int(idx[0])]),
                    "feature_norm": float(feat.norm()), "augmented": augmented})
    return out


def _sample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
    """k distinct indices of n (all of them when k >= n), sorted, seeded."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, size=k, replace=False))


def _figures(result: dict, data, names, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return {"directions": figures.directions_figure(result, data.x_train, names, out / "directions.png"),
            "spectrum": figures.spectrum_figure(result, names, out / "spectrum.png"),
            "neighbours": figures.neighbours_figure(result, data, names, out / "neighbours.png"),
            "lambda": figures.lambda_figure(result, out / "lambda.png")}
