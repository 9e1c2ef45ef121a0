"""The training recipe's probe: the scan's probe refined on the scan itself."""

from __future__ import annotations

import dataclasses

import numpy as np

from ptycho_torch.probe_estimate import estimate_probe, with_probe
from ptycho_torch.simulation import default_probe, make_object, simulate_scan

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
