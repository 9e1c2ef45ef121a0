"""Shared fixtures: paths to the shipped data, a fresh ``params.cfg`` per test."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_legacy_params():
    from ptycho_torch import params

    params.reset()
    yield
    params.reset()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only ``../shared/data`` folder (real scan, real probe/object)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}; tests expect ../shared/data beside the project")
    return SHARED_DATA
