"""Every value a user can set, checked before any work: one line naming key, value and range.

Without this a bad value fails late (lambda_0=-1 when the first epoch starts), in a traceback
(lr=abc, seed=-5), or silently does something else (epochs=0 used to mean "the recipe").
"""
from __future__ import annotations

import difflib
import inspect
import math

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

_MISSING = object()


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_at_least(low: int):
    return lambda v: _int(v) and v >= low


def _optional(check):
    return lambda v: v is None or check(v)


POSITIVE_INT = ("an integer >= 1", _int_at_least(1))
RECIPE_OR_POSITIVE = ("null (the model's recipe) or an integer >= 1", _optional(_int_at_least(1)))
SUBSET = ("null (all images) or an integer >= 1", _optional(_int_at_least(1)))

# key -> (allowed, check); keys missing from the config are skipped
RULES: dict[str, tuple[str, object]] = {
    "seed": ("an integer 0 .. 2**63-1", lambda v: _int(v) and 0 <= v < 2 ** 63),
    "trainer.epochs": RECIPE_OR_POSITIVE,
    "trainer.batch_size": RECIPE_OR_POSITIVE,
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.num_workers": ("auto or an integer >= 0", lambda v: v == "auto" or _int_at_least(0)(v)),
    "trainer.threads": ("null (torch's default) or an integer >= 1", _optional(_int_at_least(1))),
    "trainer.precision": ("auto, fp32, bf16 or fp16", lambda v: v in ("auto", "fp32", "bf16", "fp16")),
    "trainer.checkpoint_minutes": ("null (off) or a number of minutes > 0",
                                   lambda v: v is None or _num(v) and v > 0),
    "model.recipe.epochs": POSITIVE_INT,
    "model.recipe.batch_size": POSITIVE_INT,
    "model.recipe.lr": ("a number > 0, e.g. 0.1", lambda v: _num(v) and v > 0),
    "model.recipe.momentum": ("a number in [0, 1), e.g. 0.9", lambda v: _num(v) and 0 <= v < 1),
    "model.recipe.weight_decay": ("a number >= 0, e.g. 1e-4", lambda v: _num(v) and v >= 0),
    "model.recipe.gamma": ("null or a number > 0", lambda v: v is None or _num(v) and v > 0),
    "model.recipe.backbone_lr_mult": ("null or a number > 0 (the backbone's lr = lr x this; 1: "
                                      "one lr for all)", lambda v: v is None or _num(v) and v > 0),
    "isda.lambda_0": ("a number >= 0, e.g. 0.5", lambda v: _num(v) and v >= 0),
    "dataset.train_subset": SUBSET,
    "dataset.test_subset": SUBSET,
    "dataset.train_size": POSITIVE_INT,
    "dataset.test_size": POSITIVE_INT,
    "aug.cutout_length": ("an integer >= 0 (0 = no Cutout)", _int_at_least(0)),
    # ---- segmentation runs (dataset.task=segmentation)
    "model.recipe.iterations": POSITIVE_INT,
    "model.recipe.power": ("a number > 0, e.g. 0.9", lambda v: _num(v) and v > 0),
    "model.recipe.aux_weight": ("a number >= 0, e.g. 0.4", lambda v: _num(v) and v >= 0),
    "trainer.iterations": ("null (the model's recipe) or an integer >= 1", _optional(_int_at_least(1))),
    "trainer.log_every": POSITIVE_INT,
    "trainer.eval_every": ("null (at the end only) or an integer >= 1", _optional(_int_at_least(1))),
    "trainer.checkpoint_every": POSITIVE_INT,
    "trainer.isda_statistics": ("global or per_rank", lambda v: v in ("global", "per_rank")),
}


def show(value) -> str:
    return "null" if value is None else str(value)


def check_config(cfg: DictConfig) -> None:
    """Raise UserError on the first value out of its range."""
    for key, (allowed, check) in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
        except Exception as e:  # an interpolation that does not resolve, a ??? value
            raise UserError(f"{key} cannot be read ({e}); give it a value: {allowed}") from None
        if value is _MISSING:
            continue
        if not check(value):
            raise UserError(f"{key}={show(value)} is not allowed: use {allowed}")
    recipe = cfg.get("model", {}).get("recipe", {})
    if recipe.get("nesterov") and recipe.get("momentum") == 0:
        raise UserError("model.recipe.momentum=0 is not allowed with model.recipe.nesterov=true: "
                        "use a momentum in (0, 1), or model.recipe.nesterov=false")


def check_added_keys(cfg: DictConfig, overrides, groups=()) -> None:
    """The config is closed: Hydra refuses an unknown key, but one added with `+` (what Hydra's
    own hint suggests after a typo) would reach no code, and +trainer.epoch=1 would train the
    default epochs. Refused unless it is Hydra's, a config group (+method=...) or an argument of
    the constructor a `_target_` node calls (+model.net.base_width=4)."""
    added = [k for k in (_added_key(o) for o in overrides) if k]
    for key in added:
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key or key in groups:
            continue
        allowed = _constructor_arguments(cfg, key)
        if allowed is None:  # the constructor takes any keyword
            continue
        if key in allowed:
            continue
        known = [k for k in _keys(cfg) if k not in added] + allowed
        raise UserError(f"unknown config key {key}{_closest(key, known)} (a key added with + is "
                        "read by nothing: the run would ignore it; --cfg job lists the keys)")


def check_known_keys(cfg: DictConfig, keys) -> None:
    """Keys set on the command line without `+` must exist: one line with the closest key (Hydra
    would say so in several lines, suggesting the `+` that check_added_keys refuses)."""
    known = list(_keys(cfg))
    for key in keys:
        if key in known:
            continue
        allowed = _constructor_arguments(cfg, key)
        if allowed is None or key in allowed:
            raise UserError(f"{key} is not in the config but is an argument of "
                            f"{OmegaConf.select(cfg, key.rsplit('.', 1)[0])['_target_']}: add it with "
                            f"+{key}=VALUE")
        raise UserError(f"unknown config key {key}{_closest(key, known + (allowed or []))} "
                        "(--cfg job lists the keys)")


def _added_key(override: str) -> str | None:
    """The key of a `+key=value` / `++key=value` override, else None."""
    override = str(override).strip()
    if not override.startswith("+"):
        return None
    return override.lstrip("+").split("=", 1)[0].split("@", 1)[0].strip()


def _constructor_arguments(cfg: DictConfig, key: str) -> list[str] | None:
    """Parameter names of the constructor whose node holds `key` ([] if no `_target_` node
    holds it); None when that constructor takes any keyword (**kwargs)."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, parent) if parent else None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return []
    from hydra.utils import get_method

    try:
        params = inspect.signature(get_method(str(node["_target_"]))).parameters.values()
    except Exception:  # the build names a bad target in one line
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [f"{parent}.{p.name}" for p in params]


def _keys(cfg, prefix: str = ""):
    for k, v in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items():
        name = f"{prefix}{k}"
        yield name
        if isinstance(v, (DictConfig, dict)):
            yield from _keys(v, f"{name}.")


def _closest(key: str, known: list[str]) -> str:
    depth = key.count(".")
    for pool in ([k for k in known if k.count(".") == depth], known):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return f": did you mean {match[0]}?"
    return ""
