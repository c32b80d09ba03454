# Setup and everyday commands. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run demo-synthetic test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch/torchvision pinned: this build is provided locally and also runs on the CPU
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Fetch the real demo study (pycerr pat_4) and segment it into ./autoseg-output
run: install
	$(VENV)/bin/autoseg demo

demo-synthetic: install
	$(VENV)/bin/autoseg demo --synthetic -o autoseg-output-synthetic

## The whole test suite (GPU tests skip themselves without CUDA)
test: install
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not gpu" -x $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

bench: install
	$(PY) scripts/bench_predict.py

clean:
	rm -rf autoseg-output autoseg-output-synthetic .pytest_cache .mypy_cache .ruff_cache
