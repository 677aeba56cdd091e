# isda-exp: `make install`, then `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast lint-clean

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
