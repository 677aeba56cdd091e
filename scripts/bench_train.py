"""Training throughput of the runner: images/s, test-pass images/s, ISDA overhead, peak memory.

Per model and setting (precision, channels_last, compile), each in a fresh process so that its
peak memory and compile caches are its own, through the trainer's own code (isda_exp.training.trainer):

* train img/s   -- Trainer.train_epoch on an epoch of `--steps` batches with ISDA on, at the lambda
                   and learning rate of the recipe's second epoch (lambda_0 / epochs: > 0, so the
                   ISDA term is computed, and small, as a real run has it while its network is
                   young), batches drawn and augmented on the training device as in a real run;
* test img/s    -- Trainer.evaluate (inference mode, trainer.eval_batch_size) on `--test-size` images;
                   both timed `--repeats` times, the best kept (other load only ever slows a run);
* ISDA overhead -- ISDA step time / plain cross-entropy step time, same model, same pre-drawn
                   batches, alternating rounds (the fastest round of each), same lambda ("ISDA +");
                   and, free of the step's noise, 1 + (ISDA loss - CE loss) / CE step, the losses
                   timed alone (forward + backward) on the model's real features ("loss +");
* peak memory   -- CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS (ru_maxrss,
                   which includes ~0.4 GB of torch itself).

The figures are times: a non-finite training loss does not stop the benchmark; the row says where
it happened ("nonfinite") and the table marks it. Two departures from a real run made
the generated images diverge here before: lambda = 0.25-0.5 from the first step of an untrained
network (the ISDA term's curvature in the classifier, lr * lambda * the largest eigenvalue of a
class covariance, then reaches 2-3, the edge of what SGD with momentum survives; a real run is at
lambda_0 / epochs in its second epoch), and CE/ISDA rounds trained after a test pass with
BatchNorm left in eval mode (running statistics of a few steps: losses of 1e7 within two steps).

    python scripts/bench_train.py                                   # CPU: ResNet-32, 4 settings
    python scripts/bench_train.py --device cuda --models resnet32 resnet110 wrn28_10 \\
        --settings fp32 bf16 bf16+cl fp16+cl bf16+cl+compile --json bench_gpu.json
    python scripts/bench_train.py --device cuda --models resnet32 --packing 1 2 4 6 8

--packing K runs K training processes at once on one device (what `hydra/launcher=joblib
hydra.launcher.n_jobs=K` does on one GPU) for `--seconds` after a common start, and reports their
total images/s against K = 1. Settings: precision (fp32|bf16|fp16), "+cl" for
trainer.channels_last=true, "+compile" for trainer.compile=true.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS_CPU = ["fp32", "fp32+cl", "bf16", "bf16+cl"]
SETTINGS_CUDA = ["fp32", "fp32+cl", "bf16+cl", "fp16+cl", "bf16+cl+compile"]


# ------------------------------------------------------------------ shared with bench_data.py


def composed(*overrides: str):
    """The run configuration the CLI would build from these overrides."""
    from hydra import compose, initialize_config_dir

    from isda_exp.paths import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def setting_overrides(setting: str) -> list[str]:
    """'bf16+cl+compile' -> trainer overrides."""
    precision, *flags = setting.split("+")
    unknown = set(flags) - {"cl", "compile"}
    if precision not in ("fp32", "bf16", "fp16") or unknown:
        raise SystemExit(f"error: setting {setting!r}: use fp32|bf16|fp16, then +cl and/or +compile")
    return [f"trainer.precision={precision}", f"trainer.channels_last={'cl' in flags}",
            f"trainer.compile={'compile' in flags}"]


def data_overrides(npz: str | None, classes: int, train_size: int, test_size: int) -> list[str]:
    """Real CIFAR from an .npz (subsets of it), else the synthetic set of the same shape."""
    if npz:
        name = "cifar10" if classes == 10 else "cifar100"
        return [f"dataset={name}", f"dataset.npz={npz}", f"dataset.train_subset={train_size}",
                f"dataset.test_subset={test_size}"]
    return ["dataset=synthetic", f"dataset.num_classes={classes}", f"dataset.train_size={train_size}",
            f"dataset.test_size={test_size}"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    tic = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tic


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def machine(device: str) -> dict:
    """What the figures were measured on (CPU model and its bf16/fp16 instruction sets)."""
    cpu, isa = platform.processor() or platform.machine(), {}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
        flags = set(next(ln for ln in lines if ln.startswith("flags")).split(":", 1)[1].split())
        isa = {f: f in flags for f in ("avx512_bf16", "amx_bf16", "avx512_fp16")}
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, **isa, "cores": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def build_trainer(overrides: list[str], run_dir: Path):
    from isda_exp.training.trainer import Trainer

    return Trainer(composed(*overrides, "trainer.progress=false", "trainer.tensorboard=false"), run_dir)


# ------------------------------------------------------------------ one setting (child process)


BENCH_EPOCH = 1  # the recipe's second epoch (0-based): lambda_0 / epochs, the recipe's first lr


def bench_lambda(trainer) -> float:
    """The ISDA strength of the timed steps: the recipe's at BENCH_EPOCH (> 0, small)."""
    return trainer.run.isda_lambda(BENCH_EPOCH)


def isda_overhead(trainer, batches, rounds: int, losses: list) -> dict:
    """Per-step seconds of plain CE and of ISDA on the same batches, in alternating rounds.

    The minimum over rounds is the undisturbed time (other load only adds); medians are kept too.
    Each step's loss is appended to `losses` (read after the timing: no host sync inside it).
    """
    criterion, times = trainer.engine.criterion, {"ce": [], "isda": []}
    from isda_exp.losses import CrossEntropy

    plain = CrossEntropy(criterion.feature_dim, criterion.num_classes)  # loss=ce's criterion
    lam = bench_lambda(trainer)
    trainer.engine.net.train()  # after a test pass: training steps need BatchNorm's batch statistics
    for _ in range(rounds):
        for name in ("ce", "isda"):
            trainer.engine.criterion = plain if name == "ce" else criterion

            def steps():
                for x, y in batches:
                    losses.append(trainer.engine.train_step(x, y, lam)[0])
            times[name].append(timed(steps, trainer.run.device) / len(batches))
    trainer.engine.criterion = criterion
    return {f"{k}_step_ms": 1e3 * min(v) for k, v in times.items()} | \
        {f"{k}_step_ms_median": 1e3 * statistics.median(v) for k, v in times.items()}


def nonfinite(epoch_losses: list[float], step_losses: list) -> list[str]:
    """Where the benchmark met a non-finite training loss (timed epochs, CE/ISDA rounds)."""
    where = [f"timed epoch {i + 1}" for i, v in enumerate(epoch_losses) if not math.isfinite(v)]
    if step_losses:
        bad = int((~torch.isfinite(torch.stack(step_losses).float())).sum())
        where += [f"{bad} of {len(step_losses)} CE/ISDA round steps"] if bad else []
    return where


def loss_only(trainer, batches, reps: int = 30) -> dict:
    """Milliseconds of the loss alone (forward + backward to the features and classifier), ISDA
    and plain CE, on the model's real features: the exact extra work ISDA adds to a step, measured
    without the noise of the whole step (min over reps)."""
    x, y = batches[0]
    with torch.no_grad(), trainer.engine.autocast():
        trainer.engine.net.train()
        feats = trainer.engine.forward(trainer.engine.inputs(x))
    crit, fc = trainer.engine.criterion, trainer.engine.fc

    def ce():
        with trainer.engine.autocast():
            loss = torch.nn.functional.cross_entropy(fc(f), y)
        loss.backward()

    def isda():
        with trainer.engine.autocast():
            loss, _ = crit(f, fc, y, bench_lambda(trainer))
        loss.backward()
    out = {}
    for name, fn in (("ce", ce), ("isda", isda)):
        f = feats.detach().requires_grad_()
        out[f"{name}_loss_ms"] = 1e3 * min(timed(fn, trainer.run.device) for _ in range(reps))
    trainer.engine.optimizer.zero_grad(set_to_none=True)
    return out


def wait_for_quiet(max_load: float | None, timeout: float = 600) -> float:
    """On a shared machine: wait (up to timeout s) until the 1-minute load average is below max_load."""
    deadline = time.time() + timeout
    while max_load and os.getloadavg()[0] >= max_load and time.time() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def measure(args) -> dict:
    """Figures of one (model, setting) in this process."""
    overrides = [f"model={args.model}", "isda=on", f"device={args.device}",
                 f"trainer.batch_size={args.batch_size}", f"trainer.eval_batch_size={args.eval_batch_size}",
                 *setting_overrides(args.setting),
                 *data_overrides(args.npz, args.classes, args.steps * args.batch_size, args.test_size),
                 *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(overrides, Path(tmp))
    return {"model": args.model, "setting": args.setting, "classes": args.classes,
            "overrides": args.set, **measure_trainer(trainer, args)}


def measure_trainer(trainer, args) -> dict:
    """The timed figures of a built trainer (its recipe's second epoch; see the module's doc)."""
    device, batch, lam = trainer.run.device, trainer.run.batch_size, bench_lambda(trainer)
    trainer.stop_on_nonfinite = False  # a time is a time: report a non-finite loss, do not die
    trainer.engine.net.train()
    batches = [b for _, b in zip(range(args.overhead_steps), trainer.stream.epoch(BENCH_EPOCH))]
    compile_s = timed(lambda: [trainer.engine.train_step(x, y, lam) for x, y in batches[:2]], device)
    eval_compile_s = timed(trainer.evaluate, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    epoch_losses, train_times = [], []
    for _ in range(args.repeats):
        train_times.append(timed(lambda: epoch_losses.append(
            trainer.train_epoch(BENCH_EPOCH)["train_loss"]), device))
    test_s = min(timed(trainer.evaluate, device) for _ in range(args.repeats))
    step_losses: list = []
    steps = isda_overhead(trainer, batches, args.rounds, step_losses) | loss_only(trainer, batches)
    extra = steps["isda_loss_ms"] - steps["ce_loss_ms"]
    return {"device": str(device), "batch_size": batch, "lambda": lam,
            "train_img_s": trainer.stream.num_images / min(train_times), "test_img_s": trainer.run.eval.num_images / test_s,
            "eval_batch_size": trainer.run.eval_batch_size, **steps,
            "isda_overhead": steps["isda_step_ms"] / steps["ce_step_ms"],
            "isda_overhead_from_loss": 1 + extra / steps["ce_step_ms"], "peak_mem_mb": peak_memory_mb(device),
            "first_steps_s": compile_s, "first_eval_s": eval_compile_s,
            "compiled": trainer.engine.compiled is not None, "threads": torch.get_num_threads(),
            "nonfinite": nonfinite(epoch_losses, step_losses)}


def pack_worker(args) -> dict:
    """One of K packed processes: warm up, wait for the others, train for --seconds."""
    overrides = [f"model={args.model}", "isda=on", f"device={args.device}", f"seed={args.rank}",
                 f"trainer.batch_size={args.batch_size}",
                 f"trainer.threads={args.threads}", *setting_overrides(args.setting),
                 *data_overrides(args.npz, args.classes, args.steps * args.batch_size, 256), *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(overrides, Path(tmp))
    device, lam, last = trainer.run.device, bench_lambda(trainer), None
    for _, (x, y) in zip(range(3), trainer.stream.epoch(0)):
        trainer.engine.train_step(x, y, lam)
    sync(device)
    barrier = Path(args.barrier)
    (barrier / f"ready{args.rank}").touch()
    while len(list(barrier.glob("ready*"))) < args.pack:
        time.sleep(0.01)
    images, tic, epoch = 0, time.perf_counter(), 1
    while time.perf_counter() - tic < args.seconds:
        for x, y in trainer.stream.epoch(epoch):
            last = trainer.engine.train_step(x, y, lam)[0]
            images += len(y)
            if time.perf_counter() - tic >= args.seconds:
                break
        epoch += 1
    sync(device)
    elapsed = time.perf_counter() - tic
    return {"rank": args.rank, "images": images, "seconds": elapsed, "img_s": images / elapsed,
            "peak_mem_mb": peak_memory_mb(device),
            "last_loss_finite": last is None or bool(torch.isfinite(last).item())}


# ------------------------------------------------------------------ paper-table estimate

# ASSUMED sustained training throughput per GPU on one H100 (bf16 autocast, channels_last), in
# TFLOP/s of (3 x forward FLOPs) -- an estimate until bench_train.py has measured the model on the
# GPU (pass that JSON with --from-json and the measured images/s replace these). Small models are
# launch-bound at 32 x 32 and assumed packed several runs per GPU (--packing), so their figure is
# the per-GPU total of the packed runs. Reasoning in docs/performance.md.
ASSUMED_TFLOPS = {
    "resnet32": 20, "resnet110": 25, "se_resnet110": 20, "densenet_bc100_12": 15,
    "shake26_2x32d": 50, "wrn16_8": 80, "wrn28_10": 100, "resnext29_8x64d": 90,
    "densenet_bc190_40": 60, "shake26_2x112d": 100,
}
ISDA_OVERHEAD = 1.03  # the GPU target; half of the runs are ISDA runs


def sweep_runs(experiment: str) -> dict[str, int]:
    """Runs per model of a paper table, counted from configs/experiment/<name>.yaml's sweep."""
    from omegaconf import OmegaConf

    from isda_exp.paths import config_file

    params = OmegaConf.load(config_file("experiment", experiment)).hydra.sweeper.params
    sizes = {k: len(str(v).split(",")) for k, v in params.items()}
    others = 1
    for k, n in sizes.items():
        others *= 1 if k == "model" else n
    return {m: others for m in str(params.model).split(",")}


def run_hours(model: str, measured: dict) -> tuple[float, str]:
    """GPU-hours of one full-recipe run: measured images/s when known, else the assumed TFLOP/s."""
    from isda_exp.models import cost, flops_per_image, recipe_epochs

    isda_share = 1 + (ISDA_OVERHEAD - 1) / 2
    if model in measured:  # the test pass after each epoch: forward only
        seconds = recipe_epochs(model) * cost.CIFAR_TRAIN / measured[model] * cost.eval_overhead()
        return seconds * isda_share / 3600, "measured"
    pflops = cost.run_pflops(flops_per_image(model), recipe_epochs(model), cost.CIFAR_TRAIN,
                             cost.CIFAR_TEST)
    return cost.gpu_hours(pflops, ASSUMED_TFLOPS[model]) * isda_share, "assumed"


def schedule(jobs: list[float], gpus: int) -> float:
    """Wall hours of independent jobs on `gpus` GPUs, longest first onto the least loaded GPU."""
    from isda_exp.sweeps.throughput import schedule as longest_first

    return longest_first(jobs, gpus)


def estimate(from_json: str | None) -> dict:
    """Wall time of each paper table on 1 and on 8 GPUs, from the zoo's FLOPs (see ASSUMED_TFLOPS)."""
    measured = {}
    if from_json:
        rows = json.loads(Path(from_json).read_text())
        for r in rows.get("rows", []):
            if "error" not in r and r["device"].startswith("cuda"):
                measured[r["model"]] = max(measured.get(r["model"], 0), r["train_img_s"])
        for r in rows.get("packing", []):
            if "error" not in r:
                measured[r["model"]] = max(measured.get(r["model"], 0), r["total_img_s"])
    out, every = {}, []
    print(f"{'table':<8}{'model':<20}{'runs':>6}{'h/run':>8}{'source':>10}{'GPU-h':>9}")
    for table in ("table1", "table2"):
        jobs, total = [], 0.0
        for model, runs in sweep_runs(table).items():
            hours, source = run_hours(model, measured)
            jobs += [hours] * runs
            total += hours * runs
            print(f"{table:<8}{model:<20}{runs:>6}{hours:>8.2f}{source:>10}{hours * runs:>9.1f}")
        out[table] = {"gpu_hours": total, "wall_h_1gpu": total, "wall_h_8gpu": schedule(jobs, 8)}
        print(f"{table}: {total:.0f} GPU-hours -> {total:.0f} h ({total / 24:.1f} days) on one H100, "
              f"{out[table]['wall_h_8gpu']:.0f} h on 8 GPUs (longest run "
              f"{max(jobs):.1f} h)\n")
        every += jobs
    total = sum(every)
    out["both"] = {"gpu_hours": total, "wall_h_1gpu": total, "wall_h_8gpu": schedule(every, 8)}
    print(f"both tables: {total:.0f} GPU-hours -> {total / 24:.1f} days on one H100, "
          f"{out['both']['wall_h_8gpu']:.0f} h on 8 GPUs")
    return out


# ------------------------------------------------------------------ parent


def child_args(args, **extra) -> list[str]:
    keep = {"device": args.device, "batch_size": args.batch_size, "steps": args.steps,
            "repeats": args.repeats,
            "test_size": args.test_size, "eval_batch_size": args.eval_batch_size, "classes": args.classes,
            "overhead_steps": args.overhead_steps, "rounds": args.rounds, "seconds": args.seconds,
            "npz": args.npz or "", **extra}
    return [f"--{k.replace('_', '-')}={v}" for k, v in keep.items()] + [f"--set={o}" for o in args.set]


def run_child(args, **extra) -> dict:
    load = wait_for_quiet(args.wait_load)
    cmd = [sys.executable, __file__, *child_args(args, **extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # one setting that fails (a CUDA error, out of memory) loses its row only
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"model": extra["model"], "setting": extra["setting"], "load_before": load,
                "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]}
    warnings = [line for line in proc.stderr.splitlines() if "torch.compile" in line]
    row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"load_before": load}
    if warnings:
        row["warning"] = warnings[0].strip()[:200]
    return row


def packing(args, model: str, setting: str) -> list[dict]:
    """Total images/s of K simultaneous runs, for each K of --packing."""
    results = []
    cores = os.cpu_count() or 1
    for k in args.packing:
        wait_for_quiet(args.wait_load)
        with tempfile.TemporaryDirectory() as barrier:
            threads = max(1, cores // k)
            procs = [subprocess.Popen([sys.executable, __file__, *child_args(
                args, model=model, setting=setting, pack=k, rank=r, barrier=barrier, threads=threads)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(k)]
            outs = [p.communicate() for p in procs]
        failed = [err for p, (_, err) in zip(procs, outs) if p.returncode != 0]
        if failed:  # e.g. out of memory at this K: the K measured so far stand
            print(failed[0][-3000:], file=sys.stderr)
            results.append({"model": model, "setting": setting, "pack": k,
                            "error": (failed[0].strip().splitlines() or ["failed"])[-1][:300]})
            print(f"{model:<12}{setting:<18} K={k:<3} FAILED: {results[-1]['error']}", flush=True)
            break
        workers = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
        total = sum(w["img_s"] for w in workers)
        results.append({"model": model, "setting": setting, "pack": k, "threads_each": threads,
                        "overrides": args.set,
                        "total_img_s": total, "per_run_img_s": total / k,
                        "peak_mem_mb_each": max(w["peak_mem_mb"] for w in workers),
                        "nonfinite": [f"run {w['rank']}" for w in workers if not w["last_loss_finite"]]})
        base = results[0]["total_img_s"] / results[0]["pack"] if results[0]["pack"] == 1 else None
        gain = f"  x{total / base:.2f} vs one run" if base else ""
        print(f"{model:<12}{setting:<18} K={k:<3}{total:>10.0f} img/s total  "
              f"{total / k:>8.0f} per run{gain}", flush=True)
    return results


def print_row(r: dict) -> None:
    if "error" in r:
        print(f"{r['model']:<12}{r['setting']:<18} FAILED: {r['error']}", flush=True)
        return
    note = "" if r["compiled"] or "compile" not in r["setting"] else "  (compile fell back)"
    if r.get("nonfinite"):
        note += f"  (non-finite loss: {', '.join(r['nonfinite'])}; the times stand, the run would have stopped)"
    print(f"{r['model']:<12}{r['setting']:<18}{r['train_img_s']:>10.0f}{r['test_img_s']:>11.0f}"
          f"{r['ce_step_ms']:>10.1f}{r['isda_step_ms']:>10.1f}{100 * (r['isda_overhead'] - 1):>+9.1f}%"
          f"{100 * (r['isda_overhead_from_loss'] - 1):>+9.2f}%"
          f"{r['peak_mem_mb']:>10.0f}{r['first_steps_s']:>9.1f}{note}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=None,
                   help="default: resnet32 (CPU); resnet32 resnet110 wrn28_10 (CUDA)")
    p.add_argument("--settings", nargs="+", default=None,
                   help=f"default CPU {SETTINGS_CPU}, CUDA {SETTINGS_CUDA}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="batches in the timed training epoch")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=None, help="CPU 256 (faster there), CUDA 1024")
    p.add_argument("--wait-load", type=float, default=None,
                   help="before each setting wait (<= 10 min) for the 1-min load average to drop below this")
    p.add_argument("--classes", type=int, default=10, choices=(10, 100))
    p.add_argument("--overhead-steps", type=int, default=None, help="batches per ISDA/CE round")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs and test passes; the best is kept")
    p.add_argument("--rounds", type=int, default=None, help="alternating CE/ISDA rounds (CPU 10, CUDA 5)")
    p.add_argument("--packing", type=int, nargs="*", default=None, help="K values: K runs at once")
    p.add_argument("--seconds", type=float, default=30.0, help="timed window of a packed run")
    p.add_argument("--npz", default=None, help="real CIFAR arrays (else synthetic images)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for every measured run (repeatable), e.g. +model.net.base_width=8")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--estimate", action="store_true",
                   help="print the estimated wall time of each paper table (no benchmark)")
    p.add_argument("--from-json", default=None, help="with --estimate: measured GPU figures to use")
    for hidden in ("model", "setting", "barrier"):
        p.add_argument(f"--{hidden}", default=None, help=argparse.SUPPRESS)
    for hidden in ("pack", "rank", "threads"):
        p.add_argument(f"--{hidden}", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (100 if cuda else 8)
    args.test_size = args.test_size or (10000 if cuda else 2048)
    args.eval_batch_size = args.eval_batch_size or (1024 if cuda else 256)
    args.overhead_steps = args.overhead_steps or (20 if cuda else 2)
    args.rounds = args.rounds or (5 if cuda else 10)
    args.npz = args.npz or None

    if args.estimate:
        estimate(args.from_json)
        return
    if args.pack:  # a packed worker
        print(json.dumps(pack_worker(args)))
        return
    if args.model:  # one setting
        print(json.dumps(measure(args)))
        return
    models = args.models or (["resnet32", "resnet110", "wrn28_10"] if cuda else ["resnet32"])
    settings = args.settings or (SETTINGS_CUDA if cuda else SETTINGS_CPU)
    for s in settings:
        setting_overrides(s)
    info = machine(args.device)
    print(f"# {info}  batch {args.batch_size}, {args.steps} timed batches, C={args.classes}", flush=True)
    out = {"machine": info, "command": " ".join(sys.argv), "rows": [], "packing": []}
    if args.packing:
        for model in models:
            for setting in settings:
                out["packing"] += packing(args, model, setting)
    else:
        print(f"{'model':<12}{'setting':<18}{'train/s':>10}{'test/s':>11}{'CE ms':>10}{'ISDA ms':>10}"
              f"{'ISDA +':>10}{'loss +':>10}{'peak MB':>10}{'first s':>9}")
        for model in models:
            for setting in settings:
                row = run_child(args, model=model, setting=setting)
                print_row(row)
                out["rows"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"# wrote {args.json}")
    failed = [r for r in out["rows"] + out["packing"] if "error" in r]
    if failed:
        raise SystemExit(f"error: {len(failed)} of the measurements failed (their rows say why)")


if __name__ == "__main__":
    main()
