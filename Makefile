# isda-exp: `make install`, then `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast lint-clean gpu-check

install:  ## create .venv and install the package (editable) with the tested pins
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.txt -e ".[test,slurm]"
	$(PY) -c "import torch, torchvision, hydra, isda_exp; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| hydra', hydra.__version__)"

test:  ## the whole test suite (CPU, about 5-10 minutes on 2 cores)
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	$(PY) -m pytest -q

test-fast:  ## skip the slow tests (real data, long subprocess runs)
	$(PY) -m pytest -q -m "not slow"

gpu-check:  ## the GPU acceptance check (< 8 min on one H100): JSON + Markdown summary in outputs/gpu_check
	@PY=$(PY) bash scripts/gpu_check.sh

# ------------------------------------------------------------------ the paper's tables
# make table1 / table2: the full-recipe sweeps (3 seeds), then the tables (Markdown, LaTeX) and the
# curves in outputs/. DRY=1 prints the runs and their estimated cost instead of training.
# Extra Hydra overrides go in ARGS, e.g. ARGS="hydra/launcher=slurm hydra.launcher.partition=gpu"
# or ARGS="model=resnet32,resnet110" (a subset of the table's cells).
ARGS ?=
DRY ?=
OUT ?= outputs

.PHONY: table1 table2 table1-smoke table2-smoke

define sweep_then_report  # $(1): table number, $(2): runs dir, $(3): Hydra overrides
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.plan experiment=table$(1) out_root=$(2) $(3); else \
	  $(PY) -m isda_exp -m experiment=table$(1) out_root=$(2) $(3); status=$$?; \
	  $(PY) -m isda_exp.report $(2) --table $(1) --format md --out $(2).md && \
	  $(PY) -m isda_exp.report $(2) --table $(1) --format tex --out $(2).tex && \
	  $(PY) -m isda_exp.report $(2) --format csv --out $(2).csv && \
	  $(PY) -m isda_exp.report $(2) --curves $(2)_curves.png && cat $(2).md && \
	  echo "tables: $(2).md $(2).tex $(2).csv  curves: $(2)_curves.png"; \
	  exit $$(( status || $$? )); fi
endef

table1:  ## Table 1: every model x CIFAR-10/100 x baseline/ISDA x 3 seeds (full recipes; GPU-weeks)
	$(call sweep_then_report,1,$(OUT)/table1,$(ARGS))

table2:  ## Table 2: WRN-28-10 / Shake-Shake with Cutout and AutoAugment, baseline/ISDA x 3 seeds
	$(call sweep_then_report,2,$(OUT)/table2,$(ARGS))

# Smoke tables: every cell in miniature on the CPU (1 epoch, 32-image train/test subsets, 2 seeds),
# the same code path end to end. Synthetic stand-in arrays unless DATA=DIR holds cifar10.npz and
# cifar100.npz (e.g. written by ../shared/data/unpack_cifar.py). MODELS=a,b limits the models.
DATA ?=
SMOKE_SEEDS ?= 0,1
SMOKE_SUBSET ?= 32
SMOKE_SOURCE := $(if $(DATA),real,synthetic)
SMOKE_DATA := $(if $(DATA),$(abspath $(DATA)),$(OUT)/smoke/synthetic-data)
SMOKE_ARGS = seed=$(SMOKE_SEEDS) trainer.epochs=1 dataset.train_subset=$(SMOKE_SUBSET) \
  dataset.test_subset=$(SMOKE_SUBSET) 'dataset.npz=$(SMOKE_DATA)/$${dataset.name}.npz' \
  trainer.progress=false $(if $(MODELS),model=$(MODELS)) $(ARGS)

$(OUT)/smoke/synthetic-data/cifar10.npz $(OUT)/smoke/synthetic-data/cifar100.npz:
	$(PY) scripts/synthetic_npz.py $@ --num-classes $(if $(findstring cifar100,$@),100,10)

smoke-data:
	@$(if $(DATA),test -f $(DATA)/cifar10.npz -a -f $(DATA)/cifar100.npz || { echo "error: DATA=$(DATA) must hold cifar10.npz and cifar100.npz (python ../shared/data/unpack_cifar.py cifar10 $(DATA)/cifar10.npz)"; exit 2; },\
	  $(MAKE) --no-print-directory $(OUT)/smoke/synthetic-data/cifar10.npz $(OUT)/smoke/synthetic-data/cifar100.npz)

table1-smoke: smoke-data  ## every Table 1 cell in miniature on the CPU (a SMOKE table, ~15 min)
	$(call sweep_then_report,1,$(OUT)/smoke/$(SMOKE_SOURCE)/table1,$(SMOKE_ARGS))

table2-smoke: smoke-data  ## every Table 2 cell in miniature on the CPU (a SMOKE table, ~15 min)
	$(call sweep_then_report,2,$(OUT)/smoke/$(SMOKE_SOURCE)/table2,$(SMOKE_ARGS))
