"""Metrics: perfect scores for identical images, correct response to known shifts and phase offsets."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import fourier_shift, gaussian_filter

from ptycho_torch import metrics
from ptycho_torch.errors import DataContractError


@pytest.fixture
def obj() -> np.ndarray:
    """A 64x64 complex object with structure at many scales (periodic smoothed noise, so a Fourier shift is a clean circular shift) and a band-limited phase."""
    rng = np.random.default_rng(7)
    amplitude = 0.6 + 0.3 * gaussian_filter(rng.standard_normal((64, 64)), 2.0, mode="wrap") / 0.15
    phase = 0.5 * gaussian_filter(rng.standard_normal((64, 64)), 3.0, mode="wrap") / 0.1
    return np.clip(amplitude, 0.05, None) * np.exp(1j * np.clip(phase, -1.2, 1.2))


def test_identical_images_score_perfectly(obj):
    result = metrics.evaluate_reconstruction(obj, obj)
    assert result.shift == (0.0, 0.0)
    for pair in (result.ssim, result.ms_ssim):
        assert pair == pytest.approx((1.0, 1.0), abs=1e-9)
    assert result.psnr == (math.inf, math.inf)
    assert result.mae == pytest.approx((0.0, 0.0), abs=1e-12)
    assert result.frc50 == (32.0, 32.0)  # never crossed: the whole 64 // 2 rings
    np.testing.assert_allclose(result.frc[0][1:], 1.0)
    assert result.ssim.amplitude == result.ssim[0] and result.psnr.phase == math.inf  # named and positional
    assert result.scores() == {"ssim_amplitude": pytest.approx(1.0), "ssim_phase": pytest.approx(1.0),
                               "psnr_amplitude": math.inf, "psnr_phase": math.inf,
                               "frc50_amplitude": 32.0, "frc50_phase": 32.0}  # the benchmarks' JSON keys


def test_registration_recovers_a_known_sub_pixel_shift(obj):
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(obj), (2.3, -1.7)))  # content moves down 2.3, left 1.7
    aligned, reference, shift = metrics.register(moved, obj)
    assert shift == pytest.approx((-2.3, 1.7), abs=0.03)
    assert aligned.shape == reference.shape == (58, 58)  # ceil(2.3) = 3 px cropped from every side
    assert np.max(np.abs(aligned - reference)) < 0.05

    registered = metrics.evaluate_reconstruction(moved, obj)
    unregistered = metrics.evaluate_reconstruction(moved, obj, register_first=False)
    assert registered.ssim[0] > 0.99 and registered.ssim[1] > 0.99
    assert unregistered.ssim[0] < 0.8
    assert registered.frc50[0] > 2 * unregistered.frc50[0]


def test_global_phase_offset_is_removed_even_across_the_wrap(obj):
    offset = obj * np.exp(1j * 2.5)  # pushes part of the phase past +pi
    aligned = metrics.evaluate_reconstruction(offset, obj, register_first=False, phase_align="mean")
    raw = metrics.evaluate_reconstruction(offset, obj, register_first=False, phase_align="none")
    assert aligned.mae[1] < 1e-9
    assert aligned.ssim[1] == pytest.approx(1.0, abs=1e-9)
    assert raw.mae[1] > 1.0


def test_plane_alignment_removes_a_phase_ramp(obj):
    yy, xx = np.mgrid[0:64, 0:64]
    ramped = obj * np.exp(1j * (0.012 * xx - 0.008 * yy + 0.3))
    plane = metrics.evaluate_reconstruction(ramped, obj, register_first=False, phase_align="plane")
    mean_only = metrics.evaluate_reconstruction(ramped, obj, register_first=False, phase_align="mean")
    assert plane.mae[1] < 1e-9
    assert mean_only.mae[1] > 0.1


def test_amplitude_is_normalised_to_the_reference_mean(obj):
    result = metrics.evaluate_reconstruction(3.7 * obj, obj, register_first=False)
    assert result.mae[0] < 1e-12
    np.testing.assert_allclose(metrics.normalize_amplitude([[2.0, 4.0]], [[1.0, 1.0]]), [[2 / 3, 4 / 3]])


def test_psnr_and_mae_of_a_known_error():
    reference = np.zeros((8, 8))
    reference[0, 0] = 2.0  # data range 2
    pred = reference + 0.1
    assert metrics.mae(pred, reference) == pytest.approx(0.1)
    assert metrics.psnr(pred, reference) == pytest.approx(10 * np.log10(4.0 / 0.01))


def test_frc_of_two_noisy_copies_is_the_signal_fraction():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((128, 128))
    a = signal + rng.standard_normal((128, 128))
    b = signal + rng.standard_normal((128, 128))
    curve = metrics.fourier_ring_correlation(a, b)
    assert curve.shape == (64,)
    assert np.mean(curve[5:]) == pytest.approx(0.5, abs=0.03)  # S / (S + N) for equal powers


def test_frc_cutoff_interpolates_between_rings():
    curve = [1.0, 0.9, 0.7, 0.3, 0.1]
    assert metrics.frc_cutoff(curve, 0.5) == pytest.approx(2.5)
    assert metrics.frc_cutoff(curve, 1 / 7) == pytest.approx(3 + (0.3 - 1 / 7) / 0.2)
    assert metrics.frc_cutoff([1.0, 0.9, 0.8], 0.5) == 3.0
    assert metrics.frc_cutoff([0.5, 0.2, 0.1], 0.5) == pytest.approx(0.0)  # crosses exactly at ring 0


def test_frc_cutoff_is_zero_when_nothing_is_resolved():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'divide by zero' RuntimeWarning
        assert metrics.frc_cutoff([0.0, 0.0, 0.0, 0.0], 0.5) == 0.0  # ring 0 equals ring 1, both below
        assert metrics.frc_cutoff([0.2, 0.1, 0.6, 0.0], 0.5) == 0.0  # was -3: interpolated outside [0, 1]
        flat = np.ones((32, 32), np.complex128)  # a flat object: amplitude only in ring 0, phase 0 everywhere
        result = metrics.evaluate_reconstruction(flat, flat, register_first=False)
    assert result.frc50 == (0.5, 0.0) and result.frc1over7 == (pytest.approx(6 / 7), 0.0)


def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(DataContractError, match=r"same shape, got \(4, 4\) and \(4, 5\)"):
        metrics.ssim(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(DataContractError, match="`method` must be one of"):
        metrics.align_phase(np.zeros((4, 4)), method="ramp")  # type: ignore[arg-type]


def test_periodic_rms_measures_only_the_scan_step_periodic_part():
    from ptycho_torch.metrics import periodic_rms

    rows, cols = np.indices((64, 60))
    grid = 0.01 * np.cos(2 * np.pi * rows / 4)  # period 4 along rows: cells +-0.01, 0 -> RMS sqrt(0.5)*0.01
    assert periodic_rms(grid, 4) == pytest.approx(0.01 * np.sqrt(0.5), rel=1e-9)
    smooth = np.sin(2 * np.pi * cols / 60) + np.cos(2 * np.pi * rows / 64)  # no period-4 content
    assert periodic_rms(smooth, 4) < 0.002
    assert periodic_rms(smooth + grid, 4) == pytest.approx(periodic_rms(grid, 4), abs=0.002)
    with pytest.raises(DataContractError, match="period"):
        periodic_rms(grid, 1)
