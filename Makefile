# Two commands for a fresh machine:
#   make demo   # create .venv, install everything, run the main job on the built-in default
#   make test   # run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
EXTRAS ?= train,test,ptychodus,mlflow
DEMO_DIR ?= out/demo

.PHONY: setup demo default-bundle test clean

setup: $(VENV)/.installed

# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build for lightning.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# The main job: serve the shipped default model and reconstruct the real scan's held-out half over HTTP.
demo: setup
	VENV=$(VENV) scripts/demo.sh $(DEMO_DIR)

# Rebuild serving/default_bundle from the shipped real scan (about 10 minutes on 2 CPU cores).
default-bundle: setup
	$(PY) -m export.default_bundle

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
