"""Tiny simulated scans for training tests (N=32: CPU training is slow, keep them small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptycho_torch.data import RawData
from ptycho_torch.simulation import simulate

N = 32
NPHOTONS = 1e6


def tiny_scan(n_positions: int, seed: int) -> RawData:
    return simulate(object_kind="lines", N=N, n_positions=n_positions, nphotons=NPHOTONS, object_size=3 * N, seed=seed)


@pytest.fixture(scope="session")
def scan_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train.npz, test.npz): 32 and 16 positions over different objects."""
    root = tmp_path_factory.mktemp("scans")
    return tiny_scan(32, seed=0).to_file(root / "train.npz"), tiny_scan(16, seed=1).to_file(root / "test.npz")
