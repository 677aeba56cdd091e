"""Published test errors of the ISDA paper (NeurIPS 2019), as plain data.

Source: the paper's Tables 1, 2, 3 and 5 (docs/recipes.md lists each number with its source;
the Shake-Shake rows of Table 1 come from the journal version, TPAMI 2021, arXiv 2007.10538). Values are test error in percent, ``(mean, std)``; ``std`` is None where the paper
gives a single number. Keys are ``(dataset, model, aug, method)`` with the registry's model names
and the report's method labels ("baseline", "isda", "isda-<variant>").
"""
from __future__ import annotations

from ..rundir.identity import RECIPE_DROPOUT, method_label

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "Synthetic"}
DATASET_SHORT = {"cifar10": "C10", "cifar100": "C100", "synthetic": "Synth"}

# Registry name -> the paper's name, in the paper's row order.
MODEL_NAMES = {
    "resnet32": "ResNet-32",
    "resnet110": "ResNet-110",
    "se_resnet110": "SE-ResNet-110",
    "wrn16_8": "Wide-ResNet-16-8",
    "wrn28_10": "Wide-ResNet-28-10",
    "resnext29_8x64d": "ResNeXt-29, 8x64d",
    "densenet_bc100_12": "DenseNet-BC-100-12",
    "densenet_bc190_40": "DenseNet-BC-190-40",
    "shake26_2x32d": "Shake-Shake 26 2x32d",
    "shake26_2x112d": "Shake-Shake 26 2x112d",
}

AUG_NAMES = {"baseline": "standard", "cutout": "Cutout", "autoaugment": "AutoAugment"}

# ISDA ablation variants of Table 5, in the paper's row order.
VARIANTS = ("identity", "diagonal", "shared", "constant")
VARIANT_NAMES = {
    "identity": "Identity matrix",
    "diagonal": "Diagonal matrix",
    "shared": "Single covariance matrix",
    "constant": "Constant lambda_0",
}
METHOD_ORDER = ("baseline", "isda") + tuple(f"isda-{v}" for v in VARIANTS)

# Table 1 (aug = baseline): model -> (C10 base, C10 ISDA, C100 base, C100 ISDA).
_TABLE1 = {
    "resnet32": ((7.39, 0.10), (7.09, 0.12), (31.20, 0.41), (30.27, 0.34)),
    "resnet110": ((6.76, 0.34), (6.33, 0.19), (28.67, 0.44), (27.57, 0.46)),
    "se_resnet110": ((6.14, 0.17), (5.96, 0.21), (27.30, 0.03), (26.63, 0.21)),
    "wrn16_8": ((4.25, 0.18), (4.04, 0.29), (20.24, 0.27), (19.91, 0.21)),
    "wrn28_10": ((3.82, 0.15), (3.58, 0.15), (18.53, 0.07), (17.98, 0.15)),
    "resnext29_8x64d": ((3.86, 0.14), (3.67, 0.12), (18.16, 0.13), (17.43, 0.25)),
    "densenet_bc100_12": ((4.90, 0.08), (4.54, 0.07), (22.61, 0.10), (22.10, 0.34)),
    "densenet_bc190_40": ((3.52, None), (3.24, None), (17.74, None), (17.42, None)),
    "shake26_2x32d": ((3.45, None), (3.20, None), (20.12, None), (19.45, None)),
    "shake26_2x112d": ((2.92, None), (2.61, None), (17.42, None), (16.73, None)),
}

# Table 2: (dataset, model) -> (Cutout, Cutout + ISDA, AA, AA + ISDA).
_TABLE2 = {
    ("cifar10", "wrn28_10"): ((2.99, 0.06), (2.83, 0.04), (2.65, 0.07), (2.56, 0.01)),
    ("cifar10", "shake26_2x32d"): ((3.16, 0.09), (2.93, 0.03), (2.89, 0.09), (2.68, 0.12)),
    ("cifar10", "shake26_2x112d"): ((2.36, None), (2.25, None), (2.01, None), (1.82, None)),
    ("cifar100", "wrn28_10"): ((18.05, 0.25), (17.02, 0.11), (16.60, 0.40), (15.62, 0.32)),
    ("cifar100", "shake26_2x32d"): ((18.92, 0.21), (18.17, 0.08), (17.50, 0.19), (17.21, 0.33)),
    ("cifar100", "shake26_2x112d"): ((17.34, 0.28), (16.24, 0.20), (15.21, 0.20), (13.87, 0.26)),
}

# Table 5 (ablation, Wide-ResNet-28-10, standard aug): variant -> (C10, C100). The "Basic" and
# "ISDA" rows are Table 1's cells and are taken from there.
_TABLE5 = {
    "identity": ((3.63, 0.12), (18.53, 0.02)),
    "diagonal": ((3.70, 0.15), (18.23, 0.02)),
    "shared": ((3.67, 0.07), (18.29, 0.13)),
    "constant": ((3.69, 0.08), (18.33, 0.16)),
}


def _build() -> dict[tuple[str, str, str, str], tuple[float, float | None]]:
    table: dict[tuple[str, str, str, str], tuple[float, float | None]] = {}
    for model, (c10b, c10i, c100b, c100i) in _TABLE1.items():
        table[("cifar10", model, "baseline", "baseline")] = c10b
        table[("cifar10", model, "baseline", "isda")] = c10i
        table[("cifar100", model, "baseline", "baseline")] = c100b
        table[("cifar100", model, "baseline", "isda")] = c100i
    for (dataset, model), (cut, cut_isda, aa, aa_isda) in _TABLE2.items():
        table[(dataset, model, "cutout", "baseline")] = cut
        table[(dataset, model, "cutout", "isda")] = cut_isda
        table[(dataset, model, "autoaugment", "baseline")] = aa
        table[(dataset, model, "autoaugment", "isda")] = aa_isda
    for variant, (c10, c100) in _TABLE5.items():
        table[("cifar10", "wrn28_10", "baseline", f"isda-{variant}")] = c10
        table[("cifar100", "wrn28_10", "baseline", f"isda-{variant}")] = c100
    return table


PAPER = _build()
TABLE1_MODELS = tuple(_TABLE1)
TABLE2_MODELS = ("wrn28_10", "shake26_2x32d", "shake26_2x112d")


def paper_number(dataset: str, model: str, aug: str, method: str) -> tuple[float, float | None] | None:
    """The published (mean, std) for a cell, or None where the paper has no such cell."""
    return PAPER.get((dataset, model, aug, method))


def model_name(model: str) -> str:
    """The paper's display name, falling back to the registry name for models outside it."""
    return MODEL_NAMES.get(model, model)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


# ------------------------------------------------------------------ Tables 3 and 5 as printed
# Each table keeps the numbers it prints (Table 5's Basic C100 is 18.58, Table 1's 18.53).

# Table 5, in the paper's row order: (row name, method label, C10, C100).
TABLE5_ROWS = (
    ("Basic", "baseline", (3.82, 0.15), (18.58, 0.10)),
    ("Identity matrix", "isda-identity", *_TABLE5["identity"]),
    ("Diagonal matrix", "isda-diagonal", *_TABLE5["diagonal"]),
    ("Single covariance matrix", "isda-shared", *_TABLE5["shared"]),
    ("Constant lambda_0", "isda-constant", *_TABLE5["constant"]),
    ("ISDA", "isda", (3.58, 0.15), (17.98, 0.15)),
)
TABLE5_MODEL = "wrn28_10"

# Table 3, in the paper's row order: (row name, method, dropout, numbers). method is the runs'
# method (a loss's name, "baseline", "isda") or None for the generator-based rows, which are not
# reproduced; dropout None = the model's own (the loss rows), False = none, True = with dropout.
# numbers: (ResNet-110 C10, C100, Wide-ResNet-28-10 C10, C100), None where the paper prints "-".
TABLE3_MODELS = ("resnet110", "wrn28_10")
TABLE3_ROWS = (
    ("Large Margin", "lsoftmax", None, ((6.46, 0.20), (28.00, 0.09), (3.69, 0.10), (18.48, 0.05))),
    ("Disturb Label", "disturblabel", None, ((6.61, 0.04), (28.46, 0.32), (3.91, 0.10), (18.56, 0.22))),
    ("Focal Loss", "focal", None, ((6.68, 0.22), (28.28, 0.32), (3.62, 0.07), (18.22, 0.08))),
    ("Center Loss", "center", None, ((6.38, 0.20), (27.85, 0.10), (3.76, 0.05), (18.50, 0.25))),
    ("L_q Loss", "lq", None, ((6.69, 0.07), (28.78, 0.35), (3.78, 0.08), (18.43, 0.37))),
    ("WGAN", None, None, ((6.63, 0.23), None, (3.81, 0.08), None)),
    ("CGAN", None, None, ((6.56, 0.14), (28.25, 0.36), (3.84, 0.07), (18.79, 0.08))),
    ("ACGAN", None, None, ((6.32, 0.12), (28.48, 0.44), (3.81, 0.11), (18.54, 0.05))),
    ("infoGAN", None, None, ((6.59, 0.12), (27.64, 0.14), (3.81, 0.05), (18.44, 0.10))),
    ("Basic", "baseline", False, ((6.76, 0.34), (28.67, 0.44), None, None)),
    ("Basic + Dropout", "baseline", True, ((6.23, 0.11), (27.11, 0.06), (3.82, 0.15), (18.53, 0.07))),
    ("ISDA", "isda", False, ((6.33, 0.19), (27.57, 0.46), None, None)),
    ("ISDA + Dropout", "isda", True, ((5.98, 0.20), (26.35, 0.30), (3.58, 0.15), (17.98, 0.15))),
)
NOT_REPRODUCED = "not reproduced (needs a trained GAN per class)"


def table3_label(method: str | None, dropout: bool | None, model: str) -> str | None:
    """The method label of a Table 3 row's runs for `model` (None for the generator-based rows).

    Dropout that is the model's recipe (WRN-28-10's 0.3) is the plain label, so WRN's "+ Dropout"
    rows are its plain baseline/isda runs and its rows without dropout are "+nodropout".
    """
    if method is None:
        return None
    recipe = RECIPE_DROPOUT.get(model, 0.0)
    if dropout is None:
        rate = recipe
    else:
        rate = (recipe or 0.5) if dropout else 0.0  # any rate > 0 other than the recipe's: "+dropout"
    return method_label(method, None, model, rate)


def table_number(table: int, dataset: str, model: str, row: str) -> tuple[float, float | None] | None:
    """The (mean, std) Table 3 or 5 prints for a row name and cell, or None ("-" or no such cell)."""
    if table not in (3, 5):
        raise ValueError(f"no printed numbers for table {table!r}; use 3 or 5")
    if dataset not in ("cifar10", "cifar100"):
        return None
    col = ("cifar10", "cifar100").index(dataset)
    if table == 5:
        found = [r[2 + col] for r in TABLE5_ROWS if r[0] == row]
        return found[0] if found and model == TABLE5_MODEL else None
    found = [r[3] for r in TABLE3_ROWS if r[0] == row]
    if not found or model not in TABLE3_MODELS:
        return None
    return found[0][2 * TABLE3_MODELS.index(model) + col]


def _add_table3(table: dict) -> None:
    """Table 3's loss and dropout cells in PAPER (the long report), beside Tables 1, 2 and 5."""
    for name, method, dropout, numbers in TABLE3_ROWS:
        for m, model in enumerate(TABLE3_MODELS):
            label = table3_label(method, dropout, model)
            for col, dataset in enumerate(("cifar10", "cifar100")):
                if label is not None and numbers[2 * m + col] is not None:
                    table.setdefault((dataset, model, "baseline", label), numbers[2 * m + col])


_add_table3(PAPER)


# ------------------------------------------------------------------ Table 7 (segmentation)
# The journal version's Table 7: Cityscapes val mIoU (%) of ResNet-101 networks trained by the
# authors, single scale / multi-scale {0.75, 1, 1.25} / multi-scale + flip (one run each).
# Keyed by (model, method): the registry names of the ResNet-101 networks and the report's labels.
TABLE7 = {
    ("pspnet_resnet101", "baseline"): (77.46, 78.10, 78.41),
    ("pspnet_resnet101", "isda"): (78.72, 79.64, 79.44),
    ("deeplabv3_resnet101", "baseline"): (78.38, 79.20, 79.47),
    ("deeplabv3_resnet101", "isda"): (79.41, 80.30, 80.36),
}
TABLE7_MODELS = {"pspnet_resnet101": "PSPNet (ResNet-101)",
                 "deeplabv3_resnet101": "DeepLab-v3 (ResNet-101)"}
TABLE7_DATASET = "cityscapes"
