"""Shared fixtures: paths to the shipped data, a fresh ``params.cfg`` per test, and the oracle
bundle (``tests/oracle.py``: a tiny ONNX graph with known outputs) with an engine over it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/oracle.py, for every test folder

from oracle import write_oracle_bundle

from ptycho_torch.bundle import Bundle, load_bundle

if TYPE_CHECKING:
    from serving.engine import Engine

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
ORACLE_N = 32


@pytest.fixture(autouse=True)
def _fresh_legacy_params():
    from ptycho_torch import params

    params.reset()
    yield
    params.reset()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The repository's ``data/`` folder (real scan, real probe/object; origin and licence in its README)."""
    if not DATA_DIR.is_dir():
        pytest.fail(f"data folder not found at {DATA_DIR}; it ships with the repository")
    return DATA_DIR


@pytest.fixture(scope="session")
def oracle_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(write_oracle_bundle(tmp_path_factory.mktemp("oracle") / "bundle", N=ORACLE_N))


@pytest.fixture(scope="session")
def oracle_bundle_g2(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(write_oracle_bundle(tmp_path_factory.mktemp("oracle2") / "bundle", N=ORACLE_N, gridsize=2,
                                           name="oracle2"))


@pytest.fixture(scope="session")
def engine(oracle_bundle: Bundle) -> Engine:
    """The onnxruntime engine (a pipeline runner) over the gridsize-1 oracle bundle."""
    from serving.engine import Engine

    return Engine(oracle_bundle, max_batch_size=16, providers=["cpu"], intra_op_threads=1)
