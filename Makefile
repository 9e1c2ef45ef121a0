# Two commands for a fresh machine:
#   make demo    # create .venv, install what the demo needs (serving: no torch, no Ptychodus), run it
#   make test    # install everything the tests need (torch, Lightning, Ptychodus, ...) and run them
# One target away from the full set without running anything: `make setup`.
# A GPU host: `make setup RUNTIME=gpu` (onnxruntime-gpu instead of onnxruntime; never both).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RUNTIME ?= cpu
EXTRAS ?= $(RUNTIME),train,test,ptychodus,mlflow,pva
DEMO_EXTRAS ?= $(RUNTIME)
DEMO_DIR ?= out/demo

.PHONY: setup setup-demo demo default-bundle lint test clean

setup: $(VENV)/.installed
setup-demo: $(VENV)/.installed-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The demo serves a bundle and sends it a scan: the core install (numpy, onnxruntime, FastAPI).
$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(DEMO_EXTRAS)]'
	touch $@

# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build for lightning.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m serving.ptychodus.hook install   # editable installs cannot place Ptychodus' plugin hook
	touch $@ $(VENV)/.installed-demo

# The main job: serve the shipped default model and reconstruct the real scan's held-out half over HTTP.
demo: setup-demo
	VENV=$(VENV) scripts/demo.sh $(DEMO_DIR)

# Rebuild serving/default_bundle from the shipped real scan (about 20 minutes on one CPU core).
default-bundle: setup
	$(PY) -m export.default_bundle

# ruff and mypy against scripts/lint_baseline.json: a finding the baseline does not hold fails (scripts/lint.py;
# `$(PY) scripts/lint.py --update` records a baseline that shrank)
lint: setup
	$(PY) scripts/lint.py

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
