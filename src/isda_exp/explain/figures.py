"""The PNG figures, drawn only from explain.json's numbers and indices (plus the images they
name), with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..rundir.files import atomic_write

DPI = 72


def _figure(width: float, height: float, grid: bool = False):
    """A figure on the Agg canvas; `grid`: no layout engine (the image grids place their one
    axes themselves)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=None if grid else "constrained")
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


GAP, HEAD = 4, 11  # pixels between tiles and above each (its title), at a 32-pixel tile's scale
WIDTH = 76.8       # screen pixels of a tile (a 32-pixel CIFAR image at 2.4x; a folder's 64 at 1.2x)


def _mosaic(rows: list[list], labels: list[str], title: str, path: Path, label_in: float = 1.1) -> str:
    """An image grid as ONE picture on one axes (a hundred axes take a minute to lay out).

    rows: per row, tiles (uint8 image [3, T, T] of one size T, title, colour); labels: one per row.
    """
    tile = rows[0][0][0].shape[-1]
    scale = WIDTH / tile  # screen pixels per image pixel
    gap, head = GAP * tile // 32, HEAD * tile // 32
    cols = max(len(r) for r in rows)
    height, width = len(rows) * (tile + head), cols * (tile + gap)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, (image, _, _) in enumerate(row):
            y, x = r * (tile + head) + head, c * (tile + gap)
            canvas[y:y + tile, x:x + tile] = image.permute(1, 2, 0).numpy()
    title_in = 0.2 + 0.16 * (title.count("\n") + 1)
    w_in, h_in = width * scale / DPI + label_in + 0.1, height * scale / DPI + title_in
    fig = _figure(w_in, h_in, grid=True)
    ax = fig.add_axes([label_in / w_in, 0.02 / h_in, width * scale / DPI / w_in, height * scale / DPI / h_in])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for r, row in enumerate(rows):
        y = r * (tile + head) + head
        ax.text(-3 * tile / 32, y + tile / 2, labels[r], ha="right", va="center", fontsize=7)
        for c, (_, text, colour) in enumerate(row):
            ax.text(c * (tile + gap) + tile / 2, y - 1.5 * tile / 32, text, ha="center", va="bottom",
                    fontsize=6.5, color=colour)
    fig.suptitle(title, fontsize=8, y=1 - 0.05 / h_in, va="top")
    return _save(fig, path)


def directions_figure(result: dict, x_train: torch.Tensor, names, path: Path) -> str:
    """One row per (class, direction): its training images from the lowest projection to the highest."""
    rows, labels = [], []
    for cls in result["directions"]:
        for d in cls["directions"]:
            rows.append([(x_train[i], f"{p:+.2f}", "black")
                         for i, p in zip(d["strip"], d["strip_projections"])])
            labels.append(f"{names[cls['class']]}\ndir {d['rank'] + 1} ({100 * d['fraction']:.0f}%)")
    return _mosaic(rows, labels, "Top covariance directions per class: training images by "
                   "projection (lowest to highest;\nnumber = projection; % = share of the class "
                   "variance)", path)


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
    rows, labels = [], []
    for q in result["neighbours"]:
        label = q["label"]
        for a in q["augmented"]:
            row = [(data.x_test[q["test_index"]], f"test {q['test_index']}", "black"),
                   (data.x_train[q["nearest_train"]], f"a: {names[q['prediction']]}",
                    "tab:green" if q["prediction"] == label else "tab:red")]
            row += [(data.x_train[i], names[p], "tab:green" if p == label else "tab:red")
                    for i, p in zip(a["nearest_train"], a["prediction"])]
            rows.append(row)
            labels.append(f"{names[label]}\nlambda={a['lambda']:g}")
    return _mosaic(rows, labels, "Augmented features a~ ~ N(a, lambda Sigma_y) shown as their "
                   "nearest training image (Euclidean, feature space);\ntitle = the classifier's "
                   "prediction on the draw (green: the label). Column 1: the test image;\ncolumn 2: "
                   "the nearest training image to a itself, titled with the prediction on a.", path)


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
