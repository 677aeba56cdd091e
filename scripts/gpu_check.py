#!/usr/bin/env python
"""The GPU acceptance check: the one command to run the first time a CUDA GPU is available.

    bash scripts/gpu_check.sh            # or: make gpu-check; OUT=dir to choose where it writes
    bash scripts/gpu_check.sh --mini     # the same steps in miniature on the CPU (the same files)

Steps, in this order, each bounded in time and all of them by --deadline (default 330 s: the whole
check stays under 6 minutes on one GPU; what the deadline leaves no time for is listed as not run):
  tests      pytest -m cuda (the CUDA-marked tests)
  runs       a 2-epoch ResNet-32 run, ISDA on, per augmentation (baseline, cutout, autoaugment) and
             per precision (fp32, bf16, fp16), on --run-images generated 32x32 images (or real
             CIFAR-10 with --npz): finishes, every number finite
  bench      scripts/bench_train.py: ResNet-32 in every GPU setting first (what make
             repro-resnet32 chooses from), then ResNet-110 and WRN-28-10; then the packing row
             (K = 1, 2, 4 ResNet-32 runs at once): bench_gpu.json and bench_packing.json
  syncs      the training step under torch.cuda.set_sync_debug_mode("warn"): each host sync per
             step that remains, with the line that causes it
  ddp        a 2-rank torchrun run when 2 or more GPUs are present
It writes OUT/gpu_check.json and OUT/gpu_check.md and prints both. Exit 0 when every step passed.
On a machine without a CUDA GPU (and without --mini) it says so in one line and exits 3.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUGS = ("baseline", "cutout", "autoaugment")
PRECISIONS = ("fp32", "bf16", "fp16")
NO_GPU_EXIT = 3


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError as e:
        return f"torch is not importable ({e}); run 'make install' first"
    if not torch.cuda.is_available():
        return (f"no CUDA GPU on this machine (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); run the check on a GPU machine")
    return None


# ------------------------------------------------------------------ checking a run


def check_run(run_dir: Path, epochs: int) -> dict:
    """A finished run: summary.json present, `epochs` metric rows, every number finite."""
    from isda_exp.rundir.files import METRICS, SUMMARY

    problems = []
    summary_path, metrics_path = run_dir / SUMMARY, run_dir / METRICS
    if not summary_path.is_file():
        problems.append(f"no {SUMMARY}")
    rows = []
    if metrics_path.is_file():
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if len(rows) != epochs:
        problems.append(f"{len(rows)} metric rows, expected {epochs}")
    for row in rows:
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            problems.append(f"epoch {row.get('epoch')}: non-finite {', '.join(bad)}")
    last = rows[-1] if rows else {}
    return {"ok": not problems, "problems": problems,
            "train_loss": last.get("train_loss"), "test_error": last.get("test_error"),
            "seconds": sum(r.get("seconds", 0.0) for r in rows)}


# ------------------------------------------------------------------ steps


def run_cmd(cmd: list[str], timeout: float, cwd: Path = ROOT, env: dict | None = None) -> dict:
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"timed out after {timeout:.0f} s\n{(e.stdout or '')}{(e.stderr or '')}"
    return {"rc": rc, "seconds": time.perf_counter() - tic, "tail": out[-2000:]}


class Clock:
    """The check's deadline: each step gets its own budget, less what the steps after it need."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def budget(self, own: float, reserve: float = 0.0) -> float:
        return max(0.0, min(own, self.left() - reserve))


def step_tests(args, seconds: float) -> dict:
    if args.mini:  # the CUDA tests skip on a CPU: their collection is the whole of it
        return {"ok": None, "skipped": "the CUDA tests need a GPU (--mini)"}
    r = run_cmd([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], seconds)
    summary = [ln for ln in r["tail"].splitlines() if " passed" in ln or " failed" in ln
               or " skipped" in ln or " error" in ln]
    return {"ok": r["rc"] == 0, "result": summary[-1] if summary else r["tail"][-300:], **r}


def generated_data(out: Path, train: int, test: int = 10000) -> Path:
    npz = out / "data" / f"generated-{train}" / "cifar10.npz"
    if not npz.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "synthetic_npz.py"), str(npz),
                        "--num-classes", "10", "--train", str(train), "--test", str(test)],
                       check=True, capture_output=True)
    return npz


def run_data(args, out: Path) -> list[str]:
    """The runs' data: real CIFAR-10 (--npz), else generated images of its shape."""
    if args.npz:
        return [f"dataset.npz={Path(args.npz).resolve()}", f"dataset.train_subset={args.run_images}"]
    return [f"dataset.npz={generated_data(out, args.run_images, 64 if args.mini else 10000)}"]


MINI_RUN = ["trainer.batch_size=32", "trainer.eval_batch_size=64", "trainer.threads=1",
            "trainer.tensorboard=false", "+model.net.base_width=4"]


def step_runs(args, out: Path, seconds: float) -> dict:
    """9 runs, the 3 augmentations of a precision at once (ResNet-32 does not fill a big GPU), each
    precision within its share of `seconds`."""
    from isda_exp.rundir.files import run_path

    data = run_data(args, out)
    workers = max(1, ((os.cpu_count() or 4) - 3) // 3)  # AutoAugment's share of the cores
    rows, end = [], time.perf_counter() + seconds
    for i, precision in enumerate(PRECISIONS):
        share = max(1.0, (end - time.perf_counter()) / (len(PRECISIONS) - i))
        procs = {}
        for aug in AUGS:
            root = out / "runs" / f"{aug}-{precision}"  # its own directory: never a resume
            cmd = [sys.executable, "-m", "isda_exp", "dataset=cifar10", *data,
                   "model=resnet32", "isda=on", f"aug={aug}", "trainer.epochs=2",
                   f"trainer.precision={precision}", "trainer.progress=false",
                   f"trainer.num_workers={workers}", f"out_root={root}", f"device={args.device}",
                   *(MINI_RUN if args.mini else [])]
            procs[aug] = (root, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True))
        rows += [finish_run(proc, root, aug, precision, share) for aug, (root, proc) in procs.items()]
    return {"ok": all(r["ok"] for r in rows), "rows": rows}


def finish_run(proc: subprocess.Popen, root: Path, aug: str, precision: str, seconds: float) -> dict:
    """Wait (at most `seconds` more) for one run of step_runs, then check what it wrote."""
    from isda_exp.rundir.files import run_path

    try:
        tail, rc = proc.communicate(timeout=seconds)[0][-300:], proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        tail, rc = f"timed out after {seconds:.0f} s", None
    check = check_run(run_path(root, "cifar10", "resnet32", aug, "isda"), 2)
    if rc != 0:
        check["problems"].insert(0, f"exit {rc}: {tail}")
        check["ok"] = False
    return {"aug": aug, "precision": precision, **check}


BENCH_MODELS = ("resnet32", "resnet110", "wrn28_10")
BENCH_SETTINGS = ("fp32", "fp32+cl", "bf16+cl", "fp16+cl", "bf16+cl+compile")
PACK_SETTING, PACK_K = "bf16+cl", (1, 2, 4)


def bench_order(mini: bool) -> list[tuple[str, str]]:
    """ResNet-32 in every setting first (make repro-resnet32 chooses its settings from these),
    then the larger models setting by setting; in miniature ResNet-32 in fp32 and bf16+cl."""
    if mini:
        return [("resnet32", "fp32"), ("resnet32", "bf16+cl")]
    return [("resnet32", s) for s in BENCH_SETTINGS] + \
        [(m, s) for s in BENCH_SETTINGS for m in BENCH_MODELS if m != "resnet32"]


def bench_command(args) -> list[str]:
    quick = ["--steps", "2", "--repeats", "1", "--rounds", "1", "--overhead-steps", "2",
             "--test-size", "128", "--batch-size", "32", "--set", "+model.net.base_width=4"] \
        if args.mini else ["--steps", "50", "--repeats", "2", "--rounds", "3"]
    npz = ["--npz", str(Path(args.npz).resolve())] if args.npz else []
    return [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--device", args.device, *quick, *npz]


def step_bench(args, out: Path, seconds: float, packing_seconds: float) -> dict:
    """The GPU rows of docs/performance.md, one (model, setting) at a time within `seconds` (what
    does not fit is listed as not run), then the packing row within `packing_seconds`."""
    bench = bench_command(args)
    deadline = time.perf_counter() + seconds
    result = {"rows": [], "packing": [], "not_run": [], "failed": []}
    parts = out / "bench_parts"
    parts.mkdir(parents=True, exist_ok=True)
    for model, setting in bench_order(args.mini):
        left = deadline - time.perf_counter()
        if left < 20 and not args.mini:
            result["not_run"].append(f"{model} {setting}")
            continue
        path = parts / f"bench_{model}_{setting}.json"
        r = run_cmd([*bench, "--models", model, "--settings", setting, "--json", str(path)], max(left, 20))
        rows = json.loads(path.read_text())["rows"] if path.is_file() else []
        result["rows"] += [row for row in rows if "error" not in row]
        if r["rc"] != 0 or not rows:
            result["failed"].append(f"{model} {setting}: {r['tail'][-200:]}")
    (out / "bench_gpu.json").write_text(json.dumps({"machine": bench_machine(args), "rows": result["rows"]},
                                                   indent=2) + "\n")
    result["packing"], failed = step_packing(args, bench, out, packing_seconds)
    result["failed"] += failed
    result["ok"] = not result["failed"]
    if result["not_run"]:
        result["result"] = f"not run (time budget): {', '.join(result['not_run'])}"
    return result


def step_packing(args, bench: list[str], out: Path, seconds: float) -> tuple[list, list]:
    """K ResNet-32 runs at once on one device (bench_packing.json: make repro-resnet32's K)."""
    path = out / "bench_packing.json"
    window = "2" if args.mini else str(max(3, min(10, int(seconds / len(PACK_K)) - 12)))
    ks = PACK_K[:2] if args.mini else PACK_K
    pack = run_cmd([*bench, "--models", "resnet32", "--settings", PACK_SETTING, "--packing",
                    *map(str, ks), "--seconds", window, "--json", str(path)], max(seconds, 20))
    rows = json.loads(path.read_text()).get("packing", []) if path.is_file() else []
    failed = [] if pack["rc"] == 0 and rows else [f"packing: {pack['tail'][-200:]}"]
    return rows, failed


def bench_machine(args) -> dict:
    import torch

    info = {"device": args.device, "torch": torch.__version__, "cores": os.cpu_count()}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def step_ddp(args, out: Path, seconds: float) -> dict:
    import torch

    from isda_exp.rundir.files import run_path

    if args.mini or torch.cuda.device_count() < 2:
        return {"ok": None, "skipped": f"{torch.cuda.device_count()} GPU: needs 2 or more"}
    npz = generated_data(out, args.run_images)
    torchrun = Path(sys.executable).with_name("torchrun")
    root = out / "ddp"
    r = run_cmd([str(torchrun), "--nproc_per_node=2", "-m", "isda_exp", "dataset=cifar10",
                 f"dataset.npz={npz}", "model=resnet32", "isda=on", "trainer.epochs=2",
                 "trainer.precision=bf16", "trainer.progress=false", f"out_root={root}"],
                seconds)
    check = check_run(run_path(root, "cifar10", "resnet32", "baseline", "isda"), 2)
    if r["rc"] != 0:
        check["problems"].insert(0, f"exit {r['rc']}: {r['tail'][-300:]}")
        check["ok"] = False
    return check


def host_syncs(trainer, steps: int) -> list[dict]:
    """Each synchronizing CUDA call made by `steps` training steps: where (the innermost isda_exp
    frame, and the frame that called it) and how many times per step."""
    import torch

    batches = [b for _, b in zip(range(steps + 1), trainer.stream.epoch(1))]
    trainer.engine.train_step(*batches[0], 0.5)  # warm-up step: cuDNN choices, lazy state
    torch.cuda.synchronize()
    seen: dict[str, int] = {}
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "isda_exp" in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-2:][::-1])
        seen[where or f"{filename}:{lineno}"] = seen.get(where or f"{filename}:{lineno}", 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for x, y in batches[1:]:
                trainer.engine.train_step(x, y, 0.5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = original
    return [{"where": k, "per_step": v / steps} for k, v in sorted(seen.items(), key=lambda t: -t[1])]


def step_syncs(args, out: Path) -> dict:
    if args.device != "cuda":
        return {"ok": None, "skipped": "host syncs are counted by CUDA's sync debug mode"}
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train import build_trainer

    rows = []
    for precision in ("fp32", "fp16"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(["model=resnet32", "isda=on", "device=cuda", "dataset=synthetic",
                                     "dataset.train_size=2560", "trainer.batch_size=128",
                                     f"trainer.precision={precision}"], Path(tmp))
        rows.append({"precision": precision, "syncs": host_syncs(trainer, 5)})
    return {"ok": True, "rows": rows}


# ------------------------------------------------------------------ the summary


def status(ok) -> str:
    return {True: "pass", False: "FAIL", None: "skipped"}[ok]


def summarize(result: dict) -> tuple[str, str]:
    """(JSON, Markdown) of a check's result; every step present, its status first."""
    md = [f"# GPU check: {result.get('gpu', '?')}", "",
          f"torch {result.get('torch', '?')}, {result.get('gpus', '?')} GPU(s), "
          f"{result.get('seconds', 0):.0f} s; overall: **{status(result.get('ok'))}**", "",
          "| step | status | detail |", "|---|---|---|"]
    steps = result.get("steps", {})
    for name, step in steps.items():
        detail = step.get("error") or step.get("skipped") or step.get("result") \
            or "; ".join(step.get("failed", [])) or ""
        md.append(f"| {name} | {status(step.get('ok'))} | {str(detail)[:200]} |")
    runs = steps.get("runs", {}).get("rows", [])
    if runs:
        images = f"{result.get('run_images', 50000):,} {'CIFAR-10' if result.get('npz') else 'generated'} images"
        md += ["", f"## 2-epoch ResNet-32 runs, ISDA on, {images}", "",
               "| aug | precision | status | train loss | test error % | s | problems |",
               "|---|---|---|---|---|---|---|"]
        for r in runs:
            md.append(f"| {r['aug']} | {r['precision']} | {status(r['ok'])} | {fmt(r.get('train_loss'))} "
                      f"| {fmt(r.get('test_error'))} | {fmt(r.get('seconds'), 1)} | "
                      f"{'; '.join(r.get('problems', []))[:200]} |")
    bench = steps.get("bench", {})
    if bench.get("rows"):
        md += ["", "## bench_train.py (fills the GPU rows of docs/performance.md)", "",
               "| model | setting | train img/s | test img/s | ISDA + | loss + | peak MB |",
               "|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            md.append(f"| {r['model']} | {r['setting']} | {r['train_img_s']:.0f} | {r['test_img_s']:.0f} "
                      f"| {100 * (r['isda_overhead'] - 1):+.1f}% | "
                      f"{100 * (r['isda_overhead_from_loss'] - 1):+.2f}% | {r['peak_mem_mb']:.0f} |")
    if bench.get("packing"):
        md += ["", "| model | setting | K | total img/s | per run img/s |", "|---|---|---|---|---|"]
        for r in bench["packing"]:
            md.append(f"| {r['model']} | {r['setting']} | {r['pack']} | {r['total_img_s']:.0f} "
                      f"| {r['per_run_img_s']:.0f} |")
    for row in steps.get("syncs", {}).get("rows", []):
        md += ["", f"## Host syncs per training step ({row['precision']}, ResNet-32, ISDA on)", "",
               "| per step | where (innermost isda_exp frame <- its caller) |", "|---|---|"]
        md += [f"| {s['per_step']:g} | {s['where']} |" for s in row["syncs"]] or ["| 0 | none |"]
    return json.dumps(result, indent=2, default=str), "\n".join(md) + "\n"


def fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


STEPS = ("tests", "runs", "bench", "syncs", "ddp")
RESERVE = {"tests": 0, "runs": 0, "bench": 0, "syncs": 20, "ddp": 0}  # seconds kept for later steps


def run_steps(args, out: Path, clock: Clock) -> dict:
    """Each step of args.steps in STEPS' order within the deadline; one broken step must not hide
    the others' results."""
    later = {name: sum(RESERVE[n] for n in STEPS[i + 1:] if n in args.steps) for i, name in enumerate(STEPS)}
    todo = {"tests": lambda: step_tests(args, clock.budget(args.budget_tests, later["tests"])),
            "runs": lambda: step_runs(args, out, clock.budget(args.budget_runs, later["runs"])),
            "bench": lambda: step_bench(args, out, clock.budget(args.budget_bench, later["bench"]
                                                                + args.budget_packing),
                                        clock.budget(args.budget_packing, later["bench"])),
            "syncs": lambda: step_syncs(args, out),
            "ddp": lambda: step_ddp(args, out, clock.budget(args.budget_runs / 3))}
    steps = {}
    for name in (n for n in STEPS if n in args.steps):
        if clock.left() < 5 and not args.mini:
            steps[name] = {"ok": None, "skipped": "not run: the check's deadline had passed"}
            continue
        try:
            steps[name] = todo[name]()
        except KeyboardInterrupt:  # the outer time limit (gpu_check.sh): keep what was measured
            steps[name] = {"ok": False, "error": "interrupted (time limit)"}
            break
        except Exception as e:
            steps[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--deadline", type=float, default=330, help="seconds for the whole check")
    p.add_argument("--budget-tests", type=float, default=60)
    p.add_argument("--budget-runs", type=float, default=90, help="seconds for the 9 runs")
    p.add_argument("--budget-bench", type=float, default=150, help="seconds for the GPU rows")
    p.add_argument("--budget-packing", type=float, default=55)
    p.add_argument("--run-images", type=int, default=20000, help="training images of each 2-epoch run")
    p.add_argument("--npz", default=None, help="real CIFAR-10 arrays for the runs and the benchmark")
    p.add_argument("--mini", action="store_true", help="every step in miniature, on the CPU")
    args = p.parse_args()
    reason = None if args.mini else no_gpu_reason()
    if reason:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    args.device = "cpu" if args.mini else "cuda"
    if args.mini:
        args.run_images = min(args.run_images, 128)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (--mini: CPU)"
    result = {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "mini": args.mini, "run_images": args.run_images, "npz": bool(args.npz), "steps": {}}
    tic = time.perf_counter()
    result["steps"] = run_steps(args, out, Clock(args.deadline))
    result["seconds"] = time.perf_counter() - tic
    result["ok"] = all(s.get("ok") is not False for s in result["steps"].values())
    text, md = summarize(result)
    (out / "gpu_check.json").write_text(text + "\n")
    (out / "gpu_check.md").write_text(md)
    print(text)
    print(md)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
