"""A run's identity, computed in one place: its method label and its science config.

The label (baseline, isda, isda-<variant>, a loss, + "+dropout") names the run directory's method
part and the report's group. The science config is everything that can change a run's numbers:
the part stored in run_config.json is what a resumed run must match; the part recorded in
summary.json (the same minus the seed, plus how the run was trained: precision, channels_last,
sync_bn, world size) is what runs averaged into one cell must share.

This module reads configs and run files only: no torch, so the report stays light.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# Dropout that is part of a model's own recipe (configs/model/*.yaml): running at this rate is
# the plain method, not "+dropout" (Table 1's WRN-28-10 cells are baseline/isda at 0.3).
RECIPE_DROPOUT = {"wrn28_10": 0.3}


def method_label(method: str, variant: str | None = None, model: str | None = None,
                 drop_rate: float | None = 0.0) -> str:
    """The one label of a run's method: the run directory's method part and the report's group.

    method: "baseline", "isda" or a loss (focal, ...); plain ISDA is "isda" whether variant is
    None or "full", else "isda-<variant>". "+dropout" is added when drop_rate > 0 differs from the
    model's recipe rate (Table 3's "Basic + Dropout", "ISDA + Dropout"), "+nodropout" when a
    recipe's dropout is switched off.
    """
    label = method if method != "isda" or variant in (None, "full") else f"isda-{variant}"
    rate, recipe = float(drop_rate or 0.0), RECIPE_DROPOUT.get(model, 0.0)
    if rate != recipe:
        label += "+dropout" if rate > 0 else "+nodropout"
    return label


PLAIN_CE = "isda_exp.losses.CrossEntropy"  # losses.PLAIN_CE, named here so the report needs no torch
# summary.json fields of a run from before summary.json held "science", as science keys
OLD_SUMMARY_FIELDS = {"epochs": "trainer.epochs", "batch_size": "trainer.batch_size",
                      "precision": "trainer.precision", "world_size": "trainer.world_size",
                      "sync_bn": "trainer.sync_bn", "lambda_0": "isda.lambda_0",
                      "train_size": "data.train_size", "test_size": "data.test_size",
                      "eval_split": "data.eval_split", "drop_rate": "model.net.drop_rate"}


# ------------------------------------------------------------------------------ the label


def dir_label(isda_name: str, model: str, drop_rate) -> str:
    """The run directory's method part, from the config values the run_name resolver sees."""
    return method_label(str(isda_name), None, str(model), drop_rate)


def register_resolvers() -> None:
    """${method_dir:isda_name,model,drop_rate} in configs/train.yaml's run_name: the run
    directory's method part. Registered by isda_exp.paths.config_dir, which every composition of
    the configs goes through."""
    if not OmegaConf.has_resolver("method_dir"):
        OmegaConf.register_new_resolver("method_dir", dir_label)


def config_label(config) -> str:
    """The label of a composed config (DictConfig) or of its stored run_config.json (dict)."""
    isda, model = config["isda"], config["model"]
    rate = (model.get("net") or {}).get("drop_rate", RECIPE_DROPOUT.get(str(model["name"]), 0.0))
    if not isda.get("loss"):  # no ISDA: the loss's name (baseline for cross-entropy)
        return method_label(str(isda.get("name") or "baseline"), None, str(model["name"]), rate)
    return method_label("isda", isda_variant(isda), str(model["name"]), rate)


def isda_variant(isda) -> str | None:
    """ISDA's variant (constant, or the covariance: full, diagonal, ...); None without ISDA."""
    if not isda.get("loss"):
        return None
    return "constant" if isda.get("constant") else str(isda["loss"].get("covariance"))


def summary_label(summary: dict) -> str:
    """The label summary.json records; recomputed only for a summary written before it did."""
    if isinstance(summary.get("label"), str):
        return summary["label"]
    model = str(summary["model"])  # a summary from before drop_rate existed ran the recipe's rate
    rate = summary.get("drop_rate", RECIPE_DROPOUT.get(model, 0.0))
    return method_label(str(summary["method"]), summary.get("variant"), model, rate)


# --------------------------------------------------------------------- the science config


def science_config(cfg: DictConfig) -> dict:
    """The parts of a config that change results: a resumed run must match them (run_config.json)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    trainer = c.get("trainer", {})
    keep = {k: trainer.get(k) for k in ("epochs", "batch_size", "precision")}
    if is_segmentation(c):  # iterations instead of epochs; where ISDA's statistics are pooled
        keep = {k: trainer.get(k) for k in ("iterations", "batch_size", "precision", "isda_statistics")}
    # the pretrained file's path is where it is, not what it is: model.pretrained_id names it
    science = {"seed": c["seed"], "model": _without(c["model"], ("pretrained",)),
               # where the data is and how it is decoded (decode: the same pixels), not what it is
               "dataset": _without(c["dataset"], ("root", "download", "npz", "decode")),
               "aug": _without(c["aug"], ("_target_",)),  # how it is built, not what it is
               "isda": c["isda"], "trainer": keep, "loss": c.get("loss")}
    return _as_stored_before(science)


def is_segmentation(config) -> bool:
    """A segmentation run's config (composed, or stored): its data set declares the task."""
    return str((config.get("dataset") or {}).get("task") or "classification") == "segmentation"


def _as_stored_before(science: dict) -> dict:
    """Keys added later (the loss group, ResNet dropout, the fine-tuning lr multiplier at 1;
    model.pretrained, never stored) are left out at their defaults, so the science config of a
    run started before them is unchanged and that run still resumes."""
    if (science.get("loss") or {}).get("_target_") == PLAIN_CE:
        science.pop("loss")
    recipe = science["model"].get("recipe") or {}
    if "backbone_lr_mult" in recipe and recipe["backbone_lr_mult"] in (None, 1.0):
        science["model"] = {**science["model"], "recipe": _without(recipe, ("backbone_lr_mult",))}
    net = science["model"].get("net", {})
    if "drop_rate" in net and not net["drop_rate"] and science["model"].get("name") not in RECIPE_DROPOUT:
        science["model"] = {**science["model"], "net": _without(net, ("drop_rate",))}
    return science


def _without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def averaging_config(cfg: DictConfig, world_size: int) -> dict:
    """What runs averaged into one cell must share: the science config less the seed, with the
    run's effective epochs and batch size and how it was trained."""
    science = _without(science_config(cfg), ("seed",))
    t, recipe = cfg.trainer, cfg.model.recipe
    if is_segmentation(cfg):
        science["trainer"] = {
            "iterations": int(recipe.iterations if t.get("iterations") is None else t.iterations),
            "batch_size": int(recipe.batch_size if t.batch_size is None else t.batch_size),
            "precision": str(t.precision), "channels_last": bool(t.get("channels_last")),
            "sync_bn": bool(t.get("sync_bn")) and world_size > 1, "world_size": int(world_size),
            "isda_statistics": str(t.get("isda_statistics") or "global")}
        return science
    science["trainer"] = {
        "epochs": int(recipe.epochs if t.epochs is None else t.epochs),
        "batch_size": int(recipe.batch_size if t.batch_size is None else t.batch_size),
        "precision": str(t.precision), "channels_last": bool(t.get("channels_last")),
        "sync_bn": bool(t.get("sync_bn")) and world_size > 1, "world_size": int(world_size)}
    return science


def summary_fields(cfg: DictConfig, world_size: int) -> dict:
    """What summary.json records of the run's identity, computed once when the run trains."""
    return {"label": config_label(cfg), "science": averaging_config(cfg, world_size)}


def comparable(summary: dict, config: dict | None = None) -> dict:
    """A finished run's science as flat keys, for comparing runs before averaging them.

    A summary from before "science" was recorded is read from its run_config.json (less the seed
    and the raw trainer overrides) and the fields every summary holds. Keys the run does not
    record are absent, so they are compared only between runs that record them.
    """
    science = summary.get("science")
    if not isinstance(science, dict):
        science = _without(config or {}, ("seed", "trainer"))
    flat = dict(flatten(science))
    for field, key in OLD_SUMMARY_FIELDS.items():
        if field in summary and key not in flat:
            flat[key] = summary[field]
    return flat


def differences(identities: list[dict]) -> list[str]:
    """The keys whose values differ between runs that record them."""
    keys = sorted({k for ident in identities for k in ident})
    return [k for k in keys if len({repr(i[k]) for i in identities if k in i}) > 1]


def flatten(d, prefix: str = ""):
    """(dotted key, value) for every leaf of nested dicts."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif prefix:
        yield prefix.rstrip("."), d
