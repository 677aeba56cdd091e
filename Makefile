# isda-exp: `make install`, then `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: install test test-slow test-all test-fast lint-clean gpu-check

install:  ## create .venv and install the package (editable) with the tested pins
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools prints a notice for every editable install of a package whose folders are mapped
	@# (configs/ -> isda_exp/configs); harmless here, since config_dir() finds configs/ by path
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -c requirements.txt -e ".[test,slurm,examples]"
	$(PY) -c "import torch, torchvision, hydra, isda_exp; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| hydra', hydra.__version__)"

# `make test` runs every test not marked slow; `make test-slow` the slow ones (real data, torchrun,
# kill -9 at random moments, submitit, joblib, the wheel); `make test-all` the whole suite. CI runs
# `make test`, then `make test-slow`. pytest exits 5 when a marker selects no test (e.g. a checkout
# without any slow test): that is not a failure here.
# Tests run side by side, one pytest-xdist worker per core (-n auto; whole files, so a module's
# shared fixture is built once; conftest puts the files holding slow tests first, so the short
# tests fill the workers' ends). Every process a test starts computes on one thread
# (OMP_NUM_THREADS=1), so no thread spin-waits for a busy core; tests of 2 ranks fork them from
# the pytest worker (no second import of torch).
XDIST ?= -n auto --dist loadfile
TESTS_READY = @test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
test:  ## every test not marked slow (CPU; see README for the measured time)
	$(TESTS_READY)
	$(PY) -m pytest -q -m "not slow" $(XDIST) || [ $$? -eq 5 ]

test-slow:  ## the slow end-to-end tests (real data, torchrun, kill -9, submitit)
	$(TESTS_READY)
	$(PY) -m pytest -q -m slow $(XDIST) || [ $$? -eq 5 ]

test-all:  ## the whole suite in one schedule (faster than make test, then make test-slow)
	$(TESTS_READY)
	$(PY) -m pytest -q $(XDIST)

test-fast: test  ## the former name of `make test`

gpu-check:  ## the GPU acceptance check (< 6 min on one GPU): JSON + Markdown summary in outputs/gpu_check
	@PY=$(PY) bash scripts/gpu_check.sh

# ------------------------------------------------------------------ the paper's tables
# make table1 / table2: the full-recipe sweeps (3 seeds), then the tables (Markdown, LaTeX) and the
# curves in outputs/. DRY=1 prints the runs and their estimated cost instead of training.
# Extra Hydra overrides go in ARGS, e.g. ARGS="hydra/launcher=slurm hydra.launcher.partition=gpu"
# or ARGS="model=resnet32,resnet110" (a subset of the table's cells).
ARGS ?=
DRY ?=
OUT ?= outputs

.PHONY: table1 table2 table3 table5 table1-smoke table2-smoke table3-smoke table5-smoke lambda-search lambda-search-smoke

define sweep_then_report  # $(1): table number, $(2): runs dir, $(3): Hydra overrides
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan experiment=table$(1) out_root=$(2) $(3); else \
	  $(PY) -m isda_exp -m experiment=table$(1) out_root=$(2) $(3); status=$$?; \
	  $(PY) -m isda_exp.report $(2) --table $(1) --format md --out $(2).md && \
	  $(PY) -m isda_exp.report $(2) --table $(1) --format tex --out $(2).tex && \
	  $(PY) -m isda_exp.report $(2) --table $(1) --format csv --out $(2).csv && \
	  $(PY) -m isda_exp.report $(2) --curves $(2)_curves.png && cat $(2).md && \
	  echo "tables: $(2).md $(2).tex $(2).csv  curves: $(2)_curves.png"; \
	  exit $$(( status || $$? )); fi
endef

table1:  ## Table 1: every model x CIFAR-10/100 x baseline/ISDA x 3 seeds (full recipes; GPU-weeks)
	$(call sweep_then_report,1,$(OUT)/table1,$(ARGS))

table2:  ## Table 2: WRN-28-10 / Shake-Shake with Cutout and AutoAugment, baseline/ISDA x 3 seeds
	$(call sweep_then_report,2,$(OUT)/table2,$(ARGS))

table5:  ## Table 5 (ablation): WRN-28-10 x CIFAR-10/100 x Basic, identity/diagonal/shared covariance, constant lambda_0, ISDA x 3 seeds
	$(call sweep_then_report,5,$(OUT)/table5,$(ARGS))

# Table 3 is two sweeps into one folder (experiment=table3: ResNet-110, nine rows; table3_wrn:
# WRN-28-10 at its recipe's dropout, seven rows), then one report. DRY=1 plans both.
define table3_sweeps  # $(1): runs dir, $(2): Hydra overrides
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan experiment=table3 out_root=$(1) $(2) && \
	  $(PY) -m isda_exp.sweeps.plan experiment=table3_wrn out_root=$(1) $(2); else \
	  $(PY) -m isda_exp -m experiment=table3 out_root=$(1) $(2); s1=$$?; \
	  $(PY) -m isda_exp -m experiment=table3_wrn out_root=$(1) $(2); s2=$$?; \
	  $(PY) -m isda_exp.report $(1) --table 3 --format md --out $(1).md && \
	  $(PY) -m isda_exp.report $(1) --table 3 --format tex --out $(1).tex && \
	  $(PY) -m isda_exp.report $(1) --table 3 --format csv --out $(1).csv && cat $(1).md && \
	  echo "tables: $(1).md $(1).tex $(1).csv"; \
	  exit $$(( s1 || s2 || $$? )); fi
endef

table3:  ## Table 3: ResNet-110 / WRN-28-10 x CIFAR-10/100 x competing losses, dropout, ISDA x 3 seeds
	$(call table3_sweeps,$(OUT)/table3,$(ARGS))

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

table3-smoke: smoke-data  ## every Table 3 cell in miniature on the CPU (a SMOKE table)
	$(call table3_sweeps,$(OUT)/smoke/$(SMOKE_SOURCE)/table3,$(SMOKE_ARGS))

table5-smoke: smoke-data  ## every Table 5 cell in miniature on the CPU (a SMOKE table)
	$(call sweep_then_report,5,$(OUT)/smoke/$(SMOKE_SOURCE)/table5,$(SMOKE_ARGS))

# ------------------------------------------------------------------ the lambda_0 protocol
# make lambda-search MODEL=m DATASET=d: the paper's choice of lambda_0 on a seeded class-balanced
# hold-out of 5,000 training images (dataset.validation), over VALUES x SEEDS, then
# `python -m isda_exp.sweeps.search` prints each value's mean hold-out error and the chosen one.
# Any parameter: PARAM=loss.gamma VALUES=0.5,1,2 LOSS=focal. DATA=dir: offline arrays (dir holds
# <dataset>.npz). DRY=1 plans the runs. Runs go to $(OUT)/search/<dataset>/<model>/<method>/<param>/.
MODEL ?=
DATASET ?=
SEEDS ?= 0,1,2
LOSS ?=
PARAM ?= isda.lambda_0
VALUES ?= 0.1,0.25,0.5,0.75,1.0
VALIDATION ?= 5000
SEARCH_DIR = $(OUT)/search/$(DATASET)/$(MODEL)/$(or $(LOSS),isda)/$(PARAM)
SEARCH_ARGS = model=$(MODEL) dataset=$(DATASET) $(if $(LOSS),loss=$(LOSS) isda=off,isda=on) \
  dataset.validation=$(VALIDATION) '$(PARAM)=$(VALUES)' seed=$(SEEDS) \
  $(if $(DATA),'dataset.npz=$(abspath $(DATA))/$${dataset.name}.npz') \
  'run_name=$(lastword $(subst ., ,$(PARAM)))_$${$(PARAM)}/seed$${seed}' out_root=$(SEARCH_DIR) $(ARGS)

lambda-search:  ## choose lambda_0 (or PARAM) on the 5,000-image hold-out: MODEL=m DATASET=d [SEEDS= VALUES= LOSS= PARAM= DATA= DRY=1]
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@test -n "$(MODEL)" -a -n "$(DATASET)" || { echo "error: give MODEL= and DATASET=, e.g. make lambda-search MODEL=resnet110 DATASET=cifar10"; exit 2; }
	@test -z "$(LOSS)" -o "$(PARAM)" != "isda.lambda_0" || { echo "error: LOSS=$(LOSS) runs without ISDA, so lambda_0 does nothing; give the loss's PARAM= and VALUES=, e.g. PARAM=loss.gamma VALUES=0.5,1,2"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan $(SEARCH_ARGS); else \
	  $(PY) -m isda_exp -m $(SEARCH_ARGS); status=$$?; \
	  $(PY) -m isda_exp.sweeps.search $(SEARCH_DIR) --param $(PARAM); exit $$(( status || $$? )); fi

# In miniature: 2 epochs (lambda is 0 in the first), a 100-image hold-out of the smoke data.
lambda-search-smoke: smoke-data  ## the search in miniature on the CPU (MODEL=resnet32 DATASET=cifar10 unless given)
	@$(MAKE) --no-print-directory lambda-search MODEL=$(or $(MODEL),resnet32) DATASET=$(or $(DATASET),cifar10) \
	  SEEDS=$(SMOKE_SEEDS) VALIDATION=100 DATA=$(SMOKE_DATA) OUT=$(OUT)/smoke/$(SMOKE_SOURCE) \
	  ARGS="trainer.epochs=2 dataset.train_subset=$(SMOKE_SUBSET) trainer.progress=false $(ARGS)"

# ------------------------------------------------------------------ the reduced reproduction
# make mini: the install check on real CIFAR-10, under an hour on any 2-core x86 CPU, fp32 included
# (configs/experiment/mini.yaml): ResNet-32, baseline vs ISDA, 3 seeds per arm, a seeded
# 6,000-image training subset and 3,000-image test subset, 18 epochs, precision auto (bf16 only
# where the CPU or GPU has it natively), channels_last. make mini-bf16: the earlier protocol
# (configs/experiment/mini_bf16.yaml: CIFAR-10 and CIFAR-100, 8,000 images, 20 epochs, bf16) for
# machines with native bf16. DATA=dir holds cifar10.npz (and cifar100.npz for mini-bf16); without
# it torchvision downloads CIFAR into ./data. Each ends with the table, the ISDA - baseline
# comparison (Welch 95% CI) and the curves next to the runs in $(OUT)/<name>/. DRY=1 lists the
# runs and the expected wall time on this machine (a few training steps timed here: plan --measure).
.PHONY: mini mini-bf16
MINI_ARGS = $(if $(DATA),'dataset.npz=$(abspath $(DATA))/$${dataset.name}.npz') $(ARGS)

define reduced_reproduction  # $(1): experiment name, $(2): data sets it needs
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@$(if $(DATA),for d in $(2); do test -f $(DATA)/$$d.npz || { echo "error: DATA=$(DATA) must hold $$d.npz (python ../shared/data/unpack_cifar.py $$d $(DATA)/$$d.npz)"; exit 2; }; done)
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan experiment=$(1) out_root=$(OUT)/$(1) $(MINI_ARGS) --measure; else \
	  start=$$(date +%s); dir=$(OUT)/$(1); \
	  $(PY) -m isda_exp -m experiment=$(1) out_root=$$dir $(MINI_ARGS); status=$$?; \
	  { $(PY) -m isda_exp.report $$dir && echo && $(PY) -m isda_exp.report $$dir --compare; } > $$dir/report.md && \
	  $(PY) -m isda_exp.report $$dir --format csv --out $$dir/report.csv && \
	  $(PY) -m isda_exp.report $$dir --compare --format csv --out $$dir/compare.csv && \
	  $(PY) -m isda_exp.report $$dir --curves $$dir/curves.png && cat $$dir/report.md && \
	  echo "$(1): $$(( ($$(date +%s) - start) / 60 )) min; report: $$dir/report.md (+ report.csv, compare.csv)  curves: $$dir/curves.png"; \
	  exit $$(( status || $$? )); fi
endef

mini:  ## the install check: a reduced real-CIFAR-10 reproduction, 15-50 minutes on 2 CPU cores (DRY=1: runs and expected time here)
	$(call reduced_reproduction,mini,cifar10)

mini-bf16:  ## the earlier reduced protocol in bf16 (CIFAR-10 and -100) for CPUs/GPUs with native bf16
	$(call reduced_reproduction,mini_bf16,cifar10 cifar100)

# ------------------------------------------------------------------ Table 1's first cell, in full (GPU)
# make repro-resnet32 DATA=dir: ResNet-32 on CIFAR-10, baseline vs ISDA, the full recipe (160
# epochs; configs/experiment/repro_resnet32.yaml), SEEDS= per arm, K runs at once per GPU (K=, else
# the packing make gpu-check measured), then report.md (the table and the ISDA - baseline interval),
# report.csv, compare.csv and curves.png in $(OUT)/repro_resnet32. DRY=1: the runs and their
# expected wall time from measured throughput. MINI=1: the same path in miniature on the CPU.
# scripts/repro_resnet32.sh does the work (also where there is no make); docs/gpu.md.
.PHONY: repro-resnet32
K ?=
MINI ?=
repro-resnet32:  ## Table 1's ResNet-32 / CIFAR-10 cell, baseline vs ISDA, full recipe (DRY=1: runs + expected time)
	@PY=$(PY) OUT=$(OUT) DATA=$(DATA) SEEDS=$(SEEDS) K=$(K) DRY=$(DRY) MINI=$(MINI) ARGS="$(ARGS)" \
	  bash scripts/repro_resnet32.sh

# ------------------------------------------------------------------ Table 4 (ImageNet)
# make table4 IMAGENET=DIR: ResNet-50, ResNet-152, ResNeXt-50 32x4d x baseline/ISDA (diagonal,
# lambda_0 7.5) on DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG with the authors' README recipe
# (configs/experiment/table4.yaml), then the table beside the paper's top-1/top-5 in $(OUT)/table4.md.
# DRY=1 lists the 6 runs and their cost (no data needed).
# table4-smoke: the same sweep on a tiny folder of real JPEGs (CIFAR-10 images, upscaled to 48 px,
# written by scripts/cifar_folder.py from DATA/cifar10.npz or ../shared/data), 1 epoch at 32 px on
# the CPU; skipped with a message when neither holds CIFAR-10.
.PHONY: table4 table4-smoke
IMAGENET ?=
TABLE4_SMOKE = $(OUT)/smoke/table4
SHARED_DATA ?= ../shared/data

table4:  ## Table 4 on ImageNet: IMAGENET=DIR (DRY=1: the runs and their cost)
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan experiment=table4 out_root=$(OUT)/table4 $(ARGS); else \
	  test -n "$(IMAGENET)" || { echo "error: give IMAGENET=DIR (DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG)"; exit 2; }; \
	  $(PY) -m isda_exp -m experiment=table4 out_root=$(OUT)/table4 'dataset.root=$(abspath $(IMAGENET))' $(ARGS); status=$$?; \
	  $(PY) -m isda_exp.report $(OUT)/table4 --table 4 --out $(OUT)/table4.md && $(PY) -m isda_exp.report $(OUT)/table4 --table 4 --curves $(OUT)/table4_curves.png; \
	  exit $$(( status || $$? )); fi

table4-smoke:  ## Table 4 in miniature on real JPEGs (CIFAR-10 as class folders) on the CPU
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@npz=$(if $(DATA),$(abspath $(DATA))/cifar10.npz,$(TABLE4_SMOKE)/cifar10.npz); \
	if [ ! -f $$npz ]; then \
	  if [ -z "$(DATA)" ] && [ -f $(SHARED_DATA)/cifar10.pack.npz ]; then mkdir -p $(TABLE4_SMOKE) && \
	    $(PY) $(SHARED_DATA)/unpack_cifar.py cifar10 $$npz || exit 2; \
	  else echo "table4-smoke skipped: no CIFAR-10 (give DATA=dir holding cifar10.npz, or ../shared/data)"; exit 0; fi; fi; \
	test -d $(TABLE4_SMOKE)/jpeg/train || $(PY) scripts/cifar_folder.py $$npz $(TABLE4_SMOKE)/jpeg \
	  --train-per-class 8 --val-per-class 4 --size 48 || exit 2; \
	$(PY) -m isda_exp -m experiment=table4 out_root=$(TABLE4_SMOKE)/runs dataset=folder dataset.name=cifar10-jpeg \
	  dataset.root=$(abspath $(TABLE4_SMOKE))/jpeg dataset.train_crop=32 dataset.eval_resize=36 dataset.eval_crop=32 \
	  trainer.epochs=1 trainer.batch_size=16 trainer.eval_batch_size=40 trainer.num_workers=1 \
	  trainer.channels_last=false trainer.progress=false $(if $(MODELS),model=$(MODELS)) $(ARGS); status=$$?; \
	$(PY) -m isda_exp.report $(TABLE4_SMOKE)/runs --table 4 --out $(TABLE4_SMOKE)/table4.md && $(PY) -m isda_exp.report $(TABLE4_SMOKE)/runs --table 4 --curves $(TABLE4_SMOKE)/table4_curves.png; \
	exit $$(( status || $$? ))

# ------------------------------------------------------------------ Table 7 (segmentation)
# make table7 CITYSCAPES=DIR: DeepLab-v3 and PSPNet (ResNet-101) x baseline/ISDA on Cityscapes fine
# (DIR/leftImg8bit, DIR/gtFine) with the authors' recipe (configs/experiment/table7.yaml), then the
# table beside the paper's mIoU (single scale / multi-scale / + flip) with ISDA - baseline in
# $(OUT)/table7.md. DRY=1 lists the 4 runs and their cost (no data needed).
# table7-smoke: the same sweep on the generated segmentation set (tiny DeepLab-v3 and PSPNet, 300
# iterations, 2 seeds) on the CPU, through the same trainer, report and table.
.PHONY: table7 table7-smoke
CITYSCAPES ?=
TABLE7_SMOKE = $(OUT)/smoke/table7
TABLE7_SMOKE_MODELS = deeplabv3_tiny,pspnet_tiny

table7:  ## Table 7 on Cityscapes: CITYSCAPES=DIR (DRY=1: the runs and their cost)
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@if [ "$(DRY)" = "1" ]; then $(PY) -m isda_exp.sweeps.plan experiment=table7 out_root=$(OUT)/table7 $(ARGS); else \
	  test -n "$(CITYSCAPES)" || { echo "error: give CITYSCAPES=DIR (DIR/leftImg8bit/{train,val}, DIR/gtFine/{train,val})"; exit 2; }; \
	  $(PY) -m isda_exp -m experiment=table7 out_root=$(OUT)/table7 'dataset.root=$(abspath $(CITYSCAPES))' $(ARGS); status=$$?; \
	  $(PY) -m isda_exp.report $(OUT)/table7 --table 7 --out $(OUT)/table7.md && \
	  $(PY) -m isda_exp.report $(OUT)/table7 --table 7 --format csv --out $(OUT)/table7.csv && cat $(OUT)/table7.md; \
	  exit $$(( status || $$? )); fi

table7-smoke:  ## Table 7 in miniature on generated scenes on the CPU (about 2 minutes on 2 cores)
	@test -x $(PY) || { echo "error: $(PY) not found; run 'make install' first"; exit 2; }
	@$(PY) -m isda_exp -m experiment=table7 out_root=$(TABLE7_SMOKE)/runs dataset=seg_synthetic \
	  model=$(or $(MODELS),$(TABLE7_SMOKE_MODELS)) model.pretrained=null seed=$(SMOKE_SEEDS) \
	  trainer.sync_bn=false trainer.log_every=100 trainer.num_workers=0 trainer.threads=1 \
	  trainer.progress=false $(ARGS); status=$$?; \
	$(PY) -m isda_exp.report $(TABLE7_SMOKE)/runs --table 7 --out $(TABLE7_SMOKE)/table7.md && cat $(TABLE7_SMOKE)/table7.md; \
	exit $$(( status || $$? ))
