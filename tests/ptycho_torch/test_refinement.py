"""Known-probe refinement and data-fit figures on small simulated scans (numpy only)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ptycho_torch.choices import StopReason
from ptycho_torch.data_fit import MeasuredCounts, data_fit
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import extract_patches
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.refinement import RefineSettings, ScanModel, correction_warning, refine, refine_stitched, scan_model
from ptycho_torch.refinement.probe_modes import orthogonalise, with_modes
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


def _model(scan, amplitudes=None, *, positions=None, probe=None, **kwargs) -> tuple[ScanModel, tuple[slice, slice]]:
    """A model on the object's own grid (origin 0), and the window of the object that the scan covers."""
    model = ScanModel(scan.diff3d if amplitudes is None else amplitudes,
                      scan.positions if positions is None else positions,
                      scan.probeGuess if probe is None else probe,
                      shape=scan.objectGuess.shape, origin=(0.0, 0.0), **kwargs)
    lo, hi = int(np.ceil(scan.positions.min())) - 4, int(scan.positions.max()) + 5
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
    errors = [entry["amplitude_error"] for entry in final.history]
    assert len(errors) == iterations + 1 and errors[-1] < 0.05 * errors[0]
    assert final.history[-1]["nll_median"] < 0.5 * final.history[0]["nll_median"]
    assert final.fit is not None and final.fit.summary()["nll_median"] == final.history[-1]["nll_median"]
    assert final.stop_reason == StopReason.ITERATIONS and final.stopped == f"completed the {iterations} requested iterations"
    assert all(s.stop_reason is None and s.stopped is None for s in states[:-1])


def test_refinement_handles_subpixel_positions():
    scan = _scan(jitter=0.5, seed=3)
    model, window = _model(scan)
    final = list(refine(model, np.ones(model.shape, np.complex64), RefineSettings(iterations=20, workers=1)))[-1]
    amplitude, phase = _ssim(model.crop(final.object)[window], scan.objectGuess[window])
    assert amplitude >= 0.93 and phase >= 0.96


@pytest.mark.parametrize("refine_probe", [False, True])
def test_result_does_not_depend_on_threads_chunks_or_the_probe_cache(monkeypatch, refine_probe):
    scan = _scan(jitter=0.5)
    results = []
    for workers, cache_bytes, max_bytes in ((1, 1 << 30, 1 << 30), (2, 64 << 10, 1 << 10)):
        monkeypatch.setattr(scan_model, "CACHE_BYTES", cache_bytes)
        model, _ = _model(scan, max_bytes=max_bytes, workers=workers)
        state = list(refine(model, np.ones(model.shape, np.complex64),
                            RefineSettings(iterations=3, workers=workers, refine_probe=refine_probe)))[-1]
        results.append((model.chunk, model.threads, state))
    (big, one, first), (small, two, second) = results
    assert (big, one) == (len(scan.diff3d), 1) and small < big / 4 and two == 2
    np.testing.assert_allclose(second.object, first.object, rtol=0, atol=1e-4 * np.abs(first.object).max())
    np.testing.assert_allclose(second.probe, first.probe, rtol=0, atol=1e-4 * np.abs(first.probe).max())


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
    assert timed[-1].stop_reason == StopReason.TIME_LIMIT


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
    settings = RefineSettings(iterations=20, workers=1)
    assert settings.algorithm == "er"  # the default for the object alone: it keeps the damage to the frame
    final = list(refine(model, np.ones(model.shape, np.complex64), settings))[-1]
    np.testing.assert_array_equal(final.fit.outliers, corrupted)
    assert RefineSettings(refine_probe=True).algorithm == RefineSettings(refine_positions=True).algorithm == "rpie"


def test_bad_inputs_are_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as on a machine without the gpu extra
    scan = _scan()
    with pytest.raises(DataContractError, match="`probe` is all zero"):
        ScanModel(scan.diff3d, scan.positions, np.zeros((N, N), np.complex64),
                  shape=(SIZE, SIZE), origin=(0, 0))
    with pytest.raises(DataContractError, match="`algorithm` must be one of"):
        RefineSettings(algorithm="dm")
    with pytest.raises(DataContractError, match="`iterations` must be a non-negative integer or 'auto'"):
        RefineSettings(iterations="forever")
    with pytest.raises(DataContractError, match="backend 'cupy' needs CuPy: pip install"):
        ScanModel(scan.diff3d, scan.positions, scan.probeGuess, shape=(SIZE, SIZE), origin=(0, 0), backend="cupy")
    monkeypatch.setenv("PTYCHOPINN_REFINE_BACKEND", "gpu")
    with pytest.raises(DataContractError, match=r"`\$PTYCHOPINN_REFINE_BACKEND` must be one of \['numpy', 'cupy'\]"):
        RefineSettings()
    monkeypatch.delenv("PTYCHOPINN_REFINE_BACKEND")
    with pytest.raises(DataContractError, match="`positions` contain NaN"):
        ScanModel(scan.diff3d, np.full_like(scan.positions, np.nan), scan.probeGuess, shape=(SIZE, SIZE),
                  origin=(0, 0))
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


def _defocused(probe: np.ndarray, radians: float) -> np.ndarray:
    """``probe`` with a quadratic phase of ``radians`` at the window's edge (a focus error), half the power."""
    yy, xx = np.mgrid[:N, :N] - N / 2
    return (0.5 * probe * np.exp(1j * radians * (xx**2 + yy**2) / (N / 2) ** 2)).astype(np.complex64)


def _probe_correlation(probe: np.ndarray, truth: np.ndarray) -> float:
    return float(abs(np.vdot(probe, truth)) / np.linalg.norm(probe) / np.linalg.norm(truth))


@pytest.mark.parametrize(("algorithm", "iterations", "amp_min"), [("er", 120, 0.8), ("rpie", 40, 0.9), ("mpie", 40, 0.9)])
def test_probe_refinement_recovers_a_defocused_probe(algorithm, iterations, amp_min):
    scan = _scan()
    model, window = _model(scan, probe=_defocused(scan.probeGuess, 12.0))
    truth = scan.objectGuess[window]
    given = _probe_correlation(model.probe[0], scan.probeGuess)
    fixed = list(refine(model, np.ones(model.shape, np.complex64),
                        RefineSettings(iterations=iterations, algorithm=algorithm, workers=1)))[-1]
    model, _ = _model(scan, probe=_defocused(scan.probeGuess, 12.0))
    refined = list(refine(model, np.ones(model.shape, np.complex64),
                          RefineSettings(iterations=iterations, algorithm=algorithm, workers=1, refine_probe=True)))[-1]
    assert given < 0.8 and _probe_correlation(refined.probe[0], scan.probeGuess) > 0.94
    held, better = (_ssim(model.crop(s.object)[window], truth) for s in (fixed, refined))
    assert better[0] > amp_min and better[1] > 0.93 and better[0] > held[0] + 0.1, (held, better)
    assert refined.history[-1]["amplitude_error"] < 0.2 * fixed.history[-1]["amplitude_error"]
    # the probe carries the data's scale once refined: its power follows the counts, the object's mean stays ~1
    assert np.abs(model.crop(refined.object)[window]).mean() == pytest.approx(1.0, abs=0.15)


def test_added_probe_modes_are_orthogonal_and_keep_the_far_field():
    rng = np.random.default_rng(0)
    modes = (rng.standard_normal((3, N, N)) + 1j * rng.standard_normal((3, N, N))).astype(np.complex64)
    mixed = orthogonalise(modes, np)
    gram = np.einsum("aij,bij->ab", mixed.conj(), mixed)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-3 * np.abs(gram).max())
    assert np.all(np.diff(np.diag(gram).real) <= 0)  # sorted by power
    obj = np.exp(1j * rng.standard_normal((N, N))).astype(np.complex64)
    far = [(np.abs(np.fft.fft2(m * obj)) ** 2).sum(axis=0) for m in (modes, mixed)]
    np.testing.assert_allclose(far[1], far[0], rtol=1e-3)
    grown = with_modes(modes[:1], 3, np)
    assert grown.shape == (3, N, N)
    np.testing.assert_allclose((np.abs(grown[1:]) ** 2).sum(axis=(1, 2)) / (np.abs(grown[0]) ** 2).sum(), 0.05, rtol=1e-3)


@pytest.mark.parametrize(("algorithm", "rms_max"), [("rpie", 0.4), ("mpie", 0.3)])
def test_position_correction_undoes_two_pixel_errors(algorithm, rms_max):
    scan = _scan()
    rng = np.random.default_rng(1)
    given = scan.positions + rng.uniform(-2, 2, scan.positions.shape)
    model, window = _model(scan, positions=given, margin=8)
    truth = scan.objectGuess[window]
    final = list(refine(model, np.ones(model.shape, np.complex64),
                        RefineSettings(iterations=60, algorithm=algorithm, workers=1, refine_positions=True)))[-1]
    before, after = (p - scan.positions for p in (given, final.positions))
    rms = [float(np.sqrt(((e - e.mean(axis=0)) ** 2).sum(axis=1).mean())) for e in (before, after)]
    assert rms[0] > 1.5 and rms[1] < rms_max, rms
    assert min(_ssim(model.crop(final.object)[window], truth)) > 0.98
    assert np.abs(after - before).max() <= 8 + 1e-9  # never past the margin
    warning = correction_warning(final.positions - given)
    assert warning is not None and "positions were corrected by" in warning
    assert correction_warning(np.full((10, 2), 0.2)) is None


def test_auto_stops_when_the_fit_stops_improving_and_says_so():
    scan = _scan()
    model, window = _model(scan)
    states = list(refine(model, np.ones(model.shape, np.complex64),
                         RefineSettings(iterations="auto", algorithm="mpie", workers=1)))
    final = states[-1]
    assert final.stop_reason == StopReason.CONVERGED and final.stopped.startswith("converged after")
    errors = [h["amplitude_error"] for h in final.history]
    # the rule, on the entries measured before the last (exact) fit: < 1 % better over 10 iterations, not before
    assert errors[-12] - errors[-2] < 0.01 * errors[-12] and errors[-13] - errors[-3] >= 0.01 * errors[-13]
    assert 15 < final.iteration < 200 and min(_ssim(model.crop(final.object)[window], scan.objectGuess[window])) > 0.98
    capped = list(refine(model, np.ones(model.shape, np.complex64),
                         RefineSettings(iterations="auto", max_iterations=5, workers=1)))[-1]
    assert capped.iteration == 5 and capped.stop_reason == StopReason.ITERATIONS and "max_iterations=5" in capped.stopped


def test_the_gpu_backend_kernels_give_the_numpy_result(monkeypatch):
    """CuPy's code path (flat-index gather and scatter, one chunk at a time, no threads) run on numpy."""
    import dataclasses

    from ptycho_torch.refinement import backend

    gather, scatter_add = backend.flat_index_kernels(np, np.add.at)
    emulated = dataclasses.replace(backend.array_backend("numpy"), gather=gather, scatter_add=scatter_add,
                                   parallel=False)
    scan = _scan(jitter=0.5)
    given = scan.positions + np.random.default_rng(2).uniform(-1, 1, scan.positions.shape)
    settings = RefineSettings(iterations=12, algorithm="rpie", refine_probe=True, refine_positions=True, workers=2)
    finals = []
    for be in (None, emulated):
        if be is not None:
            monkeypatch.setattr(scan_model, "array_backend", lambda name, be=be: be)
        model, _ = _model(scan, positions=given, margin=8, workers=2)
        finals.append((model.threads, list(refine(model, np.ones(model.shape, np.complex64), settings))[-1]))
    (threads, cpu), (one, gpu_path) = finals
    assert threads == 2 and one == 1
    np.testing.assert_allclose(gpu_path.object, cpu.object, rtol=0, atol=1e-3 * np.abs(cpu.object).max())
    np.testing.assert_allclose(gpu_path.positions, cpu.positions, rtol=0, atol=1e-3)


def test_position_correction_leaves_exact_positions_and_dark_frames_in_place():
    """Exact positions stay within a fraction of a pixel, and an all-dark (dropped) frame is not moved."""
    scan = _scan()
    amplitudes = scan.diff3d.copy()
    amplitudes[40] = 0.0
    model, _ = _model(scan, amplitudes, margin=8)
    final = list(refine(model, np.ones(model.shape, np.complex64),
                        RefineSettings(iterations=60, workers=1, refine_positions=True)))[-1]
    moved = final.positions - scan.positions
    # not zero: on a dense scan of a strong object the data still leave ~0.3 px of play (docs/benchmarks.md)
    assert float(np.sqrt((moved ** 2).sum(axis=1).mean())) < 0.3
    assert np.hypot(*moved[40]) < 0.1  # the dark frame only follows the (small) common corrections
