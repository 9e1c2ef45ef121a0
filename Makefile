# Two commands for a fresh machine:
#   make demo   # create .venv, install everything, run the main job on the built-in default
#   make test   # run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
EXTRAS ?= train,test,ptychodus,mlflow
DEMO_DIR ?= out/demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build for lightning.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: setup
	$(VENV)/bin/ptychopinn simulate --object lines --n 64 --positions 500 --nphotons 1e6 --out $(DEMO_DIR)/simulated.npz
	$(VENV)/bin/ptychopinn inspect $(DEMO_DIR)/simulated.npz --png $(DEMO_DIR)/simulated.png
	$(VENV)/bin/ptychopinn inspect ../shared/data/siemens-star-small.npz.bz2 --png $(DEMO_DIR)/siemens-star.png

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
