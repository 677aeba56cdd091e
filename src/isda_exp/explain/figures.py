"""The PNG figures, drawn only from explain.json's numbers and indices (plus the images they
name), with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from isda_exp.runfiles import atomic_write

DPI = 72


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> str:
    """A 256-colour PNG: image grids stay a few hundred KB at most (docs commit them)."""
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    small = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    atomic_write(path, lambda fh: small.save(fh, format="PNG", optimize=True))
    return path.name


def _show(ax, image: torch.Tensor, title: str = "", color: str = "black") -> None:
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, color=color, pad=2)


def directions_figure(result: dict, x_train: torch.Tensor, names, path: Path) -> str:
    """One row per (class, direction): its training images from the lowest projection to the highest."""
    rows = [(c, d) for c in result["directions"] for d in c["directions"]]
    cols = max(len(d["strip"]) for _, d in rows)
    fig = _figure(0.75 * cols + 1.6, 0.8 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (cls, d) in enumerate(rows):
        for k, ax in enumerate(axes[r]):
            if k < len(d["strip"]):
                _show(ax, x_train[d["strip"][k]], f"{d['strip_projections'][k]:+.2f}")
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(f"{names[cls['class']]}\ndir {d['rank'] + 1} "
                              f"({100 * d['fraction']:.0f}%)", fontsize=7, rotation=0,
                              ha="right", va="center")
    fig.suptitle("Top covariance directions per class: training images by projection "
                 "(lowest to highest; numbers = projection)", fontsize=9)
    return _save(fig, path)


def spectrum_figure(result: dict, names, path: Path) -> str:
    fig = _figure(9, 3.2)
    left, right = fig.subplots(1, 2)
    for i, cls in enumerate(result["directions"]):
        spec = cls["spectrum"]
        values = np.maximum(np.asarray(spec["eigenvalues"]), 1e-12)
        rank = np.arange(1, len(values) + 1)
        left.semilogy(rank, values, lw=1.2, color=f"C{i % 10}", label=names[cls["class"]])
        right.plot(rank, spec["cumulative_fraction"], lw=1.2, color=f"C{i % 10}")
    left.set_xlabel("eigenvalue rank")
    left.set_ylabel("eigenvalue of Sigma_c")
    left.legend(fontsize=7)
    right.set_xlabel("number of directions")
    right.set_ylabel("fraction of the class variance")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Eigenvalue spectrum of the class covariances ({result['covariance']['source']})",
                 fontsize=9)
    return _save(fig, path)


def neighbours_figure(result: dict, data, names, path: Path) -> str:
    """Rows: (image, lambda); columns: the image, the nearest training image to its own feature,
    then the nearest training image to each augmented draw, titled with the draw's prediction."""
    rows = [(q, a) for q in result["neighbours"] for a in q["augmented"]]
    cols = 2 + max(len(a["prediction"]) for _, a in rows)
    fig = _figure(0.8 * cols + 1.2, 0.95 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (q, a) in enumerate(rows):
        label = q["label"]
        _show(axes[r][0], data.x_test[q["test_index"]], f"test {q['test_index']}")
        _show(axes[r][1], data.x_train[q["nearest_train"]], f"nn: {names[q['prediction']]}")
        for k, ax in enumerate(axes[r][2:]):
            if k >= len(a["prediction"]):
                ax.set_axis_off()
                continue
            pred = a["prediction"][k]
            _show(ax, data.x_train[a["nearest_train"][k]], names[pred],
                  "green" if pred == label else "red")
        axes[r][0].set_ylabel(f"{names[label]}\nlambda={a['lambda']:g}", fontsize=7, rotation=0,
                              ha="right", va="center")
    fig.suptitle("Augmented features a~ ~ N(a, lambda Sigma_y) shown as their nearest training image "
                 "(Euclidean, feature space);\ntitle = classifier's prediction on the draw "
                 "(green: keeps the label). Column 2: nearest to a itself.", fontsize=8)
    return _save(fig, path)


def lambda_figure(result: dict, path: Path) -> str:
    """Label-keep rate and the bound against the Monte Carlo expected CE, both against lambda."""
    fig = _figure(9, 3.4)
    left, right = fig.subplots(1, 2)
    keep = result["keep_rate"]
    lam = [k["lambda"] for k in keep]
    left.plot(lam, [100 * k["keep_label"] for k in keep], "o-", label="prediction = label")
    left.plot(lam, [100 * k["keep_prediction"] for k in keep], "s--",
              label="prediction = un-augmented prediction")
    left.set_ylabel("augmented draws (%)")
    left.set_title(f"{keep[0]['draws'] // max(1, result['settings']['mc_draws'])} training images, "
                   f"{result['settings']['mc_draws']} draws each", fontsize=8)
    bound = result["bound"]
    lam_b = [b["lambda"] for b in bound]
    mc = np.asarray([b["mc_expected_ce"] for b in bound])
    se = np.asarray([b["mc_standard_error"] for b in bound])
    right.errorbar(lam_b, mc, yerr=2 * se, fmt="o-", capsize=2, label="Monte Carlo E[CE] (+-2 SE)")
    right.plot(lam_b, [b["bound_eq4"] for b in bound], "s--", label="ISDA bound (Eq. 4)")
    right.set_ylabel("cross-entropy")
    right.set_title(f"{bound[0]['features']} training features, {bound[0]['draws']} draws each",
                    fontsize=8)
    for ax in (left, right):
        ax.axvline(result["settings"]["lambda_reference"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("lambda (dotted: the reference lambda_0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
