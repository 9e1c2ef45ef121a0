"""Shared fixtures: paths to the shipped data, a fresh ``params.cfg`` per test."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"


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
