"""Known-probe refinement and data-fit figures on small simulated scans (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.data_fit import MeasuredCounts, data_fit
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import extract_patches
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.refinement import RefineSettings, ScanModel, refine, refine_stitched
from ptycho_torch.simulation import default_probe, far_field_intensity, make_object, simulate_scan
from ptycho_torch.stitching import Stitcher, stitch_patches

N = 32
SIZE = 80


def _scan(nphotons: float = 1e6, *, jitter: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    obj = make_object("grf", SIZE, rng)
    centres = np.arange(N / 2, SIZE - N / 2 - 1, 3.0)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    x, y = x + rng.uniform(-jitter, jitter, x.shape), y + rng.uniform(-jitter, jitter, y.shape)
    return simulate_scan(obj, default_probe(N), x, y, nphotons=nphotons, seed=seed)


def _model(scan, amplitudes=None, **kwargs) -> tuple[ScanModel, tuple[slice, slice]]:
    """A model on the object's own grid (origin 0), and the window of the object that the scan covers."""
    positions = scan.positions
    model = ScanModel(scan.diff3d if amplitudes is None else amplitudes, positions, scan.probeGuess,
                      shape=scan.objectGuess.shape, origin=(0.0, 0.0), **kwargs)
    lo, hi = int(np.ceil(positions.min())) - 4, int(positions.max()) + 5
    return model, (slice(lo, hi), slice(lo, hi))


def _ssim(obj: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Amplitude and phase SSIM as the project scores reconstructions (positions are shared: no registration)."""
    return evaluate_reconstruction(obj, truth, register_first=False).ssim


def test_forward_model_reproduces_the_simulated_intensities():
    scan = _scan(jitter=0.4)
    model, _ = _model(scan)
    patches = extract_patches(scan.objectGuess, scan.xcoords, scan.ycoords, N)
    expected = np.fft.ifftshift(far_field_intensity(patches, scan.probeGuess), axes=(-2, -1))
    # sub-pixel: the model moves the probe (Fourier shift), the simulation interpolates the object
    # (bilinear); the two agree to a few per cent of the intensity, exactly on integer positions
    got = model.intensity(model.grow(scan.objectGuess, 0))
    assert np.abs(got - expected).sum() / expected.sum() < 0.05
    integer = _scan()
    model, _ = _model(integer)
    expected = np.fft.ifftshift(far_field_intensity(
        extract_patches(integer.objectGuess, integer.xcoords, integer.ycoords, N), integer.probeGuess), axes=(-2, -1))
    np.testing.assert_allclose(model.intensity(model.grow(integer.objectGuess, 0)), expected,
                               rtol=1e-4, atol=1e-3 * expected.max())


@pytest.mark.parametrize(("algorithm", "iterations", "amp_min", "phase_min"),
                         [("er", 20, 0.94, 0.95), ("rpie", 20, 0.93, 0.95)])
def test_refinement_from_flat_recovers_the_object(algorithm, iterations, amp_min, phase_min):
    scan = _scan()
    model, window = _model(scan)
    truth = scan.objectGuess[window]
    flat = _ssim(np.ones_like(truth), truth)
    states = list(refine(model, np.ones(model.shape, np.complex64),
                         RefineSettings(iterations=iterations, algorithm=algorithm, workers=1)))
    final = states[-1]
    amplitude, phase = _ssim(model.crop(final.object)[window], truth)
    assert amplitude >= amp_min and phase >= phase_min, (amplitude, phase, flat)
    assert flat[0] < 0.3 and flat[1] < 0.5  # the flat object scores far below: the bar is not trivially met
    assert [s.iteration for s in states] == list(range(iterations + 1))
    nll = [entry["nll_median"] for entry in final.history]
    assert len(nll) == iterations + 1 and nll[-1] < 0.5 * nll[0]
    assert final.fit is not None and final.fit.summary()["nll_median"] == pytest.approx(nll[-1])


def test_refinement_handles_subpixel_positions():
    scan = _scan(jitter=0.5, seed=3)
    model, window = _model(scan)
    final = list(refine(model, np.ones(model.shape, np.complex64), RefineSettings(iterations=20, workers=1)))[-1]
    amplitude, phase = _ssim(model.crop(final.object)[window], scan.objectGuess[window])
    assert amplitude >= 0.93 and phase >= 0.96


def test_full_batch_result_does_not_depend_on_the_memory_bound():
    scan = _scan()
    results = []
    for max_bytes in (1 << 30, 2 << 20):
        model, _ = _model(scan, max_bytes=max_bytes)
        results.append((model.chunk, list(refine(model, np.ones(model.shape, np.complex64),
                                                 RefineSettings(iterations=3, workers=1)))[-1].object))
    (big, first), (small, second) = results
    assert big == len(scan.diff3d) and small < big / 4
    np.testing.assert_allclose(second, first, rtol=0, atol=1e-5 * np.abs(first).max())


def test_stopping_between_iterations_and_the_time_limit():
    scan = _scan()
    model, _ = _model(scan)
    states = refine(model, np.ones(model.shape, np.complex64), RefineSettings(iterations=50, workers=1))
    seen = [next(states).iteration, next(states).iteration]
    states.close()  # what Ptychodus' Stop does to a generator
    assert seen == [0, 1]
    timed = list(refine(model, np.ones(model.shape, np.complex64),
                        RefineSettings(iterations=1000, time_limit_s=0.2, workers=1)))
    assert timed[-1].iteration < 1000 and "time limit" in timed[-1].stopped and timed[-1].fit is not None


def test_grid_grows_to_hold_every_window_and_crops_back():
    scan = _scan()
    positions = scan.positions
    stitcher = Stitcher.from_positions(positions, M=8)  # a network result's canvas: central crops only
    model = ScanModel(scan.diff3d, positions, scan.probeGuess, shape=stitcher.shape, origin=stitcher.origin)
    grown = N // 2 - 8 // 2 - 1  # each side: from the central 8 px of a window to the whole window
    assert model.shape[0] >= stitcher.shape[0] + 2 * grown and model.origin[0] >= stitcher.origin[0] + grown
    canvas = np.arange(np.prod(stitcher.shape)).reshape(stitcher.shape).astype(np.complex64)
    np.testing.assert_array_equal(model.crop(model.grow(canvas, 0)), canvas)


def test_data_fit_of_the_truth_is_at_the_noise_floor_and_finds_corrupted_frames():
    scan = _scan(1e5)
    counts = scan.diff3d.astype(np.float64) ** 2
    rng = np.random.default_rng(7)
    corrupted = np.array([5, 40, 77])
    counts[corrupted[0]] = counts[corrupted[0]][::-1]  # flipped frame
    counts[corrupted[1], :N // 2] = 0  # half the detector lost
    counts[corrupted[2]] = rng.poisson(counts[corrupted[2]].mean(), (N, N))  # flat noise
    truth = far_field_intensity(extract_patches(scan.objectGuess, scan.xcoords, scan.ycoords, N), scan.probeGuess)
    fit = data_fit(7.0 * truth, counts)  # any global scale: the fit finds it
    assert fit.scale == pytest.approx(1 / 7.0, rel=0.01)
    np.testing.assert_array_equal(fit.outliers, corrupted)
    clean = np.setdiff1d(np.arange(len(counts)), corrupted)
    typical = np.median(fit.patterns.deviance[clean])  # below 1: many pixels see less than a photon
    assert 0.3 < typical < 1.2 and fit.patterns.deviance[corrupted].min() > 3 * typical
    summary = fit.summary()
    assert summary["n_outliers"] == 3 and summary["nll_p95"] >= summary["nll_median"] > 0
    model = np.sqrt(fit.scale * 7.0 * truth)
    r = np.abs(np.sqrt(counts) - model).sum(axis=(1, 2)) / np.sqrt(counts).sum(axis=(1, 2))
    np.testing.assert_allclose(fit.patterns.r_factor, r, rtol=1e-3)
    assert data_fit(truth, scan.diff3d.astype(np.float64) ** 2).outliers.size == 0


def test_refinement_finds_corrupted_frames_from_a_flat_start():
    scan = _scan(1e5)
    amplitudes = scan.diff3d.copy()
    corrupted = np.array([12, 60])
    amplitudes[corrupted[0]] = amplitudes[corrupted[0]].T[::-1]
    amplitudes[corrupted[1], N // 2:] *= 3
    model, _ = _model(scan, amplitudes)
    final = list(refine(model, np.ones(model.shape, np.complex64), RefineSettings(iterations=20, workers=1)))[-1]
    np.testing.assert_array_equal(final.fit.outliers, corrupted)


def test_bad_inputs_are_refused_with_a_clear_message():
    scan = _scan()
    with pytest.raises(DataContractError, match="`probe` is all zero"):
        ScanModel(scan.diff3d, scan.positions, np.zeros((N, N), np.complex64),
                  shape=(SIZE, SIZE), origin=(0, 0))
    with pytest.raises(DataContractError, match="`algorithm` must be one of"):
        RefineSettings(algorithm="dm")
    with pytest.raises(DataContractError, match="predicts no photons"):
        MeasuredCounts(np.ones((2, 4, 4))).fit(np.zeros((2, 4, 4)))


def test_refining_a_stitched_result_keeps_its_canvas_and_starts_ahead_of_flat():
    scan = _scan()
    positions = scan.positions
    patches = extract_patches(scan.objectGuess, scan.xcoords, scan.ycoords, N)
    noisy = patches * np.exp(0.3j * np.random.default_rng(0).standard_normal(patches.shape)).astype(np.complex64)
    stitched = stitch_patches(0.4 * noisy, positions, M=8)  # any global scale: the refinement finds it
    final = {}
    for start in ("network", "flat"):
        states = list(refine_stitched(scan.diff3d, positions, scan.probeGuess, stitched.canvas, stitched.coverage,
                                      stitched.origin, RefineSettings(iterations=3, workers=1), start=start))
        assert all(s.canvas.shape == stitched.canvas.shape for s in states) and states[-1].peak_bytes > 0
        final[start] = states[-1]
    network, flat = (final[k].state.history for k in ("network", "flat"))
    assert network[0]["nll_median"] < 0.5 * flat[0]["nll_median"]
    assert network[-1]["nll_median"] < flat[-1]["nll_median"]
