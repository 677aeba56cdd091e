#!/usr/bin/env bash
# Table 1's first cell, reproduced: ResNet-32 on CIFAR-10, baseline vs ISDA, the full recipe
# (configs/experiment/repro_resnet32.yaml), several runs at once per GPU, then the report, the
# ISDA - baseline interval (Welch 95% CI) and the curves. `make repro-resnet32` runs this; so does
# scripts/gpu_session.sh on a machine without make. Settings (environment):
#   DATA=dir        holds cifar10.npz (offline); else torchvision downloads CIFAR-10 into ./data
#   SEEDS=0,1,2     seeds per arm                       OUT=outputs   runs in $OUT/repro_resnet32
#   K=              runs at once per GPU (default: the measured packing in THROUGHPUT, else 2 on a
#                   GPU, 1 on a CPU); the joblib launcher runs K x GPUS jobs
#   THROUGHPUT=     bench_train.py --json files (default: $OUT/gpu_check/bench_{gpu,packing}.json)
#   COMPILE=auto    trainer.compile: auto = whichever of bf16+cl and bf16+cl+compile THROUGHPUT
#                   measured faster for the whole run (compilation included); off on a CPU
#   DRY=1           print the runs and their expected wall time (measured throughput) instead
#   DEADLINE=s      stop the runs after s seconds (each checkpoints; the same command resumes)
#   MINI=1          the whole path in miniature on the CPU (2 epochs, 256/256 images)
#   ARGS="..."      more Hydra overrides
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-outputs}
RUNS="$OUT/repro_resnet32"
SEEDS=${SEEDS:-0,1,2}
MINI=${MINI:-}
say() { echo "repro-resnet32: $*" >&2; }

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null) || { say "error: $PY cannot import torch"; exit 2; }
[ -n "$MINI" ] && GPUS=0
THROUGHPUT=${THROUGHPUT:-$(ls "$OUT"/gpu_check/bench_gpu.json "$OUT"/gpu_check/bench_packing.json 2>/dev/null)}
if [ -z "${K:-}" ]; then
  K=$("$PY" -m isda_exp.sweeps.throughput packing $THROUGHPUT 2>/dev/null)
  [ -n "$K" ] || K=$([ "$GPUS" -gt 0 ] && echo 2 || echo 1)
fi
COMPILE=${COMPILE:-auto}
if [ "$COMPILE" = auto ]; then
  COMPILE=false
  if [ "$GPUS" -gt 0 ]; then
    best=$("$PY" -m isda_exp.sweeps.throughput fastest $THROUGHPUT --per-gpu "$K")
    case "$best" in *compile*|"") COMPILE=true ;; esac  # unmeasured: the experiment's default
  fi
fi
JOBS=$(( K * (GPUS > 0 ? GPUS : 1) ))
SWEEP=(experiment=repro_resnet32 "out_root=$RUNS" "seed=$SEEDS" "trainer.compile=$COMPILE"
       "hydra.launcher.n_jobs=$JOBS")
if [ -n "$MINI" ]; then
  DATA=${DATA:-$OUT/repro_resnet32-data}
  [ -f "$DATA/cifar10.npz" ] || "$PY" scripts/synthetic_npz.py "$DATA/cifar10.npz" --train 256 --test 256 >&2 || exit 2
  SWEEP+=(device=cpu trainer.epochs=2 dataset.train_subset=256 dataset.test_subset=256
          trainer.eval_batch_size=256 trainer.tensorboard=false)
fi
if [ -n "${DATA:-}" ]; then
  [ -f "$DATA/cifar10.npz" ] || { say "error: DATA=$DATA holds no cifar10.npz (python scripts/cifar_parts.py join, or ../shared/data/unpack_cifar.py cifar10 $DATA/cifar10.npz)"; exit 2; }
  SWEEP+=("dataset.npz=$(cd "$DATA" && pwd)/cifar10.npz")
fi
# shellcheck disable=SC2206
SWEEP+=(${ARGS:-})
say "$((GPUS > 0 ? GPUS : 0)) GPU(s), K=$K runs at once per device ($JOBS jobs), trainer.compile=$COMPILE, seeds $SEEDS"

plan() {
  local timing=(--measure)  # measured figures if given (timing steps here would cost device time)
  [ -n "$THROUGHPUT" ] && timing=($(printf -- '--throughput %s ' $THROUGHPUT))
  "$PY" -m isda_exp.sweeps.plan "${SWEEP[@]}" "${timing[@]}" --per-gpu "$K" --gpus "$((GPUS > 0 ? GPUS : 1))"
}
if [ "${DRY:-}" = 1 ]; then plan; exit $?; fi

mkdir -p "$RUNS"
plan > "$RUNS/plan.txt" 2>&1 && cat "$RUNS/plan.txt" >&2
start=$(date +%s)
# the sweep in its own process group, so that a deadline stops every job (each checkpoints on
# SIGTERM, isda_exp.training.preempt) and the report still runs on what has finished
setsid "$PY" -m isda_exp -m "${SWEEP[@]}" &
sweep=$!
if [ -n "${DEADLINE:-}" ]; then
  while kill -0 "$sweep" 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$DEADLINE" ]; do sleep 2; done
  if kill -0 "$sweep" 2>/dev/null; then
    say "deadline of $DEADLINE s reached: stopping the runs (checkpointed; the same command resumes)"
    kill -TERM -- "-$sweep" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$sweep" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$sweep" 2>/dev/null
  fi
fi
wait "$sweep"; status=$?
say "training: $(( $(date +%s) - start )) s, exit $status"
{ "$PY" -m isda_exp.report "$RUNS" && echo && "$PY" -m isda_exp.report "$RUNS" --compare; } > "$RUNS/report.md"
reported=$?
"$PY" -m isda_exp.report "$RUNS" --format csv --out "$RUNS/report.csv" 2>/dev/null
"$PY" -m isda_exp.report "$RUNS" --compare --format csv --out "$RUNS/compare.csv" 2>/dev/null
"$PY" -m isda_exp.report "$RUNS" --curves "$RUNS/curves.png" || reported=1
cat "$RUNS/report.md"
say "$(( ($(date +%s) - start) / 60 )) min; report: $RUNS/report.md (+ report.csv, compare.csv)  curves: $RUNS/curves.png"
exit $(( status || reported ))
