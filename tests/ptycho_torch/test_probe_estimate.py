"""The solver's estimate on a training scan: its probe, and its object cut into per-pattern targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptycho_torch.grouping import extract_patches
from ptycho_torch.probe_estimate import estimate_probe, target_patches, with_probe, with_targets
from ptycho_torch.simulation import default_probe, make_object, simulate, simulate_scan

N = 32


def _closeness(probe: np.ndarray, truth: np.ndarray) -> float:
    """|<p, t>| / (|p| |t|): 1 for the true probe up to a complex gain."""
    p, t = probe.ravel(), truth.ravel()
    return float(abs(np.vdot(p, t)) / (np.linalg.norm(p) * np.linalg.norm(t)))


def test_a_wrong_file_probe_is_refined_towards_the_measurements() -> None:
    truth = default_probe(N)
    obj = make_object("grf", 80, np.random.default_rng(0))
    centres = np.arange(N / 2, 80 - N / 2 - 1, 3.0)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    scan = simulate_scan(obj, truth, x, y, nphotons=1e6, seed=1)
    r = np.hypot(*np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2, indexing="ij"))
    wrong = (np.abs(truth) * np.exp(1j * 0.01 * r**2)).astype(np.complex64)  # the file's: another defocus
    given = with_probe(scan, wrong)
    estimate = estimate_probe(given, iterations=40)
    assert estimate.probe.shape == (1, N, N) and estimate.probe.dtype == np.complex64
    assert _closeness(wrong, truth) < 0.8
    assert _closeness(estimate.probe[0], truth) > 0.98
    first, last = estimate.amplitude_error
    assert last < 0.01 * first
    assert estimate.summary()["iterations"] == 40 == estimate.iterations


def test_with_probe_keeps_the_scan_and_stores_one_mode_as_a_2d_probe() -> None:
    scan = simulate_scan(make_object("grf", 48, np.random.default_rng(0)), default_probe(N), np.array([20.0, 24.0]),
                         np.array([20.0, 22.0]), nphotons=1e4, seed=0)
    replaced = with_probe(scan, np.ones((1, N, N), np.complex64))
    assert replaced.probeGuess.shape == (N, N) and (replaced.probeGuess == 1).all()
    assert dataclasses.replace(replaced, probeGuess=scan.probeGuess).diff3d is scan.diff3d


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
