"""The solver's estimate on a training scan: its probe, and its object cut into per-pattern targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptycho_torch.grouping import extract_patches
from ptycho_torch.probe_estimate import estimate_probe, target_patches, with_targets
from ptycho_torch.simulation import simulate

N = 32


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - |corr|**2`` of the central N/2 windows (the distillation distance, numpy)."""
    a, b = a[:, N // 4: -N // 4, N // 4: -N // 4].ravel(), b[:, N // 4: -N // 4, N // 4: -N // 4].ravel()
    return float(1 - abs(np.vdot(a, b)) ** 2 / (np.vdot(a, a).real * np.vdot(b, b).real))


def test_target_patches_are_the_refined_object_where_each_pattern_was_measured():
    scan = simulate(object_kind="lines", N=N, n_positions=32, nphotons=1e6, object_size=3 * N, seed=0)
    estimate = estimate_probe(scan, workers=1)
    assert estimate.iterations > 0 and estimate.amplitude_error[1] < estimate.amplitude_error[0]
    targets = target_patches(scan, estimate)
    assert targets.shape == (32, N, N) and targets.dtype == np.complex64
    truth = extract_patches(scan.objectGuess, scan.xcoords, scan.ycoords, N)
    assert _distance(targets, truth) < 0.03  # measured 0.011: the solver found the object
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):  # one pixel off, the targets are further from the truth
        moved = dataclasses.replace(estimate, origin=(estimate.origin[0] + dx, estimate.origin[1] + dy))
        assert _distance(target_patches(scan, moved), truth) > 1.05 * _distance(targets, truth), (dx, dy)
    refined = with_targets(scan, estimate)
    np.testing.assert_array_equal(refined.Y, targets)
    np.testing.assert_array_equal(refined.probeGuess, estimate.probe[0])
    assert refined.diff3d is scan.diff3d or np.array_equal(refined.diff3d, scan.diff3d)
    assert estimate.summary()["iterations"] == estimate.iterations


def test_with_targets_needs_the_scan_the_estimate_was_refined_on():
    scan = simulate(object_kind="lines", N=N, n_positions=16, nphotons=1e6, object_size=3 * N, seed=1)
    estimate = estimate_probe(scan, iterations=2, workers=1)
    other = scan.subset(np.arange(8))
    assert with_targets(other, estimate).Y.shape == (8, N, N)  # cut at that scan's own positions
    with pytest.raises(ValueError, match="Y"):
        dataclasses.replace(scan, Y=target_patches(other, estimate))  # one target per pattern
