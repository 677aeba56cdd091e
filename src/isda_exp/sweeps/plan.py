"""`python -m isda_exp.sweeps.plan experiment=table1 [overrides]`: the runs a sweep would launch and their cost.

Nothing is trained. Each run's cost is counted by the cost model (isda_exp.models.cost) from the zoo's
measured forward FLOPs: training is about 3x forward (forward + backward) per image, plus one
forward pass over the test set per epoch. With measured throughput (`--throughput FILE`: what
scripts/bench_train.py --json wrote; `--measure`: a few timed steps of each distinct setting on
this machine's device) it also prints each run's expected minutes and the sweep's expected wall
time with `--per-gpu K` runs at once on each of `--gpus` devices (isda_exp.sweeps.throughput).
"""
from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import sys

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ..errors import UserError
from ..models import cost
from ..paths import config_dir
from ..rundir.files import CHECKPOINT, METRICS, SUMMARY, run_dir_of
from ..rundir.identity import is_segmentation
from ..training.build import run_length
from . import throughput

FULL_SIZES = dict.fromkeys(("cifar10", "cifar100"), (cost.CIFAR_TRAIN, cost.CIFAR_TEST))


def sweep_overrides(experiment_overrides: list[str]) -> list[list[str]]:
    """Expand the experiment's hydra.sweeper.params and the command line's sweeps into jobs.

    Call inside an initialized Hydra (initialize_config_dir). Command-line sweeps win, as in -m.
    """
    parser = OverridesParser.create()
    plain = [t for t in experiment_overrides if not parser.parse_override(t).is_sweep_override()]
    cfg = compose("train", overrides=plain, return_hydra_config=True)
    axes = {key: str(value) for key, value in (cfg.hydra.sweeper.params or {}).items()}
    fixed = []
    for text in experiment_overrides:
        ov = parser.parse_override(text)
        if ov.is_sweep_override():
            axes[ov.get_key_element()] = text.split("=", 1)[1]
        else:  # a plain value on the command line replaces the experiment's sweep of that key
            axes.pop(ov.get_key_element(), None)
            fixed.append(text)
    lists = []
    for key, value in axes.items():
        ov = parser.parse_override(f"{key}={value}")
        values = ov.sweep_string_iterator() if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        lists.append([f"{key}={v}" for v in values])
    return [fixed + list(combo) for combo in itertools.product(*lists)]


def job_cost(cfg) -> dict:
    """Epochs, data sizes and forward/training FLOPs of one composed run."""
    from ..models import flops_per_image

    if is_segmentation(cfg):  # ---- iterations of crops, sliding-window evaluations
        return seg_job_cost(cfg)
    epochs, _ = run_length(cfg)
    n_train, n_test = FULL_SIZES.get(cfg.dataset.name, (cfg.dataset.get("train_size", 0),
                                                        cfg.dataset.get("test_size", 0)))
    if cfg.dataset.get("validation"):  # the hold-out comes out of the training set, replaces the test set
        n_train, n_test = n_train - int(cfg.dataset.validation), int(cfg.dataset.validation)
    n_train = cfg.dataset.train_subset or n_train
    n_test = cfg.dataset.test_subset or n_test
    net = cfg.model.net  # model=timm: the architecture's figures (timm:ARCH)
    name = f"{net.name}:{net.arch}" if net.get("arch") else net.name
    # an image folder's class count is unknown until it is listed: ImageNet's (the head is small)
    flops = flops_per_image(name, int(cfg.dataset.num_classes or 1000))
    return {"epochs": epochs, "train_images": n_train,
            "pflops": cost.run_pflops(flops, epochs, n_train, n_test)}


def seg_job_cost(cfg) -> dict:
    """A segmentation run: 3 forward passes (forward + backward, both heads) per training crop,
    plus the evaluations: the periodic single-scale ones and the final one (single scale, and
    every scale with and without flip when dataset.evaluation asks for them), window by window."""
    from ..training.seg_build import seg_length
    from ..training.seg_eval import windows

    iterations, batch = seg_length(cfg)
    d, e = cfg.dataset, cfg.dataset.evaluation
    classes = int(d.get("num_classes") or 19)
    net = json.dumps({**OmegaConf.to_container(cfg.model.net, resolve=True), "pretrained": None})
    window = int(e.crop or d.crop_size)
    forward = _seg_flops(net, classes, int(d.crop_size), True)
    evaluate = _seg_flops(net, classes, window, False)
    H, W = (d.get("eval_image_size") or [window, window])
    n_test = int(d.test_subset or d.get("test_size") or 0)

    def passes(scale: float) -> float:  # one image at one scale, in forward passes of a window
        h, w = H * scale, W * scale
        if e.mode == "sliding":
            return len(windows(int(h), window, int(e.stride))) * len(windows(int(w), window, int(e.stride)))
        return h * w / window ** 2
    final = passes(1.0) + (2 * sum(passes(s) for s in e.scales) if list(e.scales) != [1.0] or e.flip else 0)
    evals = iterations // int(cfg.trainer.eval_every) if cfg.trainer.get("eval_every") else 0
    flops = cost.TRAIN_PASSES * forward * batch * iterations + n_test * evaluate * (final + evals * passes(1.0))
    return {"epochs": f"{iterations}it", "train_images": int(d.train_subset or d.get("train_size") or 0),
            "pflops": flops / 1e15}


@functools.lru_cache(maxsize=None)
def _seg_flops(net: str, classes: int, size: int, train: bool) -> int:
    """Forward FLOPs of a segmentation network (its config as JSON, weights never downloaded),
    built once per configuration: the jobs of a sweep share their networks."""
    from ..models.segmentation import forward_flops
    from ..training.build import build

    return forward_flops(build(OmegaConf.create(json.loads(net)), num_classes=classes), size, train)


def composed(jobs: list[list[str]]):
    """Each job's composed config. Jobs that differ only in `seed=` are composed once and then
    given their seed: a compose takes ~0.5 s, so a 3-seed table plans 3x faster. The seed is a
    plain value; keys that interpolate it resolve on access, so they follow it."""
    parser, cache = OverridesParser.create(), {}
    for job in jobs:
        parsed = [(text, parser.parse_override(text)) for text in job]
        seeds = [ov.value() for _, ov in parsed if ov.get_key_element() == "seed"]
        rest = tuple(text for text, ov in parsed if ov.get_key_element() != "seed")
        if rest not in cache:
            cache[rest] = compose("train", overrides=list(rest))
        cfg = copy.deepcopy(cache[rest])
        if seeds:
            cfg.seed = seeds[-1]
        yield cfg


def plan(overrides: list[str], tflops: float, timing: "Timing | None" = None) -> list[dict]:
    rows = []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for cfg in composed(sweep_overrides(overrides)):
            run_dir = run_dir_of(cfg)
            status = ("finished" if (run_dir / SUMMARY).exists()
                      else "resume" if (run_dir / CHECKPOINT).exists() else "new")
            job = job_cost(cfg)
            rows.append({"run": str(run_dir), "status": status, **job,
                         "gpu_hours": cost.gpu_hours(job["pflops"], tflops)})
            if timing is not None:
                rows[-1].update(timing.expected(cfg, job, tflops, epochs_done(run_dir, status)))
    return rows


class Timing:
    """Each run's expected seconds from measured figures (bench_train.py --json files and/or
    timed here), K runs at once per device; what has no figure falls back to the FLOPs estimate."""

    def __init__(self, files: list[str], measure: bool, per_gpu: int, device: str | None):
        self.figures = throughput.merge([throughput.read_figures(f) for f in files])
        self.measure, self.per_gpu, self.measured = measure, max(1, per_gpu), {}
        gpu_figures = bool(self.figures["machine"].get("gpu"))
        self.device = device or ("cuda" if gpu_figures or _cuda_here() else "cpu")

    def expected(self, cfg, job: dict, tflops: float, done: int = 0) -> dict:
        """The run's seconds to train (the epochs it has left) and where the figure came from."""
        job = {**job, "epochs": max(0, job["epochs"] - done),
               "pflops": job["pflops"] * max(0, job["epochs"] - done) / max(1, job["epochs"])}
        key = throughput.setting_key(cfg, self.device)
        fig, source = throughput.figure_for(self.figures, key)
        if fig is None and self.measure:
            if key not in self.measured:
                self.measured[key] = throughput.measure(cfg)
            fig, source = self.measured[key], self.measured[key]["source"]
        if fig is None:
            return {"seconds": job["pflops"] * 1e15 / (tflops * 1e12), "source": f"assumed {tflops:g} TFLOP/s"}
        share, note = throughput.packing_share(self.figures, key[0], key[2], self.per_gpu)
        n_test = _test_images(cfg)
        seconds = throughput.run_seconds(job["epochs"], job["train_images"], n_test, fig, share, key[6])
        return {"seconds": seconds, "source": "; ".join(x for x in (source, note) if x)}


def epochs_done(run_dir, status: str) -> int:
    """Epochs a resumable run has trained (its metrics.jsonl rows); 0 for a new one."""
    if status != "resume" or not (run_dir / METRICS).is_file():
        return 0
    return sum(1 for line in (run_dir / METRICS).read_text().splitlines() if line.strip())


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def _test_images(cfg) -> int:
    n_test = FULL_SIZES.get(cfg.dataset.name, (0, cfg.dataset.get("test_size", 0)))[1]
    if cfg.dataset.get("validation"):
        n_test = int(cfg.dataset.validation)
    return int(cfg.dataset.test_subset or n_test)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=table1 seed=0,1,2")
    ap.add_argument("--tflops", type=float, default=60.0,
                    help="sustained training throughput assumed per GPU, TFLOP/s (default 60: "
                         "about what a CIFAR convnet sustains in bf16 on one H100; see docs/performance.md)")
    ap.add_argument("--throughput", action="append", default=[], metavar="FILE",
                    help="measured figures (scripts/bench_train.py --json FILE; repeatable): expected "
                         "minutes per run and the sweep's expected wall time")
    ap.add_argument("--measure", action="store_true", help=(
        "time a few training steps and a test pass of each distinct model/setting on this "
        "machine's device (those --throughput does not cover)"))
    ap.add_argument("--per-gpu", type=int, default=1, metavar="K", help="runs at once on each device")
    ap.add_argument("--gpus", type=int, default=1, help="devices the runs share (default 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help=(
        "where the runs will train, for precision=auto (default: the figures' machine, else here)"))
    args = ap.parse_args(argv)
    try:
        timing = Timing(args.throughput, args.measure, args.per_gpu, args.device) \
            if args.throughput or args.measure else None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = plan(args.overrides, args.tflops, timing)
    print_plan(rows, args, timing)
    return 0


def print_plan(rows: list[dict], args, timing: "Timing | None") -> None:
    width = max(len(r["run"]) for r in rows)
    extra = f" {'min/run':>8}  source" if timing else ""
    print(f"{'run':<{width}}  {'status':<8} {'epochs':>6} {'images':>7} {'PFLOP':>9} {'GPU-h':>8}{extra}")
    for r in rows:
        extra = f" {r['seconds'] / 60:>8.1f}  {r['source']}" if timing else ""
        print(f"{r['run']:<{width}}  {r['status']:<8} {r['epochs']:>6} {r['train_images']:>7} "
              f"{r['pflops']:>9.2f} {r['gpu_hours']:>8.2f}{extra}")
    todo = [r for r in rows if r["status"] != "finished"]
    total = sum(r["pflops"] for r in todo)
    hours = sum(r["gpu_hours"] for r in todo)
    hours_text = f"{hours:.0f}" if hours >= 10 else f"{hours:.2g}"
    print(f"{len(rows)} runs, {len(todo)} to train: {total:.1f} PFLOP, about {hours_text} "
          f"GPU-hours at {args.tflops:g} TFLOP/s sustained")
    if timing is not None:
        slots = timing.per_gpu * max(1, args.gpus)
        wall = throughput.schedule([r["seconds"] for r in todo], slots)
        where = timing.figures["machine"].get("gpu") or timing.device
        print(f"expected wall time: {_duration(wall)} for the {len(todo)} runs to train, "
              f"{timing.per_gpu} at once on each of {max(1, args.gpus)} device(s) "
              f"({slots} slots), from measured throughput ({where})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
