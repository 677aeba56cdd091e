"""Measured throughput -> the expected wall time of a sweep (`plan --throughput FILE` / `--measure`).

A run's time is its epochs x (training images / training images/s + test images / test images/s),
plus its first steps (compilation, cuDNN's choices), at the figures of its own model and setting
(precision as the device resolves it, channels_last, compile), read from scripts/bench_train.py's
--json (train_img_s, test_img_s, isda_overhead, first_steps_s; its --packing rows give how K runs on
one device share it) or measured here by timing a few training steps and a test pass of each distinct
setting on generated images of the run's shape. Runs then go longest first onto K x GPUs slots.
A baseline run is an ISDA figure divided by the measured ISDA overhead (bench_train times ISDA on).
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path

from ..errors import UserError

MEASURE_STEPS = 5  # timed training steps per setting (after 2 warm-up steps)


def setting_name(cfg, device: str) -> str:
    """The run's setting as bench_train names it: 'bf16+cl+compile', precision=auto as it resolves
    on `device` ('cpu' or 'cuda'; a GPU not on this machine, where the figures were measured,
    counts as one with native bf16, as every GPU since Ampere)."""
    import torch

    from ..parallel.device import resolve_precision

    t = cfg.trainer
    name = str(t.precision)
    if name == "auto":
        elsewhere = device == "cuda" and not torch.cuda.is_available()
        name = "bf16" if elsewhere else resolve_precision(name, torch.device(device))
    return name + ("+cl" if t.channels_last else "") + ("+compile" if t.compile else "")


def setting_key(cfg, device: str) -> tuple:
    """What a run's speed depends on, besides its data size (one measurement per key)."""
    from ..training.build import run_length

    _, batch = run_length(cfg)
    return (cfg.model.name, int(cfg.dataset.num_classes), setting_name(cfg, device), batch,
            int(cfg.trainer.eval_batch_size), str(cfg.aug.name), cfg.isda.loss is not None)


# ------------------------------------------------------------------ figures from bench_train


def read_figures(path: str | Path) -> dict:
    """bench_train.py --json -> {"rows": {(model, classes, setting): row}, "packing": {(model,
    setting): {K: total images/s}}, "machine": ...}; rows that failed, and rows of a model changed
    by --set overrides (e.g. a narrower net), are left out."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--throughput {path}: not a readable bench_train.py --json file ({e})") from None
    if not isinstance(data, dict) or not ({"rows", "packing"} & set(data)):
        raise UserError(f"--throughput {path}: no 'rows' or 'packing' (write it with "
                        "scripts/bench_train.py --json FILE)")
    rows = {(r["model"], int(r.get("classes", 10)), r["setting"]): r
            for r in data.get("rows", []) if _usable(r, "train_img_s")}
    packing: dict = {}
    for r in data.get("packing", []):
        if _usable(r, "total_img_s"):
            packing.setdefault((r["model"], r["setting"]), {})[int(r["pack"])] = float(r["total_img_s"])
    return {"rows": rows, "packing": packing, "machine": data.get("machine", {})}


def _usable(row: dict, figure: str) -> bool:
    return "error" not in row and not row.get("overrides") and bool(row.get(figure))


def merge(figures: list[dict]) -> dict:
    out = {"rows": {}, "packing": {}, "machine": {}}
    for f in figures:
        out["rows"].update(f["rows"])
        for key, ks in f["packing"].items():
            out["packing"].setdefault(key, {}).update(ks)
        out["machine"] = out["machine"] or f["machine"]
    return out


def figure_for(figures: dict, key: tuple) -> tuple[dict | None, str]:
    """The bench row of this (model, classes, setting), else of the model at its nearest setting."""
    model, classes, setting = key[0], key[1], key[2]
    rows = figures["rows"]
    if (model, classes, setting) in rows:
        return rows[(model, classes, setting)], f"measured {setting}"
    same = [k for k in rows if k[0] == model and k[1] == classes] or [k for k in rows if k[0] == model]
    if not same:
        return None, ""
    best = max(same, key=lambda k: _overlap(k[2], setting))
    return rows[best], f"measured {best[2]} (C={best[1]}), not {setting}"


def _overlap(a: str, b: str) -> int:
    return len(set(a.split("+")) & set(b.split("+")))


def packing_share(figures: dict, model: str, setting: str, k: int) -> tuple[float, str]:
    """Each of K runs' share of one run's speed on a device: total(K) / K / total(1)."""
    if k <= 1:
        return 1.0, ""
    packs = figures["packing"].get((model, setting)) or next(
        (v for (m, _), v in figures["packing"].items() if m == model), None)
    if packs and k in packs and 1 in packs:
        return packs[k] / k / packs[1], f"packing K={k} measured"
    return 1.0 / k, f"packing K={k} not measured: assumed no gain"


def best_packing(figures: dict, model: str, tolerance: float = 0.05) -> int | None:
    """The smallest measured K whose total images/s is within `tolerance` of the best one."""
    packs = [v for (m, _), v in figures["packing"].items() if m == model]
    if not packs:
        return None
    totals = max(packs, key=lambda v: max(v.values()))
    top = max(totals.values())
    return min(k for k, v in totals.items() if v >= (1 - tolerance) * top)


# ------------------------------------------------------------------ measured here


def measure(cfg, steps: int = MEASURE_STEPS) -> dict:
    """Train and test images/s of this run's setting on this machine's device, on generated
    images of the run's shape (classes, batch size, eval batch size); a few steps, no files."""
    import torch

    from ..training.build import build_run, run_length

    cfg = copy.deepcopy(cfg)
    _, batch = run_length(cfg)
    eval_batch = int(cfg.trainer.eval_batch_size)
    cfg.dataset = _generated(int(cfg.dataset.num_classes), (steps + 2) * batch, eval_batch)
    cfg.trainer.num_workers = 0 if cfg.trainer.num_workers == "auto" else cfg.trainer.num_workers
    run = build_run(cfg)
    engine, device = run.engine, run.device
    batches = list(run.train.epoch(1))
    lam = run.isda_lambda(1)
    tic = time.perf_counter()
    for x, y in batches[:2]:  # warm-up: compilation, cuDNN's choices, lazy state
        engine.train_step(x, y, lam)
    first = _elapsed(tic, device)
    step_s = []  # the median step: a burst of other load on a shared machine does not count
    for x, y in batches[2:]:
        tic = time.perf_counter()
        engine.train_step(x, y, lam)
        step_s.append(_elapsed(tic, device))
    engine.evaluate(run.eval, eval_batch)  # warm-up of the test pass
    test_s = []
    for _ in range(2):
        tic = time.perf_counter()
        engine.evaluate(run.eval, eval_batch)
        test_s.append(_elapsed(tic, device))
    compiled = engine.compiled is not None
    del engine, run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"train_img_s": batch / statistics.median(step_s), "test_img_s": eval_batch / min(test_s),
            "first_steps_s": first, "compiled": compiled,
            "source": f"measured here ({device.type}, {steps} steps)"}


def _generated(classes: int, train: int, test: int):
    from omegaconf import OmegaConf

    from ..paths import config_file

    node = OmegaConf.load(config_file("dataset", "synthetic"))
    node.num_classes, node.train_size, node.test_size = classes, train, test
    return node


def _elapsed(tic: float, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


# ------------------------------------------------------------------ a run, a sweep


def run_seconds(epochs: int, train_images: int, test_images: int, fig: dict, share: float,
                isda: bool) -> float:
    """Seconds of one run at these figures: every epoch trains and tests; a baseline run is
    faster than the ISDA figure by the measured ISDA overhead."""
    train = float(fig["train_img_s"]) * share
    if not isda:
        train *= float(fig.get("isda_overhead") or 1.0)
    test = float(fig.get("test_img_s") or math.inf) * share
    first = float(fig.get("first_steps_s") or 0.0) + float(fig.get("first_eval_s") or 0.0)
    if fig.get("compiled"):  # an epoch's short last batch (50,000 = 390 x 128 + 80) compiles again
        first *= 2
    return epochs * (train_images / train + test_images / test) + first


def schedule(jobs: list[float], slots: int) -> float:
    """Wall time of independent jobs on `slots` workers, longest first onto the least loaded."""
    load = [0.0] * max(1, slots)
    for t in sorted(jobs, reverse=True):
        load[load.index(min(load))] += t
    return max(load) if jobs else 0.0


# ------------------------------------------------------------------ for scripts/repro_resnet32.sh


def fastest(figures: dict, model: str, settings: list[str], epochs: int, images: tuple[int, int],
            per_gpu: int) -> tuple[str, dict] | None:
    """Of `settings`, the one whose measured figures give the shortest run at K = per_gpu."""
    times = {}
    for setting in settings:
        fig, source = figure_for(figures, (model, 10, setting))
        if fig is not None and source == f"measured {setting}":
            share, _ = packing_share(figures, model, setting, per_gpu)
            times[setting] = run_seconds(epochs, images[0], images[1], fig, share, True)
    return (min(times, key=times.get), times) if times else None


def main(argv: list[str] | None = None) -> int:
    """`python -m isda_exp.sweeps.throughput packing|fastest FILE...`: one value on stdout (empty
    when the files do not measure it), the reasons on stderr."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("what", choices=("packing", "fastest"))
    ap.add_argument("files", nargs="*", help="scripts/bench_train.py --json files (missing ones are skipped)")
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--settings", nargs="+", default=["bf16+cl", "bf16+cl+compile"])
    ap.add_argument("--epochs", type=int, default=160)
    ap.add_argument("--per-gpu", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        figures = merge([read_figures(f) for f in args.files if Path(f).is_file()])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.what == "packing":
        k = best_packing(figures, args.model)
        print("" if k is None else k)
        print(f"packing of {args.model}: " + ("not measured" if k is None else f"K = {k} (the smallest "
              "K within 5% of the best measured total images/s)"), file=sys.stderr)
        return 0
    best = fastest(figures, args.model, args.settings, args.epochs, (50_000, 10_000), args.per_gpu)
    print("" if best is None else best[0])
    print(f"{args.model}: " + ("no setting measured" if best is None else ", ".join(
        f"{k} {v / 60:.1f} min a run" for k, v in best[1].items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
